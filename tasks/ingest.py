"""Ingest: read a source dataset into a normalized working copy plus ``manifest.parquet``.

Sources (see ``tasks.core.sources.readers``): an image folder
``<root>/<label>/*.png|jpg|jpeg|tif|tiff|bmp|dcm|dicom|nii|nii.gz`` and DICOM series folders (splits from an
optional ``<root>/splits.csv`` with columns path,split), a CSV/parquet table
``path,label[,split]``, a MedMNIST-style ``.npz``, the bundled example (``example:digits``), or any of these at a
revision of a git/DVC repository.

Normalization, in this order, for every image:

1. An EXIF orientation (photos) is applied. DICOM and NIfTI sources become 8-bit slices first
   (``tasks.core.sources.medical``: modality LUT, MONOCHROME1 inverted, one window for the dataset, one image per
   selected slice of a volume). Images narrower or shorter than ``data.min_size`` pixels are quarantined (checked on the
source size). 2. 16-bit images (Pillow modes ``I;16*`` and ``I``) are scaled to 8 bits by the full 16-bit range,
   ``round(v * 255 / 65535)``, so one intensity means the same in every image (no per-image stretching).
3. Conversion to ``data.channels``: 1 -> Pillow ``L`` (ITU-R 601-2 luma), 3 -> ``RGB``; an alpha channel is dropped;
   other modes go through Pillow's ``convert``.
4. Resizing to ``data.image_size`` squared with Pillow's bilinear filter, which widens its support when
   downscaling (antialiased). Non-square images are stretched, not cropped.
5. Stored as an 8-bit PNG ``images/<label>/<image_id>.png``; ``image_id`` is the sha256 of the PNG bytes.
   An image identical to one already stored is quarantined as a duplicate (it would leak across splits).

The manifest metadata records, for medical sources, ``intensity`` (stored pixel -> physical value, the window, the
unit and the common pixel spacing; ``MedicalReader.record``) and ``pixel_spacing`` (image_id -> (row, column) mm of
each stored image whose source gives its spacing).

Images without a split get one, drawn per source item (all slices of one volume or series share a split, so no
patient is on both sides): each class is split on its own (stratified) into train/val/test with
``data.val_fraction`` and ``data.test_fraction``, seeded by ``data.split_seed``; a class too small for the
fractions keeps at least one training image. A split given by the source is kept.

Bad input never stops the run midway: each bad item goes to ``quarantine.parquet`` (source_path, reason), before
anything of it is written: a label that cannot be a folder name (``tasks.core.sources.readers.label_problem``), pixels
without a fixed 8-bit mapping (float, signed or 32-bit integers: ``check_pixel_format``), a decompression bomb, the
minority kind in a folder mixing ordinary and medical images, and both copies of one image under two labels. The run
stops with a ``UserError`` only when no usable image remains, a class named by the source lost every image, or a class
would have no training image.

``fingerprint_source`` (the DAG's first step) hashes the source on every run, so a changed source re-runs ingest.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import warnings
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps
from rich.console import Console
from rich.progress import track
from rich.table import Table

from synthaug.tasks.core.errors import Quarantined, UserError
from synthaug.tasks.core.io.files import write_atomic
from synthaug.tasks.core.io.manifest import SPLITS, write_manifest
from synthaug.tasks.core.labels import colliding_labels
from synthaug.tasks.core.params.data import DataParams
from synthaug.tasks.core.publishing.public import public_lineage
from synthaug.tasks.core.sources.example import SOURCE as EXAMPLE
from synthaug.tasks.core.sources.medical import MedicalReader, Spacing, is_medical
from synthaug.tasks.core.sources.readers import (
    HashCache,
    Item,
    content_hash,
    fetch_dvc,
    label_problem,
    read_source,
    source_files,
)

HASH_CACHE = "hashes.json"  # <cache_dir>/hashes.json: source files' sha256 by size, mtime and inode
INTERPOLATION = "bilinear (Pillow, antialiased on downscale)"
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
QUARANTINE_SCHEMA = pa.schema([
    pa.field("source_path", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
])


@dataclass(frozen=True)
class IngestResult:
    """Where ingest wrote its tables, and how many images each class has per split."""

    manifest_path: Path
    quarantine_path: Path
    counts: dict[str, dict[str, int]]  # label -> split -> images
    quarantined: int


def ingest(params: DataParams, out_dir: Path, *, cache_dir: Path) -> IngestResult:
    """Read ``params.source`` into ``out_dir``: ``images/<label>/<id>.png``, manifest.parquet, quarantine.parquet.

    ``cache_dir`` keeps what is fetched or generated (the example, DVC copies keyed by commit) between runs.
    """
    console = Console(stderr=True)
    path, lineage = locate(params, cache_dir, console)
    source = read_source(path)
    refuse_colliding_labels(source.items, params.source)  # before anything is written
    lineage["content_hash"] = content_hash(source, HashCache(cache_dir / HASH_CACHE))

    # Stale images of an earlier run must not survive next to the new manifest.
    shutil.rmtree(out_dir / "images", ignore_errors=True)
    (out_dir / "manifest.parquet").unlink(missing_ok=True)
    medical = None
    if medical_majority(source.items):
        medical = MedicalReader(preset=params.window, center=params.window_center, width=params.window_width,
                                slice_axis=params.slice_axis, slices=params.slice_range)
    rows: list[dict[str, Any]] = []
    rejected: list[tuple[str, str]] = []
    first: dict[str, tuple[str, str]] = {}  # image_id -> (ref, label) of the image stored under it
    conflicts: dict[str, str] = {}  # image_id -> why the first image stored under it is withdrawn
    spacings: dict[str, list[float]] = {}  # image_id -> (row, column) mm of the stored image
    for item in track(source.items, description="reading images", console=console, transient=True):
        try:
            images = open_images(item, medical)
        except Quarantined as exc:
            rejected.append((item.ref, str(exc)))
            continue
        for ref, image, spacing in images:
            try:
                data = png(normalize(image, params))
                image_id = hashlib.sha256(data).hexdigest()
                if image_id in first:
                    raise Quarantined(_duplicate(image_id, first[image_id], item.label, ref, conflicts))
            except Quarantined as exc:
                rejected.append((ref, str(exc)))
                continue
            first[image_id] = (ref, str(item.label))
            rel = f"images/{item.label}/{image_id}.png"
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (out_dir / rel).write_bytes(data)
            rows.append({"image_id": image_id, "path": rel, "label": item.label, "split": item.split,
                         "item": item.ref})
            if None not in spacing:  # resizing stretches each axis on its own
                spacings[image_id] = [s * n / params.image_size for s, n in zip(spacing, image.size[::-1], strict=True)]
    for row in [r for r in rows if r["image_id"] in conflicts]:  # one image, two labels: neither label is trusted
        rows.remove(row)
        spacings.pop(row["image_id"], None)
        (out_dir / row["path"]).unlink()
        rejected.append((first[row["image_id"]][0], conflicts[row["image_id"]]))

    quarantine_path = out_dir / "quarantine.parquet"
    write_quarantine(rejected, quarantine_path)
    frame = manifest_frame(rows, params)
    check_usable(frame, params.source, quarantine_path, len(rejected), expected_labels(source.items))
    intensity = None if medical is None else medical.record(common_spacing(spacings, len(frame)))
    # The lineage travels with every published version: its locations in their public form (no local path).
    manifest_path = write_manifest(frame, out_dir / "manifest.parquet",
                                   public_lineage({**lineage, "interpolation": INTERPOLATION,
                                                   "params": params.model_dump(), "intensity": intensity,
                                                   "pixel_spacing": spacings}))
    counts = {label: dict(Counter(group)) for label, group in frame.groupby("label")["split"]}
    print_summary(console, counts, rejected)
    return IngestResult(manifest_path, quarantine_path, counts, len(rejected))


def fingerprint_source(params: DataParams, out: Path, *, cache_dir: Path) -> dict[str, Any]:
    """Write ``out`` (JSON): the source's lineage and content hash, which ingest's cache key and dvc.yaml depend on.

    Cheap on an unchanged source: files whose size, mtime and inode are as last seen are not read again
    (``HashCache``). A DVC source is fetched first (once per resolved commit; ingest reuses the copy). The file holds
    nothing that changes while the source does not, so an unchanged source leaves ingest and every later step cached.
    """
    path, lineage = locate(params, cache_dir, Console(stderr=True))
    source = source_files(path)
    lineage["content_hash"] = content_hash(source, HashCache(cache_dir / HASH_CACHE))
    lineage["files"] = len(source.files)
    write_atomic(json.dumps(lineage, sort_keys=True, indent=1) + "\n", out)
    return lineage


def locate(params: DataParams, cache_dir: Path, console: Console) -> tuple[Path, dict[str, Any]]:
    """The local path of the source, fetching or writing it first, and its lineage for the manifest metadata."""
    lineage: dict[str, Any] = {"source": params.source, "repo": params.repo, "rev": params.rev, "resolved_rev": None}
    if params.repo is not None:
        console.print(f"fetching {params.source} from {params.repo} at {params.rev or 'HEAD'}")
        path, lineage["resolved_rev"] = fetch_dvc(params.repo, params.rev, params.source, cache_dir)
        return path, lineage
    if params.rev is not None:
        raise UserError(f"data.rev is {params.rev!r} but data.repo is null; set data.repo or set data.rev: null")
    if params.source == EXAMPLE:
        path = cache_dir / "example"
        if not path.exists():
            from synthaug.tasks.core.sources.example import write_example

            console.print(f"writing the bundled example to {path}")
            partial = cache_dir / "example.partial"  # renamed when complete: an interrupted write is never reused
            shutil.rmtree(partial, ignore_errors=True)
            write_example(partial)
            partial.replace(path)
        return path, lineage
    path = Path(params.source).expanduser()
    if not path.exists():
        raise UserError(f"data.source: {path} not found; set data.source to an image folder, a .csv/.parquet "
                        f"table, a .npz file or {EXAMPLE}")
    return path, lineage


def medical_majority(items: Sequence[Item]) -> bool:
    """Whether the source is a medical one: DICOM/NIfTI items are at least as many as ordinary images.

    One kind per dataset (ordinary images have no physical unit to share a window with); the fewer kind is
    quarantined, so one stray or corrupt file of the other kind never costs the whole dataset.
    """
    files = [item.pixels for item in items if isinstance(item.pixels, Path)]
    medical = sum(is_medical(path) for path in files)
    return medical > 0 and 2 * medical >= len(files)


def expected_labels(items: Sequence[Item]) -> set[str]:
    """Classes the source names for at least one file it does not refuse unread: each must end up with images."""
    return {item.label for item in items
            if item.label and item.pixels is not None and label_problem(item.label) is None}


def refuse_colliding_labels(items: Sequence[Item], source: str) -> None:
    """UserError naming both spellings when two classes differ only in case, Unicode normalization, invisible
    characters or look-alike letters of another script (``tasks.core.labels.label_key``): their folders would
    merge on a case-insensitive or normalizing file system (macOS, Windows) and readers cannot tell them apart."""
    pairs = colliding_labels(expected_labels(items))
    if pairs:
        shown = "; ".join(f"{a!r} and {b!r} ({a!a} vs {b!a})" for a, b in pairs[:5])
        raise UserError(f"data.source {source}: class labels that differ only in case, Unicode form or look-alike "
                        f"letters: {shown}{' ...' if len(pairs) > 5 else ''}; they would collide as folders on "
                        "case-insensitive file systems: rename or merge those classes in the source")


def _duplicate(image_id: str, stored: tuple[str, str], label: str | None, ref: str, conflicts: dict[str, str]) -> str:
    """Why an image equal to one already stored is quarantined; same bytes under another label withdraw both."""
    first_ref, first_label = stored
    if label == first_label:
        return f"duplicate of {first_ref}"
    conflicts.setdefault(image_id, f"the same image as {ref} (label {label!r}) under label {first_label!r}: "
                                   "conflicting labels, both quarantined; keep it in one class")
    return (f"the same image as {first_ref} (label {first_label!r}) under label {label!r}: conflicting labels, "
            "both quarantined; keep it in one class")


def open_images(item: Item, medical: MedicalReader | None) -> list[tuple[str, Image.Image, Spacing]]:
    """(ref, image, spacing in mm per image axis) per image of the item: one, or a volume's selected slices.

    ``medical`` is None when the source holds no DICOM/NIfTI; when it does, ordinary images are refused, since
    their pixels have no physical unit to share the dataset's window.
    """
    problem = label_problem(item.label) if item.pixels is not None else None
    if problem is not None:  # before anything is decoded or written: the label becomes a folder name
        raise Quarantined(problem)
    if medical is not None and item.pixels is not None:
        if isinstance(item.pixels, Path) and is_medical(item.pixels):
            return [(ref, Image.fromarray(pixels), spacing)
                    for ref, pixels, spacing in medical.read(item.pixels, item.ref)]
        raise Quarantined("an ordinary image among DICOM/NIfTI images has no physical unit; convert it to DICOM or "
                          "NIfTI, or ingest it in a dataset of its own")
    if isinstance(item.pixels, Path) and is_medical(item.pixels):
        raise Quarantined("a DICOM/NIfTI image among more ordinary images; ingest medical images in a dataset of "
                          "their own")
    return [(item.ref, open_image(item), (None, None))]


def common_spacing(spacings: dict[str, list[float]], images: int) -> list[float] | None:
    """The (row, column) spacing every stored image shares, or None when some differ or are unknown."""
    values = list(spacings.values())
    if len(values) != images or not values or not np.allclose(values, values[0], rtol=1e-6, atol=0):
        return None
    return values[0]


def open_image(item: Item) -> Image.Image:
    """Decode an item's pixels; anything unreadable raises Quarantined with the reason."""
    if item.pixels is None:  # refused by the reader
        raise Quarantined(str(item.problem))
    if isinstance(item.pixels, np.ndarray):
        pixels = item.pixels
        return Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels)
    if item.pixels.stat().st_size == 0:
        raise Quarantined("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that: refuse those too, before decoding.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(item.pixels) as image:
                frames = getattr(image, "n_frames", 1)
                if frames > 1:  # an animated GIF or APNG (whatever its name says), a multi-page TIFF
                    raise Quarantined(f"an animated or multi-frame {image.format} image ({frames} frames); only its "
                                      "first frame could be read: save the frames as separate still images")
                image.load()  # decode now: a truncated file fails here, not later
                check_pixel_format(image)
                return ImageOps.exif_transpose(image)  # an upright copy (cameras store rotation in EXIF)
    except Quarantined:
        raise
    except Exception as exc:  # a damaged file can fail anywhere in a decoder (struct, index, EOF, ... errors)
        raise Quarantined(f"unreadable image: {type(exc).__name__}: {exc}") from None


def check_pixel_format(image: Image.Image) -> None:
    """Refuse pixels without one fixed mapping to 8 bits: floats (no range, maybe NaN), signed or 32-bit integers.

    Pillow opens unsigned 16-bit files as ``I;16*`` (scaled by the full range, see ``normalize``); its mode ``I``
    holds signed or 32-bit integers, except from PNG, which has no signed samples.
    """
    if image.mode == "F":
        nan = " and holds NaN" if np.isnan(np.asarray(image)).any() else ""
        raise Quarantined(f"floating-point pixels have no fixed range{nan}; save the image as 8- or 16-bit unsigned "
                          "integers (the mapping is yours to choose)")
    if image.mode == "I" and image.format != "PNG":
        raise Quarantined("signed or 32-bit integer pixels have no fixed 8-bit mapping; save the image as 8- or "
                          "16-bit unsigned integers (the mapping is yours to choose)")


def normalize(image: Image.Image, params: DataParams) -> Image.Image:
    """Size check, 16 -> 8 bit, channel conversion, square resize (see the module docstring)."""
    if min(image.size) < params.min_size:
        raise Quarantined(f"image is {image.width}x{image.height} px, smaller than data.min_size={params.min_size}")
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.round(np.clip(wide, 0, 65535) * (255 / 65535)).astype(np.uint8))
    try:
        image = image.convert("L" if params.channels == 1 else "RGB")
    except ValueError as exc:  # modes Pillow cannot convert (LAB, CMYK to L, ...)
        raise Quarantined(f"pixel mode {image.mode} cannot be converted ({exc}); save the image as RGB or "
                          "grayscale") from None
    size = (params.image_size, params.image_size)
    return image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def assign_splits(labels: Sequence[str], *, val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """A stratified train/val/test split: each class is cut on its own with the same fractions.

    Cutting per class (rather than sklearn's ``stratify``, which refuses a class of one image) lets a tiny class
    keep all its images in train; every class keeps at least one training image.
    """
    splits = ["train"] * len(labels)
    members: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        members[label].append(i)
    rng = np.random.default_rng(seed)
    for label in sorted(members):
        n = len(members[label])
        n_test = min(int(n * test_fraction + 0.5), n - 1)
        n_val = min(int(n * val_fraction + 0.5), n - 1 - n_test)
        order = rng.permutation(members[label])
        for i in order[:n_test]:
            splits[i] = "test"
        for i in order[n_test:n_test + n_val]:
            splits[i] = "val"
    return splits


def manifest_frame(rows: list[dict[str, Any]], params: DataParams) -> pd.DataFrame:
    """Manifest rows for the stored real images; items without a split get one from ``assign_splits``.

    ``rows[i]["item"]`` names the source item an image came from. Splits are drawn per item, not per image: the
    slices of one volume (one patient) share a split, or val and test would hold near-copies of training slices
    and every score calibrated or measured on them (memorization thresholds, utility, the membership audit)
    would be wrong.
    """
    frame = pd.DataFrame(rows, columns=["image_id", "path", "label", "split", "item"])
    unsplit = frame["split"].isna().to_numpy()
    items = frame.loc[unsplit, ["item", "label"]].drop_duplicates("item")
    split_of = dict(zip(items["item"], assign_splits(list(items["label"]), val_fraction=params.val_fraction,
                                                     test_fraction=params.test_fraction, seed=params.split_seed),
                        strict=True))
    frame.loc[unsplit, "split"] = frame.loc[unsplit, "item"].map(split_of)
    frame = frame.drop(columns="item")
    frame["source"] = "real"
    for column in ("generator", "checkpoint", "reject_reason"):
        frame[column] = pd.Series([None] * len(frame), dtype=object)
    frame["seed"] = pd.Series([pd.NA] * len(frame), dtype="Int64")
    frame["accepted"] = True
    frame["height"] = frame["width"] = params.image_size
    frame["channels"] = params.channels
    return frame


def check_usable(frame: pd.DataFrame, source: str, quarantine_path: Path, quarantined: int,
                 labels: Collection[str] = ()) -> None:
    """Stop when nothing usable is left, a class of ``labels`` lost every image, or a class has no training image;
    the message names the class and the fix."""
    if frame.empty:
        raise UserError(f"data.source {source}: no usable image ({quarantined} quarantined, reasons in "
                        f"{quarantine_path}); point data.source at <root>/<label>/*.png, a path,label table or "
                        f"a MedMNIST .npz")
    lost = sorted(set(labels) - set(frame["label"]))
    if lost:
        names = ", ".join(repr(label) for label in lost)
        raise UserError(f"data.source {source}: no usable image of class {names} (every file quarantined, reasons in "
                        f"{quarantine_path}); fix or replace its files, or remove the class")
    no_train = sorted(set(frame["label"]) - set(frame.loc[frame["split"] == "train", "label"]))
    if no_train:
        names = ", ".join(repr(label) for label in no_train)
        raise UserError(f"data.source {source}: no training image for class {names} (its images are all in "
                        f"val/test/heldback or quarantined, see {quarantine_path}); mark at least one of its "
                        f"images split=train in the source, or remove the class")


def write_quarantine(rejected: list[tuple[str, str]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {"source_path": [ref for ref, _ in rejected], "reason": [reason for _, reason in rejected]}
    pq.write_table(pa.table(columns, schema=QUARANTINE_SCHEMA), path)


def print_summary(console: Console, counts: dict[str, dict[str, int]], rejected: list[tuple[str, str]],
                  shown: int = 20) -> None:
    table = Table(title="ingested images", show_footer=True)
    table.add_column("class", footer="total")
    for split in SPLITS:
        table.add_column(split, justify="right", footer=str(sum(c.get(split, 0) for c in counts.values())))
    for label, per_split in sorted(counts.items()):
        table.add_row(label, *(str(per_split.get(split, 0)) for split in SPLITS))
    console.print(table)
    if rejected:
        console.print(f"[yellow]{len(rejected)} quarantined[/] (all in quarantine.parquet):")
        for ref, reason in rejected[:shown]:
            console.print(f"  {ref}: {reason}", highlight=False, markup=False)
        if len(rejected) > shown:
            console.print(f"  ... and {len(rejected) - shown} more")
