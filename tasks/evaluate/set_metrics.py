"""Set metrics of synthetic against real images in a feature space: FID, KID, precision/recall, density/coverage;
and per-class novelty against the class's own training images, in pixels and features (``novelty``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from synthaug.models import metrics as M
from synthaug.tasks.core.evaluation.downstream import EvalData
from synthaug.tasks.core.params.evaluate import EvaluateParams

PR_K = 3  # improved precision/recall neighbourhood (Kynkäänniemi et al. 2019)
DC_K = 5  # density/coverage neighbourhood (Naeem et al. 2020)
REFERENCE = "real train + val"


def _entry(value: float | None, n_real: int, n_synthetic: int, reason: str | None = None, **extra: Any) -> dict:
    value = finite(value)
    return {"value": value, "n_real": n_real, "n_synthetic": n_synthetic,
            "reason": None if value is not None else (reason or "the estimate is not finite"), **extra}


def set_metrics(real: torch.Tensor, fake: torch.Tensor, params: EvaluateParams) -> dict[str, dict]:
    """FID, KID, precision, recall, density, coverage and within-set diversity of ``fake`` against ``real``.

    Each entry is ``{"value" (or "mean"/"std" for KID), "n_real", "n_synthetic", "reason", ...}``; a value the
    sample counts cannot support is null and ``reason`` says what was missing.

    Args:
        real: reference features (N, F).
        fake: synthetic features (M, F).
        params: the ``evaluate`` section (KID subsets, FID minimum).
    """
    n, m = int(real.shape[0]), int(fake.shape[0])
    out: dict[str, dict] = {}
    need = params.fid_min_samples
    if min(n, m) >= need:
        out["fid"] = _entry(M.fid(real, fake), n, m)
    else:
        out["fid"] = _entry(None, n, m, f"FID needs >= {need} images per set (fid_min_samples); "
                                        f"got {n} real, {m} synthetic")
    if min(n, m) >= 2:
        size = min(params.kid_subset_size, n, m)
        k = M.kid(real, fake, subsets=params.kid_subsets, subset_size=size, seed=0)
        out["kid"] = {"mean": finite(k.mean), "std": finite(k.std), "subset_size": k.subset_size,
                      "subsets": k.subsets, "n_real": n, "n_synthetic": m, "reason": None}
    else:
        out["kid"] = {"mean": None, "std": None, "subset_size": None, "subsets": params.kid_subsets,
                      "n_real": n, "n_synthetic": m, "reason": f"KID needs >= 2 images per set; got {n} real, {m} "
                                                              "synthetic"}
    pr = M.precision_recall(real, fake, k=PR_K) if min(n, m) > PR_K else None
    out |= _pair(("precision", "recall"), pr, n, m, PR_K,
                 f"needs > {PR_K} images per set (k={PR_K}); got {n} real, {m} synthetic")
    dc = M.density_coverage(real, fake, k=DC_K) if n > DC_K and m >= 1 else None
    out |= _pair(("density", "coverage"), dc, n, m, DC_K,
                 f"needs > {DC_K} real images (k={DC_K}) and >= 1 synthetic; got {n} real, {m} synthetic")
    return out


def _pair(names: tuple[str, str], result: Any, n: int, m: int, k: int, why: str) -> dict[str, dict]:
    """Entries for the two numbers a k-NN estimate gives (``result`` None: too few images, ``why``)."""
    if result is None:
        return {name: _entry(None, n, m, why, k=k) for name in names}
    return {name: _entry(getattr(result, name), n, m, k=k) for name in names}


def _diversity(real: torch.Tensor, fake: torch.Tensor) -> dict:
    n, m = int(real.shape[0]), int(fake.shape[0])
    syn = M.within_class_diversity(fake) if m >= 2 else None
    ref = M.within_class_diversity(real) if n >= 2 else None
    missing = [f"{what} has {k} (< 2) images" for what, k in (("real", n), ("synthetic", m)) if k < 2]
    return {"synthetic": finite(syn), "real": finite(ref), "n_real": n, "n_synthetic": m,
            "reason": "; ".join(missing) or None}


def quality_metrics(real_f: torch.Tensor, real_y: torch.Tensor, syn_f: torch.Tensor, syn_y: torch.Tensor,
                    class_names: Sequence[str], params: EvaluateParams, *,
                    reference: str = REFERENCE) -> dict[str, Any]:
    """``overall`` (pooled over the classes with both real and synthetic images), ``per_class`` (classes with
    real images) and ``macro`` (means of the per-class values that exist)."""
    per_class: dict[str, dict] = {}
    for i, name in enumerate(class_names):
        r, s = real_f[real_y == i], syn_f[syn_y == i]
        if r.shape[0] == 0:
            continue
        entry = set_metrics(r, s, params)
        entry["within_class_diversity"] = _diversity(r, s)
        per_class[name] = entry
    both_sides = torch.from_numpy(np.intersect1d(real_y.numpy(), syn_y.numpy()))
    in_ref, in_syn = torch.isin(real_y, both_sides), torch.isin(syn_y, both_sides)
    overall = set_metrics(real_f[in_ref], syn_f[in_syn], params)
    overall["classes"] = [class_names[int(i)] for i in both_sides]
    # Within-class diversity does not pool: overall it is the mean over classes where both sides have a value.
    both = [v["within_class_diversity"] for v in per_class.values()
            if v["within_class_diversity"]["synthetic"] is not None and v["within_class_diversity"]["real"] is not None]
    overall["within_class_diversity"] = {
        "synthetic": finite(float(np.mean([d["synthetic"] for d in both]))) if both else None,
        "real": finite(float(np.mean([d["real"] for d in both]))) if both else None,
        "n_real": int(in_ref.sum()), "n_synthetic": int(in_syn.sum()), "classes": len(both),
        "reason": None if both else "no class has >= 2 real and >= 2 synthetic images"}
    macro: dict[str, dict] = {}
    for key in ("fid", "precision", "recall", "density", "coverage"):
        vals = [v[key]["value"] for v in per_class.values() if v[key]["value"] is not None]
        macro[key] = {"value": finite(float(np.mean(vals))) if vals else None, "classes": len(vals),
                      "reason": None if vals else "no class has enough images"}
    kids = [v["kid"]["mean"] for v in per_class.values() if v["kid"]["mean"] is not None]
    macro["kid"] = {"value": finite(float(np.mean(kids))) if kids else None, "classes": len(kids),
                    "reason": None if kids else "no class has enough images"}
    return {"reference": reference, "overall": overall, "macro": macro, "per_class": per_class}


def finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------------------------------------ novelty

# Per-class novelty: how far the accepted synthetic images of a class sit from that class's own training images,
# against how far distinct real images of the class sit from them.
#
# The memorization filter rejects near-copies only; an image just outside its threshold passes and may still add
# nothing a classifier had not seen. New real images show what "new" looks like: the real ``val`` images of the class
# (never trained on by the generator; the filter calibrates its memorization thresholds on the same split, and nothing
# here chooses anything). Two spaces, as the filter's memorization test (``models.metrics``):
#
# - pixels: the highest Pearson correlation with any training image of the class; as a distance, 1 - correlation;
# - features (the judge's, or the filter's extractor): the Euclidean distance to the nearest training image of the
#   class.
#
# Per class: the median of each over the accepted synthetic images and over the val images, and ``ratio`` = synthetic
# median distance / real median distance. 0: the synthetic images are copies; about 1: as novel as new real images;
# below 1: closer to the few training images than new real images are (less to learn from); above 1: farther
# (check their label and realism).

NOVELTY_REFERENCE = "real val images of the class (never trained on; measured only, nothing is chosen on them)"


def _nearest(pixels: torch.Tensor, feats: np.ndarray, train_pixels: torch.Tensor,
             train_feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the highest pixel correlation with a training image, and the nearest training feature distance."""
    corr = M.nearest_correlation(pixels.reshape(pixels.shape[0], -1), train_pixels.reshape(train_pixels.shape[0], -1))
    return corr.correlation, M.nearest_distance(feats, train_feats).distance


def _ratio(synthetic: float, real: float) -> float | None:
    return synthetic / real if real > 0 else None  # real images that copy a training image: no scale to compare on


def class_novelty(syn_x: torch.Tensor, syn_f: np.ndarray, train_x: torch.Tensor, train_f: np.ndarray,
                  ref_x: torch.Tensor, ref_f: np.ndarray) -> dict[str, Any]:
    """One class's novelty (module doc): images (N, C, H, W) and their features, for its accepted synthetic images,
    its training images and its distinct real images; null with a ``reason`` where a set is empty."""
    counts = {"n_synthetic": int(syn_x.shape[0]), "n_train": int(train_x.shape[0]), "n_real": int(ref_x.shape[0])}
    empty = [name for name, n in (("accepted synthetic", counts["n_synthetic"]), ("train", counts["n_train"]),
                                  ("val", counts["n_real"])) if n == 0]
    if empty:
        return {**counts, "pixel": None, "feature": None, "reason": f"no {' or '.join(empty)} images in this class"}
    syn_corr, syn_dist = _nearest(syn_x, syn_f, train_x, train_f)
    real_corr, real_dist = _nearest(ref_x, ref_f, train_x, train_f)
    s_corr, r_corr = float(np.median(syn_corr)), float(np.median(real_corr))
    s_dist, r_dist = float(np.median(syn_dist)), float(np.median(real_dist))
    return {**counts, "reason": None,
            "pixel": {"synthetic_correlation": s_corr, "real_correlation": r_corr, "ratio": _ratio(1 - s_corr,
                                                                                                   1 - r_corr)},
            "feature": {"synthetic_distance": s_dist, "real_distance": r_dist, "ratio": _ratio(s_dist, r_dist)}}


def novelty(data: EvalData, minority: Sequence[str], real_f: np.ndarray, syn_f: np.ndarray) -> dict[str, Any]:
    """``class_novelty`` of every class with accepted synthetic images (the scarce ones are marked ``minority``);
    ``real_f``: the features of ``data``'s real train then val images, ``syn_f`` of its accepted synthetic ones."""
    n = data.train_x.shape[0]
    per_class = {}
    for k, name in enumerate(data.class_names):
        syn, train, val = (data.syn_y == k).numpy(), (data.train_y == k).numpy(), (data.val_y == k).numpy()
        if syn.any():
            per_class[name] = {"minority": name in minority,
                               **class_novelty(data.syn_x[syn], syn_f[syn], data.train_x[train], real_f[:n][train],
                                               data.val_x[val], real_f[n:][val])}
    return {"reference": NOVELTY_REFERENCE, "per_class": per_class,
            "ratio": "synthetic median distance to the nearest training image of the class / the val images' (pixels: "
                     "1 - Pearson correlation; features: Euclidean); 0: copies, about 1: as novel as new real images"}
