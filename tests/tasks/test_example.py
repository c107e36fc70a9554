"""The bundled digits example: counts per class and split, files, determinism, refusal to overwrite."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.sources.example import MARKER_FILE, SCARCE_CLASSES, SPLITS_FILE, write_example

# load_digits has 178, 182, 177, 183, 181, 182, 181, 179, 174, 180 scans of 0..9. Each class gives 50 to test and
# 10 to val; the rest is train, except for 3, 5 and 8, which keep 6 train and hold back the rest
# (183 - 66 = 117, 182 - 66 = 116, 174 - 66 = 108).
EXPECTED = {  # class: (train, heldback, val, test)
    "0": (118, 0, 10, 50),
    "1": (122, 0, 10, 50),
    "2": (117, 0, 10, 50),
    "3": (6, 117, 10, 50),
    "4": (121, 0, 10, 50),
    "5": (6, 116, 10, 50),
    "6": (121, 0, 10, 50),
    "7": (119, 0, 10, 50),
    "8": (6, 108, 10, 50),
    "9": (120, 0, 10, 50),
}
SPLIT_NAMES = ("train", "heldback", "val", "test")


def read_splits(directory: Path) -> list[tuple[str, str]]:
    with (directory / SPLITS_FILE).open(newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["path", "split"]
        return [(row[0], row[1]) for row in reader]


def all_files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    directory = tmp_path_factory.mktemp("example") / "digits"
    return directory, write_example(directory, seed=0)


def test_counts_per_class_and_split(example: tuple[Path, str]) -> None:
    directory, _ = example
    counts = Counter((path.split("/")[0], split) for path, split in read_splits(directory))
    got = {label: tuple(counts[label, s] for s in SPLIT_NAMES) for label in EXPECTED}
    assert got == EXPECTED
    assert sum(counts.values()) == 1797
    assert {label for label, _ in counts} == set(EXPECTED)


def test_scarce_classes_and_balanced_test(example: tuple[Path, str]) -> None:
    directory, _ = example
    rows = read_splits(directory)
    heldback_classes = {path.split("/")[0] for path, split in rows if split == "heldback"}
    assert heldback_classes == set(SCARCE_CLASSES) == {"3", "5", "8"}
    train = Counter(path.split("/")[0] for path, split in rows if split == "train")
    assert sorted(label for label, n in train.items() if n < 10) == ["3", "5", "8"]
    assert all(train[c] == 6 for c in SCARCE_CLASSES)
    assert set(Counter(path.split("/")[0] for path, split in rows if split == "test").values()) == {50}


def test_summary_lists_each_class(example: tuple[Path, str]) -> None:
    _, summary = example
    table = {line.split()[0]: tuple(int(v) for v in line.split()[1:])
             for line in summary.splitlines() if line.split() and line.split()[0] in {*EXPECTED, "total"}}
    assert {k: v for k, v in table.items() if k != "total"} == EXPECTED
    assert table["total"] == (856, 341, 100, 500)


def test_files_match_the_table_and_the_source(example: tuple[Path, str]) -> None:
    from sklearn.datasets import load_digits

    directory, _ = example
    rows = read_splits(directory)
    paths = [path for path, _ in rows]
    assert len(paths) == len(set(paths))
    assert all(not path.startswith("/") and "\\" not in path and ".." not in path for path in paths)
    on_disk = {p.relative_to(directory).as_posix() for p in directory.rglob("*.png")}
    assert on_disk == set(paths)
    digits = load_digits()
    brightest = 0
    for path in paths:
        with Image.open(directory / path) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "L", (8, 8))
            pixels = np.asarray(img)
        index = int(Path(path).stem[1:])
        assert path.split("/")[0] == str(digits.target[index])
        # 0..16 -> 0..255, rounded half up: 16 -> 255, 8 -> 128 (127.5 up), 1 -> 16 (15.9375)
        expected = np.floor(digits.images[index] * 255 / 16 + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(pixels, expected)
        brightest = max(brightest, int(pixels.max()))
    assert brightest == 255  # 16 -> 255
    # load_digits()[0] starts with the row 0 0 5 13 9 1 0 0: 5 * 255/16 = 79.7 -> 80, 13 -> 207.2 -> 207,
    # 9 -> 143.4 -> 143, 1 -> 15.9 -> 16
    first = np.asarray(Image.open(directory / "0/d0000.png"))
    assert first[0].tolist() == [0, 0, 80, 207, 143, 16, 0, 0]


def test_same_seed_same_files_and_rewrite_in_place(example: tuple[Path, str], tmp_path: Path) -> None:
    directory, _ = example
    again = tmp_path / "again"
    write_example(again, seed=0)
    reference = all_files(directory)
    assert all_files(again) == reference

    write_example(again, seed=1)  # an earlier example is rewritten in place
    rewritten = all_files(again)
    assert rewritten.keys() == reference.keys()
    assert rewritten[SPLITS_FILE] != reference[SPLITS_FILE]  # the seed chooses the splits
    assert {k: v for k, v in rewritten.items() if k.endswith(".png")} == \
        {k: v for k, v in reference.items() if k.endswith(".png")}
    counts = Counter((path.split("/")[0], split) for path, split in read_splits(again))
    assert {label: tuple(counts[label, s] for s in SPLIT_NAMES) for label in EXPECTED} == EXPECTED


def test_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and is not an earlier synthaug example"):
        write_example(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_refuses_an_example_holding_foreign_files(tmp_path: Path) -> None:
    (tmp_path / MARKER_FILE).write_text("# synthaug example dataset\n")
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "mine.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match=r"did not write \(3/mine.jpg\)"):
        write_example(tmp_path)


def test_refuses_a_file_and_writes_into_an_empty_folder(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        write_example(target)
    empty = tmp_path / "empty"
    empty.mkdir()
    write_example(empty)
    assert (empty / SPLITS_FILE).is_file()
