"""The scenario suite: scarce scenarios cut from real images that ship offline, split once into a development half
and a report half (docs/utility.md, "The scenario suite").

Sources (all read from installed packages; nothing is downloaded):

- ``digits`` (group ``digits``): scikit-learn's 1797 handwritten digit scans, 8x8 gray (``load_digits``; pixels as
  the bundled example writes them, ``tasks.core.sources.example.digit_pixels``). UCI's "Optical Recognition of
  Handwritten Digits", CC BY 4.0. Per class: 50 test, 10 val, the rest the train pool.
- ``lfw`` (group ``lfw``): scikit-image's ``data.lfw_subset()``, 100 faces and 100 non-face backgrounds from Labeled
  Faces in the Wild, 25x25 gray, stored as floats in 0..1 and written as ``round(v * 255)``; the package states no
  licence. Per class: 40 test, 10 val, 50 train pool. The pipeline runs them at 24 px (a UNet needs an even side).
- ``photos`` (groups ``textures``, ``gray``, ``rgb``, ``science``): one class per photograph (``PHOTOS``, with the
  licence its docstring or README states): square tiles of ``patch`` px on a grid, cut from three horizontal bands
  of rows: the top half is the train pool, the next eighth val, the rest test, so no test or val pixel lies in a
  train or ceiling image. Nearly flat tiles (pixel standard deviation under ``FLAT_STD``: the black corners of the
  fundus photo) are dropped: they carry no class and are identical across photos. At most ``POOL_CAP`` pool,
  ``VAL_CAP`` val and ``TEST_CAP`` test tiles per class are drawn. A file is named after its tile's top-left corner
  in the photo (``r<row>c<col>.png``).

In every scenario each scarce class keeps its stated number of train images; the rest of its train pool is
``heldback``: the ceiling, what the class would have looked like with more real data (the evaluation's
``real_oracle``). Other classes keep their whole pool as train. Draws use ``numpy.random.default_rng([seed,
name key, class])``, the name key being the first 8 bytes of the name's SHA-256, so every scenario has its own splits
and ``materialize`` writes the same bytes every time for a seed (0 is the suite's).

**The halves** (``HALF``): within each group (the name up to its first ``-``: digits, lfw, textures, gray, rgb,
science), the scenarios taken in the order of their name's SHA-256 hex digest alternate development, report,
development, ... Every group has an even number of scenarios, so each half holds half of every group. The suite is
closed: tests/bench/test_suite.py fixes both halves' names, and a changed suite is a new suite.

``python -m bench.suite --list`` prints the suite as a markdown table; ``python -m bench.suite --materialize NAME DIR
[--seed N]`` writes a scenario as an image folder (``<DIR>/<label>/*.png`` and ``splits.csv``, docs/data.md) and
prints its counts.
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

DIGITS_TEST, DIGITS_VAL = 50, 10  # as the bundled example
LFW_TEST, LFW_VAL = 40, 10  # of 100 per class: 50 left for the train pool
POOL_CAP, VAL_CAP, TEST_CAP = 120, 10, 50  # photo tiles per class
TRAIN_BAND, VAL_BAND = 0.5, 0.625  # photo rows [0, 0.5 H) train pool, [0.5 H, 0.625 H) val, the rest test
FLAT_STD = 4.0  # photo tiles flatter than this (0..255 pixel std) are dropped

# Photograph -> the licence its package states (scikit-image: the function's docstring; scikit-learn: its
# datasets/images/README.txt).
PHOTOS = {
    "brick": "CC0", "grass": "CC0", "gravel": "CC0", "camera": "CC0", "cell": "CC0",
    "coins": "no known copyright restrictions", "astronaut": "public domain",
    "chelsea": "CC0", "coffee": "CC0", "rocket": "public domain", "retina": "CC0", "hubble_deep_field":
    "public domain", "immunohistochemistry": "no known copyright restrictions", "china": "CC BY 2.0",
    "flower": "CC BY 2.0",
}
SKLEARN_PHOTOS = ("china", "flower")  # sklearn.datasets.load_sample_image; the others are skimage.data functions
RGB_PHOTOS = {"astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field", "immunohistochemistry",
              "china", "flower"}

Item = tuple[str, str, np.ndarray, str]  # label, file stem, uint8 pixels, split


@dataclass(frozen=True)
class Scenario:
    """One scarce scenario.

    Args:
        name: unique, ``<group>-...``; it fixes the scenario's draws (and with the others', its half).
        source: ``digits``, ``lfw`` or ``photos`` (module docstring).
        classes: its labels (for ``photos``, the photographs).
        scarce: (class, train images kept) for each scarce class; the rest of its train pool is ``heldback``.
        size: ``data.image_size`` to run it at.
        channels: 1 gray, 3 RGB.
    """

    name: str
    source: str
    classes: tuple[str, ...]
    scarce: tuple[tuple[str, int], ...]
    size: int
    channels: int

    @property
    def params(self) -> tuple[str, ...]:
        """The data params to run it with (``synthaug run -S ...``)."""
        return (f"data.image_size={self.size}", f"data.channels={self.channels}")


def _digits(scarce: str, n: int) -> Scenario:
    return Scenario(f"digits-{scarce}-{n}", "digits", tuple(map(str, range(10))), tuple((c, n) for c in scarce), 8, 1)


def _lfw(label: str, n: int) -> Scenario:
    return Scenario(f"lfw-{label}-{n}", "lfw", ("face", "background"), ((label, n),), 24, 1)


def _photos(group: str, photos: tuple[str, ...], patch: int, **scarce: int) -> Scenario:
    channels = 3 if RGB_PHOTOS.issuperset(photos) else 1
    name = f"{group}-{patch}px-" + "-".join(f"{c.split('_')[0]}{n}" for c, n in scarce.items())
    return Scenario(name, "photos", photos, tuple(scarce.items()), patch, channels)


TEXTURES = ("brick", "grass", "gravel")
GRAY = ("camera", "cell", "coins")  # not the clock: most of its tiles are flat wall
RGB = ("astronaut", "chelsea", "coffee", "rocket", "china", "flower")
SCIENCE = ("retina", "hubble_deep_field", "immunohistochemistry")
SUITE = (
    *(_digits(scarce, n) for scarce in ("069", "138", "257") for n in (3, 6, 12)),
    _digits("4", 6),
    *(_lfw("face", n) for n in (3, 6, 12)),
    _lfw("background", 6),
    _photos("textures", TEXTURES, 16, gravel=6),
    _photos("textures", TEXTURES, 16, grass=3, brick=12),
    _photos("textures", TEXTURES, 32, brick=6),
    _photos("textures", TEXTURES, 32, gravel=3, grass=12),
    _photos("textures", TEXTURES, 64, grass=6),
    _photos("textures", TEXTURES, 64, brick=3, gravel=12),
    _photos("gray", GRAY, 16, coins=6),
    _photos("gray", GRAY, 16, cell=3, camera=12),
    _photos("gray", GRAY, 32, cell=6),
    _photos("gray", GRAY, 32, camera=3, coins=12),
    _photos("rgb", RGB, 16, chelsea=6),
    _photos("rgb", RGB, 16, coffee=3, flower=12),
    _photos("rgb", RGB, 32, rocket=6),
    _photos("rgb", RGB, 32, china=3, astronaut=6),
    _photos("science", SCIENCE, 16, retina=3),
    _photos("science", SCIENCE, 32, hubble_deep_field=6),
    _photos("science", SCIENCE, 64, retina=6),
    _photos("science", SCIENCE, 64, immunohistochemistry=3, hubble_deep_field=12),
)
BY_NAME = {s.name: s for s in SUITE}


def _digest(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def _halves() -> dict[str, str]:
    """The fixed rule of the module docstring: per group, in SHA-256 order, development and report in turn."""
    groups: dict[str, list[str]] = {}
    for name in sorted(BY_NAME, key=_digest):
        groups.setdefault(name.split("-")[0], []).append(name)
    return {name: ("development", "report")[i % 2] for names in groups.values() for i, name in enumerate(names)}


HALF = _halves()


def scenario(name: str) -> Scenario:
    """The scenario called ``name``; a ValueError lists the names otherwise."""
    if name not in BY_NAME:
        raise ValueError(f"unknown scenario {name!r}; the suite: {', '.join(BY_NAME)}")
    return BY_NAME[name]


def images(s: Scenario, seed: int = 0) -> list[Item]:
    """Every image ``s`` writes for ``seed``, with its split (``train|val|test|heldback``)."""
    key = int.from_bytes(_digest(s.name)[:8])
    scarce = dict(s.scarce)
    out: list[Item] = []
    for k, label in enumerate(s.classes):
        rng = np.random.default_rng([seed, key, k])
        pool, val, test = _candidates(s, label, rng)
        order = rng.permutation(len(pool))
        keep = scarce.get(label, len(pool))
        out += [(label, stem, pixels, "train" if rank < keep else "heldback")
                for rank, (stem, pixels) in zip(order, pool, strict=True)]
        out += [(label, stem, pixels, "val") for stem, pixels in val]
        out += [(label, stem, pixels, "test") for stem, pixels in test]
    return out


Tile = tuple[str, np.ndarray]  # file stem, pixels


def _candidates(s: Scenario, label: str, rng: np.random.Generator) -> tuple[list[Tile], list[Tile], list[Tile]]:
    """The class's train pool, val and test images."""
    if s.source == "photos":
        picture = photo(label)
        height = picture.shape[0]
        bands = ((0, int(height * TRAIN_BAND)), (int(height * TRAIN_BAND), int(height * VAL_BAND)),
                 (int(height * VAL_BAND), height))
        pool, val, test = (_draw(rng, _tiles(picture, s.size, band), cap)
                           for band, cap in zip(bands, (POOL_CAP, VAL_CAP, TEST_CAP), strict=True))
        return pool, val, test
    if s.source == "digits":
        pixels, targets = _digits_pixels()
        members, prefix, test, val = np.flatnonzero(targets == int(label)), "d", DIGITS_TEST, DIGITS_VAL
    else:
        pixels = _lfw_pixels()
        members, prefix, test, val = np.arange(100) + 100 * s.classes.index(label), "f", LFW_TEST, LFW_VAL
    order = rng.permutation(members)
    tiles = [(f"{prefix}{i:04d}", pixels[i]) for i in order]
    return tiles[test + val:], tiles[test:test + val], tiles[:test]


def _tiles(picture: np.ndarray, patch: int, band: tuple[int, int]) -> list[Tile]:
    """The non-flat ``patch``-px grid tiles lying wholly inside the rows of ``band``."""
    top, bottom = band
    cuts = ((r, c) for r in range(top, bottom - patch + 1, patch)
            for c in range(0, picture.shape[1] - patch + 1, patch))
    return [(f"r{r:04d}c{c:04d}", tile) for r, c in cuts
            if (tile := picture[r:r + patch, c:c + patch]).std() >= FLAT_STD]


def _draw(rng: np.random.Generator, tiles: list[Tile], cap: int) -> list[Tile]:
    return [tiles[i] for i in sorted(rng.permutation(len(tiles))[:cap])]


@cache
def _digits_pixels() -> tuple[np.ndarray, np.ndarray]:
    from synthaug.tasks.core.sources.example import digit_pixels

    return digit_pixels()


@cache
def _lfw_pixels() -> np.ndarray:
    from skimage import data  # the bench extra: pip install 'synthaug[bench]'

    return np.round(data.lfw_subset() * 255).astype(np.uint8)


@cache
def photo(name: str) -> np.ndarray:
    """The photograph ``name`` of ``PHOTOS`` as uint8 pixels (cached: every scenario of its group cuts it)."""
    if name in SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    from skimage import data

    loader: Callable[[], np.ndarray] = getattr(data, name)
    return np.asarray(loader(), dtype=np.uint8)


def materialize(name: str, directory: Path, seed: int = 0) -> Counter[tuple[str, str]]:
    """Write scenario ``name`` as an image folder (``<directory>/<label>/<stem>.png`` and ``splits.csv``, rows sorted
    by path); returns the count per (label, split). ``directory`` must be absent or empty: files left from another
    scenario would join this one."""
    from PIL import Image

    s = scenario(name)
    if directory.exists() and any(directory.iterdir()):
        raise ValueError(f"{directory} is not empty; materialize into a new folder")
    rows = []
    counts: Counter[tuple[str, str]] = Counter()
    for label, stem, pixels, split in images(s, seed):
        path = directory / label / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, format="PNG")
        rows.append(f"{label}/{stem}.png,{split}")
        counts[label, split] += 1
    (directory / "splits.csv").write_text("path,split\n" + "\n".join(sorted(rows)) + "\n")
    return counts


def table() -> str:
    """The suite as a markdown table, development half first."""
    lines = ["| scenario | half | source | px | channels | classes | scarce: train images |", "|---" * 7 + "|"]
    for s in sorted(SUITE, key=lambda s: (HALF[s.name], s.name)):
        scarce = ", ".join(f"{c} {n}" for c, n in s.scarce)
        lines.append(f"| {s.name} | {HALF[s.name]} | {s.source} | {s.size} | {s.channels} | {len(s.classes)} "
                     f"| {scarce} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true", help="print the suite as a markdown table")
    action.add_argument("--materialize", nargs=2, metavar=("NAME", "DIR"), help="write scenario NAME into DIR")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (the suite's: 0)")
    args = parser.parse_args(argv)
    if args.list:
        print(table())
        return
    name, directory = args.materialize
    try:
        counts = materialize(name, Path(directory), args.seed)
    except ValueError as err:
        raise SystemExit(f"python -m bench.suite: {err}") from None
    s = scenario(name)
    print(f"{name} ({HALF[name]} half) -> {directory}; run with -S data.source={directory} "
          + " ".join(f"-S {p}" for p in s.params))
    for label in s.classes:
        print(f"  {label}: " + ", ".join(f"{split} {counts[label, split]}"
                                        for split in ("train", "heldback", "val", "test")))


if __name__ == "__main__":
    main()
