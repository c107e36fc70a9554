"""DICOM and NIfTI sources for ingest: decoded through MONAI's ``LoadImage`` (its pydicom and nibabel readers),
cut into 2D slices of physical values, and mapped to 8 bits by one linear window that the whole dataset shares.

Reading
- DICOM: a file (``.dcm``/``.dicom``, or no suffix with the DICM preamble) or a *series folder* (its DICOM files,
  one series, stacked in InstanceNumber order along axis 2). MONAI's reader applies Rescale Slope/Intercept (the
  linear modality LUT). A MONOCHROME1 image is inverted within the physical range of its stored bits, so higher
  always means brighter. Arrays keep pydicom's ``pixel_array`` layout, row 0 at the top: MONAI's ``swap_ij``,
  which would transpose rows and columns, is off.
- NIfTI: ``.nii``/``.nii.gz``, the array as nibabel stores it (scl_slope/scl_inter applied, no reorientation).

A 3D volume gives one 2D slice per selected index along ``slice_axis`` (the array with that axis removed); its ref
names the axis and index, ``ct/vol.nii.gz[z=12]`` (axes 0, 1, 2 are x, y, z).

Intensities: a window [low, high] (a CT preset, an explicit center/width, or by default the physical range of the
stored bits) maps a physical value v to ``round(255 * (v - low) / (high - low))``, clipped to 0..255, so a stored
pixel p means ``low + p * (high - low) / 255``: one pixel value, one physical value across the dataset. Nothing is
stretched per image. ``MedicalReader.record`` is that mapping as ingest stores it in the manifest metadata.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthaug.tasks.core.errors import Quarantined

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Standard CT display windows, (center, width) in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (50.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
AXIS_NAMES = "xyz"
# A volume is refused from its header before its pixels are read: a few MB of .nii.gz can inflate to gigabytes.
# The limit is Pillow's DecompressionBombError threshold (2 x Image.MAX_IMAGE_PIXELS), in voxels.
MAX_VOXELS = 2 * 89_478_485
# A compressed volume inflating more than BOMB_RATIO times to more than BOMB_BYTES is refused from its header too:
# real scans compress a few times, a gzip of zeros a thousand times.
BOMB_BYTES, BOMB_RATIO = 256 * 2**20, 200
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")

Spacing = tuple[float | None, ...]  # mm per array axis; None where the source does not say


def is_dicom(path: Path) -> bool:
    """A DICOM file by its suffix, or a file without suffix that has the DICM preamble (as PACS exports often are)."""
    import pydicom

    suffix = path.suffix.lower()
    return suffix in DICOM_SUFFIXES or (suffix == "" and path.is_file() and pydicom.misc.is_dicom(path))


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_medical(path: Path) -> bool:
    """What ``MedicalReader`` reads: a DICOM or NIfTI file, or a series folder."""
    return path.is_dir() or is_dicom(path) or is_nifti(path)


@dataclass(frozen=True)
class Volume:
    """A decoded DICOM or NIfTI source in physical units."""

    values: np.ndarray  # float64 (rows, cols) or (rows, cols, slices)
    spacing: Spacing
    stored_range: tuple[float, float] | None  # physical values of the lowest and highest storable value; None: floats
    unit: str | None  # "HU" for CT, a DICOM RescaleType ("US": unspecified), None when unknown (NIfTI)
    modality: str | None  # DICOM Modality; None for NIfTI


@dataclass(frozen=True)
class Window:
    """The linear map from physical values to 8-bit pixels; ``low`` -> 0, ``high`` -> 255, clipped outside."""

    low: float
    high: float
    unit: str | None
    source: str  # how it was chosen: "preset lung", "data.window_center/width", "stored bit range"

    def to_uint8(self, values: np.ndarray) -> np.ndarray:
        # Multiply before dividing: integer values in an integer window then give exact halves, rounded to even.
        scaled = (values - self.low) * 255.0 / (self.high - self.low)
        return np.clip(np.round(scaled), 0, 255).astype(np.uint8)

    def agrees(self, other: Window) -> bool:
        """The same map; an unknown unit (NIfTI) agrees with any."""
        same_unit = self.unit == other.unit or None in (self.unit, other.unit)
        return (self.low, self.high, self.source) == (other.low, other.high, other.source) and same_unit

    def describe(self) -> str:
        return f"{self.low:g}..{self.high:g}{' ' + self.unit if self.unit else ''} ({self.source})"


def choose_window(volume: Volume, preset: str | None, center: float | None, width: float | None) -> Window:
    """The window for ``volume`` under the data params; refuses what has no sensible one."""
    if preset is not None:
        if volume.modality not in (None, "CT"):
            raise Quarantined(f"data.window={preset} is a CT window (HU) but this image is {volume.modality}; "
                              f"use data.window_center and data.window_width")
        c, w = WINDOW_PRESETS[preset]
        return Window(c - w / 2, c + w / 2, "HU", f"preset {preset}")
    if center is not None and width is not None:
        return Window(center - width / 2, center + width / 2, volume.unit, "data.window_center/width")
    if volume.stored_range is None:
        raise Quarantined("stores floating-point values: no bit range to map to 8 bits; set data.window or "
                          "data.window_center and data.window_width")
    low, high = volume.stored_range
    return Window(low, high, volume.unit, "stored bit range")


def cut_slices(volume: Volume, axis: int, selection: tuple[int, int] | None) -> list[tuple[str, np.ndarray, Spacing]]:
    """(ref suffix, 2D values, 2D spacing) per selected slice; a 2D image is its own single slice."""
    if volume.values.ndim == 2:
        return [("", volume.values, volume.spacing)]
    n = volume.values.shape[axis]
    chosen = range(n) if selection is None else range(n)[selection[0]:selection[1]]
    if not chosen:
        raise Quarantined(f"data.slices={selection[0]}:{selection[1]} selects no slice: the volume has {n} "
                          f"along data.slice_axis={axis}")
    spacing = tuple(s for a, s in enumerate(volume.spacing) if a != axis)
    return [(f"[{AXIS_NAMES[axis]}={i}]", np.take(volume.values, i, axis=axis), spacing) for i in chosen]


class MedicalReader:
    """Reads DICOM/NIfTI items into 8-bit slices, all with one window.

    The first image read fixes the dataset's window (items come in a deterministic order); an image that would need
    another one (a different stored range or unit) is quarantined with the reason, so one 8-bit value keeps one
    physical meaning across the dataset.

    Args:
        preset: a ``WINDOW_PRESETS`` name, or None.
        center: explicit window center (with ``width``), or None.
        width: explicit window width, or None.
        slice_axis: the array axis a 3D volume is cut along.
        slices: (start, stop) slice indices along ``slice_axis``, or None for all.
    """

    def __init__(self, *, preset: str | None, center: float | None, width: float | None, slice_axis: int,
                 slices: tuple[int, int] | None) -> None:
        self.preset, self.center, self.width = preset, center, width
        self.slice_axis, self.slices = slice_axis, slices
        self.window: Window | None = None
        self.window_ref: str | None = None  # the item that fixed the window

    def read(self, path: Path, ref: str) -> list[tuple[str, np.ndarray, Spacing]]:
        """(ref, uint8 (H, W) image, spacing in mm per image axis) per selected slice of ``path``."""
        kind = "NIfTI" if is_nifti(path) else "DICOM"
        windowed = self.preset is not None or self.center is not None
        try:
            volume = read_nifti(path, windowed=windowed) if is_nifti(path) else read_dicom(path)
        except Quarantined:
            raise
        except Exception as exc:  # a damaged header can fail anywhere: a bad value, a missing tag, a wrong type
            raise Quarantined(f"unreadable {kind}: {type(exc).__name__}: {exc}") from None
        window = choose_window(volume, self.preset, self.center, self.width)
        planes = cut_slices(volume, self.slice_axis, self.slices)
        if self.window is None:
            self.window, self.window_ref = window, ref
        elif not window.agrees(self.window):
            fix = ("ingest one modality per dataset" if window.unit != self.window.unit
                   else "set data.window or data.window_center and data.window_width")
            raise Quarantined(f"maps to {window.describe()}, not the dataset's {self.window.describe()} (fixed by "
                              f"{self.window_ref}); {fix}")
        elif self.window.unit is None:
            self.window = window  # the unit, unknown so far, is known now
        return [(ref + suffix, window.to_uint8(values), spacing) for suffix, values, spacing in planes]

    def record(self, pixel_spacing: list[float] | None) -> dict[str, Any] | None:
        """The stored-pixel -> physical mapping for the manifest metadata (None when no image was read).

        ``pixel_spacing``: (row, column) mm of the stored images when they all share it, else None.
        """
        if self.window is None:
            return None
        w = self.window
        return {"offset": w.low, "scale": (w.high - w.low) / 255.0, "unit": w.unit, "clipped": True,
                "window": {"center": (w.low + w.high) / 2, "width": w.high - w.low, "source": w.source},
                "pixel_spacing": pixel_spacing}


@functools.cache
def _loader() -> Any:
    """One ``LoadImage`` per process: building one registers every MONAI reader (and logs about optional codecs)."""
    from monai.transforms import LoadImage

    return LoadImage(image_only=True, dtype=np.float64)


def _load(path: Path, reader: Any, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and affine through MONAI; any decoder failure is a reason to quarantine, not a crash."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "no ImagePositionPatient, identity affine": expected for 2D
            image = _loader()(str(path), reader=reader)
        return image.numpy().astype(np.float64, copy=False), image.affine.numpy()
    except Exception as exc:  # a corrupt file can fail anywhere inside pydicom, nibabel or MONAI
        raise Quarantined(f"unreadable {kind}: {exc}") from None


def read_dicom(path: Path) -> Volume:
    """A DICOM file or series folder -> physical values (see the module docstring)."""
    from monai.data import PydicomReader

    files = sorted(p for p in path.iterdir() if is_dicom(p)) if path.is_dir() else [path]
    if not files:
        raise Quarantined("series folder holds no DICOM file")
    headers = [_header(p, path.is_dir()) for p in files]
    first = headers[0]
    _check_voxels([int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0),
                   int(first.get("NumberOfFrames", 1) or 1), len(headers)])
    for file, header in zip(files, headers, strict=True):
        _check_dicom_pixels(file, header, path.is_dir())
    if len(headers) > 1:
        _check_series(headers)
    photometric = str(first.get("PhotometricInterpretation", ""))
    if photometric not in MONOCHROME or first.get("SamplesPerPixel", 1) != 1:
        raise Quarantined(f"PhotometricInterpretation {photometric or '(missing)'} is not supported; expected "
                          f"{' or '.join(MONOCHROME)}")
    if "ModalityLUTSequence" in first:
        raise Quarantined("has a Modality LUT Sequence; only the linear Rescale Slope/Intercept is supported")
    # fname_regex=None: a series folder's members are the files pydicom recognizes (the DICM preamble).
    reader = PydicomReader(swap_ij=False, fname_regex=None)
    values, affine = _load(path, reader, "DICOM")
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        values = np.moveaxis(values, 0, -1)  # a multi-frame file reads (frames, rows, cols); frames go last
    if values.ndim > 3:
        raise Quarantined(f"reads as a {values.ndim}D array {values.shape}; a series folder of multi-frame files "
                          "is not supported (give each file on its own)")
    ranges = [_stored_range(h) for h in headers]
    low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
    if photometric == "MONOCHROME1":
        values = low + high - values  # minimum is white in MONOCHROME1
    in_plane = first.get("PixelSpacing") or first.get("ImagerPixelSpacing")
    spacing: Spacing = tuple(float(s) for s in in_plane) if in_plane and len(in_plane) == 2 else (None, None)
    if values.ndim == 3:
        has_positions = len(headers) > 1 and all("ImagePositionPatient" in h for h in headers)
        between = float(np.linalg.norm(affine[:3, 2])) if has_positions else first.get("SpacingBetweenSlices")
        spacing += (None if between is None else float(between),)
    rescale_type = str(first.get("RescaleType", "")) or None
    modality = str(first.get("Modality", "")) or None
    unit = "HU" if rescale_type in (None, "US") and modality == "CT" else rescale_type or "US"
    return Volume(values, spacing, (low, high), unit, modality)


def read_nifti(path: Path, *, windowed: bool = True) -> Volume:
    """A ``.nii``/``.nii.gz`` file -> physical values (scl_slope/scl_inter applied), 2D or 3D.

    The header is checked before any voxel is read (``check_nifti_header``); ``windowed``: the dataset has a window
    (a preset or center/width), without which floating-point voxels have no mapping to 8 bits."""
    import nibabel
    from monai.data import NibabelReader

    try:
        image = nibabel.load(path)  # the header only: the pixels come through MONAI below
    except Exception as exc:  # nibabel raises its own errors, gzip's, numpy's on a broken header
        raise Quarantined(f"unreadable NIfTI: {exc}") from None
    check_nifti_header(path, image.header, windowed=windowed)
    values, _ = _load(path, NibabelReader(), "NIfTI")
    if values.ndim == 4 and values.shape[3] == 1:
        values = values[..., 0]
    if values.ndim not in (2, 3):
        raise Quarantined(f"NIfTI of shape {values.shape}: expected a 2D image or a 3D volume")
    # pixdim is float32: keep the shortest decimal naming that float32 (0.8, not 0.800000011920929).
    spacing = tuple(float(str(z)) for z in image.header.get_zooms()[: values.ndim])
    dtype = image.get_data_dtype()
    stored = None
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        slope, inter = float(image.dataobj.slope), float(image.dataobj.inter)
        stored = tuple(sorted((info.min * slope + inter, info.max * slope + inter)))
    return Volume(values, spacing, stored, None, None)


def _check_voxels(shape: list[int]) -> None:
    """Refuse a volume whose header declares more than ``MAX_VOXELS`` voxels (a decompression bomb)."""
    voxels = int(np.prod(np.array(shape, dtype=object))) if shape else 0
    if voxels > MAX_VOXELS:
        raise Quarantined(f"declares {' x '.join(map(str, shape))} = {voxels} voxels, more than the limit of "
                          f"{MAX_VOXELS} (a decompression bomb?); crop or split the volume")


def check_nifti_header(path: Path, header: Any, *, windowed: bool) -> None:
    """Quarantine a NIfTI file from its header alone, before its voxels are read: more than ``MAX_VOXELS``
    voxels, a data type without one value per voxel (complex, RGB, structured), floating-point voxels when no
    window maps them to 8 bits, a declared data size above ``BOMB_BYTES`` that is more than ``BOMB_RATIO`` times
    the file's, or a declared data size the file cannot hold (a truncated file, or a header that lies about its
    shape)."""
    shape = [int(s) for s in header.get_data_shape()]
    _check_voxels(shape)
    dtype = np.dtype(header.get_data_dtype())
    if dtype.kind not in "uif" or dtype.fields is not None:
        raise Quarantined(f"NIfTI data type {dtype} (from its header) is not one value per voxel; save it as "
                          "integers or floats")
    if dtype.kind == "f" and not windowed:
        raise Quarantined("stores floating-point values: no bit range to map to 8 bits; set data.window or "
                          "data.window_center and data.window_width")
    declared = int(header.get_data_offset()) + int(np.prod(shape, dtype=object)) * dtype.itemsize
    stored = path.stat().st_size
    if declared > BOMB_BYTES and declared > BOMB_RATIO * stored:
        raise Quarantined(f"its header declares {declared} bytes of data in a file of {stored} bytes, more than "
                          f"{BOMB_RATIO}:1 (a decompression bomb?); re-save it uncompressed or crop it")
    held = _data_size(path, declared)
    if held < declared:
        raise Quarantined(f"its header declares {declared} bytes of data but the file holds {held}: truncated, "
                          "or a header that does not describe the file; re-save it")


def _data_size(path: Path, declared: int) -> int:
    """The bytes the NIfTI file holds once decompressed, counted up to ``declared`` (enough to know it suffices).

    A ``.nii`` holds its size. A ``.nii.gz`` says its size (mod 2**32) in its last four bytes (gzip's ISIZE), which
    is taken when it agrees with ``declared``; otherwise (several gzip members, or a lie) the stream is decompressed
    in 1 MiB chunks and counted, never held."""
    import gzip
    import zlib

    size = path.stat().st_size
    if not path.name.lower().endswith(".gz"):
        return size
    with open(path, "rb") as fh:
        if size >= 18:  # a gzip header (10 bytes) and trailer (8 bytes) at least
            fh.seek(-4, 2)
            if int.from_bytes(fh.read(4), "little") == declared % 2**32:
                return declared
        fh.seek(0)
        counted = 0
        try:
            with gzip.GzipFile(fileobj=fh) as stream:
                while counted < declared and (chunk := stream.read(1 << 20)):
                    counted += len(chunk)
        except (OSError, EOFError, zlib.error):
            pass  # a damaged stream holds what was counted
        return counted


def _check_dicom_pixels(path: Path, header: Any, in_series: bool) -> None:
    """Quarantine a DICOM file from its header alone: float pixel data, a BitsAllocated other than 1, 8, 16 or 32,
    or, for an uncompressed transfer syntax, fewer bytes in the file than its Rows, Columns, frames and samples
    declare."""
    where = f" ({path.name})" if in_series else ""
    if "FloatPixelData" in header or "DoubleFloatPixelData" in header:
        raise Quarantined(f"floating-point pixel data{where}: no fixed range to map to 8 bits")
    bits = int(header.get("BitsAllocated", 0) or 0)
    if bits not in (1, 8, 16, 32):
        raise Quarantined(f"BitsAllocated {bits}{where}: expected 1, 8, 16 or 32")
    syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and not getattr(syntax, "is_compressed", True):
        declared = (int(header.get("Rows", 0) or 0) * int(header.get("Columns", 0) or 0)
                    * int(header.get("NumberOfFrames", 1) or 1) * int(header.get("SamplesPerPixel", 1) or 1)
                    * bits + 7) // 8
        held = path.stat().st_size
        if held < declared:
            raise Quarantined(f"its header declares {declared} bytes of pixels but the file{where} holds {held}: "
                              "truncated, or a header that does not describe the file")


def _header(path: Path, in_series: bool) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # InvalidDicomError, a truncated header (OSError, EOFError), a bad value (ValueError)
        raise Quarantined(f"unreadable DICOM{' file ' + path.name if in_series else ''}: {exc}") from None


def _check_series(headers: list[Any]) -> None:
    """A series folder must hold one series of equally shaped single-frame slices with an order."""
    series = {h.get("SeriesInstanceUID") for h in headers}
    if len(series) > 1:
        raise Quarantined(f"series folder holds {len(series)} series (SeriesInstanceUID); give each its own folder")
    numbers = [h.get("InstanceNumber") for h in headers]
    if None in numbers or len(set(numbers)) != len(numbers):
        raise Quarantined("series folder: every file needs its own InstanceNumber (the slice order)")
    layout = {(h.get("Rows"), h.get("Columns"), h.get("BitsStored"), h.get("PixelRepresentation"),
               h.get("PhotometricInterpretation"), int(h.get("NumberOfFrames", 1) or 1)) for h in headers}
    if len(layout) > 1:
        raise Quarantined("series folder: its slices differ in size, pixel format or number of frames")


def _stored_range(header: Any) -> tuple[float, float]:
    """Physical values of the lowest and highest value ``BitsStored`` can hold, through Rescale Slope/Intercept."""
    bits = int(header.get("BitsStored", header.get("BitsAllocated", 16)))
    if header.get("PixelRepresentation", 0) == 1:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        low, high = 0, 2**bits - 1
    slope, intercept = float(header.get("RescaleSlope", 1.0)), float(header.get("RescaleIntercept", 0.0))
    a, b = sorted((low * slope + intercept, high * slope + intercept))
    return a, b
