"""Hostile and broken inputs: every label and path is checked before anything is written, nothing is written outside
the output folder, and each bad file is quarantined with a reason (or the run stops naming the class)."""

from __future__ import annotations

import gzip
import os
import shutil
import unicodedata
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
from synthaug.tasks.core.sources.medical import MAX_VOXELS
from synthaug.tasks.ingest import ingest
from tests.tasks.test_ingest import folder, noise


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def run(tmp_path: Path, source: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    result = ingest(DataParams(source=str(source), val_fraction=0, test_fraction=0), tmp_path / "out",
                    cache_dir=tmp_path / "cache")
    quarantine = pd.read_parquet(result.quarantine_path)
    return read_manifest(result.manifest_path)[0], dict(zip(quarantine["source_path"], quarantine["reason"],
                                                            strict=True))


HOSTILE_LABELS = {
    "../../../../X": "path separator",
    "..": "starts with '.'",
    ".git": "starts with '.'",
    ".dvc": "starts with '.'",
    "a\0b": "NUL or control character",
    "x" * 300: "300 bytes long",
    "con": "reserved device name",
    "LPT1.txt": "reserved device name",
    "dot.": "ends in a space or '.'",
    "C:\\evil": "path separator",
}


def test_npz_labels_that_are_paths_or_special_names_are_quarantined_and_nothing_is_written_outside(
        tmp_path: Path) -> None:
    """The npz path traversal (labels like ``../../../../X`` wrote PNGs outside the workdir) and the ``.git`` label
    (published in the manifest, skipped by DVC)."""
    labels = ["a", "a", "b", "b", *HOSTILE_LABELS]
    images = np.random.default_rng(0).integers(0, 256, (len(labels), 10, 10), dtype=np.uint8)
    work = tmp_path / "deep" / "er" / "work"
    work.mkdir(parents=True)
    np.savez(work / "source.npz", train_images=images, train_labels=np.array(labels))
    before = files_under(tmp_path)

    frame, why = run(work, work / "source.npz")

    assert sorted(frame["label"]) == ["a", "a", "b", "b"]
    assert {p.name for p in (work / "out" / "images").iterdir()} == {"a", "b"}
    for i, (label, reason) in enumerate(HOSTILE_LABELS.items(), start=4):
        assert reason in why[f"source.npz:train[{i}]"], (label, why)
    written = files_under(tmp_path) - before
    assert written and all(p.is_relative_to(work / "out") or p.is_relative_to(work / "cache") for p in written)


def test_hostile_labels_in_a_table_are_quarantined_one_row_each(tmp_path: Path) -> None:
    """A 300-character label and a label with NUL aborted ingest; now each costs its own row only."""
    root = folder(tmp_path / "src", {"a": 2, "b": 2})
    rows = [(f"{c}/{i}.png", c) for c in "ab" for i in range(2)]
    for n, label in enumerate(HOSTILE_LABELS):
        rows.append((noise(root / "more" / f"{n}.png", seed=100 + n).relative_to(root).as_posix(), label))
    pd.DataFrame(rows, columns=["path", "label"]).to_parquet(root / "labels.parquet")

    frame, why = run(tmp_path, root / "labels.parquet")

    assert sorted(frame["label"]) == ["a", "a", "b", "b"]
    for n, reason in enumerate(HOSTILE_LABELS.values()):
        assert reason in why[f"more/{n}.png"]


def test_dot_git_class_folder_is_quarantined_not_published_short(tmp_path: Path) -> None:
    root = folder(tmp_path / "src", {"a": 2, "b": 2, ".git": 2, ".dvc": 1})
    frame, why = run(tmp_path, root)
    assert sorted(set(frame["label"])) == ["a", "b"]
    assert {k for k, v in why.items() if "starts with '.'" in v} == {".git/0.png", ".git/1.png", ".dvc/0.png"}
    assert all((tmp_path / "out" / p).is_file() for p in frame["path"])  # every manifest row has its file


def test_symlinks_leaving_the_source_folder_are_refused_and_loops_end(tmp_path: Path) -> None:
    root = folder(tmp_path / "src", {"a": 2, "b": 2})
    outside = folder(tmp_path / "elsewhere", {"c": 2})
    os.symlink(outside / "c", root / "c")  # a class folder that is a link to outside the root
    os.symlink(outside / "c" / "0.png", root / "a" / "link.png")  # a file link to outside
    os.symlink(root, root / "b" / "loop")  # a loop back to the root
    os.symlink(root / "a", root / "a2")  # a link to a folder inside the root: that folder is read once

    frame, why = run(tmp_path, root)

    assert why["c"] == why["a/link.png"] == "path escapes the source root"
    assert "c" not in set(frame["label"])
    assert sorted(frame["label"]) == ["a", "a", "b", "b"]


def tiff(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(pixels) if mode is None else Image.fromarray(pixels).convert(mode)).save(path)
    return path


def test_pixel_formats_without_a_fixed_8_bit_mapping_are_quarantined(tmp_path: Path) -> None:
    root = folder(tmp_path / "src", {"a": 2, "b": 2})
    Image.new("LAB", (12, 12), (50, 10, 10)).save(root / "a" / "lab.tif")
    nan = np.full((12, 12), np.nan, np.float32)
    tiff(root / "a" / "nan.tif", nan)
    tiff(root / "a" / "float.tif", np.linspace(0, 1, 144, dtype=np.float32).reshape(12, 12))
    tiff(root / "b" / "int32.tif", (np.arange(144, dtype=np.int32).reshape(12, 12) * 100_000))
    tiff(root / "b" / "int16.tif", (np.arange(144, dtype=np.int16).reshape(12, 12) - 50))

    frame, why = run(tmp_path, root)

    assert len(frame) == 4
    assert "pixel mode LAB cannot be converted" in why["a/lab.tif"]
    assert "floating-point pixels have no fixed range and holds NaN" in why["a/nan.tif"]
    assert "floating-point pixels have no fixed range;" in why["a/float.tif"]
    assert "signed or 32-bit integer pixels" in why["b/int32.tif"] and "signed or 32-bit" in why["b/int16.tif"]


def test_one_corrupt_dicom_among_pngs_costs_only_itself(tmp_path: Path) -> None:
    root = folder(tmp_path / "src", {"a": 3, "b": 3})
    (root / "a" / "scan.dcm").write_bytes(b"DICM but not really" * 10)
    frame, why = run(tmp_path, root)
    assert len(frame) == 6
    assert list(why) == ["a/scan.dcm"] and "DICOM/NIfTI image among more ordinary images" in why["a/scan.dcm"]


def test_a_table_row_that_is_a_folder_costs_only_itself(tmp_path: Path) -> None:
    root = folder(tmp_path / "src", {"a": 3, "b": 3})
    rows = [(f"{c}/{i}.png", c) for c in "ab" for i in range(3)] + [("a", "a")]
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(root / "labels.csv", index=False)
    frame, why = run(tmp_path, root / "labels.csv")
    assert len(frame) == 6
    assert why == {"a": "a folder, not an image file (a row may name a folder only when it is a DICOM series)"}


def nifti_bomb(path: Path, shape: tuple[int, ...]) -> Path:
    """A valid .nii.gz of zeros: a few hundred KB on disk, ``prod(shape)`` bytes once decompressed."""
    header = nibabel.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    chunk = bytes(1 << 24)
    left = int(np.prod(shape))
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header.binaryblock + bytes(4))
        while left:
            f.write(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))
    return path


def test_nifti_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    side = int(np.sqrt(MAX_VOXELS)) + 8  # just over the limit: ~180 MB of zeros in a small file
    bomb = nifti_bomb(tmp_path / "src" / "a" / "bomb.nii.gz", (side, side))
    assert bomb.stat().st_size < 2_000_000
    (tmp_path / "src" / "b").mkdir()
    for i in range(2):
        for label, seed in (("a", i), ("b", 10 + i)):  # four different images (an offset vanishes at 8 px, 8 bits)
            data = np.random.default_rng(seed).integers(0, 1000, (12, 12, 1)).astype(np.int16)
            nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), tmp_path / "src" / label / f"ok{i}.nii.gz")
    frame, why = run(tmp_path, tmp_path / "src")
    assert len(frame) == 4
    assert why["a/bomb.nii.gz"] == (f"declares {side} x {side} = {side * side} voxels, more than the limit of "
                                    f"{MAX_VOXELS} (a decompression bomb?); crop or split the volume")


def test_dicom_declaring_too_many_voxels_is_refused_from_its_header(tmp_path: Path) -> None:
    ct = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    src = tmp_path / "src"
    for label in "ab":
        (src / label).mkdir(parents=True)
        for i in range(2):
            shift = 5 * i + (20 if label == "b" else 0)  # distinct images
            ct.PixelData = np.roll(ct.pixel_array, shift, axis=1).astype(ct.pixel_array.dtype).tobytes()
            ct.save_as(src / label / f"{i}.dcm")
    ct.Rows = ct.Columns = 65535
    ct.NumberOfFrames = 50
    ct.save_as(src / "a" / "huge.dcm")
    frame, why = run(tmp_path, src)
    assert len(frame) == 4, why
    assert "more than the limit" in why["a/huge.dcm"]


def test_a_class_whose_files_are_all_unreadable_stops_the_run_naming_it(tmp_path: Path) -> None:
    root = folder(tmp_path / "src", {"a": 3, "b": 3})
    (root / "broken").mkdir()
    for i in range(2):
        (root / "broken" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(UserError, match=r"no usable image of class 'broken' .*quarantine\.parquet"):
        run(tmp_path, root)


def test_same_bytes_under_two_labels_are_both_quarantined(tmp_path: Path) -> None:
    root = folder(tmp_path / "src", {"a": 3, "b": 3})
    shutil.copy(root / "a" / "0.png", root / "b" / "copy.png")
    shutil.copy(root / "a" / "1.png", root / "a" / "again.png")  # same label: an ordinary duplicate
    frame, why = run(tmp_path, root)
    assert sorted(frame["label"]) == ["a", "a", "b", "b", "b"]
    assert "conflicting labels, both quarantined" in why["a/0.png"] and "(label 'b')" in why["a/0.png"]
    assert "conflicting labels, both quarantined" in why["b/copy.png"] and "(label 'a')" in why["b/copy.png"]
    assert why["a/again.png"] == "duplicate of a/1.png"
    assert len(list((tmp_path / "out" / "images").rglob("*.png"))) == 5


# ---------------------------------------------------------------------------------------------------------------------
# issue 29: header bombs refused in bounded memory, labels that collide, images that are not one still image


def nifti_header_bomb(path: Path, shape: tuple[int, ...], dtype: type) -> Path:
    """A .nii.gz of zeros whose header declares ``shape`` of ``dtype``: gzip members of 16 MiB of zeros repeated
    (a valid multi-member gzip), about 1 MB on disk for a GB of data."""
    header = nibabel.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    left = int(np.prod(shape)) * np.dtype(dtype).itemsize
    member = gzip.compress(bytes(1 << 24), compresslevel=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(header.binaryblock + bytes(4)))
        for _ in range(left >> 24):
            fh.write(member)
        fh.write(gzip.compress(bytes(left % (1 << 24))))
    return path


@pytest.mark.parametrize("windowed", [False, True], ids=["no-window", "window"])
def test_a_nifti_header_bomb_is_refused_quickly_in_bounded_memory(tmp_path: Path, windowed: bool) -> None:
    """A 1.3 MB .nii.gz declaring 168 M float64 voxels reached 3 GB and ran 4.5 min before it was refused for its
    dtype, which its header gives; with a window set it would have been read whole."""
    from tests.bounds import run_bounded

    bomb = nifti_header_bomb(tmp_path / "bomb.nii.gz", (550, 550, 555), np.float64)  # 168 M voxels, 1.34 GB
    assert bomb.stat().st_size < 2_000_000
    done = run_bounded("from pathlib import Path\nimport monai.data, nibabel  # the imports are not the bomb\n"
                       "from synthaug.tasks.core.errors import Quarantined\n"
                       "from synthaug.tasks.core.sources.medical import MedicalReader", f"""
        reader = MedicalReader(preset=None, center={40.0 if windowed else None}, width={400.0 if windowed else None},
                               slice_axis=2, slices=None)
        try:
            reader.read(Path({str(bomb)!r}), "bomb.nii.gz")
        except Quarantined as exc:
            print("quarantined:", exc)
        """)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = "a decompression bomb?" if windowed else "stores floating-point values: no bit range"
    assert done.stdout.startswith("quarantined:") and expected in done.stdout, done.stdout


def test_a_nifti_whose_header_declares_more_than_the_file_holds_is_refused_unread(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 1000, (12, 12, 1)).astype(np.int16)
    src = tmp_path / "src"
    for label, seed in (("a", 0), ("a", 1), ("b", 2), ("b", 3)):
        pixels = np.random.default_rng(seed).integers(0, 1000, (12, 12, 1)).astype(np.int16)
        (src / label).mkdir(parents=True, exist_ok=True)
        nibabel.save(nibabel.Nifti1Image(pixels, np.eye(4)), src / label / f"ok{seed}.nii.gz")
    liar = nibabel.Nifti1Image(data, np.eye(4))
    liar.header.set_data_shape((12, 12, 400))  # 115 KB declared, 288 bytes given
    blob = liar.header.binaryblock + bytes(4) + data.tobytes()
    (src / "a" / "liar.nii.gz").write_bytes(gzip.compress(blob))
    (src / "a" / "liar.nii").write_bytes(blob)
    frame, why = run(tmp_path, src)
    assert len(frame) == 4, why
    for name in ("liar.nii.gz", "liar.nii"):
        assert "its header declares 115200 bytes of data but the file holds 640" in why[f"a/{name}"], why


@pytest.mark.parametrize(("first", "second"), [
    ("Cat", "cat"),  # case: one folder on macOS and Windows
    (unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")),  # Unicode normalization
    ("cat", "\u0441at"),  # a Cyrillic 'с'
    ("dog", "ｄｏｇ"),  # full-width letters
    ("ab", "a\u200bb"),  # an invisible zero-width space
], ids=["case", "nfc-nfd", "homoglyph", "fullwidth", "invisible"])
def test_labels_that_collide_are_refused_before_anything_is_written_naming_both(
        tmp_path: Path, first: str, second: str) -> None:
    """``Cat``/``cat``, NFC/NFD ``café`` and a Cyrillic ``сat`` became separate classes, published so."""
    root = folder(tmp_path / "src", {first: 2, second: 2, "other": 2})
    with pytest.raises(UserError) as caught:
        run(tmp_path, root)
    message = str(caught.value)
    assert repr(first) in message and repr(second) in message and "rename or merge" in message
    assert "\n" not in message
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_animated_images_and_entries_that_are_not_image_files_are_quarantined_with_a_reason(tmp_path: Path) -> None:
    """An animated GIF named .png and an APNG were ingested as their first frame without a word; a folder named
    x.png and a FIFO were skipped without a quarantine row."""
    root = folder(tmp_path / "src", {"a": 3, "b": 3})
    frames = [Image.fromarray(np.full((12, 12), v, np.uint8)) for v in (10, 200, 90)]
    frames[0].save(root / "a" / "gif.png", format="GIF", save_all=True, append_images=frames[1:])
    frames[0].save(root / "a" / "apng.png", format="PNG", save_all=True, append_images=frames[1:])
    (root / "b" / "folder.png").mkdir()
    noise(root / "b" / "folder.png" / "inside.png", seed=99)
    os.mkfifo(root / "b" / "pipe.png")
    frame, why = run(tmp_path, root)
    assert sorted(frame["label"]) == ["a"] * 3 + ["b"] * 3
    assert "animated or multi-frame GIF image (3 frames)" in why["a/gif.png"]
    assert "animated or multi-frame PNG image (3 frames)" in why["a/apng.png"]
    assert why["b/folder.png"].startswith("a folder named like an image file")
    assert why["b/pipe.png"].startswith("not a regular file (a FIFO, socket or device)")


def test_a_table_row_naming_a_fifo_is_quarantined_unopened(tmp_path: Path) -> None:
    root = folder(tmp_path / "src", {"a": 2, "b": 2})
    os.mkfifo(root / "a" / "pipe.png")  # opening it would block the run forever
    rows = [(f"{c}/{i}.png", c) for c in "ab" for i in range(2)] + [("a/pipe.png", "a")]
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(root / "labels.csv", index=False)
    frame, why = run(tmp_path, root / "labels.csv")
    assert len(frame) == 4 and why["a/pipe.png"].startswith("not a regular file")
