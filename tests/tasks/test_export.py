"""Release formats on images ingested from real DICOM and NIfTI: DICOM files holding none of the sources' identifying
values and new UIDs, a NIfTI round trip keeping pixels and spacing, a 16-bit PNG mapping back to physical values
within one quantization step, PNG as is, and the refusals."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut
from pydicom.uid import SecondaryCaptureImageStorage

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.release.export import export_images
from tests.markers import dicom
from tests.medical import (
    CR,
    CT,
    MR,
    bundled,
    dciodvfy_errors,
    element_values,
    identifying,
    leaked,
    mr_volume,
    physical,
    run_ingest,
    write_nifti,
    write_series,
)
from tests.toy import digits_folder


def as_synthetic(frame: pd.DataFrame, seed: int = 42) -> pd.DataFrame:
    """Ingested rows standing in for generated ones: the writer must not care where the pixels came from."""
    return frame.assign(source="synthetic", generator="diffusion",
                        seed=pd.array(range(seed, seed + len(frame)), dtype="Int64"))


def ingest_one(tmp_path: Path, name: str, label: str, **params: Any) -> tuple[pd.DataFrame, dict]:
    target = tmp_path / "src" / label / "image.dcm"
    target.parent.mkdir(parents=True)
    shutil.copyfile(bundled(name), target)
    frame, meta, _ = run_ingest(tmp_path, tmp_path / "src", **params)
    return frame, meta


@dicom
@pytest.mark.parametrize(("name", "params"), [
    (CT, {"image_size": 128, "window": "lung"}),
    (MR, {"image_size": 64, "window_center": 1000, "window_width": 2000}),
    (CR, {"image_size": 16}),  # MONOCHROME1, private AGFA tags, an earlier de-identification's own method text
])
def test_dicom_export_holds_no_source_identifier_and_new_uids(tmp_path: Path, name: str, params: dict) -> None:
    frame, meta = ingest_one(tmp_path, name, "scan", **params)
    secrets = identifying(bundled(name))
    source = pydicom.dcmread(bundled(name))
    assert {str(source.PatientName), source.PatientID, source.StudyDate, source.StudyInstanceUID} <= secrets
    if name == CT:  # the walk reaches into sequences and private tags
        assert {"ABCD1234", "GEMS_IDEN_01", "HiSpeed CT/i", "JFK IMAGING CENTER"} <= secrets

    out = export_images(tmp_path / "out", as_synthetic(frame), "dicom", tmp_path / "release",
                        intensity=meta["intensity"])

    path = tmp_path / "release" / out["path"].iloc[0]
    written = pydicom.dcmread(path)  # a valid Part 10 file: no force needed
    assert leaked(written, secrets) == set()
    assert not any(elem.tag.is_private for elem in written.iterall())
    source_uids = {text for elem, text in element_values(source) if elem.VR == "UI"}
    new_uids = [written.StudyInstanceUID, written.SeriesInstanceUID, written.SOPInstanceUID]
    assert len(set(new_uids)) == 3 and not set(new_uids) & source_uids
    assert all(pydicom.uid.UID(uid).is_valid for uid in new_uids)
    assert written.file_meta.MediaStorageSOPInstanceUID == written.SOPInstanceUID
    assert written.SOPClassUID == written.file_meta.MediaStorageSOPClassUID == SecondaryCaptureImageStorage
    assert written.PatientIdentityRemoved == "YES" and "no element copied" in " ".join(written.DeidentificationMethod)
    assert written.SeriesDescription == "SYNTHETIC" and written.ConversionType == "SYN"
    assert written.ImageComments == "SYNTHETIC image; class scan; seed 42"
    assert (str(written.PatientName), written.PatientID, written.StudyDate) == ("", "SYNTHETIC", "")
    assert dciodvfy_errors(path) == []  # the standard's validator finds nothing wrong with the file
    # Pixels are the stored image; Rescale Slope/Intercept give the physical values the manifest records.
    stored = np.asarray(Image.open(tmp_path / "out" / frame["path"].iloc[0]))
    assert np.array_equal(written.pixel_array, stored)
    intensity = meta["intensity"]
    expected = intensity["offset"] + intensity["scale"] * stored
    assert np.allclose(apply_modality_lut(written.pixel_array, written), expected, rtol=1e-6, atol=1e-3)
    assert written.RescaleType == (intensity["unit"] or "US")
    assert out["image_id"].iloc[0] == hashlib.sha256(path.read_bytes()).hexdigest()


@dicom
def test_dicom_uids_one_study_a_series_per_class_and_the_same_bytes_again(tmp_path: Path) -> None:
    write_series(tmp_path / "src" / "chest" / "series", 3)
    frame, meta, _ = run_ingest(tmp_path, tmp_path / "src", image_size=16, window="lung")
    synthetic = as_synthetic(frame).assign(label=["a", "b", "b"])

    first = export_images(tmp_path / "out", synthetic, "dicom", tmp_path / "r1", intensity=meta["intensity"])
    again = export_images(tmp_path / "out", synthetic, "dicom", tmp_path / "r2", intensity=meta["intensity"])
    fewer = export_images(tmp_path / "out", synthetic.iloc[:2], "dicom", tmp_path / "r3", intensity=meta["intensity"])

    files = [pydicom.dcmread(tmp_path / "r1" / p) for p in first["path"]]
    assert len({f.StudyInstanceUID for f in files}) == 1
    assert [f.SeriesInstanceUID == files[1].SeriesInstanceUID for f in files] == [False, True, True]
    assert [(f.SeriesNumber, f.InstanceNumber) for f in files] == [(1, 1), (2, 1), (2, 2)]
    assert len({f.SOPInstanceUID for f in files}) == 3
    assert first["image_id"].tolist() == again["image_id"].tolist()  # same images, same files
    assert [dciodvfy_errors(tmp_path / "r1" / p) for p in first["path"]] == [[], [], []]
    assert pydicom.dcmread(tmp_path / "r3" / fewer["path"].iloc[0]).StudyInstanceUID != files[0].StudyInstanceUID


def test_nifti_round_trip_keeps_pixels_and_spacing(tmp_path: Path) -> None:
    volume = mr_volume(3)
    write_nifti(tmp_path / "src" / "mr" / "vol.nii.gz", volume, (0.7, 0.8, 3.0))
    window = {"window_center": 1000, "window_width": 2000}
    frame, meta, _ = run_ingest(tmp_path, tmp_path / "src", image_size=64, **window)

    out = export_images(tmp_path / "out", frame, "nifti", tmp_path / "release", intensity=meta["intensity"])

    scale = meta["intensity"]["scale"]
    for k, (stored_path, path) in enumerate(zip(frame["path"], out["path"], strict=True)):
        assert path == stored_path.removesuffix(".png") + ".nii.gz"
        image = nibabel.load(tmp_path / "release" / path)
        assert image.shape == (64, 64, 1) and image.get_data_dtype() == np.uint8
        stored = np.asarray(Image.open(tmp_path / "out" / stored_path))
        assert np.array_equal(np.asarray(image.dataobj.get_unscaled())[..., 0], stored)
        assert image.header.get_zooms() == pytest.approx((0.7, 0.8, 1.0))
        inside = (volume[..., k] >= 0) & (volume[..., k] <= 2000)
        assert np.abs(image.get_fdata()[..., 0] - volume[..., k])[inside].max() <= scale / 2 + 1e-4
    # Ingesting the release again gives back the same stored images and spacing.
    again, meta_again, quarantine = run_ingest(tmp_path, tmp_path / "release" / "images", name="again",
                                               image_size=64, **window)
    assert quarantine.empty and sorted(again["image_id"]) == sorted(frame["image_id"])
    assert meta_again["intensity"]["pixel_spacing"] == [0.7, 0.8]


def test_png16_maps_back_to_physical_values_within_one_step(tmp_path: Path) -> None:
    frame, meta = ingest_one(tmp_path, CT, "abdomen", image_size=128, window="mediastinum")

    out = export_images(tmp_path / "out", frame, "png16", tmp_path / "release", intensity=meta["intensity"])

    with Image.open(tmp_path / "release" / out["path"].iloc[0]) as png:
        values, text = np.asarray(png).astype(np.float64), dict(png.text)
    assert values.max() > 255 and text["unit"] == "HU"  # really 16 bits
    back = float(text["offset"]) + float(text["scale"]) * values
    hu = physical(bundled(CT))
    low, high, step = 50 - 175, 50 + 175, meta["intensity"]["scale"]  # mediastinum: center 50, width 350 HU
    inside = (hu >= low) & (hu <= high)
    assert np.abs(back - hu)[inside].max() <= step / 2 + 1e-6
    assert np.allclose(back[hu < low], low) and np.allclose(back[hu > high], high)  # clipped to the window
    # Ingest reads the 16-bit PNG back as the very same 8-bit image.
    again, _, _ = run_ingest(tmp_path, tmp_path / "release" / "images", name="again", image_size=128)
    assert again["image_id"].tolist() == frame["image_id"].tolist()


def test_plain_images_keep_their_paths_and_8_bit_values(tmp_path: Path) -> None:
    frame, meta, _ = run_ingest(tmp_path, digits_folder(tmp_path / "digits", {"0": 2, "1": 2}))
    assert meta["intensity"] is None

    synthetic = as_synthetic(frame)
    for fmt, suffix in (("png", ".png"), ("png16", ".png"), ("nifti", ".nii.gz"), ("dicom", ".dcm")):
        out = export_images(tmp_path / "out", synthetic, fmt, tmp_path / fmt, intensity=None)
        assert out["path"].tolist() == [p.removesuffix(".png") + suffix for p in frame["path"]]
        assert out["image_id"].tolist() == [hashlib.sha256((tmp_path / fmt / p).read_bytes()).hexdigest()
                                            for p in out["path"]]
        assert out.drop(columns=["path", "image_id"]).equals(synthetic.drop(columns=["path", "image_id"]))
        if fmt == "png":  # the stored file as is
            assert out["image_id"].tolist() == frame["image_id"].tolist()
    rel = frame["path"].iloc[0]
    with Image.open(tmp_path / "png16" / rel) as png, Image.open(tmp_path / "out" / rel) as stored:
        assert png.text == {} and np.array_equal(np.asarray(png), np.asarray(stored).astype(np.uint16) * 257)
    written = pydicom.dcmread(tmp_path / "dicom" / frame["path"].iloc[0].replace(".png", ".dcm"))
    assert (written.RescaleSlope, written.RescaleIntercept, written.RescaleType) == (1, 0, "US")
    assert "PixelSpacing" not in written


def test_refusals_name_the_fix(tmp_path: Path) -> None:
    frame, _, _ = run_ingest(tmp_path, digits_folder(tmp_path / "digits", {"0": 2, "1": 2}))
    with pytest.raises(UserError, match=r"dicom export writes synthetic images only: 4 manifest rows are not"):
        export_images(tmp_path / "out", frame, "dicom", tmp_path / "r", intensity=None)
    with pytest.raises(UserError, match="release format 'jpeg' is unknown; choose one of png, png16, nifti, dicom"):
        export_images(tmp_path / "out", frame, "jpeg", tmp_path / "r", intensity=None)  # type: ignore[arg-type]
    rgb, _, _ = run_ingest(tmp_path, tmp_path / "digits", name="rgb", channels=3)
    with pytest.raises(UserError, match=r"nifti export needs grayscale images \(ingest with data.channels=1\)"):
        export_images(tmp_path / "rgb", rgb, "nifti", tmp_path / "r", intensity=None)
