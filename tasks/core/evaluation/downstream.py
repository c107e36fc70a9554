"""Downstream utility: the training conditions a classifier is trained under, its scores, and their summary over
seeds (gains and gaps against the best real baseline)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from synthaug.models.config import JudgeConfig
from synthaug.tasks.core.io.images import to_uint8
from synthaug.tasks.core.params.evaluate import EvaluateParams

CONDITIONS = ("real_only", "real_classical_aug", "real_oversampled", "real_synthetic", "real_classical_aug_synthetic",
              "real_synthetic_chosen", "synthetic_only", "real_oracle")
BASELINES = ("real_classical_aug", "real_oversampled")  # the best real baseline, per metric, is the better of these
TREATED = ("real_synthetic", "real_classical_aug_synthetic", "real_synthetic_chosen")  # measured against it
COMPARED = ("balanced_accuracy", "minority_recall")  # the metrics gains, gaps and the gate are measured on
WITH_SYNTHETIC = ("real_synthetic", "real_classical_aug_synthetic")  # real + synthetic sets under evaluate.recipe
GATED = "real_synthetic"  # the published set (real, balanced, + the accepted synthetic images): what the gate checks
PROJECT_FAMILY = "cnn"  # the project's classifier (models.judge network) in utility["families"]
MIN_GAP = 0.01  # gap_closed is null when the oracle is less than this above the best real baseline: noise


@dataclasses.dataclass(frozen=True)
class EvalData:
    """Everything the step reads, as tensors: images (N, C, H, W) in [-1, 1] and int64 class indices."""

    class_names: list[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    heldback_x: torch.Tensor
    heldback_y: torch.Tensor
    syn_x: torch.Tensor  # accepted synthetic
    syn_y: torch.Tensor
    synthetic: pd.DataFrame  # every synthetic row of the filter manifest (accepted or not)


def fill_indices(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows that fill every present class up to the largest class count, repeating its rows cyclically in order.

    The classes' own rows plus these make a balanced set; absent classes stay absent. Deterministic.
    """
    counts = np.bincount(labels, minlength=num_classes)
    target = int(counts.max(initial=0))
    parts = [np.resize(np.flatnonzero(labels == k), target)[counts[k]:] for k in range(num_classes) if counts[k]]
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)


def classical_augmentation(seed: int):
    """The albumentations pipeline of ``real_classical_aug``: small affine jitter, brightness/contrast.

    Edges are replicated (no black borders a classifier could learn as a cue of augmented images).
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations calls the network at import otherwise
    import albumentations as A
    import cv2

    return A.Compose([
        A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-10, 10),
                 border_mode=cv2.BORDER_REPLICATE, p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.8),
    ], seed=seed)


def augment_images(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Each image once through ``classical_augmentation(seed)``, in order; (N, C, H, W) in [-1, 1] both ways."""
    if images.shape[0] == 0:
        return images.clone()
    pipeline = classical_augmentation(seed)
    pixels = to_uint8(images)  # (N, H, W, C) uint8
    out = np.stack([pipeline(image=p)["image"].reshape(p.shape) for p in pixels])
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _repeat_to_balance(x: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    fill = torch.from_numpy(fill_indices(y.numpy(), k))
    return torch.cat([x, x[fill]]), torch.cat([y, y[fill]])


def _real_synthetic(data: EvalData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``real_synthetic`` set, a mask of its repeated copies (rows that are not an original image) and a mask
    of its synthetic rows (originals and copies)."""
    k, n, m = len(data.class_names), data.train_x.shape[0], data.syn_x.shape[0]
    xo, yo = _repeat_to_balance(data.train_x, data.train_y, k)
    fill = torch.from_numpy(fill_indices(torch.cat([yo, data.syn_y]).numpy(), k))
    x, y = torch.cat([xo, data.syn_x]), torch.cat([yo, data.syn_y])
    synthetic = torch.cat([torch.zeros(xo.shape[0], dtype=torch.bool), torch.ones(m, dtype=torch.bool)])
    x, y, synthetic = torch.cat([x, x[fill]]), torch.cat([y, y[fill]]), torch.cat([synthetic, synthetic[fill]])
    copy = torch.ones(x.shape[0], dtype=torch.bool)
    copy[:n] = False  # [real | real repeats | synthetic | repeats of both]
    copy[xo.shape[0]:xo.shape[0] + m] = False
    return x, y, copy, synthetic


def _with_synthetic_set(condition: str, data: EvalData, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A ``WITH_SYNTHETIC`` condition's training set and the mask of its synthetic rows (originals and copies)."""
    xs, ys, copy, synthetic = _real_synthetic(data)
    if condition == "real_classical_aug_synthetic":
        xs = xs.clone()
        xs[copy] = augment_images(xs[copy], seed)
    return xs, ys, synthetic


def weighted_training_set(condition: str, data: EvalData, seed: int,
                          weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``training_set`` and per-row loss weights: ``weight`` for synthetic rows, 1 for real; None where every row
    weighs 1 (no synthetic rows, or ``weight`` 1). The set is built once."""
    if condition not in WITH_SYNTHETIC or weight == 1.0:
        return (*training_set(condition, data, seed), None)
    xs, ys, synthetic = _with_synthetic_set(condition, data, seed)
    return xs, ys, torch.where(synthetic, weight, 1.0).float()


def training_set(condition: str, data: EvalData, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images and labels of one condition (see the module docstring)."""
    k = len(data.class_names)
    x, y = data.train_x, data.train_y
    if condition == "real_only":
        return x, y
    if condition == "real_oversampled":
        return _repeat_to_balance(x, y, k)
    if condition == "real_classical_aug":
        fill = torch.from_numpy(fill_indices(y.numpy(), k))
        return torch.cat([x, augment_images(x[fill], seed)]), torch.cat([y, y[fill]])
    if condition in WITH_SYNTHETIC:
        return _with_synthetic_set(condition, data, seed)[:2]
    if condition == "synthetic_only":
        return data.syn_x, data.syn_y
    if condition == "real_oracle":
        return torch.cat([x, data.heldback_x]), torch.cat([y, data.heldback_y])
    raise ValueError(f"unknown condition {condition!r}; conditions: {', '.join(CONDITIONS)}")


def classifier_config(params: EvaluateParams, condition: str, data: EvalData, size: int, seed: int) -> JudgeConfig:
    """The project's classifier for one condition's training set of ``size`` images: ``params.classifier`` with
    ``seed``; under ``equal_passes``, a real + synthetic set (``WITH_SYNTHETIC``) larger than the balanced real set
    trains proportionally more steps, so it makes as many passes over its images as the baselines over theirs."""
    steps = params.classifier.steps
    if params.equal_passes and condition in WITH_SYNTHETIC:
        labels = data.train_y.numpy()
        balanced = len(labels) + len(fill_indices(labels, len(data.class_names)))
        steps = max(steps, math.ceil(steps * size / balanced)) if balanced else steps
    return dataclasses.replace(params.classifier, seed=seed, steps=steps)


def train_and_score(condition: str, data: EvalData, seed: int, params: EvaluateParams, minority: Sequence[str],
                    device: torch.device) -> tuple[dict[str, dict], dict[str, int]]:
    """Every classifier family (the project's network, then ``params.independent_families``) trained on
    ``training_set(condition, data, seed)`` (synthetic rows weighted by ``params.recipe.weight``) and scored on
    ``data.test_x``: {family: score}, and the training set's per-class size."""
    from synthaug.models.judge import train_judge

    x, y, w = weighted_training_set(condition, data, seed, params.recipe.weight)
    k, truth = len(data.class_names), data.test_y.numpy()
    model = train_judge(x, y, num_classes=k, config=classifier_config(params, condition, data, len(y), seed),
                        device=device, sample_weights=w)
    scores = {PROJECT_FAMILY: score(model.predict_logits(data.test_x).argmax(dim=1).numpy(), truth,
                                    data.class_names, minority)}
    for family in params.independent_families:
        other = fit_independent(family, seed, x, y, w, trees=params.trees)
        scores[family] = score(other.predict(_pixels(data.test_x)), truth, data.class_names, minority)
    return scores, {name: int((y == j).sum()) for j, name in enumerate(data.class_names)}


def independent_classifier(name: str, seed: int, *, trees: int = 200):
    """An independent classifier family (``EvaluateParams.independent``): an unfitted scikit-learn estimator on
    flattened pixels (``trees``: the extra trees' count). Nothing is shared with the project's network: not the
    architecture, the optimiser, nor the in-training shift augmentation."""
    from sklearn.ensemble import ExtraTreesClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "extra_trees":
        return ExtraTreesClassifier(n_estimators=trees, random_state=seed, n_jobs=1)
    if name == "logistic_regression":
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed))
    raise ValueError(f"unknown independent classifier {name!r}; choose extra_trees or logistic_regression")


def stratified_bootstrap(labels: np.ndarray, seed: int) -> np.ndarray:
    """Row indices drawn with replacement within each class, as many as the class has: the class counts (and so the
    balance a condition was built for) stay as they are. Seeded by ``seed``; sorted."""
    rng = np.random.default_rng([seed, 2])
    rows = [rng.choice(np.flatnonzero(labels == k), size=int((labels == k).sum())) for k in np.unique(labels)]
    return np.sort(np.concatenate(rows)) if rows else np.empty(0, dtype=np.int64)


def fit_independent(name: str, seed: int, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None, *,
                    trees: int = 200):
    """``independent_classifier(name, seed, trees=trees)`` fitted on the flattened pixels of ``x`` (rows weighted by
    ``weights``, when given). Logistic regression's fit is deterministic: a seed fits it on a
    ``stratified_bootstrap`` of the rows, else its seeds would agree wherever the training set does and a seed-paired
    interval would shrink to a point (any difference, however small, would read as measured)."""
    model = independent_classifier(name, seed, trees=trees)
    pixels, labels = _pixels(x), y.numpy()
    w = None if weights is None else weights.numpy()
    if name == "logistic_regression":
        rows = stratified_bootstrap(labels, seed)
        pixels, labels, w = pixels[rows], labels[rows], None if w is None else w[rows]
        if np.unique(labels).size < 2:  # one class (synthetic_only of one scarce class): it can only predict that
            from sklearn.dummy import DummyClassifier

            return DummyClassifier(strategy="most_frequent").fit(pixels, labels)
    if w is None:
        return model.fit(pixels, labels)
    # A pipeline routes a fit parameter to its last step by that step's name.
    key = "sample_weight" if name == "extra_trees" else "logisticregression__sample_weight"
    return model.fit(pixels, labels, **{key: w})


def _pixels(x: torch.Tensor) -> np.ndarray:
    return x.reshape(x.shape[0], -1).numpy().astype(np.float32)


def score(pred: np.ndarray, truth: np.ndarray, class_names: Sequence[str], minority: Sequence[str]) -> dict:
    """Balanced accuracy, macro-F1, per-class recall and minority recall of predictions on the test split.

    Classes without test images are left out (their recall is undefined); balanced accuracy is then the mean
    recall over the classes present, as ``sklearn.metrics.balanced_accuracy_score`` computes it.
    """
    from sklearn.metrics import f1_score, recall_score

    present = [i for i in range(len(class_names)) if (truth == i).any()]
    recall = recall_score(truth, pred, labels=present, average=None, zero_division=0)
    per_class = {class_names[i]: float(r) for i, r in zip(present, recall, strict=True)}
    minority_present = [per_class[c] for c in minority if c in per_class]
    return {
        "balanced_accuracy": float(np.mean(recall)),
        "macro_f1": float(f1_score(truth, pred, labels=present, average="macro", zero_division=0)),
        "minority_recall": float(np.mean(minority_present)) if minority_present else None,
        "per_class_recall": per_class,
    }


def _summary(values: Sequence[float | None]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "values": [], "reason": "undefined (no minority class in the test split)"}
    arr = np.asarray(vals, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "values": [float(v) for v in arr]}


def paired_difference(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> dict:
    """Mean of the per-seed differences a_i - b_i and its t-interval (n - 1 degrees of freedom)."""
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size < 2:
        raise ValueError(f"a paired t-interval needs >= 2 pairs, got {d.size}")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, d.size - 1)) * sd / math.sqrt(d.size)
    return {"mean": mean, "ci95": [mean - half, mean + half], "std": sd, "values": [float(v) for v in d]}


def best_real_baseline(results: Mapping[str, dict], metric: str) -> str | None:
    """The better (higher mean) of the real baselines ``BASELINES`` on ``metric``; None when neither is defined.

    Taking the stronger of two fixed treatments is the conservative comparison: it is what a synthetic condition has
    to beat, not a recipe choice. Ties go to the first in ``BASELINES``."""
    ran = [c for c in BASELINES if c in results and results[c][metric]["mean"] is not None]
    return max(ran, key=lambda c: results[c][metric]["mean"]) if ran else None


def gap_closed(results: Mapping[str, dict], condition: str, metric: str, baseline: str | None) -> dict:
    """(condition - best real baseline) / (real_oracle - best real baseline), on the means."""
    if "real_oracle" not in results:
        return {"value": None, "reason": "no heldback images, so no real_oracle condition", "baseline": baseline}
    if baseline is None or results[condition][metric]["mean"] is None or results["real_oracle"][metric]["mean"] is None:
        return {"value": None, "reason": f"{metric} is undefined for some condition", "baseline": baseline}
    means = {"baseline_mean": results[baseline][metric]["mean"], "condition_mean": results[condition][metric]["mean"],
             "oracle_mean": results["real_oracle"][metric]["mean"]}
    gap = means["oracle_mean"] - means["baseline_mean"]
    if gap < MIN_GAP:
        return {"value": None, "reason": f"real_oracle is only {gap:+.4f} above the best real baseline {baseline} "
                                         f"(< {MIN_GAP}): no gap to close", "baseline": baseline, **means}
    return {"value": (means["condition_mean"] - means["baseline_mean"]) / gap, "reason": None, "baseline": baseline,
            **means}


def summarize(runs: Mapping[str, Sequence[dict]], class_names: Sequence[str], seeds: int) -> dict[str, Any]:
    """Per condition: mean/std/values of every score; then, per compared metric, the best real baseline, the
    seed-paired difference of each treated condition to it, and the share of the baseline -> oracle gap closed."""
    out: dict[str, Any] = {}
    for condition, scores in runs.items():
        out[condition] = {m: _summary([s[m] for s in scores])
                          for m in ("balanced_accuracy", "macro_f1", "minority_recall")}
        out[condition]["per_class_recall"] = {
            name: _summary([s["per_class_recall"][name] for s in scores])
            for name in class_names if name in scores[0]["per_class_recall"]}
    best = {m: best_real_baseline(out, m) for m in COMPARED}
    out["best_real_baseline"] = best
    out["paired_difference"], out["gap_closed"] = {}, {}
    for condition in (c for c in TREATED if c in out):
        paired = {}
        for metric in COMPARED:
            a = out[condition][metric]["values"]
            b = out[best[metric]][metric]["values"] if best[metric] else []
            paired[metric] = ({**paired_difference(a, b), "baseline": best[metric]} if len(a) == len(b) == seeds
                              else {"mean": None, "ci95": None, "values": [], "baseline": best[metric],
                                    "reason": f"{metric} is undefined"})
        out["paired_difference"][condition] = paired
        out["gap_closed"][condition] = {m: gap_closed(out, condition, m, best[m]) for m in COMPARED}
    return out


def families(utility: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The per-family results of ``utility_metrics``: the project's classifier, then the independent ones."""
    return {PROJECT_FAMILY: utility, **utility["independent"]}
