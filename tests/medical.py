"""Real medical inputs for the tests: pydicom's bundled DICOM files (found in its wheel, nothing downloaded) and the
series folders and NIfTI volumes the tests write from their pixel data."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pydicom
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

from tasks.ingest import DataParams, ingest
from tasks.manifest import read_manifest

CT, MR, CR = "CT_small.dcm", "MR_small.dcm", "6154"  # CR: a MONOCHROME1 radiograph among pydicom's DICOMDIR tests


def bundled(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom's bundled test file {name} is missing"
    return Path(path)


def physical(path: Path) -> np.ndarray:
    """pydicom's own reading: ``pixel_array`` (row 0 at the top) through its modality LUT (slope/intercept)."""
    ds = pydicom.dcmread(path)
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float64)


def windowed(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """What ingest must store for ``values`` under the window [low, high] (README: one linear map, clipped)."""
    scaled = (values.astype(np.float64) - low) * 255 / (high - low)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def write_series(folder: Path, n: int) -> list[np.ndarray]:
    """A CT series folder of ``n`` slices made from CT_small's pixels (each rolled a little: distinct real data).

    File names run against the slice order (a.dcm holds the last InstanceNumber), so a reader that stacks by name
    gets them backwards. Returns each slice's HU values in InstanceNumber order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    slices = {}
    for k in range(n):
        ds = pydicom.dcmread(bundled(CT))
        pixels = np.roll(ds.pixel_array, 9 * (k + 1), axis=0)
        ds.PixelData = pixels.tobytes()
        ds.InstanceNumber = n - k
        ds.ImagePositionPatient = [-158.1358, -179.0358, -75.7 + 2.5 * (n - k)]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / f"{chr(ord('a') + k)}.dcm")
        slices[n - k] = apply_modality_lut(pixels, ds).astype(np.float64)
    return [slices[i] for i in sorted(slices)]


def write_nifti(path: Path, volume: np.ndarray, spacing: tuple[float, float, float]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(volume, np.diag([*spacing, 1.0])), path)
    return path


def mr_volume(slices: int) -> np.ndarray:
    """An int16 (64, 64, slices) volume of MR_small's pixels, each slice shifted a little (distinct real data)."""
    pixels = pydicom.dcmread(bundled(MR)).pixel_array
    return np.stack([np.roll(pixels, 5 * k, axis=1) for k in range(slices)], axis=-1).astype(np.int16)


def run_ingest(tmp_path: Path, source: Path, name: str = "out", **params) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """Ingest ``source`` with ``params`` (no val/test split); the manifest, its metadata and the quarantine."""
    params = {"val_fraction": 0, "test_fraction": 0, **params}
    result = ingest(DataParams(source=str(source), **params), tmp_path / name, cache_dir=tmp_path / "cache")
    frame, meta = read_manifest(result.manifest_path)
    return frame, meta, pd.read_parquet(result.quarantine_path)
