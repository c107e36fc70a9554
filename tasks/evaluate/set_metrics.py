"""Set metrics of synthetic against real images in a feature space: FID, KID, precision/recall, density/coverage."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from synthaug.models import metrics as M
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
