"""Real medical inputs for the tests: pydicom's bundled DICOM files (found in its wheel, nothing downloaded) and the
series folders and NIfTI volumes the tests write from their pixel data."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import pandas as pd
import pydicom
from pydicom.data import get_testdata_file
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

from synthaug.tasks.core.io.manifest import read_manifest
from synthaug.tasks.core.params.data import DataParams
from synthaug.tasks.ingest import ingest
from tests.markers import require_tool

CT, MR, CR = "CT_small.dcm", "MR_small.dcm", "6154"  # CR: a MONOCHROME1 radiograph among pydicom's DICOMDIR tests


def bundled(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom's bundled test file {name} is missing"
    return Path(path)


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines of dicom3tools' ``dciodvfy`` (the standard's IOD checker) on one file; fails the test when
    the tool is missing (``.ci/run`` installs it)."""
    tool = require_tool("dciodvfy", "apt-get install dicom3tools (.ci/run does)")
    out = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


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


# Value representations that carry names, IDs, dates, times, UIDs, institutions, devices and free text.
IDENTIFYING_VRS = {"PN", "LO", "SH", "DA", "DT", "TM", "UI", "AE", "LT", "ST", "UT", "UC"}
STANDARD_UIDS = "1.2.840.10008."  # SOP classes and transfer syntaxes the standard defines: they identify nothing


def element_values(ds: pydicom.Dataset) -> Iterator[tuple[Any, str]]:
    """(element, value as text) for every value of every element: file meta, private tags, nested sequences."""
    for dataset in (ds.file_meta, ds):
        for elem in dataset.iterall():  # walks into every sequence item, private elements included
            if elem.VR == "SQ" or isinstance(elem.value, bytes | bytearray):
                continue
            for value in elem.value if isinstance(elem.value, MultiValue) else [elem.value]:
                if value is not None:
                    yield elem, str(value).strip()


def identifying(path: Path) -> set[str]:
    """Every value of a source file that could point back at it: all values of the identifying VRs and of private
    tags. Values shorter than four characters (a sex, a route 'IV', a unit 'OD') name no one and occur in any text."""
    return {text for elem, text in element_values(pydicom.dcmread(path))
            if (elem.VR in IDENTIFYING_VRS or elem.tag.is_private) and len(text) >= 4
            and not text.startswith(STANDARD_UIDS)}


def leaked(written: pydicom.Dataset, secrets: set[str]) -> set[tuple[str, str]]:
    """(element, secret) for every identifying source value found inside any value of ``written``."""
    return {(elem.keyword or str(elem.tag), secret) for elem, text in element_values(written) for secret in secrets
            if secret in text}


def dicom_digits_folder(root: Path, counts: dict[str, int]) -> Path:
    """``<root>/<label>/<i>.dcm``: scikit-learn's digits as CT images in HU (-1000 + 100 * grey level, 8x8), each
    file a copy of pydicom's CT_small with its patient name, IDs, dates and private tags and new pixels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label, n in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(digits.images[digits.target == int(label)][:n]):
            ds = pydicom.dcmread(bundled(CT))
            ds.Rows, ds.Columns = image.shape
            ds.PixelRepresentation, ds.RescaleSlope, ds.RescaleIntercept = 1, 1, 0
            ds.PixelData = (image * 100 - 1000).astype(np.int16).tobytes()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(root / label / f"{i}.dcm")
    return root
