"""A bounded fuzz test (fixed seed, seconds): mutated files of every format ingest reads, and hostile labels and
paths for every source kind. No traceback, nothing written outside the output and cache folders, and every file
either ingested or quarantined with a reason (or, when a whole class is lost, a one-line stop naming it)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.manifest import read_manifest
from synthaug.tasks.core.params.data import DataParams
from synthaug.tasks.ingest import ingest

SEED = 20261125
ORDINARY = ("png", "jpg", "tiff", "bmp")


def encode(kind: str, rng: np.random.Generator) -> bytes:
    """A valid small file of ``kind`` with random content."""
    if kind in ORDINARY:
        mode = rng.choice(["L", "RGB"])
        shape = (12, 14) if mode == "L" else (12, 14, 3)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, format=kind.upper().replace("JPG",
                                                                                                          "JPEG"))
        return buf.getvalue()
    if kind == "dcm":
        ct = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
        ct.PixelData = np.roll(ct.pixel_array, int(rng.integers(1, 60)), axis=int(rng.integers(0, 2))).tobytes()
        buf = io.BytesIO()
        ct.save_as(buf)
        return buf.getvalue()
    data = rng.integers(-1000, 1000, (12, 12, 1)).astype(np.int16)  # nii: one 2D slice, in a gzip stream
    image = nibabel.Nifti1Image(data, np.eye(4))
    return image.to_bytes()


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random damage: flipped bytes, a cut, inserted junk, a zeroed header, or junk appended."""
    raw = bytearray(data)
    how = int(rng.integers(0, 5))
    if how == 0:
        for i in rng.integers(0, len(raw), size=int(rng.integers(1, 12))):
            raw[i] = int(rng.integers(0, 256))
    elif how == 1:
        raw = raw[: int(rng.integers(0, len(raw)))]
    elif how == 2:
        at = int(rng.integers(0, len(raw)))
        raw[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif how == 3:
        raw[: min(len(raw), int(rng.integers(4, 64)))] = bytes(min(len(raw), int(rng.integers(4, 64))))
    else:
        raw += rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
    return bytes(raw)


def write_dataset(root: Path, kinds: tuple[str, ...], rng: np.random.Generator, mutated: int) -> list[str]:
    """Two valid files per class and kind, plus ``mutated`` damaged ones; returns the refs of all image files."""
    refs = []
    for label in ("a", "b"):
        for kind in kinds:
            for i in range(2 + mutated):
                data = encode(kind, rng)
                suffix = "nii" if kind == "nii" else kind
                path = root / label / f"{kind}{i}.{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data if i < 2 else mutate(data, rng))
                refs.append(path.relative_to(root).as_posix())
    return refs


def outcome(tmp_path: Path, source: Path, expected: int) -> tuple[pd.DataFrame, dict[str, str]]:
    """Ingest; the manifest and the quarantine (or a stop naming a lost class). Checks what every run must hold."""
    before = {p for p in tmp_path.rglob("*")}
    try:
        result = ingest(DataParams(source=str(source), val_fraction=0, test_fraction=0, min_size=4),
                        tmp_path / "out", cache_dir=tmp_path / "cache")
        frame = read_manifest(result.manifest_path)[0]
    except UserError as exc:  # the one allowed stop: a class lost every image; still one line, still named
        assert "no usable image of class" in str(exc) and "\n" not in str(exc), exc
        frame = pd.DataFrame(columns=["label"])
    quarantine = pd.read_parquet(tmp_path / "out" / "quarantine.parquet")
    why = dict(zip(quarantine["source_path"], quarantine["reason"], strict=True))
    assert all(isinstance(r, str) and r.strip() for r in why.values())
    if not frame.empty:
        assert len(frame) + len(quarantine) == expected, (len(frame), why)
    written = {p for p in tmp_path.rglob("*")} - before
    assert all(p.is_relative_to(tmp_path / "out") or p.is_relative_to(tmp_path / "cache") for p in written)
    return frame, why


@pytest.mark.parametrize("kinds", [ORDINARY, ("dcm", "nii")], ids=["ordinary", "medical"])
def test_mutated_files_are_ingested_or_quarantined_with_a_reason(tmp_path: Path, kinds: tuple[str, ...]) -> None:
    rng = np.random.default_rng([SEED, len(kinds)])
    refs = write_dataset(tmp_path / "src", kinds, rng, mutated=20 if kinds == ORDINARY else 6)
    frame, why = outcome(tmp_path, tmp_path / "src", expected=len(refs))
    assert len(frame) >= 2 * 2 * len(kinds) - sum(1 for r in why.values() if "duplicate" in r)
    assert set(why) <= set(refs)


HOSTILE = ["..", ".", "../../../../escape", "/etc", "a/../../b", ".git", ".dvc", ".hidden", "con", "NUL.png",
           "x" * 250, "tab\tname", "new\nline", "nul\0byte", "dot.", "space ", "C:\\win", "ü" * 120, "", " "]


def test_hostile_labels_and_paths_in_every_source_kind(tmp_path: Path) -> None:
    rng = np.random.default_rng(SEED)
    root = tmp_path / "src"
    (tmp_path / "outside.png").write_bytes(encode("png", rng))

    # folder: hostile class folder names the file system allows
    for i, label in enumerate(["a", "b", *(h for h in HOSTILE if h.strip(". ") and "/" not in h and "\0" not in h)]):
        (root / "folder" / label).mkdir(parents=True, exist_ok=True)
        for j in range(2):
            (root / "folder" / label / f"{i}_{j}.png").write_bytes(encode("png", rng))
    os.symlink(tmp_path, root / "folder" / "up")  # a class folder that is the whole parent
    os.symlink(tmp_path / "outside.png", root / "folder" / "a" / "out.png")
    # A class folder named like an image ("NUL.png") is one quarantine row, its files unread.
    like_images = [d for d in (root / "folder").iterdir() if d.is_dir() and d.name.lower().endswith(".png")]
    expected = sum(1 for p in (root / "folder").rglob("*.png")
                   if p.is_file() and not p.is_symlink() and "up" not in p.parts and p.parent not in like_images)
    frame, why = outcome(tmp_path / "f", root / "folder", expected=expected + 2 + len(like_images))
    assert why["up"] == why["a/out.png"] == "path escapes the source root"
    assert like_images and all(why[d.name].startswith("a folder named like an image file") for d in like_images)
    assert set(frame["label"]) == {"a", "b"}

    # table: hostile paths and hostile labels on real files
    (root / "table" / "img").mkdir(parents=True)
    rows = []
    for i in range(4):
        (root / "table" / "img" / f"ok{i}.png").write_bytes(encode("png", rng))
        rows.append((f"img/ok{i}.png", "ab"[i % 2]))
    for i, hostile in enumerate(HOSTILE):
        (root / "table" / "img" / f"h{i}.png").write_bytes(encode("png", rng))
        rows += [(f"img/h{i}.png", hostile), (hostile, "a")]
    rows += [(str(tmp_path / "outside.png"), "a"), ("img/../../../outside.png", "b"), ("img", "a")]
    pd.DataFrame(rows, columns=["path", "label"]).to_parquet(root / "table" / "rows.parquet")
    frame, why = outcome(tmp_path / "t", root / "table" / "rows.parquet", expected=len(rows))
    assert set(frame["label"]) == {"a", "b", "space"}  # a table's cells are stripped: 'space ' is 'space'
    assert why[str(tmp_path / "outside.png")] == "path escapes the source root"

    # npz: hostile labels
    labels = ["a", "b", "a", "b", *HOSTILE]
    images = rng.integers(0, 256, (len(labels), 9, 9), dtype=np.uint8)
    np.savez(root / "arrays.npz", train_images=images, train_labels=np.array(labels))
    frame, why = outcome(tmp_path / "n", root / "arrays.npz", expected=len(labels))
    assert sorted(frame["label"]) == ["a", "a", "b", "b"] and len(why) == len(HOSTILE)
