"""DICOM and NIfTI sources through ingest, on pydicom's bundled CT, MR and CR files and on series folders and NIfTI
volumes written from their pixels: orientation and intensities against pydicom's own reading, windows, MONOCHROME1,
slice selection, labels from folders and tables, spacing, params, and every refusal ending in quarantine."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError

from synthaug.flows.params import ParamsError, load_params
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.params.data import DataParams
from tests.medical import CR, CT, MR, bundled, mr_volume, physical, run_ingest, windowed, write_nifti, write_series

CT_SPACING = 0.661468  # CT_small's PixelSpacing


def stored(tmp_path: Path, frame: pd.DataFrame, name: str = "out") -> list[np.ndarray]:
    return [np.asarray(Image.open(tmp_path / name / path)) for path in frame["path"]]


def reasons(quarantine: pd.DataFrame) -> dict[str, str]:
    return dict(zip(quarantine["source_path"], quarantine["reason"], strict=True))


def copy(name: str, to: Path) -> Path:
    to.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(bundled(name), to))


def resized(pixels: np.ndarray, size: int) -> np.ndarray:
    """Ingest's resize (README: Pillow bilinear) of an 8-bit image."""
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))


# --- orientation and intensities against pydicom ---------------------------------------------------------------------

def test_ct_is_upright_in_hu_under_a_window_preset(tmp_path: Path) -> None:
    copy(CT, tmp_path / "src" / "abdomen" / "ct.dcm")

    frame, meta, quarantine = run_ingest(tmp_path, tmp_path / "src", image_size=128, window="soft_tissue")

    assert quarantine.empty
    (image,) = stored(tmp_path, frame)
    hu = physical(bundled(CT))  # pydicom: pixel_array through RescaleSlope 1 / RescaleIntercept -1024
    expected = windowed(hu, 50 - 400 / 2, 50 + 400 / 2)  # soft tissue: center 50 HU, width 400 HU
    assert np.array_equal(image, expected)
    assert not np.array_equal(image, expected.T) and not np.array_equal(image, expected[::-1])
    assert (image == 0).any() and (image == 255).any()  # both ends clipped: the window, not the image's own range
    intensity = meta["intensity"]
    assert intensity == {"offset": -150.0, "scale": 400 / 255, "unit": "HU", "clipped": True,
                         "window": {"center": 50.0, "width": 400.0, "source": "preset soft_tissue"},
                         "pixel_spacing": [CT_SPACING, CT_SPACING]}
    # The recorded mapping gives back the HU value of every pixel inside the window within half a step.
    inside = (hu >= -150) & (hu <= 250)
    back = intensity["offset"] + intensity["scale"] * image.astype(np.float64)
    assert np.abs(back - hu)[inside].max() <= intensity["scale"] / 2 + 1e-9
    assert meta["pixel_spacing"] == {frame["image_id"].iloc[0]: [CT_SPACING, CT_SPACING]}


def test_mr_with_an_explicit_window_resized_with_its_spacing(tmp_path: Path) -> None:
    copy(MR, tmp_path / "src" / "knee" / "mr.dcm")

    frame, meta, _ = run_ingest(tmp_path, tmp_path / "src", image_size=32, window_center=1000, window_width=2000)

    (image,) = stored(tmp_path, frame)
    values = physical(bundled(MR))  # no rescale in this file: the stored values themselves
    assert np.array_equal(image, resized(windowed(values, 0, 2000), 32))
    assert meta["intensity"]["unit"] == "US"  # DICOM's "unspecified": MR values have no physical unit
    assert meta["intensity"]["window"]["source"] == "data.window_center/width"
    assert meta["intensity"]["pixel_spacing"] == [0.625, 0.625]  # 0.3125 mm x 64 px over 32 px


def test_monochrome1_is_inverted_so_higher_is_brighter(tmp_path: Path) -> None:
    # A real MONOCHROME1 radiograph: 12 bits stored, RescaleSlope 0.684, RescaleIntercept 200, RescaleType OD.
    copy(CR, tmp_path / "src" / "spine" / "cr.dcm")

    frame, meta, _ = run_ingest(tmp_path, tmp_path / "src", image_size=16)

    (image,) = stored(tmp_path, frame)
    values = physical(bundled(CR))
    low, high = 200.0, 200.0 + 0.684 * 4095  # by default the window is the stored bits' physical range
    expected = windowed(low + high - values, low, high)
    assert np.abs(image.astype(int) - expected).max() <= 1  # MONAI rescales in float32, pydicom in float64
    assert (image == expected).mean() > 0.9
    assert np.corrcoef(image.ravel(), values.ravel())[0, 1] < -0.99
    assert meta["intensity"]["offset"] == pytest.approx(low) and meta["intensity"]["unit"] == "OD"
    assert meta["intensity"]["scale"] == pytest.approx((high - low) / 255)
    assert meta["intensity"]["window"]["source"] == "stored bit range"

    # MR_small stored as MONOCHROME1 (its values inverted within the signed 16-bit range) is the same image.
    twins = tmp_path / "twins" / "mr"
    copy(MR, twins / "a_mono2.dcm")
    ds = pydicom.dcmread(bundled(MR))
    ds.PixelData = (-1 - ds.pixel_array.astype(np.int32)).astype(np.int16).tobytes()  # -32768 + 32767 - v
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(twins / "b_mono1.dcm")
    _, _, quarantine = run_ingest(tmp_path, twins.parent, name="twins", window_center=1000, window_width=2000)
    assert reasons(quarantine) == {"mr/b_mono1.dcm": "duplicate of mr/a_mono2.dcm"}


# --- volumes: series folders and NIfTI ------------------------------------------------------------------------------

def test_series_folder_is_one_volume_in_instance_number_order(tmp_path: Path) -> None:
    src = tmp_path / "src"
    slices = write_series(src / "chest" / "series1", 3)
    copy(CT, src / "head" / "ct.dcm")  # a file directly in its class folder is one image

    frame, meta, quarantine = run_ingest(tmp_path, src, image_size=128, window="lung")

    assert quarantine.empty
    assert frame["label"].tolist() == ["chest"] * 3 + ["head"]
    images = stored(tmp_path, frame)
    for image, hu in zip(images, [*slices, physical(bundled(CT))], strict=True):
        assert np.array_equal(image, windowed(hu, -600 - 750, -600 + 750))
    assert meta["intensity"]["pixel_spacing"] == [CT_SPACING, CT_SPACING]

    # Cut across the series instead: each slice is 128 rows of 3 slices, too narrow for data.min_size. Class
    # 'chest' loses every image: the run stops naming it rather than publishing without it.
    with pytest.raises(UserError, match="no usable image of class 'chest'"):
        run_ingest(tmp_path, src, name="across", image_size=16, window="lung", slice_axis=0, slices="60:62")
    quarantine = pd.read_parquet(tmp_path / "across" / "quarantine.parquet")
    assert reasons(quarantine) == {f"chest/series1[x={i}]": "image is 3x128 px, smaller than data.min_size=8"
                                   for i in (60, 61)}


def test_multi_frame_file_is_a_volume_with_frames_along_axis_2(tmp_path: Path) -> None:
    ds = pydicom.dcmread(bundled(MR))
    frames = np.stack([np.roll(ds.pixel_array, 6 * k, axis=0) for k in range(3)])
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    (tmp_path / "src" / "mr").mkdir(parents=True)
    ds.save_as(tmp_path / "src" / "mr" / "frames.dcm")

    frame, _, _ = run_ingest(tmp_path, tmp_path / "src", image_size=64, window_center=1000, window_width=2000,
                             slices="1:3")

    expected = [windowed(frames[k], 0, 2000) for k in (1, 2)]
    assert [np.array_equal(a, b) for a, b in zip(stored(tmp_path, frame), expected, strict=True)] == [True, True]


def test_nifti_slices_by_axis_and_range(tmp_path: Path) -> None:
    volume = mr_volume(5)
    volume[..., 3] = volume[..., 2]
    write_nifti(tmp_path / "src" / "mr" / "vol.nii.gz", volume, (0.8, 0.9, 2.5))

    frame, meta, quarantine = run_ingest(tmp_path, tmp_path / "src", image_size=64, window_center=1000,
                                         window_width=2000, slices="1:4")

    assert reasons(quarantine) == {"mr/vol.nii.gz[z=3]": "duplicate of mr/vol.nii.gz[z=2]"}
    images = stored(tmp_path, frame)
    # A slice is the array with the slice axis removed: rows are the volume's axis 0, as nibabel stores it.
    expected = [windowed(volume[:, :, k], 0, 2000) for k in (1, 2)]
    assert [np.array_equal(image, e) for image, e in zip(images, expected, strict=True)] == [True, True]
    assert list(meta["pixel_spacing"].values()) == [[0.8, 0.9], [0.8, 0.9]]

    frame, meta, _ = run_ingest(tmp_path, tmp_path / "src", name="y", image_size=64, min_size=4, window_center=1000,
                                window_width=2000, slice_axis=1, slices="10:12")
    images = stored(tmp_path, frame, "y")
    expected = [resized(windowed(volume[:, k, :], 0, 2000), 64) for k in (10, 11)]
    assert [np.array_equal(image, e) for image, e in zip(images, expected, strict=True)] == [True, True]
    assert meta["intensity"]["pixel_spacing"] == [0.8, pytest.approx(2.5 * 5 / 64)]


def test_nifti_without_a_bit_range_or_a_selected_slice_is_quarantined(tmp_path: Path) -> None:
    src = tmp_path / "src" / "a"
    write_nifti(src / "float.nii", mr_volume(3).astype(np.float32), (1.0, 1.0, 1.0))
    write_nifti(src / "short.nii.gz", mr_volume(3), (1.0, 1.0, 1.0))
    write_nifti(src / "plane.nii.gz", mr_volume(1)[..., 0], (0.5, 0.5, 1.0))  # 2D: the selection does not apply

    frame, meta, quarantine = run_ingest(tmp_path, src.parent, image_size=64, slices="4:6")

    assert reasons(quarantine) == {
        "a/float.nii": "stores floating-point values: no bit range to map to 8 bits; set data.window or "
                       "data.window_center and data.window_width",
        "a/short.nii.gz": "data.slices=4:6 selects no slice: the volume has 3 along data.slice_axis=2",
    }
    (image,) = stored(tmp_path, frame)
    assert np.array_equal(image, windowed(mr_volume(1)[..., 0], -32768, 32767))  # int16's range
    assert meta["intensity"]["window"]["source"] == "stored bit range"


# --- tables, mixed sources, corrupt files -----------------------------------------------------------------------------

def test_table_rows_name_files_series_folders_and_volumes(tmp_path: Path) -> None:
    root = tmp_path / "src"
    copy(CT, root / "scans" / "ct.dcm")
    write_series(root / "scans" / "series", 2)
    hu = physical(bundled(CT))
    volume = np.stack([np.roll(hu, 4 * (k + 1), axis=1) for k in range(2)], axis=-1).astype(np.int16)
    write_nifti(root / "scans" / "vol.nii.gz", volume, (CT_SPACING, CT_SPACING, 5.0))
    data = bundled(CT).read_bytes()
    (root / "scans" / "truncated.dcm").write_bytes(data[: len(data) - 5000])  # header intact, pixels cut short
    (root / "scans" / "garbage.dcm").write_bytes(b"not a DICOM file at all" * 20)
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(root / "scans" / "photo.png")
    rows = [("scans/ct.dcm", "a"), ("scans/series", "b"), ("scans/vol.nii.gz", "c"), ("scans/truncated.dcm", "a"),
            ("scans/garbage.dcm", "a"), ("scans/photo.png", "a")]
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(root / "labels.csv", index=False)

    frame, _, quarantine = run_ingest(tmp_path, root / "labels.csv", image_size=32, window="bone")

    assert Counter(frame["label"]) == {"a": 1, "b": 2, "c": 2}
    found = reasons(quarantine)
    assert found.pop("scans/truncated.dcm").startswith("unreadable DICOM: ")
    assert found.pop("scans/garbage.dcm").startswith("unreadable DICOM: ")
    assert found == {"scans/photo.png": "an ordinary image among DICOM/NIfTI images has no physical unit; convert "
                                        "it to DICOM or NIfTI, or ingest it in a dataset of its own"}
    # The NIfTI holds HU: under a CT preset it shares the DICOM files' window.
    nifti = stored(tmp_path, frame[frame["label"] == "c"])
    assert np.array_equal(nifti[0], resized(windowed(volume[:, :, 0], -500, 1300), 32))


def test_an_image_needing_another_window_is_quarantined(tmp_path: Path) -> None:
    copy(CT, tmp_path / "src" / "ct" / "ct.dcm")
    copy(MR, tmp_path / "src" / "mr" / "mr.dcm")

    def stopped_for_mr(name: str, **params) -> pd.DataFrame:
        """Class 'mr' loses its only image: the run stops naming it; the quarantine says why."""
        with pytest.raises(UserError, match="no usable image of class 'mr'"):
            run_ingest(tmp_path, tmp_path / "src", name=name, image_size=16, **params)
        return pd.read_parquet(tmp_path / name / "quarantine.parquet")

    reason = reasons(stopped_for_mr("out"))["mr/mr.dcm"]
    assert reason == ("maps to -32768..32767 US (stored bit range), not the dataset's -33792..31743 HU (stored bit "
                      "range) (fixed by ct/ct.dcm); ingest one modality per dataset")

    assert reasons(stopped_for_mr("lung", window="lung")) == {
        "mr/mr.dcm": "data.window=lung is a CT window (HU) but this image is MR; use data.window_center and "
                     "data.window_width"}

    # Under one explicit window, CT and MR still differ in unit; a NIfTI (unit unknown) agrees with the CT.
    hu = np.roll(physical(bundled(CT)), 3, axis=1)[..., None].astype(np.int16)
    write_nifti(tmp_path / "src" / "a" / "vol.nii.gz", hu, (CT_SPACING, CT_SPACING, 5.0))
    quarantine = stopped_for_mr("explicit", window_center=40, window_width=400)
    shutil.rmtree(tmp_path / "src" / "mr")
    frame, meta, _ = run_ingest(tmp_path, tmp_path / "src", name="explicit", image_size=16, window_center=40,
                                window_width=400)
    assert frame["label"].tolist() == ["a", "ct"] and meta["intensity"]["unit"] == "HU"  # learned from the CT
    assert reasons(quarantine)["mr/mr.dcm"].endswith("ingest one modality per dataset")


def test_series_folders_without_one_ordered_series_are_quarantined(tmp_path: Path) -> None:
    src = tmp_path / "src" / "a"
    write_series(src / "two", 2)
    other = pydicom.dcmread(src / "two" / "b.dcm")
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    other.save_as(src / "two" / "b.dcm")
    write_series(src / "unordered", 2)
    unordered = pydicom.dcmread(src / "unordered" / "a.dcm")
    del unordered.InstanceNumber
    unordered.save_as(src / "unordered" / "a.dcm")
    (src / "broken").mkdir()
    (src / "broken" / "x.dcm").write_bytes(b"\0" * 300)
    (src / "frames").mkdir()
    for k in range(2):  # a series of multi-frame files would be 4D
        ds = pydicom.dcmread(bundled(MR))
        ds.NumberOfFrames, ds.PixelData, ds.InstanceNumber = 2, np.stack([ds.pixel_array] * 2).tobytes(), k + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(src / "frames" / f"f{k}.dcm")
    copy(CT, src / "ct.dcm")

    frame, _, quarantine = run_ingest(tmp_path, src.parent, image_size=16)

    assert len(frame) == 1
    found = reasons(quarantine)
    assert found.pop("a/broken").startswith("unreadable DICOM file x.dcm: ")
    assert found.pop("a/frames").startswith("reads as a 4D array")
    assert found == {"a/two": "series folder holds 2 series (SeriesInstanceUID); give each its own folder",
                     "a/unordered": "series folder: every file needs its own InstanceNumber (the slice order)"}


# --- params ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("params", "message"), [
    ({"window": "lung", "window_center": 40, "window_width": 400}, "exclude each other"),
    ({"window_center": 40}, "together"),
    ({"window_width": 400}, "together"),
    ({"window_center": 40, "window_width": 0}, "greater than 0"),
    ({"window": "liver"}, "'lung', 'mediastinum', 'soft_tissue', 'bone' or 'brain'"),
    ({"slices": "5:2"}, "start < stop"),
    ({"slices": "first"}, "'all' or 'start:stop'"),
    ({"slice_axis": 3}, "0, 1 or 2"),
])
def test_bad_window_and_slice_params_are_refused(params: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DataParams(**params)


def test_slices_from_overrides_and_params_yaml(tmp_path: Path) -> None:
    assert DataParams().slice_range is None
    assert load_params(None, ["data.slices=10:20"]).data.slice_range == (10, 20)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"slices": "3:7"}}))
    assert load_params(params).data.slice_range == (3, 7)
    params.write_text("data:\n  slices: 10:20\n")  # unquoted, YAML reads the base-60 number 620
    with pytest.raises(ParamsError, match=r"data\.slices: .*quoted in YAML.*\(got 620\)"):
        load_params(params)


def test_nothing_usable_names_the_source(tmp_path: Path) -> None:
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "x.dcm").write_bytes(b"DICM")
    with pytest.raises(UserError, match="no usable image"):
        run_ingest(tmp_path, tmp_path / "src")
