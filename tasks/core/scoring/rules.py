"""The filter's rules: its params, its thresholds and the reject reason of each synthetic image (pure functions).

The order of the rules and what each one means: the docstring of ``tasks/filter/__init__.py``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from synthaug.models.metrics import nearest_correlation_streamed, nearest_distance_streamed, pairwise_near_duplicates

REJECT_REASONS = ("sanity", "label", "memorized_pixel", "memorized_feature", "unrealistic", "near_duplicate",
                  "surplus")
SCORE_COLUMNS = ("score_confidence", "score_realism", "score_nn_feature", "score_nn_pixel_corr", "score_duplicate")
MIN_ACCEPTANCE_RATE = 0.05  # floor of the observed rate when sizing a top-up (0 accepted would ask for infinity)
CONSTANT_RANGE = 1 / 127.5  # max - min at or below one 8-bit grey level: a constant image
RANGE_TOLERANCE = 1e-6


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

    def memorized(self, nn_pixel_corr: np.ndarray, nn_feature: np.ndarray) -> np.ndarray:
        """Which images are memorized, from their highest pixel correlation and nearest feature distance to a
        training image (both thresholds inclusive)."""
        return (np.asarray(nn_pixel_corr) >= self.pixel_correlation) | (np.asarray(nn_feature) <= self.feature_distance)


@dataclass(frozen=True)
class Thresholds:
    """Every threshold the filter used, as written to ``filter_summary.json``."""

    min_confidence: float
    memorization: MemorizationThresholds
    realism_k: int
    duplicate_distance: float
    median_real_nn_distance: float


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
    """Memorization thresholds calibrated on real images that were not trained on (README "Filter").

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
