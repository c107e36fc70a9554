"""The scenario suite (bench/suite.py): its halves are fixed, it is large and varied enough, every scenario starves
its scarce classes and keeps their ceiling out of train/val/test, photo patches come from disjoint regions, and a
scenario is written byte for byte the same every time, as a folder the ingest step reads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from bench.suite import HALF, PHOTOS, SUITE, Item, images, main, materialize, photo, scenario, table

REPO = Path(__file__).resolve().parents[2]
# Fixed once (bench/suite.py's rule): a scenario never changes half, and a changed suite fails here.
DEVELOPMENT = {
    "digits-069-12", "digits-138-3", "digits-257-3", "digits-257-6", "digits-4-6", "lfw-face-6", "lfw-background-6",
    "textures-32px-brick6", "textures-32px-gravel3-grass12", "textures-64px-brick3-gravel12", "gray-16px-coins6",
    "gray-32px-cell6", "rgb-16px-chelsea6", "rgb-32px-rocket6", "science-32px-hubble6", "science-64px-retina6",
}
REPORT = {
    "digits-069-3", "digits-069-6", "digits-138-6", "digits-138-12", "digits-257-12", "lfw-face-3", "lfw-face-12",
    "textures-16px-gravel6", "textures-16px-grass3-brick12", "textures-64px-grass6", "gray-16px-cell3-camera12",
    "gray-32px-camera3-coins12", "rgb-16px-coffee3-flower12", "rgb-32px-china3-astronaut6", "science-16px-retina3",
    "science-64px-immunohistochemistry3-hubble12",
}


@pytest.fixture(scope="module")
def suite_images() -> dict[str, list[Item]]:
    return {s.name: images(s) for s in SUITE}


def test_the_halves_are_fixed() -> None:
    assert {n for n, h in HALF.items() if h == "development"} == DEVELOPMENT
    assert {n for n, h in HALF.items() if h == "report"} == REPORT


def test_the_suite_is_large_and_varied() -> None:
    assert len(SUITE) >= 24 and len(HALF) == len(SUITE)  # names are unique
    assert 4 * sum(32 <= s.size <= 64 for s in SUITE) >= len(SUITE)
    assert {s.source for s in SUITE} == {"digits", "lfw", "photos"}
    assert any(s.channels == 3 for s in SUITE) and any(s.channels == 1 for s in SUITE)
    assert {c for s in SUITE if s.source == "photos" for c in s.classes} <= PHOTOS.keys()  # each with its licence


def test_each_scenario_starves_its_scarce_classes_and_keeps_their_ceiling(suite_images) -> None:
    for s in SUITE:
        scarce = dict(s.scarce)
        for label in s.classes:
            split = [sp for lab, _, _, sp in suite_images[s.name] if lab == label]
            assert split.count("val") >= 5 and split.count("test") >= 20, (s.name, label)
            if label in scarce:
                assert split.count("train") == scarce[label] and split.count("heldback") >= 20, (s.name, label)
            else:
                assert split.count("train") > max(scarce.values()) and "heldback" not in split, (s.name, label)
        assert {p.ndim for _, _, p, _ in suite_images[s.name]} == {2 if s.channels == 1 else 3}, s.name


def test_the_ceiling_never_reaches_train_val_or_test(suite_images) -> None:
    """By content, not by name: no image of a scenario appears twice, so a heldback one is in no other split."""
    for name, items in suite_images.items():
        digests = [hashlib.sha256(p.tobytes()).digest() for _, _, p, _ in items]
        assert len(set(digests)) == len(items), name
        assert len({(label, stem) for label, stem, _, _ in items}) == len(items), name


def test_photo_patches_come_from_disjoint_regions(suite_images) -> None:
    """A file's name is its tile's corner in the photo (checked on the pixels); no train or heldback tile overlaps
    a val or test tile, nor a val tile a test tile."""
    for s in (s for s in SUITE if s.source == "photos"):
        for label in s.classes:
            tiles = [(stem, p, sp) for lab, stem, p, sp in suite_images[s.name] if lab == label]
            corners = {sp: [] for sp in ("train", "val", "test")}
            for stem, pixels, split in tiles:
                row, col = int(stem[1:5]), int(stem[6:10])
                assert np.array_equal(photo(label)[row:row + s.size, col:col + s.size], pixels), (s.name, stem)
                corners["train" if split == "heldback" else split].append((row, col))
            for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
                x, y = np.array(corners[a])[:, None], np.array(corners[b])[None]
                overlap = (np.abs(x - y) < s.size).all(axis=-1)  # squares of one side overlap iff both offsets < it
                assert not overlap.any(), (s.name, label, a, b)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_materialize_writes_the_same_bytes_every_time(tmp_path: Path) -> None:
    for name in ("lfw-face-3", "textures-64px-grass6"):
        materialize(name, tmp_path / name / "a")
        materialize(name, tmp_path / name / "b")
        first = _files(tmp_path / name / "a")
        assert first == _files(tmp_path / name / "b")
        rows = first["splits.csv"].decode().splitlines()
        assert rows[0] == "path,split" and len(rows) == len(first) == len(images(scenario(name))) + 1
    materialize("lfw-face-3", tmp_path / "seed1", seed=1)
    assert _files(tmp_path / "seed1")["splits.csv"] != _files(tmp_path / "lfw-face-3" / "a")["splits.csv"]
    with pytest.raises(ValueError, match="not empty"):
        materialize("lfw-face-3", tmp_path / "seed1")


@pytest.mark.parametrize("name", ["lfw-face-3", "science-64px-retina6"])  # resized gray; RGB at its own size
def test_ingest_reads_a_materialized_scenario_whole(tmp_path: Path, name: str) -> None:
    from synthaug.tasks.core.params.data import DataParams
    from synthaug.tasks.ingest import ingest

    s = scenario(name)
    counts = materialize(name, tmp_path / "source")
    result = ingest(DataParams(source=str(tmp_path / "source"), image_size=s.size, channels=s.channels),
                    tmp_path / "ingest", cache_dir=tmp_path / "cache")
    assert result.quarantined == 0
    assert result.counts == {label: {split: n for (lab, split), n in counts.items() if lab == label}
                             for label in s.classes}


def test_cli_lists_the_suite_and_materializes_a_scenario(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(["--list"])
    assert capsys.readouterr().out == table() + "\n"
    main(["--materialize", "lfw-background-6", str(tmp_path / "bg")])
    out = capsys.readouterr().out
    assert "lfw-background-6 (development half)" in out and "background: train 6, heldback 44, val 10, test 40" in out
    with pytest.raises(SystemExit, match="unknown scenario 'nope'; the suite: digits-069-3"):
        main(["--materialize", "nope", str(tmp_path / "x")])


def test_docs_show_the_suite_as_it_is() -> None:
    assert table() in (REPO / "docs" / "utility.md").read_text()
