"""Per-class novelty: how far the accepted synthetic images of a class sit from that class's own training images,
against how far distinct real images of the class sit from them.

The memorization filter rejects near-copies only; an image just outside its threshold passes and may still add
nothing a classifier had not seen. New real images show what "new" looks like: the real ``val`` images of the class
(never trained on by the generator; the filter calibrates its memorization thresholds on the same split, and nothing
here chooses anything). Two spaces, as the filter's memorization test (``models.metrics``):

- pixels: the highest Pearson correlation with any training image of the class; as a distance, 1 - correlation;
- features (the judge's, or the filter's extractor): the Euclidean distance to the nearest training image of the class.

Per class: the median of each over the accepted synthetic images and over the val images, and ``ratio`` = synthetic
median distance / real median distance. 0: the synthetic images are copies; about 1: as novel as new real images;
below 1: closer to the few training images than new real images are (less to learn from); above 1: farther
(check their label and realism).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from synthaug.models.metrics import nearest_correlation, nearest_distance
from synthaug.tasks.core.evaluation.downstream import EvalData

REFERENCE = "real val images of the class (never trained on; measured only, nothing is chosen on them)"


def _nearest(pixels: torch.Tensor, feats: np.ndarray, train_pixels: torch.Tensor,
             train_feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the highest pixel correlation with a training image, and the nearest training feature distance."""
    corr = nearest_correlation(pixels.reshape(pixels.shape[0], -1), train_pixels.reshape(train_pixels.shape[0], -1))
    return corr.correlation, nearest_distance(feats, train_feats).distance


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
    return {"reference": REFERENCE, "per_class": per_class,
            "ratio": "synthetic median distance to the nearest training image of the class / the val images' (pixels: "
                     "1 - Pearson correlation; features: Euclidean); 0: copies, about 1: as novel as new real images"}
