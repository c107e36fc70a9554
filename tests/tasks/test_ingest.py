"""Ingest on real files: every source format, a real git + DVC repository at two revisions, normalization,
splits, and every kind of bad input ending in quarantine.parquet (or a UserError when nothing usable is left)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rich.console import Console

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.manifest import COLUMNS, read_manifest
from synthaug.tasks.core.params.data import DataParams
from synthaug.tasks.ingest import assign_splits, fingerprint_source, ingest, locate, manifest_frame

RNG_SEED = 1234
KNOWN = ".png, .jpg, .jpeg, .tif, .tiff, .bmp, .dcm, .dicom, .nii, .nii.gz"  # what ingest reads, in its message


def noise(path: Path, seed: int, size: tuple[int, int] = (12, 12), mode: str = "L") -> Path:
    """A distinct random image (no two alike, so none is quarantined as a duplicate)."""
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    pixels = np.random.default_rng([RNG_SEED, seed]).integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def folder(root: Path, per_class: dict[str, int]) -> Path:
    for label, n in per_class.items():
        for i in range(n):
            noise(root / label / f"{i}.png", seed=zlib.crc32(f"{label}/{i}".encode()))
    return root


def run(tmp_path: Path, source: Path | str, **params) -> tuple[pd.DataFrame, dict, pd.DataFrame, Path]:
    out = tmp_path / "out"
    result = ingest(DataParams(source=str(source), **params), out, cache_dir=tmp_path / "cache")
    frame, meta = read_manifest(result.manifest_path)
    return frame, meta, pd.read_parquet(result.quarantine_path), out


def reasons(quarantine: pd.DataFrame) -> dict[str, str]:
    return dict(zip(quarantine["source_path"], quarantine["reason"], strict=True))


def expected_hash(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for rel, sha in sorted((p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest()) for p in files):
        digest.update(f"{rel}\0{sha}\n".encode())
    return digest.hexdigest()


# --- source formats -----------------------------------------------------------------------------------------------

def test_folder_with_splits_csv_keeps_its_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = folder(tmp_path / "src", {"cat": 3, "dog": 2})
    noise(root / "dog" / "extra.jpg", seed=99)
    pd.DataFrame({"path": ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png", "dog/extra.jpg"],
                  "split": ["train", "test", "heldback", "train", "val", "train"]}).to_csv(root / "splits.csv",
                                                                                          index=False)
    (root / "README.md").write_text("notes at the root are not images\n")

    frame, meta, quarantine, out = run(tmp_path, root)

    assert list(frame.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert sorted(zip(frame["label"], frame["split"], strict=True)) == [
        ("cat", "heldback"), ("cat", "test"), ("cat", "train"), ("dog", "train"), ("dog", "train"), ("dog", "val")]
    assert quarantine.empty
    for row in frame.itertuples():
        stored = out / row.path
        assert row.path == f"images/{row.label}/{row.image_id}.png"
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == row.image_id
        with Image.open(stored) as image:
            assert (image.mode, image.size) == ("L", (8, 8))  # the default data.image_size
    assert set(frame["source"]) == {"real"} and frame["accepted"].all()
    assert frame[["generator", "checkpoint", "reject_reason"]].isna().all().all() and frame["seed"].isna().all()
    assert (frame["height"] == 8).all() and (frame["width"] == 8).all() and (frame["channels"] == 1).all()
    files = [p for p in root.rglob("*") if p.is_file()]
    assert meta["content_hash"] == expected_hash(root, files)
    # The lineage travels with published versions: a local source in its public form (issue 29), no local path.
    assert (meta["source"], meta["repo"], meta["rev"], meta["resolved_rev"]) == (f"local:{root.name}", None, None,
                                                                                   None)
    assert str(root) not in str(meta)
    assert meta["params"]["image_size"] == 8 and "bilinear" in meta["interpolation"]
    assert "ingested images" in capsys.readouterr().err


def test_the_fingerprint_is_the_content_hash_of_every_file_and_follows_each_byte(tmp_path: Path) -> None:
    """The fingerprint (which lists the folder without reading its items, issue 29 finding 8) is the plain definition
    over the files ingest reads: sha256 over the sorted (path, file sha256) pairs, links inside the root followed,
    links leaving it left out. Rewriting one file with other bytes of the same size changes it."""
    root = folder(tmp_path / "src", {"cat": 3, "dog": 2})
    noise(root / "dog" / "series" / "deep.png", seed=7)
    (root / "README.md").write_text("notes at the root\n")
    outside = folder(tmp_path / "elsewhere", {"bird": 1})
    os.symlink(outside / "bird", root / "bird")  # leaves the root: not part of the source
    os.symlink(root / "cat" / "0.png", root / "dog" / "alias.png")  # stays inside: hashed under its own path
    plain = [*(root / "cat" / f"{i}.png" for i in range(3)), root / "dog" / "0.png", root / "dog" / "1.png",
             root / "dog" / "series" / "deep.png", root / "dog" / "alias.png", root / "README.md"]

    def fingerprint() -> dict:
        return fingerprint_source(DataParams(source=str(root)), tmp_path / "fingerprint.json",
                                  cache_dir=tmp_path / "cache")

    first = fingerprint()
    assert first["content_hash"] == expected_hash(root, plain) and first["files"] == len(plain)
    assert run(tmp_path, root)[1]["content_hash"] == first["content_hash"]  # ingest's lineage agrees
    changed = root / "dog" / "series" / "deep.png"
    changed.write_bytes(bytes(b ^ 1 for b in changed.read_bytes()))  # same size, other bytes, a new mtime
    assert fingerprint()["content_hash"] == expected_hash(root, plain) != first["content_hash"]


def test_source_without_split_gets_a_stratified_one(tmp_path: Path) -> None:
    root = folder(tmp_path / "src", {"big": 20, "mid": 10, "one": 1})

    frame, _, _, _ = run(tmp_path, root, val_fraction=0.2, test_fraction=0.3, split_seed=7)

    counts = frame.groupby(["label", "split"]).size().to_dict()
    assert counts == {("big", "test"): 6, ("big", "train"): 10, ("big", "val"): 4,
                      ("mid", "test"): 3, ("mid", "train"): 5, ("mid", "val"): 2, ("one", "train"): 1}


def test_assign_splits_is_seeded_and_keeps_a_train_image() -> None:
    labels = ["a"] * 10 + ["b"] * 2 + ["c"]
    first = assign_splits(labels, val_fraction=0.3, test_fraction=0.3, seed=0)
    assert first == assign_splits(labels, val_fraction=0.3, test_fraction=0.3, seed=0)
    assert first != assign_splits(labels, val_fraction=0.3, test_fraction=0.3, seed=1)
    assert sorted(first[:10]) == ["test"] * 3 + ["train"] * 4 + ["val"] * 3
    assert sorted(first[10:12]) == ["test", "train"]  # 2 * 0.3 rounds to 1 test; val would take the last train image
    assert first[12] == "train"  # a class of one keeps it for training


def test_csv_table_quarantines_bad_rows_and_refuses_escaping_paths(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for i in range(3):
        noise(root / "img" / f"a{i}.png", seed=i)
        noise(root / "img" / f"b{i}.png", seed=10 + i)
    noise(root / "img" / "notes.txt.png", seed=50).rename(root / "img" / "notes.txt")
    noise(root / "img" / "unlabelled.png", seed=51)
    noise(root / "img" / "oddsplit.png", seed=52)
    outside = noise(tmp_path / "outside.png", seed=53)  # a valid image: refused for where it is, not what it is
    rows = [("img/a0.png", "a", "train"), ("img/a1.png", "a", "val"), ("img/a2.png", "a", ""),
            ("img/b0.png", "b", "train"), ("./img/b1.png", "b", "test"), (str(root / "img/b2.png"), "b", "train"),
            ("../outside.png", "a", "train"), (str(outside), "b", "train"), ("img/../../outside.png", "a", "train"),
            ("img/missing.png", "a", "train"), ("img/unlabelled.png", "", "train"),
            ("img/oddsplit.png", "b", "training"), ("img/notes.txt", "a", "train"), ("img/a0.png", "../x", "train")]
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(root / "labels.csv", index=False)

    frame, meta, quarantine, out = run(tmp_path, root / "labels.csv")

    assert reasons(quarantine) == {
        "../outside.png": "path escapes the source root",
        str(outside): "path escapes the source root",
        "img/../../outside.png": "path escapes the source root",
        "img/missing.png": "file not found",
        "img/unlabelled.png": "no label",
        "img/oddsplit.png": "unknown split 'training'; allowed: train, val, test, heldback",
        "img/notes.txt": f"unknown extension '.txt'; expected one of {KNOWN}",
        "img/a0.png": "label '../x' holds a path separator; a label is one folder name",
    }
    assert sorted(frame["label"]) == ["a"] * 3 + ["b"] * 3  # a2 has no split of its own: it gets one
    assert frame.loc[frame["label"] == "b", "split"].tolist().count("test") == 1
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a", "b"]
    # The hash covers the table and the files it names inside the root, never the refused outside file.
    named = ["labels.csv", "img/notes.txt", "img/unlabelled.png", "img/oddsplit.png"]
    used = [root / n for n in named] + [root / "img" / f"{c}{i}.png" for c in "ab" for i in range(3)]
    assert meta["content_hash"] == expected_hash(root, used)


def test_parquet_table_with_integer_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "src"
    paths = [noise(root / f"{i}.bmp", seed=i).name for i in range(8)]
    pd.DataFrame({"path": paths, "label": [0, 1] * 4}).to_parquet(root / "table.parquet")
    monkeypatch.chdir(tmp_path)  # data.source relative to the working directory

    frame, _, quarantine, _ = run(tmp_path, "src/table.parquet", val_fraction=0.0, test_fraction=0.25)

    assert quarantine.empty
    assert frame.groupby(["label", "split"]).size().to_dict() == {
        ("0", "test"): 1, ("0", "train"): 3, ("1", "test"): 1, ("1", "train"): 3}


def test_medmnist_npz_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    np.savez(tmp_path / "bloodmnist.npz", **arrays)

    frame, meta, _, out = run(tmp_path, tmp_path / "bloodmnist.npz", channels=3, image_size=8)

    assert frame.groupby("split").size().to_dict() == {"test": 3, "train": 6, "val": 2}
    assert set(frame["label"]) == {"0", "1"} and (frame["channels"] == 3).all()
    with Image.open(out / frame["path"].iloc[0]) as image:
        assert (image.mode, image.size) == ("RGB", (8, 8))
    assert meta["content_hash"] == expected_hash(tmp_path, [tmp_path / "bloodmnist.npz"])


def test_grayscale_npz_without_channel_axis(tmp_path: Path) -> None:
    images = np.random.default_rng(1).integers(0, 256, (4, 10, 10), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", train_images=images, train_labels=np.array([0, 0, 1, 1]))

    frame, _, _, _ = run(tmp_path, tmp_path / "x.npz")

    assert (frame["split"] == "train").all() and len(frame) == 4


def test_example_digits_is_written_once_and_ingested(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame, meta, quarantine, _ = run(tmp_path, "example:digits")

    assert "writing the bundled example" in capsys.readouterr().err
    assert (tmp_path / "cache" / "example" / "splits.csv").is_file()
    assert set(frame["split"]) == {"train", "val", "test", "heldback"} and quarantine.empty
    assert frame.loc[frame["label"] == "3", "split"].tolist().count("train") == 6
    assert meta["source"] == "example:digits"
    stamp = (tmp_path / "cache" / "example" / "splits.csv").stat().st_mtime_ns
    path, _ = locate(DataParams(), tmp_path / "cache", Console(file=io.StringIO()))
    assert path == tmp_path / "cache" / "example"
    assert (path / "splits.csv").stat().st_mtime_ns == stamp  # written once, reused


# --- normalization --------------------------------------------------------------------------------------------------

def test_16bit_png_and_tiff_are_scaled_by_the_full_range(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "x").mkdir(parents=True)
    ramp = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)  # 0..255 * 257
    Image.fromarray(ramp).save(root / "x" / "ramp.png")
    Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)).save(root / "x" / "white.tif")
    with Image.open(root / "x" / "ramp.png") as check:
        assert check.mode.startswith("I")  # really a 16-bit file

    frame, _, quarantine, out = run(tmp_path, root, image_size=16)  # the ramp's own size: no resampling

    assert quarantine.empty
    values = sorted((np.asarray(Image.open(out / p)) for p in frame["path"]), key=lambda a: int(a.min()))
    assert np.array_equal(values[0], np.arange(256, dtype=np.uint8).reshape(16, 16))
    assert (values[1] == 255).all()


def test_rgb_target_resizes_and_converts(tmp_path: Path) -> None:
    root = tmp_path / "src"
    noise(root / "a" / "wide.png", seed=1, size=(40, 20))
    noise(root / "a" / "color.jpg", seed=2, size=(10, 10), mode="RGB")
    Image.new("RGBA", (12, 12), (10, 200, 30, 0)).save(root / "a" / "alpha.png")

    frame, _, _, out = run(tmp_path, root, channels=3, image_size=24, val_fraction=0, test_fraction=0)

    assert len(frame) == 3 and (frame["channels"] == 3).all() and (frame["height"] == 24).all()
    for path in frame["path"]:
        with Image.open(out / path) as image:
            assert (image.mode, image.size) == ("RGB", (24, 24))
    colors = [np.asarray(Image.open(out / p)) for p in frame["path"]]
    assert any((c == [10, 200, 30]).all() for c in colors)  # alpha dropped, colour kept


# --- bad input --------------------------------------------------------------------------------------------------

def test_corrupt_zero_byte_tiny_and_unknown_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = folder(tmp_path / "src", {"a": 2, "b": 2})
    good = (root / "a" / "0.png").read_bytes()
    (root / "a" / "corrupt.png").write_bytes(good[: len(good) // 2])
    (root / "b" / "garbage.jpg").write_bytes(b"not an image at all")
    (root / "b" / "empty.png").touch()
    (root / "b" / "data.gif").write_bytes(b"GIF89a")
    noise(root / "b" / "tiny.png", seed=3, size=(20, 5))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: stored sideways, shown rotated by 90 degrees
    Image.new("L", (30, 6)).save(root / "b" / "sideways.jpg", exif=exif)
    (root / "b" / "copy.png").write_bytes((root / "b" / "0.png").read_bytes())
    noise(root / "loose.png", seed=4)

    frame, _, quarantine, _ = run(tmp_path, root, val_fraction=0, test_fraction=0)

    found = reasons(quarantine)
    assert found.pop("a/corrupt.png").startswith("unreadable image:")
    assert found.pop("b/garbage.jpg").startswith("unreadable image:")
    assert found == {
        "b/empty.png": "empty file (0 bytes)",
        "b/data.gif": f"unknown extension '.gif'; expected one of {KNOWN}",
        "b/tiny.png": "image is 20x5 px, smaller than data.min_size=8",
        "b/sideways.jpg": "image is 6x30 px, smaller than data.min_size=8",  # measured upright
        "b/copy.png": "duplicate of b/0.png",
        "loose.png": "not inside a class folder (<root>/<label>/...)",
    }
    assert len(frame) == 4
    err = capsys.readouterr().err
    assert "8 quarantined" in err and "b/empty.png: empty file (0 bytes)" in err


def test_splits_csv_with_unknown_split_and_missing_file(tmp_path: Path) -> None:
    root = folder(tmp_path / "src", {"a": 3})
    pd.DataFrame({"path": ["a/0.png", "a/1.png", "a/gone.png"], "split": ["train", "later", "test"]}).to_csv(
        root / "splits.csv", index=False)

    frame, _, quarantine, _ = run(tmp_path, root, val_fraction=0, test_fraction=0)

    assert reasons(quarantine) == {"a/1.png": "unknown split 'later'; allowed: train, val, test, heldback",
                                   "a/gone.png": "listed in splits.csv but file not found"}
    assert sorted(frame["split"]) == ["train", "train"]  # a/2.png is not listed: it gets a split


def test_class_without_training_image_stops_and_names_it(tmp_path: Path) -> None:
    root = folder(tmp_path / "src", {"a": 2, "rare": 2})
    (root / "rare" / "0.png").write_bytes(b"")
    pd.DataFrame({"path": ["a/0.png", "a/1.png", "rare/0.png", "rare/1.png"],
                  "split": ["train", "test", "train", "test"]}).to_csv(root / "splits.csv", index=False)

    with pytest.raises(UserError, match=r"no training image for class 'rare'.*split=train"):
        run(tmp_path, root)
    assert reasons(pd.read_parquet(tmp_path / "out" / "quarantine.parquet")) == {"rare/0.png": "empty file (0 bytes)"}


def test_nothing_usable_stops_with_the_source_named(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"broken")

    with pytest.raises(UserError, match=re.escape(f"{root}: no usable image (1 quarantined")):
        run(tmp_path, root)


def test_missing_source_names_the_path_and_the_key(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape(f"data.source: {tmp_path / 'nowhere'} not found")):
        run(tmp_path, tmp_path / "nowhere")


# --- versioned source: a real git + DVC repository ------------------------------------------------------------------

def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_dvc_source_at_two_revisions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dvc.repo import Repo

    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))  # keep DVC's index inside tmp
    repo, remote = tmp_path / "registry", tmp_path / "remote"
    repo.mkdir()
    remote.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.name", "synthaug test")
    git(repo, "config", "user.email", "test@synthaug.invalid")
    folder(repo / "data" / "scans", {"a": 2, "b": 2})
    with Repo.init(str(repo)) as dvc:
        with dvc.config.edit() as conf:
            conf["remote"]["store"] = {"url": str(remote)}
            conf["core"]["remote"] = "store"
        for version, extra in (("v1", None), ("v2", "b/new.png")):
            if extra:
                noise(repo / "data" / "scans" / extra, seed=777)
                # A git-tracked table beside the DVC-tracked folder it points into.
                (repo / "data" / "labels.csv").write_text("path,label\nscans/b/new.png,new\nscans/a/0.png,a\n")
            dvc.add(str(repo / "data" / "scans"))
            git(repo, "add", "-A")
            git(repo, "commit", "-qm", f"scans {version}")
            git(repo, "tag", version)
            dvc.push()
    # Only the DVC remote has the images now: ingest must fetch them from there.
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data" / "scans")

    metas = {}
    for rev in ("v1", "v2"):
        result = ingest(DataParams(source="data/scans", repo=str(repo), rev=rev, val_fraction=0, test_fraction=0),
                        tmp_path / rev, cache_dir=tmp_path / "cache")
        frame, metas[rev] = read_manifest(result.manifest_path)
        assert len(frame) == {"v1": 4, "v2": 5}[rev]
        assert metas[rev]["rev"] == rev and metas[rev]["repo"] == f"local:{repo.name}"
        assert metas[rev]["source"] == "data/scans"  # a path inside the repository is published as it is
        assert metas[rev]["resolved_rev"] == git(repo, "rev-parse", f"{rev}^{{commit}}")
    assert metas["v1"]["content_hash"] != metas["v2"]["content_hash"]
    assert sorted(p.name for p in (tmp_path / "cache" / "dvc").iterdir()) == sorted(
        git(repo, "rev-parse", f"{rev}^{{commit}}") for rev in ("v1", "v2"))

    # A table brings the folder it sits in: its git-tracked rows and the DVC-tracked images they name.
    table = ingest(DataParams(source="data/labels.csv", repo=str(repo), rev="v2"), tmp_path / "table",
                   cache_dir=tmp_path / "cache")
    assert sorted(pd.read_parquet(table.manifest_path)["label"]) == ["a", "new"]

    # The same commit is served from the cache (the remote is gone), and HEAD resolves to v2's commit.
    shutil.rmtree(remote)
    result = ingest(DataParams(source="data/scans", repo=str(repo), val_fraction=0, test_fraction=0),
                    tmp_path / "head", cache_dir=tmp_path / "cache")
    _, meta = read_manifest(result.manifest_path)
    assert meta["resolved_rev"] == metas["v2"]["resolved_rev"] and meta["rev"] is None
    assert meta["content_hash"] == metas["v2"]["content_hash"]

    # The fingerprint step names the resolved commit and the fetched content: HEAD (v2) and v1 differ in both.
    prints = {rev: fingerprint_source(DataParams(source="data/scans", repo=str(repo), rev=rev),
                                      tmp_path / f"fingerprint-{rev}.json", cache_dir=tmp_path / "cache")
              for rev in ("v1", None)}
    assert prints["v1"]["resolved_rev"] == metas["v1"]["resolved_rev"] != prints[None]["resolved_rev"]
    assert prints["v1"]["content_hash"] == metas["v1"]["content_hash"] != prints[None]["content_hash"]

    with pytest.raises(UserError, match=r"cannot fetch data/scans from .* at nope.*data.rev"):
        ingest(DataParams(source="data/scans", repo=str(repo), rev="nope"), tmp_path / "x", cache_dir=tmp_path / "c")


def test_slices_of_one_volume_share_a_split() -> None:
    """Splits are drawn per source item: a volume's slices never land in train and test at once."""
    rows = [{"image_id": f"{v}-{z}", "path": f"images/{label}/{v}-{z}.png", "label": label, "split": None,
             "item": f"{label}/vol{v}.nii.gz"}
            for label in ("a", "b") for v in range(8) for z in range(5)]
    frame = manifest_frame(rows, DataParams(val_fraction=0.25, test_fraction=0.25))
    per_volume = frame.assign(volume=[r["item"] for r in rows]).groupby("volume")["split"].nunique()
    assert (per_volume == 1).all()
    assert set(frame["split"]) == {"train", "val", "test"}  # the volumes, not the slices, were split
    assert list(frame["split"]).count("test") == 2 * 2 * 5  # 25% of each class's 8 volumes, 5 slices each
