"""The bundled example: a scarce, imbalanced image folder derived from scikit-learn's handwritten digits.

``sklearn.datasets.load_digits()`` ships 1797 real 8x8 scans (pixel values 0..16) of the digits 0-9, 174 to 183 per
class. ``write_example(directory, seed=s)`` writes them all, derived exactly like this:

1. **Pixels.** Each scan is stored at its native 8x8 as an 8-bit grayscale PNG, values scaled 0..16 -> 0..255 by
   ``(v * 255 + 8) // 16`` (16/255 scaling, rounded half up; nothing resampled or invented).
2. **Files.** ``<directory>/<label>/d<index>.png``, ``<index>`` being the scan's 4-digit position in
   ``load_digits`` (``d0000`` .. ``d1796``). Every scan is written whatever the seed; only the splits depend on it.
3. **Splits, per class.** The class's indices, in ascending order, are shuffled with
   ``numpy.random.default_rng([seed, int(label)]).permutation``. The first ``TEST_PER_CLASS`` (50) are ``test``,
   the next ``VAL_PER_CLASS`` (10) are ``val``, the rest are ``train``. The test split is thus balanced and whole.
4. **Scarcity.** For each class in ``SCARCE_CLASSES`` ("3", "5", "8") only the first ``SCARCE_TRAIN`` (6) of its
   train part stay ``train``; the remaining 108-117 real training images are written too but marked ``heldback``:
   never used to train a generator, they let the evaluation measure how close synthetic data gets to having had them.
   3 and 8 are the two classes a plain classifier on all the digits already recalls worst (they are mistaken for
   each other and for 1 and 9); 5 shares strokes with 3 and 9. Starving these makes the gap to close visible.
5. **Table.** ``<directory>/splits.csv`` (columns ``path,split``; POSIX paths relative to ``directory``) lists every
   image, sorted by class then index. ``<directory>/EXAMPLE.md`` records the seed and this summary; it also marks
   the folder as an earlier example, which is the only non-empty folder ``write_example`` will write into.

Result (any seed): 856 train images (117-122 in each of the seven ordinary classes, 6 in each scarce one, about 20:1),
341 heldback, 100 val (10 per class), 500 test (50 per class).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.files import atomic_path, write_atomic

SOURCE = "example:digits"  # the data.source that names this example
# scikit-learn's digits are the UCI Machine Learning Repository's "Optical Recognition of Handwritten Digits", which
# UCI licenses CC BY 4.0: the license of a dataset made from them (its card's header).
LICENSE = "cc-by-4.0"
TEST_PER_CLASS = 50  # held-out real test images per class (balanced, never cut)
VAL_PER_CLASS = 10  # validation images per class
SCARCE_CLASSES = ("3", "5", "8")  # classes cut to a handful of training images
SCARCE_TRAIN = 6  # training images kept for each scarce class
SPLITS_FILE = "splits.csv"
MARKER_FILE = "EXAMPLE.md"
MARKER_TITLE = "# synthaug example dataset"  # first line of MARKER_FILE: recognises an earlier example

_IMAGE_NAME = re.compile(r"d\d{4}\.png(\.tmp)?")
_ROOT_FILES = re.compile(rf"({re.escape(SPLITS_FILE)}|{re.escape(MARKER_FILE)})(\.tmp)?")


def example_splits(targets: np.ndarray, *, seed: int = 0, scarce: Mapping[str, int] | None = None) -> list[str]:
    """The split of every image, given the class index of each (step 3-4 of the module docstring).

    ``scarce``: train images kept per scarce class (default: ``SCARCE_TRAIN`` for each of ``SCARCE_CLASSES``); the
    benchmark scenarios (bench/utility.py) starve other classes the same way."""
    scarce = dict.fromkeys(SCARCE_CLASSES, SCARCE_TRAIN) if scarce is None else scarce
    splits = [""] * len(targets)
    for label in np.unique(targets):
        order = np.random.default_rng([seed, int(label)]).permutation(np.flatnonzero(targets == label))
        train_keep = scarce.get(str(label), len(order))
        for rank, index in enumerate(order):
            if rank < TEST_PER_CLASS:
                splits[index] = "test"
            elif rank < TEST_PER_CLASS + VAL_PER_CLASS:
                splits[index] = "val"
            elif rank < TEST_PER_CLASS + VAL_PER_CLASS + train_keep:
                splits[index] = "train"
            else:
                splits[index] = "heldback"
    return splits


def write_example(directory: Path, *, seed: int = 0) -> str:
    """Write the example dataset into ``directory`` and return its summary (per class: train, heldback, val, test).

    Args:
        directory: folder to write; it must be absent, empty, or an earlier example (rewritten in place).
        seed: seed of the per-class shuffles that choose the splits.

    Raises:
        UserError: ``directory`` is a file, or a non-empty folder that is not an earlier example.
    """
    directory = Path(directory)
    _check_target(directory)
    pixels, targets = digit_pixels()
    splits = example_splits(targets, seed=seed)

    summary = _summary(targets, splits, seed)
    directory.mkdir(parents=True, exist_ok=True)
    # The marker first: an interrupted write leaves a folder that is still recognised and can be rewritten.
    write_atomic(f"{MARKER_TITLE}\n\nseed: {seed}\n\n```\n{summary}\n```\n\n{__doc__}", directory / MARKER_FILE)
    rows = []
    for index in np.lexsort((np.arange(len(targets)), targets)):
        rel = f"{targets[index]}/d{index:04d}.png"
        path = directory / rel
        path.parent.mkdir(exist_ok=True)
        with atomic_path(path) as tmp:
            Image.fromarray(pixels[index]).save(tmp, format="PNG")
        rows.append(f"{rel},{splits[index]}")
    write_atomic("path,split\n" + "\n".join(rows) + "\n", directory / SPLITS_FILE)  # last: the table means done
    return summary


def digit_pixels() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digit scans as 8-bit (N, 8, 8) pixels (step 1 of the module docstring) and their labels."""
    from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

    digits = load_digits()
    pixels = ((np.asarray(digits.images).round().astype(np.int64) * 255 + 8) // 16).astype(np.uint8)
    return pixels, np.asarray(digits.target)


def _check_target(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory}: exists and is not a folder; pick a new folder for the example")
    if not directory.is_dir() or not any(directory.iterdir()):
        return
    marker = directory / MARKER_FILE
    head = marker.read_text(encoding="utf-8").splitlines()[:1] if marker.is_file() else []
    if head != [MARKER_TITLE]:
        raise UserError(f"{directory}: folder is not empty and is not an earlier synthaug example; "
                        "pick a new or empty folder (or remove this one)")
    foreign = list(_foreign_entries(directory))
    if foreign:
        shown = ", ".join(str(p.relative_to(directory)) for p in foreign[:3])
        raise UserError(f"{directory}: earlier example holds files it did not write ({shown}); "
                        "move them out or pick a new folder")


def _foreign_entries(directory: Path) -> Iterator[Path]:
    for entry in sorted(directory.iterdir()):
        if entry.is_file() and _ROOT_FILES.fullmatch(entry.name):
            continue
        if entry.is_dir() and entry.name.isdigit():
            yield from (p for p in sorted(entry.iterdir()) if not (p.is_file() and _IMAGE_NAME.fullmatch(p.name)))
            continue
        yield entry


def _summary(targets: np.ndarray, splits: list[str], seed: int) -> str:
    columns = ("train", "heldback", "val", "test")
    lines = [
        f"synthaug example: scikit-learn handwritten digits, {len(targets)} real 8x8 scans, seed {seed}",
        f"scarce classes {', '.join(SCARCE_CLASSES)}: {SCARCE_TRAIN} train images each, the rest heldback",
        f"{'class':<6}" + "".join(f"{c:>10}" for c in columns),
    ]
    totals = dict.fromkeys(columns, 0)
    for label in np.unique(targets):
        counts = {c: sum(1 for t, s in zip(targets, splits, strict=True) if t == label and s == c) for c in columns}
        for c in columns:
            totals[c] += counts[c]
        lines.append(f"{label!s:<6}" + "".join(f"{counts[c]:>10}" for c in columns))
    lines.append(f"{'total':<6}" + "".join(f"{totals[c]:>10}" for c in columns))
    return "\n".join(lines)
