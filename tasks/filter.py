"""The ``filter`` step: score every synthetic image, reject with a reason, top up short classes, never silently.

Every synthetic image of ``generate/manifest.parquet`` gets these scores (float64 ``score_*`` manifest columns),
measured against the real **train** split in the judge's feature space (or ``filter.extractor``'s):

- ``score_confidence``: the judge's calibrated probability of the class the image was generated for.
- ``score_realism``: the realism score of Kynkäänniemi et al. 2019 against the real train images i *of the intended
  class*: max_i r_i / |f - f_i|, r_i being the distance from f_i to its ``realism_k``-th nearest neighbour within
  that class (k capped at the class size - 1; a class of one image uses that image's k-NN radius among all real
  images). It is >= 1 exactly when the image lies inside a real k-NN ball of its class (per-class precision's
  per-sample test). Class-conditional on purpose: the balls of sparse real images are wide, and with every class's
  balls in play a third of uniform-noise images landed inside one (digits, judge features); against its own class,
  none did. Capped at ``REALISM_CAP`` so an exact copy of a real image (inf) stays a finite number.
- ``score_nn_feature``: Euclidean feature distance to the nearest real train image.
- ``score_nn_pixel_corr``: the highest Pearson correlation of the pixels with any real train image (1 for a copy;
  blind to brightness and contrast changes).
- ``score_duplicate``: feature distance to the nearest *earlier kept* synthetic image of the same class (seed
  order; see below). NaN when there is none (the first kept image of a class), or for an unreadable image.

Each image gets the first failing ``reject_reason`` in this order (``accepted`` = no reason):

1. ``sanity``: unreadable or wrong-shaped file, non-finite values, values outside [-1, 1], or a constant image
   (``sanity_reason``; the detail is counted in ``filter_summary.json``).
2. ``label``: ``score_confidence < min_confidence``.
3. ``memorized_pixel``: ``score_nn_pixel_corr >=`` the pixel threshold; then ``memorized_feature``:
   ``score_nn_feature <=`` the feature threshold. Both thresholds come from real images the judge and the generator
   never trained on: the real **val** split's nearest distances to the train split (``memorization_thresholds``).
   A synthetic image nearer to a training image than all but ``memorization_quantile`` of real unseen images are
   is taken for a copy.
4. ``unrealistic``: ``score_realism < 1`` (outside every real k-NN ball of its class).
5. ``near_duplicate``: within ``duplicate_fraction`` x (median real train nearest-neighbour feature distance) of an
   earlier kept image of its class. Images that passed 1-4 are de-duplicated greedily in seed order
   (``models.metrics.pairwise_near_duplicates``): the lowest seed of a cluster stays, so a top-up never changes an
   earlier decision.
6. ``surplus``: accepted images beyond what the class needs (plan ``target - real``); the lowest seeds are kept.

Top-up: a class with fewer accepted images than it needs gets more, continuing its seed block after the largest
seed used (``tasks.generate.seeds_for``). Each round asks for ``ceil(shortfall / rate)`` images, ``rate`` being the
class's observed acceptance rate so far (floored at ``MIN_ACCEPTANCE_RATE``), for at most ``topup_rounds`` rounds
and ``floor(topup_budget * to_generate)`` extra images per class. A class still short is printed as a warning and
recorded in ``FilterResult.shortfall`` and ``filter_summary.json``.

``out_dir`` is a self-contained dataset root: ``manifest.parquet`` (every synthetic row, accepted or not, with all
scores), ``images/<label>/<label>_s<seed>.png`` (hard links to the generate step's files, or copies where links
are impossible; top-up images are sampled straight into it) and ``filter_summary.json``. Re-running resumes: files
already there are neither linked nor sampled again (top-up images sampled with another checkpoint are dropped
first), and at the end images the manifest does not list are removed, so the folder is exactly the dataset.

Scale: scoring and top-up sampling run in shards (``tasks.shards``) wherever ``run_shards`` sends them. The real
reference (features float64, pixels as stored uint8, class radii) is saved once per run to ``out_dir/reference/``
and memory-mapped by each shard; each shard writes its scores and features to ``out_dir/shards/`` and is skipped
by a re-run once finished. The nearest searches read the reference a block at a time
(``models.metrics.nearest_distance_streamed`` / ``nearest_correlation_streamed``) on the filter's device.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import Field
from rich.console import Console
from rich.table import Table
from rich.text import Text

from models.common import pick_device
from models.judge import Judge, JudgeConfig
from models.metrics import (
    knn_radii,
    nearest_correlation_streamed,
    nearest_distance_streamed,
    pairwise_near_duplicates,
    realism_score,
)
from models.training import checkpoint_hash
from tasks.errors import UserError
from tasks.generate import GenerateParams, Request, generate_sharded, seeds_for
from tasks.images import file_sha256, load_images
from tasks.judge import JUDGE_FILE, embed, load_judge_step
from tasks.logs import get_logger, progress
from tasks.manifest import COLUMNS, iter_manifest, read_manifest, read_manifests, write_manifest
from tasks.params_base import Section
from tasks.plan import natural_key, read_plan
from tasks.shards import (
    DEFAULT_SHARD_SIZE,
    SHARDS_DIR,
    RunShards,
    cut,
    digest,
    finished,
    remove_stale,
    remove_temporaries,
    run_in_process,
    write_table,
)

SUMMARY_FILE = "filter_summary.json"
MANIFEST_FILE = "manifest.parquet"
STATE_FILE = ".topup-checkpoint"  # sha256 of the checkpoint the top-up images in out_dir were sampled with
REJECT_REASONS = ("sanity", "label", "memorized_pixel", "memorized_feature", "unrealistic", "near_duplicate",
                  "surplus")
SCORE_COLUMNS = ("score_confidence", "score_realism", "score_nn_feature", "score_nn_pixel_corr", "score_duplicate")
MIN_ACCEPTANCE_RATE = 0.05  # floor of the observed rate when sizing a top-up (0 accepted would ask for infinity)
REALISM_CAP = 1e3
EMBED_BLOCK = 1024  # images decoded at once when embedding the real reference
CONSTANT_RANGE = 1 / 127.5  # max - min at or below one 8-bit grey level: a constant image
RANGE_TOLERANCE = 1e-6


class FilterParams(Section):
    """``filter`` section: the judge, the per-image tests and the top-up budget.

    judge: network and recipe of the judge classifier (trained by the ``judge`` step); the default trains in about
      15 s on ~900 16x16 images on one CPU core.
    extractor: a local TorchScript feature-extractor file replacing the judge's features for every distance
      (nothing is downloaded; ``torch.export`` ``.pt2`` archives are refused, since loading one can run pickled
      code); null: the judge's penultimate features.
    device: where the judge trains and runs.
    min_confidence: least calibrated judge probability of the intended class (label consistency).
    realism_k: neighbour rank of the real k-NN balls of the realism test.
    memorization_quantile: share of real unseen (val) images that would count as copies under the thresholds;
      lower is more lenient.
    duplicate_fraction: near-duplicate distance as a fraction of the median real nearest-neighbour distance (on
      the digits example the closest two real train images are 0.26 x that median apart).
    topup_rounds: extra generation rounds for classes left short (0: none, only reported).
    topup_budget: extra images per class at most, as a factor of the plan's ``to_generate``.
    """

    judge: JudgeConfig = JudgeConfig(width=32, feature_dim=128, steps=500, batch_size=64, lr=2e-3)
    extractor: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    min_confidence: float = Field(0.5, ge=0.0, le=1.0)
    realism_k: int = Field(3, ge=1)
    memorization_quantile: float = Field(0.01, ge=0.0, le=0.5)
    duplicate_fraction: float = Field(0.2, ge=0.0, le=1.0)
    topup_rounds: int = Field(3, ge=0)
    topup_budget: float = Field(2.0, ge=0.0)


@dataclass(frozen=True)
class MemorizationThresholds:
    """A synthetic image is memorized when ``nn_feature <= feature_distance`` or ``nn_pixel_corr >= pixel_correlation``.

    feature_distance: the ``quantile`` of real holdout -> train nearest feature distances.
    pixel_correlation: the ``1 - quantile`` quantile of real holdout -> train highest pixel correlations.
    """

    feature_distance: float
    pixel_correlation: float
    quantile: float
    n_holdout: int


@dataclass(frozen=True)
class Thresholds:
    """Every threshold the filter used, as written to ``filter_summary.json``."""

    min_confidence: float
    memorization: MemorizationThresholds
    realism_k: int
    duplicate_distance: float
    median_real_nn_distance: float


@dataclass(frozen=True)
class FilterResult:
    manifest_path: Path
    summary_path: Path
    accepted: dict[str, int]
    needed: dict[str, int]
    shortfall: dict[str, int]  # classes still short after the top-up: label -> images missing
    generated: dict[str, int]
    rounds_used: int
    thresholds: Thresholds
    rejected: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> reason -> count

    @property
    def met(self) -> bool:
        return not self.shortfall


# ------------------------------------------------------------------------------------------------- pure helpers


def sanity_reason(images: torch.Tensor) -> list[str | None]:
    """Per image (N, C, H, W): ``non_finite`` (NaN or inf), ``out_of_range`` (outside [-1, 1]), ``constant``
    (max - min within one 8-bit grey level), or None for a sane image; the first that applies."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    x = images.detach().reshape(images.shape[0], -1).double().cpu()
    finite = torch.isfinite(x).all(dim=1)
    safe = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    lo, hi = safe.min(dim=1).values, safe.max(dim=1).values
    out: list[str | None] = []
    for i in range(x.shape[0]):
        if not finite[i]:
            out.append("non_finite")
        elif lo[i] < -1 - RANGE_TOLERANCE or hi[i] > 1 + RANGE_TOLERANCE:
            out.append("out_of_range")
        elif hi[i] - lo[i] <= CONSTANT_RANGE + RANGE_TOLERANCE:
            out.append("constant")
        else:
            out.append(None)
    return out


def memorization_thresholds(holdout_feats: torch.Tensor | np.ndarray, train_feats: torch.Tensor | np.ndarray,
                            holdout_pixels: torch.Tensor | np.ndarray, train_pixels: torch.Tensor | np.ndarray,
                            quantile: float) -> MemorizationThresholds:
    """Memorization thresholds calibrated on real images that were not trained on (DESIGN.md).

    Real holdout images are new samples of the data distribution, so their distances to the training set are
    what "new" looks like. A synthetic image nearer to a training image than all but a ``quantile`` share of real
    holdout images is treated as a copy: in feature space by distance, in pixel space by Pearson correlation.
    Both thresholds are inclusive and clamped so an exact copy is always caught (a real holdout image that is
    itself a copy would otherwise put the threshold at distance 0 / correlation 1, which round-off can miss).

    Args:
        holdout_feats: features (M, F) of real holdout images.
        train_feats: features (N, F) of the real training images.
        holdout_pixels: the same holdout images (M, ...) in [-1, 1] (flattened here).
        train_pixels: the training images (N, ...) in [-1, 1], or their 8-bit levels uint8 (N, D) (``pixels_uint8``).
        quantile: in [0, 0.5]; the share of real holdout images the thresholds would flag.
    """
    if not 0.0 <= quantile <= 0.5:
        raise ValueError(f"quantile must be in [0, 0.5], got {quantile}")
    nn_feat = nearest_distance_streamed(holdout_feats, train_feats)
    nn_corr = nearest_correlation_streamed(holdout_pixels, train_pixels)
    if nn_feat.shape[0] != nn_corr.shape[0]:
        raise ValueError(f"holdout_feats has {nn_feat.shape[0]} rows but holdout_pixels {nn_corr.shape[0]}")
    feat = float(np.quantile(nn_feat, quantile))
    corr = float(np.quantile(nn_corr, 1.0 - quantile))
    scale = float(np.median(nn_feat))
    return MemorizationThresholds(feature_distance=max(feat, 1e-6 * scale, 1e-12),
                                  pixel_correlation=min(corr, 1.0 - 1e-9), quantile=quantile,
                                  n_holdout=int(nn_feat.shape[0]))


def pixels_uint8(images: torch.Tensor) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] as their stored 8-bit levels, uint8 (N, C*H*W): an eighth of float64's
    memory, and the same Pearson correlations (a correlation does not change under v -> v / 127.5 - 1)."""
    return ((images.detach().cpu().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).reshape(
        images.shape[0], -1).numpy()


def topup_count(shortfall: int, accepted: int, generated: int, budget_left: int) -> int:
    """Images to sample for a class short by ``shortfall``: shortfall / observed acceptance rate, within budget.

    The rate is ``accepted / generated`` so far, floored at ``MIN_ACCEPTANCE_RATE``; with nothing generated yet it
    is taken as 1.
    """
    if shortfall <= 0 or budget_left <= 0:
        return 0
    rate = accepted / generated if generated > 0 else 1.0
    return min(math.ceil(shortfall / max(rate, MIN_ACCEPTANCE_RATE)), budget_left)


def reject_reasons(frame: pd.DataFrame, feats: torch.Tensor, thresholds: Thresholds) -> tuple[list[str | None],
                                                                                               np.ndarray]:
    """The reject reason of every row (steps 1-5 of the module docstring; not ``surplus``) and ``score_duplicate``.

    Args:
        frame: rows with ``label``, ``seed``, ``sanity`` (detail or None) and the per-image ``score_*`` columns.
        feats: their features (N, F); rows of unreadable images may hold NaN.
        thresholds: what the scores are compared with.
    """
    mem = thresholds.memorization
    reasons: list[str | None] = []
    for row in frame.itertuples(index=False):
        if row.sanity is not None and not pd.isna(row.sanity):
            reasons.append("sanity")
        elif not row.score_confidence >= thresholds.min_confidence:
            reasons.append("label")
        elif row.score_nn_pixel_corr >= mem.pixel_correlation:
            reasons.append("memorized_pixel")
        elif row.score_nn_feature <= mem.feature_distance:
            reasons.append("memorized_feature")
        elif not row.score_realism >= 1.0:
            reasons.append("unrealistic")
        else:
            reasons.append(None)
    duplicate = np.full(len(frame), np.nan)
    labels, seeds = frame["label"].to_numpy(), frame["seed"].to_numpy(dtype=np.int64)
    finite = torch.isfinite(feats).all(dim=1).numpy() if len(frame) else np.zeros(0, dtype=bool)
    for label in pd.unique(labels):
        rows = np.flatnonzero((labels == label) & finite)
        rows = rows[np.argsort(seeds[rows], kind="stable")]
        cand = np.array([r for r in rows if reasons[r] is None], dtype=np.int64)
        if cand.size == 0:
            continue
        dup = pairwise_near_duplicates(feats[torch.from_numpy(cand)], thresholds.duplicate_distance)
        for r in cand[dup.is_duplicate]:
            reasons[r] = "near_duplicate"
        kept = cand[~dup.is_duplicate]
        duplicate[rows] = _nearest_earlier(feats[torch.from_numpy(rows)].double(), seeds[rows],
                                           feats[torch.from_numpy(kept)].double(), seeds[kept])
    return reasons, duplicate


def _nearest_earlier(x: torch.Tensor, x_seeds: np.ndarray, kept: torch.Tensor, kept_seeds: np.ndarray,
                     chunk: int = 1024) -> np.ndarray:
    """Per row of ``x``: distance to the nearest row of ``kept`` with a lower seed (NaN when none)."""
    out = np.full(x.shape[0], np.nan)
    ks = torch.from_numpy(kept_seeds)
    for start in range(0, x.shape[0], chunk):
        stop = min(start + chunk, x.shape[0])
        d = torch.cdist(x[start:stop], kept, compute_mode="donot_use_mm_for_euclid_dist")  # exact 0 for a copy
        d = d.masked_fill(ks[None, :] >= torch.from_numpy(x_seeds[start:stop])[:, None], torch.inf)
        best = d.min(dim=1).values.numpy() if kept.shape[0] else np.full(stop - start, np.inf)
        out[start:stop] = np.where(np.isfinite(best), best, np.nan)
    return out


# ------------------------------------------------------------------------------------------------ the real side


@dataclass
class _Reference:
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


def _reference(ingest_manifest: Path, judge: Judge, class_names: list[str],
               params: FilterParams) -> tuple[_Reference, Thresholds]:
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
    ref = _Reference(judge=judge, class_names=class_names, extractor=params.extractor, feats=feats, pixels=pixels,
                     labels=labels, radii=class_radii(feats.to(device), labels, params.realism_k))
    return ref, thresholds


def _save_reference(ref: _Reference, directory: Path, judge_dir: Path) -> str:
    """Write the arrays the scoring shards read (each file atomically); returns their key (a content hash that
    also covers the judge and the extractor, which score the synthetic side)."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"feats": ref.feats.cpu().numpy(), "pixels": ref.pixels, "labels": ref.labels, "radii": ref.radii}
    hashes = []
    for name in REFERENCE_ARRAYS:
        tmp = directory / f"{name}.npy.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, arrays[name])
        tmp.replace(directory / f"{name}.npy")
        hashes.append(file_sha256(directory / f"{name}.npy"))
    extractor = file_sha256(Path(ref.extractor)) if ref.extractor else None
    return digest(hashes, file_sha256(judge_dir / JUDGE_FILE), extractor, ref.class_names)


@functools.lru_cache(maxsize=2)
def _load_reference(directory: Path, key: str, judge_dir: Path, extractor: str | None, device: str) -> _Reference:
    """The reference a shard scores against, read once per worker process (``key`` keys the cache). The arrays
    are memory-mapped: a worker pages in what its searches touch."""
    del key
    judge, class_names = load_judge_step(judge_dir, device=device)
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="c") for name in REFERENCE_ARRAYS}
    return _Reference(judge=judge, class_names=class_names, extractor=extractor,
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


# ---------------------------------------------------------------------------------------------------- scoring


def _load_checked(root: Path, paths: Sequence[str], shape: tuple[int, ...]) -> tuple[torch.Tensor, list[str | None]]:
    """Images as (N, C, H, W), NaN where a file could not be decoded; per image a load failure or None."""
    images = torch.full((len(paths), *shape), torch.nan)
    failures: list[str | None] = []
    for i, p in enumerate(paths):
        try:
            x = load_images(root, [p], shape[0])
        except (OSError, ValueError):  # missing, truncated or not an image
            failures.append("unreadable")
            continue
        if tuple(x.shape[1:]) != tuple(shape):
            failures.append("wrong_shape")
            continue
        images[i] = x[0]
        failures.append(None)
    return images, failures


def _score(rows: pd.DataFrame, root: Path, ref: _Reference) -> tuple[pd.DataFrame, torch.Tensor]:
    """Per-image scores (sanity detail + the score columns but ``score_duplicate``) and features of ``rows``."""
    images, failures = _load_checked(root, list(rows["path"]), ref.judge.image_shape)
    sanity = [f or s for f, s in zip(failures, sanity_reason(images), strict=True)]
    ok = torch.isfinite(images.reshape(len(rows), -1)).all(dim=1)
    n, idx = len(rows), torch.nonzero(ok).flatten()
    out = {c: np.full(n, np.nan) for c in SCORE_COLUMNS if c != "score_duplicate"}
    feats = torch.full((n, ref.feats.shape[1]), torch.nan, dtype=torch.float64)
    if len(idx):
        x = images[idx]
        index = {name: i for i, name in enumerate(ref.class_names)}
        target = torch.tensor([index[str(rows["label"].iloc[int(i)])] for i in idx])
        proba = ref.judge.predict_proba(x)
        f = embed(x, ref.judge, extractor=ref.extractor).double()
        feats[idx] = f
        sel = idx.numpy()
        out["score_confidence"][sel] = proba.gather(1, target[:, None])[:, 0].double().numpy()
        wanted = rows["label"].astype(str).to_numpy()[sel]
        device = ref.judge.temperature.device  # the searches run where the judge does: the GPU when there is one
        for label in pd.unique(wanted):
            mine, real = wanted == label, ref.labels == label
            out["score_realism"][sel[mine]] = np.minimum(
                realism_score(ref.feats[torch.from_numpy(real)].to(device), ref.radii[real], f[torch.from_numpy(mine)]),
                REALISM_CAP)
        out["score_nn_feature"][sel] = nearest_distance_streamed(f.to(device), ref.feats)
        out["score_nn_pixel_corr"][sel] = nearest_correlation_streamed(x.reshape(len(idx), -1).to(device),
                                                                       ref.pixels)
    scores = pd.DataFrame(out, index=rows.index)
    scores.insert(0, "sanity", pd.Series(sanity, index=rows.index, dtype=object))
    return scores, feats


def score_shard(root: Path, rows: list[tuple[str, str]], reference_dir: Path, reference_key: str, judge_dir: Path,
                extractor: str | None, device: str, table: Path, key: str, rank: int = 0) -> int:
    """Score one shard of images (``rows``: (path under ``root``, intended label)) against the saved reference;
    write the scores and features as the shard's table, atomically, with its key."""
    ref = _load_reference(reference_dir, reference_key, judge_dir, extractor, str(pick_device(device, rank)))
    scores, feats = _score(pd.DataFrame(rows, columns=["path", "label"]), root, ref)
    columns = {"sanity": pa.array(scores["sanity"].tolist(), pa.string())}
    columns |= {c: pa.array(scores[c].to_numpy(), pa.float64()) for c in scores.columns if c != "sanity"}
    flat = pa.array(feats.numpy().reshape(-1), pa.float64())
    columns["feature"] = pa.FixedSizeListArray.from_arrays(flat, feats.shape[1])
    write_table(pa.table(columns), table, key)
    return len(rows)


@dataclass(frozen=True)
class _Scorer:
    """Everything the scoring shards need, as paths and plain values (nothing here is sent as a tensor)."""

    root: Path
    reference_dir: Path
    reference_key: str
    judge_dir: Path
    extractor: str | None
    device: str
    shard_size: int
    run_shards: RunShards

    def __call__(self, frame: pd.DataFrame, prefix: str) -> tuple[pd.DataFrame, torch.Tensor, list[Path]]:
        """Scores (index of ``frame``) and features of ``frame``'s rows, shard by shard; and the shard tables."""
        items = list(zip(frame["path"], frame["label"].astype(str), frame["image_id"], strict=True))
        shards = cut(items, self.shard_size, self.root / SHARDS_DIR, prefix, [self.reference_key, self.device])
        calls = [{"root": self.root, "rows": [(p, label) for p, label, _ in items[s.start:s.stop]],
                  "reference_dir": self.reference_dir, "reference_key": self.reference_key,
                  "judge_dir": self.judge_dir, "extractor": self.extractor, "device": self.device,
                  "table": s.path, "key": s.key} for s in shards if not finished(s)]
        with progress(get_logger("filter"), f"filter: {prefix}", len(items), unit="images") as bar:
            done = len(items) - sum(len(c["rows"]) for c in calls)
            bar(done)

            def shard_done(i: int) -> None:
                nonlocal done
                done += len(calls[i]["rows"])
                bar(done)

            self.run_shards(score_shard, calls, on_done=shard_done)
        tables = [pq.read_table(s.path) for s in shards]
        scores = pd.concat([t.drop(["feature"]).to_pandas() for t in tables], ignore_index=True) if tables else \
            pd.DataFrame(columns=["sanity", *(c for c in SCORE_COLUMNS if c != "score_duplicate")])
        scores = scores.astype({c: "float64" for c in scores.columns if c != "sanity"}).set_index(frame.index)
        scores["sanity"] = pd.Series([v if isinstance(v, str) else None for v in scores["sanity"]],
                                     index=frame.index, dtype=object)
        dim = self._dim(tables)
        feats = torch.from_numpy(np.concatenate(
            [t.column("feature").combine_chunks().flatten().to_numpy().reshape(-1, dim) for t in tables]
            or [np.empty((0, dim))]))
        return scores, feats, [s.path for s in shards]

    def _dim(self, tables: list[pa.Table]) -> int:
        if tables:
            return tables[0].schema.field("feature").type.list_size
        return int(np.load(self.reference_dir / "feats.npy", mmap_mode="r").shape[1])


# ------------------------------------------------------------------------------------------------------ files


def _link(src: Path, dst: Path, image_id: str) -> None:
    """Make ``dst`` hold ``src`` (a hard link, else a copy) unless it already holds the same image."""
    if not src.is_file():
        raise UserError(f"{src}: listed in the generate manifest but missing; rerun `synthaug generate`")
    if dst.exists():
        if os.path.samefile(src, dst) or file_sha256(dst) == image_id:
            return
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not supported
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)


def _remove_unlisted(out_dir: Path, listed: set[str]) -> None:
    """Delete images under ``out_dir/images`` that the manifest does not list (left by earlier runs with other
    params or another checkpoint), so the folder is exactly the dataset the manifest describes."""
    images = out_dir / "images"
    for f in sorted(images.rglob("*")) if images.is_dir() else []:
        if f.is_file() and f.relative_to(out_dir).as_posix() not in listed:
            f.unlink()


def _prepare_topup_dir(out_dir: Path, digest: str, linked: set[str]) -> None:
    """Drop top-up images sampled with another checkpoint (a resumed run must not mix models)."""
    state = out_dir / STATE_FILE
    if state.is_file() and state.read_text().strip() != digest:
        images = out_dir / "images"
        for f in sorted(images.rglob("*.png")) if images.is_dir() else []:
            if f.relative_to(out_dir).as_posix() not in linked:
                f.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    state.write_text(digest + "\n")


# ------------------------------------------------------------------------------------------------------- step


def filter_step(ingest_dir: Path, generate_dir: Path, judge_dir: Path, plan_csv: Path, checkpoint_dir: Path,
                params: FilterParams, generate_params: GenerateParams, out_dir: Path, *,
                shard_size: int = DEFAULT_SHARD_SIZE, run_shards: RunShards = run_in_process,
                console: Console | None = None) -> FilterResult:
    """Score, reject with reasons, top up short classes and write the filtered dataset into ``out_dir``.

    Args:
        ingest_dir: the ingest step's folder (``manifest.parquet`` with the real train and val splits).
        generate_dir: the generate step's folder (``manifest.parquet`` + images).
        judge_dir: the judge step's folder (``judge.pt`` + ``judge.json``).
        plan_csv: the plan: ``target - real`` is what each class needs, ``to_generate`` sizes the top-up budget.
        checkpoint_dir: the generator checkpoint the top-up samples from (read only when a class is short).
        params: the ``filter`` section.
        generate_params: the ``generate`` section (seed base, batch size, device of the top-up).
        out_dir: the filtered dataset root (``manifest.parquet``, ``images/``, ``filter_summary.json``), with the
            saved reference (``reference/``) and the shard tables (``shards/``) a re-run resumes from.
        shard_size: images per scoring or top-up shard.
        run_shards: where the shards run (``tasks.shards.RunShards``; in this process by default).
        console: where the table and warnings are printed (stderr by default).

    Raises:
        UserError: a missing input, synthetic labels the judge does not know, no real val split, or top-up images
            that would come from another checkpoint than the generate step's.
    """
    console = console or Console(stderr=True)
    judge, class_names = load_judge_step(judge_dir, device=pick_device(params.device))
    plan = read_plan(plan_csv)
    frame, _ = read_manifest(generate_dir / MANIFEST_FILE)
    frame = frame[frame["source"] == "synthetic"].reset_index(drop=True)
    unknown = sorted(set(frame["label"].astype(str)) - set(class_names), key=natural_key)
    if unknown:
        raise UserError(f"{generate_dir / MANIFEST_FILE}: labels {unknown} are not among the judge's classes "
                        f"{class_names}; rerun `synthaug judge` on the same ingest")
    if frame["seed"].isna().any():
        raise UserError(f"{generate_dir / MANIFEST_FILE}: synthetic rows without a seed")
    ref, thresholds = _reference(ingest_dir / MANIFEST_FILE, judge, class_names, params)

    out_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out_dir)
    scorer = _Scorer(out_dir, out_dir / REFERENCE_DIR, _save_reference(ref, out_dir / REFERENCE_DIR, judge_dir),
                     judge_dir, params.extractor, params.device, shard_size, run_shards)
    for row in frame.itertuples(index=False):
        _link(generate_dir / row.path, out_dir / row.path, row.image_id)
    linked = set(frame["path"])

    needed = {str(r["class"]): max(int(r["target"]) - int(r["real"]), 0) for _, r in plan.iterrows()}
    planned = {str(r["class"]): int(r["to_generate"]) for _, r in plan.iterrows()}
    budget = {c: math.floor(round(params.topup_budget * planned[c], 9)) for c in planned}
    scores, feats, tables = scorer(frame, "score")
    frame = pd.concat([frame, scores], axis=1)
    topup: Counter[str] = Counter()
    rounds, digest, gen_classes = 0, None, None
    log: list[dict[str, Any]] = []  # per top-up round: what each class asked for and why
    while True:
        reasons, _ = reject_reasons(frame, feats, thresholds)
        accepted = Counter(frame["label"].to_numpy()[np.array([r is None for r in reasons], dtype=bool)])
        generated = Counter(frame["label"].astype(str))
        asks = {c: topup_count(needed[c] - accepted[c], accepted[c], generated[c], budget[c] - topup[c])
                for c in needed}
        asks = {c: n for c, n in asks.items() if n > 0}
        if rounds >= params.topup_rounds or not asks:
            break
        if digest is None:
            digest, gen_classes = _topup_source(checkpoint_dir, frame)
            _prepare_topup_dir(out_dir, digest, linked)
        requests = []
        for c, n in asks.items():
            if c not in gen_classes:
                raise UserError(f"{checkpoint_dir}: the generator was not trained on class {c!r}; retrain it")
            first = seeds_for(gen_classes.index(c), 0, 1, generate_params.seed)[0]
            used = frame["seed"][frame["label"] == c]
            start = max(int(used.max()) - first + 1, 0) if len(used) else 0
            requests.append(Request(c, seeds_for(gen_classes.index(c), start, n, generate_params.seed)))
            topup[c] += n
        rounds += 1
        log.append({"round": rounds, "classes": {r.label: {
            "asked": len(r.seeds), "seeds": [r.seeds[0], r.seeds[-1]], "accepted_before": accepted[r.label],
            "generated_before": generated[r.label], "needed": needed[r.label]} for r in requests}})
        console.print(f"filter: top-up round {rounds}: " + ", ".join(f"{r.label}: {len(r.seeds)}" for r in requests))
        made = generate_sharded(checkpoint_dir, [(r.label, s) for r in requests for s in r.seeds], generate_params,
                                out_dir, prefix=f"topup{rounds}", shard_size=shard_size, run_shards=run_shards)
        new = read_manifests(made)
        new_scores, new_feats, scored = scorer(new, f"score-topup{rounds}")
        tables += made + scored
        frame = pd.concat([frame, pd.concat([new, new_scores], axis=1)], ignore_index=True)
        feats = torch.cat([feats, new_feats])

    remove_stale(out_dir / SHARDS_DIR, "*", tables)
    reasons, duplicate = reject_reasons(frame, feats, thresholds)
    frame["score_duplicate"] = duplicate
    frame["reject_reason"] = pd.Series(reasons, dtype=object)
    rate_accepted = Counter(frame["label"][frame["reject_reason"].isna()].astype(str))
    _mark_surplus(frame, needed)
    frame["accepted"] = frame["reject_reason"].isna()
    order = sorted(range(len(frame)), key=lambda i: (natural_key(str(frame["label"].iloc[i])),
                                                     int(frame["seed"].iloc[i])))
    frame = frame.iloc[order].reset_index(drop=True)

    summary = _summary(frame, plan, needed, planned, budget, topup, rate_accepted, log, params, thresholds)
    metadata = {"thresholds": summary["thresholds"], "feature_space": summary["feature_space"],
                "rounds_used": rounds, "judge_temperature": float(judge.temperature)}
    manifest_path = write_manifest(frame[[*COLUMNS, *SCORE_COLUMNS]], out_dir / MANIFEST_FILE, metadata=metadata)
    _remove_unlisted(out_dir, set(frame["path"]))
    summary_path = out_dir / SUMMARY_FILE
    tmp = summary_path.with_name(summary_path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(summary_path)

    classes = summary["classes"]
    console.print(summary_table(summary, title=f"filter: {manifest_path}"))
    get_logger("filter").info(summary_line(summary))
    shortfall = {c: v["shortfall"] for c, v in classes.items() if v["shortfall"] > 0}
    for c, n in shortfall.items():
        v = classes[c]
        rate = "n/a" if v["acceptance_rate"] is None else f"{v['acceptance_rate']:.2f}"
        console.print(Text(f"warning: class {c!r} is {n} short of the {v['needed']} synthetic images it needs "
                           f"({v['generated']} generated, {v['generated_topup']} of them by {rounds} top-up "
                           f"round(s) of at most {params.topup_rounds}, top-up budget {v['topup_budget']}; "
                           f"acceptance rate {rate}); see {summary_path}", style="yellow"))
    return FilterResult(manifest_path=manifest_path, summary_path=summary_path,
                        accepted={c: v["accepted"] for c, v in classes.items()},
                        needed={c: v["needed"] for c, v in classes.items()}, shortfall=shortfall,
                        generated={c: v["generated"] for c, v in classes.items()}, rounds_used=rounds,
                        thresholds=thresholds, rejected={c: v["rejected"] for c, v in classes.items()})


def _topup_source(checkpoint_dir: Path, frame: pd.DataFrame) -> tuple[str, list[str]]:
    """The checkpoint's hash and class order; its images must come from the same model as the generate step's."""
    config = checkpoint_dir / "config.json"
    if not config.is_file():
        raise UserError(f"{checkpoint_dir}: no generator checkpoint to top up from; run `synthaug train`, or set "
                        "filter.topup_rounds=0")
    digest = checkpoint_hash(checkpoint_dir)
    others = sorted(set(frame["checkpoint"].dropna()) - {digest})
    if others:
        raise UserError(f"{checkpoint_dir}: checkpoint {digest[:12]} differs from the one the generate step used "
                        f"({', '.join(o[:12] for o in others)}); rerun `synthaug generate` first")
    return digest, [str(c) for c in json.loads(config.read_text())["class_names"]]


def _mark_surplus(frame: pd.DataFrame, needed: dict[str, int]) -> None:
    """Accepted images beyond a class's need become ``surplus``; the lowest seeds stay."""
    for label in pd.unique(frame["label"]):
        ok = frame.index[(frame["label"] == label) & frame["reject_reason"].isna()]
        ok = ok[np.argsort(frame.loc[ok, "seed"].to_numpy(dtype=np.int64), kind="stable")]
        frame.loc[ok[needed.get(str(label), 0):], "reject_reason"] = "surplus"


def _summary(frame: pd.DataFrame, plan: pd.DataFrame, needed: dict[str, int], planned: dict[str, int],
             budget: dict[str, int], topup: Counter[str], rate_accepted: Counter[str], log: list[dict[str, Any]],
             params: FilterParams, t: Thresholds) -> dict[str, Any]:
    labels = sorted(set(needed) | set(frame["label"].astype(str)), key=natural_key)
    real = {str(r["class"]): int(r["real"]) for _, r in plan.iterrows()}
    target = {str(r["class"]): int(r["target"]) for _, r in plan.iterrows()}
    classes: dict[str, Any] = {}
    for c in labels:
        rows = frame[frame["label"] == c]
        accepted = int(rows["accepted"].sum())
        reasons = Counter(rows["reject_reason"].dropna())
        classes[c] = {
            "real": real.get(c, 0), "target": target.get(c, 0), "planned": planned.get(c, 0),
            "needed": needed.get(c, 0), "generated": len(rows), "generated_topup": topup[c],
            "topup_budget": budget.get(c, 0), "accepted": accepted, "rejected": {r: reasons[r] for r in REJECT_REASONS},
            "sanity": dict(Counter(rows["sanity"].dropna())),
            "acceptance_rate": round(rate_accepted[c] / len(rows), 6) if len(rows) else None,
            "shortfall": max(needed.get(c, 0) - accepted, 0),
        }
        classes[c]["met"] = classes[c]["shortfall"] == 0
    total = {k: sum(v[k] for v in classes.values()) for k in ("needed", "generated", "generated_topup", "accepted",
                                                               "shortfall")}
    return {
        "met": all(v["met"] for v in classes.values()),
        "shortfall": {c: v["shortfall"] for c, v in classes.items() if v["shortfall"]},
        "rounds_used": len(log),
        "rounds": log,
        "totals": total,
        "classes": classes,
        "thresholds": {
            "min_confidence": t.min_confidence,
            "memorization_feature_distance": t.memorization.feature_distance,
            "memorization_pixel_correlation": t.memorization.pixel_correlation,
            "memorization_quantile": t.memorization.quantile,
            "memorization_holdout_images": t.memorization.n_holdout,
            "realism_k": t.realism_k,
            "realism_balls": "class-conditional",
            "duplicate_distance": t.duplicate_distance,
            "median_real_nn_distance": t.median_real_nn_distance,
        },
        "feature_space": params.extractor or "judge",
        "params": params.model_dump(mode="json"),
    }


_SHORT = {"memorized_pixel": "mem px", "memorized_feature": "mem ft", "unrealistic": "unreal",
          "near_duplicate": "dup"}


def summary_table(summary: dict[str, Any], title: str | None = None) -> Table:
    """``filter_summary.json`` as a rich table: one row per class and a totals row; reject reasons that occur
    get a column each (``mem px``/``mem ft``: memorized in pixel/feature space, ``dup``: near-duplicate)."""
    table = Table(title=Text(title) if title else None, show_footer=True)
    classes = summary["classes"]
    shown = [r for r in REJECT_REASONS if any(v["rejected"][r] for v in classes.values())]
    table.add_column("class", footer="total")
    for name, key in (("need", "needed"), ("made", "generated"), ("top-up", "generated_topup"),
                      ("kept", "accepted"), ("short", "shortfall")):
        table.add_column(name, justify="right", footer=str(summary["totals"][key]))
    table.add_column("rate", justify="right")
    for r in shown:
        table.add_column(_SHORT.get(r, r), justify="right", footer=str(sum(v["rejected"][r] for v in classes.values())))
    for c, v in classes.items():
        rate = "-" if v["acceptance_rate"] is None else f"{v['acceptance_rate']:.2f}"
        short = Text(str(v["shortfall"]), style="bold yellow" if v["shortfall"] else "")
        table.add_row(Text(c), str(v["needed"]), str(v["generated"]), str(v["generated_topup"]),
                      str(v["accepted"]), short, rate, *(str(v["rejected"][r]) for r in shown))
    return table


def summary_line(summary: Mapping[str, Any]) -> str:
    """``filter_summary.json`` in one log line: accepted of generated, rejections by reason, shortfall."""
    totals, classes = summary["totals"], summary["classes"].values()
    reasons: Counter[str] = Counter()
    for c in classes:
        reasons.update(c["rejected"])
    rejected = ", ".join(f"{reason} {n}" for reason, n in reasons.items() if n) or "none"
    return (f"filter: accepted {totals['accepted']} of {totals['generated']} generated "
            f"({totals['generated_topup']} by top-up; {totals['needed']} needed, shortfall {totals['shortfall']}); "
            f"rejected: {rejected}")
