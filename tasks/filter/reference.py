"""The real side of the filter: the real train set's features, pixels and class k-NN radii, saved once for the
scoring shards."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from synthaug.models.judge import Judge
from synthaug.models.metrics import knn_radii
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.files import atomic_path, file_sha256
from synthaug.tasks.core.io.images import load_images
from synthaug.tasks.core.io.manifest import iter_manifest
from synthaug.tasks.core.io.shards import digest
from synthaug.tasks.core.params.filter import FilterParams
from synthaug.tasks.core.scoring.features import JUDGE_FILE, embed, load_judge_step
from synthaug.tasks.core.scoring.rules import Thresholds, memorization_thresholds, pixels_uint8

EMBED_BLOCK = 1024  # images decoded at once when embedding the real reference


@dataclass
class Reference:
    """The real train set every synthetic image is compared with, in feature and pixel space."""

    judge: Judge
    class_names: list[str]
    extractor: str | None
    feats: torch.Tensor  # (N, F) float64
    pixels: np.ndarray  # (N, D) uint8, as stored
    labels: np.ndarray  # class name of each real train row
    radii: np.ndarray  # class-conditional k-NN radius of each real train row


REFERENCE_DIR = "reference"
REFERENCE_ARRAYS = ("feats", "pixels", "labels", "radii")


def _embed_files(root: Path, paths: list[str], judge: Judge, extractor: str | None) -> tuple[torch.Tensor,
                                                                                           np.ndarray]:
    """Features (N, F) float64 and uint8 pixels (N, D) of stored images, read ``EMBED_BLOCK`` images at a time."""
    feats, pixels = [torch.empty(0, 0, dtype=torch.float64)], [np.empty((0, 0), dtype=np.uint8)]
    for start in range(0, len(paths), EMBED_BLOCK):
        x = load_images(root, paths[start:start + EMBED_BLOCK], judge.image_shape[0])
        feats.append(embed(x, judge, extractor=extractor).double())
        pixels.append(pixels_uint8(x))
    return torch.cat(feats[1:]) if len(feats) > 1 else feats[0], np.concatenate(pixels[1:] or pixels)


def build_reference(ingest_manifest: Path, judge: Judge, class_names: list[str],
               params: FilterParams) -> tuple[Reference, Thresholds]:
    """The real train set's features, pixels and class k-NN radii, and the thresholds calibrated on real val.

    The manifest is read in chunks and the images in blocks: what stays in memory is O(N (F + D)) for N real
    images (features float64, pixels uint8), never a matrix over pairs of images.
    """
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    known = set(class_names)
    for chunk in iter_manifest(ingest_manifest, columns=["path", "label", "split", "source"]):
        chunk = chunk[(chunk["source"] == "real") & chunk["label"].astype(str).isin(known)]
        for split, items in rows.items():
            part = chunk[chunk["split"] == split]
            items.extend(zip(part["path"], part["label"].astype(str), strict=True))
    train, val = rows["train"], rows["val"]
    if len(train) <= params.realism_k:
        raise UserError(f"{ingest_manifest}: {len(train)} real train images; filter.realism_k={params.realism_k} "
                        "needs more than k")
    if not val:
        raise UserError(f"{ingest_manifest}: no real val images; the memorization thresholds are calibrated on "
                        "real val -> train distances, so the source needs a val split")
    root = ingest_manifest.parent
    feats, pixels = _embed_files(root, [p for p, _ in train], judge, params.extractor)
    val_feats, val_pixels = _embed_files(root, [p for p, _ in val], judge, params.extractor)
    device = judge.temperature.device  # the searches run where the judge does: the GPU when there is one
    memo = memorization_thresholds(val_feats.to(device), feats, torch.from_numpy(val_pixels).to(device), pixels,
                                   params.memorization_quantile)
    median_nn = float(np.median(knn_radii(feats.to(device), 1)))
    thresholds = Thresholds(min_confidence=params.min_confidence, memorization=memo, realism_k=params.realism_k,
                            duplicate_distance=params.duplicate_fraction * median_nn,
                            median_real_nn_distance=median_nn)
    labels = np.array([label for _, label in train])
    ref = Reference(judge=judge, class_names=class_names, extractor=params.extractor, feats=feats, pixels=pixels,
                     labels=labels, radii=class_radii(feats.to(device), labels, params.realism_k))
    return ref, thresholds


def save_reference(ref: Reference, directory: Path, judge_dir: Path) -> str:
    """Write the arrays the scoring shards read (each file atomically); returns their key (a content hash that
    also covers the judge and the extractor, which score the synthetic side)."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"feats": ref.feats.cpu().numpy(), "pixels": ref.pixels, "labels": ref.labels, "radii": ref.radii}
    hashes = []
    for name in REFERENCE_ARRAYS:
        with atomic_path(directory / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, arrays[name])
        hashes.append(file_sha256(directory / f"{name}.npy"))
    extractor = file_sha256(Path(ref.extractor)) if ref.extractor else None
    return digest(hashes, file_sha256(judge_dir / JUDGE_FILE), extractor, ref.class_names)


@functools.lru_cache(maxsize=2)
def load_reference(directory: Path, key: str, judge_dir: Path, extractor: str | None, device: str) -> Reference:
    """The reference a shard scores against, read once per worker process (``key`` keys the cache). The arrays
    are memory-mapped: a worker pages in what its searches touch."""
    del key
    judge, class_names = load_judge_step(judge_dir, device=device)
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="c") for name in REFERENCE_ARRAYS}
    return Reference(judge=judge, class_names=class_names, extractor=extractor,
                      feats=torch.from_numpy(arrays["feats"]), pixels=arrays["pixels"],
                      labels=np.asarray(arrays["labels"]), radii=np.asarray(arrays["radii"]))


def class_radii(feats: torch.Tensor, labels: np.ndarray, k: int) -> np.ndarray:
    """Per real row: distance to its k-th nearest row of the same class (k capped at the class size - 1).

    A class of one row has no neighbour of its own: that row gets its k-NN radius among all rows.
    """
    radii = np.empty(len(labels))
    for label in pd.unique(labels):
        rows = np.flatnonzero(labels == label)
        if rows.size >= 2:
            radii[rows] = knn_radii(feats[torch.from_numpy(rows)], min(k, rows.size - 1))
        else:
            radii[rows] = knn_radii(feats, min(k, len(labels) - 1))[rows]
    return radii
