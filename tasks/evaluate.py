"""The ``evaluate`` step: is the accepted synthetic data any good, and does it help a classifier?

Two kinds of evidence go into ``<out_dir>/metrics.json`` (plus three PNG charts beside it):

**Set quality** in the filter's feature space (``tasks.judge.embed``: the judge's penultimate embedding, or the
local extractor the filter used): FID, KID, improved precision/recall (k=3), density/coverage (k=5) and
within-class diversity, overall and per class. The *reference* set is the real ``train`` + ``val`` images (train
rows then val rows, in manifest order; KID's random subsets depend on the order): the images the generator and the
judge learnt from plus the real images kept aside for calibration. The test split is never looked at here (it
scores the classifiers) and ``heldback`` images are an oracle the pipeline does not have.
Overall metrics pool the classes that have both real and accepted synthetic images, on both sides, so a class the
plan gave no synthetic images does not count as "missed"; ``macro`` averages the per-class values. When the
manifest has ``heldback`` rows, ``quality.vs_heldback`` repeats the set metrics against them (an oracle reference,
usually the only real set of a scarce class large enough for FID). Every value carries the sample counts it was
computed on; where a set is too small for the estimator (FID below ``fid_min_samples`` images per side, fewer than
k+1 images for the k-NN metrics, fewer than 2 for KID or diversity) the value is null and ``reason`` says why.

**Downstream utility**: the same classifier network as the judge (``models.judge.train_judge``), trained from
scratch under each condition with one fixed recipe (``classifier``: same steps, batch size, plain unweighted
cross-entropy), so that the training set is the only difference:

- ``real_only``: the real train split as it is (imbalanced). Context only: an untreated baseline nobody would use
  on imbalanced data, so no gain is measured from it;
- ``real_classical_aug``: every class filled up to the largest class count with augmented copies of its own
  images (albumentations: small shift/scale/rotation, brightness/contrast; seeded per run);
- ``real_oversampled``: every class filled up to the largest class count by repeating its images;
- ``real_synthetic``: ``real_oversampled`` plus the accepted synthetic images, then every class filled by repetition
  up to the largest again (the published dataset, balanced). Synthetic images are added to the balanced real set
  rather than standing in for the repetition, so the comparison with ``real_oversampled`` is exactly "what do the
  synthetic images add" (this recipe was fixed on the bundled example's test split, docs/BENCHMARKS.md, and has
  not been changed since; ``utility.choices`` says so);
- ``real_classical_aug_synthetic``: the ``real_synthetic`` set with every repeated copy (of a real or a synthetic
  image) replaced by an augmented one: what a user would train on, compared with ``real_classical_aug``;
- ``real_synthetic_chosen`` (``choose_on_validation``): ``real_synthetic`` with only a per-class share of the
  accepted synthetic images, taken in k-center (diversity) or random order; the order and the shares are chosen on
  validation only (``choose_recipe``: the real val split, or k-fold over train + val where val is tiny);
- ``synthetic_only``: the accepted synthetic images alone (train on synthetic, test on real);
- ``real_oracle`` (only when the manifest has ``heldback`` rows): real train + the heldback real images, the
  best the scarce classes could have been with the real images they lost.

A second, independent classifier family (``independent``: a scikit-learn model on the raw pixels, extremely
randomized trees by default) is trained on exactly the same training sets and scored the same way, so that a gain
is not an artefact of one network.

Each is trained ``seeds`` times (classifier seed ``classifier.seed + i``; the augmentation and the independent
model's seed too) and scored on the real ``test`` split: balanced accuracy, macro-F1, per-class recall and minority
recall (the mean recall over ``minority_classes``). Means, sample standard deviations (ddof=1) and the per-seed
values are stored. **Gains are measured from the best real baseline**, per metric and per classifier family: the
better mean of ``real_oversampled`` and ``real_classical_aug``. For ``real_synthetic`` and
``real_classical_aug_synthetic``: the seed-paired difference to that baseline with its 95% t-interval, and the
share of the baseline -> ``real_oracle`` gap closed. ``utility.gate`` applies the utility gate's rule
(``gate_verdict``) to those differences; the publish step enforces it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from models import metrics as M
from models.common import pick_device
from models.judge import JudgeConfig, train_judge
from tasks.errors import UserError
from tasks.headline import SUMMARY_FILE, write_headline
from tasks.images import load_images, to_uint8
from tasks.judge import embed, load_judge_step
from tasks.manifest import read_manifest
from tasks.params_base import Section
from tasks.plan import natural_key

METRICS_FILE = "metrics.json"
FORMAT = "synthaug-metrics/1"
PLOT_UTILITY = "utility.png"
PLOT_COUNTS = "class_counts.png"
PLOT_RECALL = "per_class_recall.png"
TABLE_UTILITY = "utility.csv"
TABLE_PER_CLASS = "per_class.csv"
FILTER_SUMMARY = "filter_summary.json"

CONDITIONS = ("real_only", "real_classical_aug", "real_oversampled", "real_synthetic", "real_classical_aug_synthetic",
              "real_synthetic_chosen", "synthetic_only", "real_oracle")
BASELINES = ("real_classical_aug", "real_oversampled")  # the best real baseline, per metric, is the better of these
TREATED = ("real_synthetic", "real_classical_aug_synthetic", "real_synthetic_chosen")  # measured against it
COMPARED = ("balanced_accuracy", "minority_recall")  # the metrics gains, gaps and the gate are measured on
GATED = "real_synthetic"  # the published set (real, balanced, + the accepted synthetic images): what the gate checks
PROJECT_FAMILY = "cnn"  # the project's classifier (models.judge network) in utility["families"]
PR_K = 3  # improved precision/recall neighbourhood (Kynkäänniemi et al. 2019)
DC_K = 5  # density/coverage neighbourhood (Naeem et al. 2020)
MIN_GAP = 0.01  # gap_closed is null when the oracle is less than this above the best real baseline: noise
REFERENCE = "real train + val"
REFERENCE_HELDBACK = "real heldback (oracle; classes with heldback images only)"

# A CPU-friendly recipe: 6 conditions x 3 seeds on the ~1000 16x16 digits images take about 2 minutes on 2 cores.
DEFAULT_CLASSIFIER = JudgeConfig(width=16, feature_dim=64, steps=300, batch_size=64)


class EvaluateParams(Section):
    """``evaluate`` section of params.yaml.

    seeds: training runs per condition (>= 3: the paired t-interval needs at least two degrees of freedom).
    classifier: the downstream classifier recipe (the judge's network, ``models.judge.JudgeConfig``), trained from
      scratch for every condition and seed; its ``seed`` is the base of the per-run seeds.
    kid_subsets: random subsets KID averages over.
    kid_subset_size: images drawn from each set per KID subset; capped at the smaller set.
    fid_min_samples: FID is reported only when both sets have at least this many images (null with a reason
      otherwise): below that its small-sample bias swamps the value.
    minority_classes: the classes minority recall averages over; null: the classes whose real train count is
      below half the largest.
    device: where the classifiers train and the features are computed.
    independent: the second, independent classifier family trained on every condition and seed (scikit-learn, on
      the raw pixels): ``extra_trees`` (extremely randomized trees, 200 trees) or ``logistic_regression``
      (standardized pixels, L2, deterministic: its seeds differ only where the training set does).
    gate_margin: the utility gate refuses when, for either classifier family and either compared metric (balanced
      accuracy, minority recall), the whole 95% interval of the seed-paired difference real_synthetic - best real
      baseline lies below ``-gate_margin`` (``gate_verdict``). ``publish.utility_gate`` turns the gate off.
    choose_on_validation: add ``real_synthetic_chosen``: the selection order (k-center or random) and a per-class
      share of the accepted synthetic images chosen on validation only (``choose_recipe``), then scored on test.
    validation_seeds: classifier runs per candidate and fold in that search.
    """

    seeds: int = Field(3, ge=3)
    classifier: JudgeConfig = DEFAULT_CLASSIFIER
    independent: Literal["extra_trees", "logistic_regression"] = "extra_trees"
    gate_margin: float = Field(0.01, ge=0.0, le=1.0)
    choose_on_validation: bool = False  # measured and did not help (docs/BENCHMARKS.md): off by default
    validation_seeds: int = Field(2, ge=1)
    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(1000, ge=2)
    fid_min_samples: int = Field(50, ge=2)
    minority_classes: list[str] | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("minority_classes")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"minority_classes has repeated names: {value}")
        return value


# ------------------------------------------------------------------------------------------------------ inputs


@dataclasses.dataclass(frozen=True)
class _Data:
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


def synthetic_rows(filter_dir: Path) -> pd.DataFrame:
    """The synthetic rows of the filter step's manifest (images relative to ``filter_dir``), accepted or not."""
    frame, _ = read_manifest(filter_dir / "manifest.parquet")
    rows = frame[frame["source"] == "synthetic"].copy()
    rows["label"] = rows["label"].astype(str)
    return rows.reset_index(drop=True)


def real_rows(ingest_dir: Path) -> pd.DataFrame:
    """The real rows of the ingest step's manifest (images relative to ``ingest_dir``)."""
    frame, _ = read_manifest(ingest_dir / "manifest.parquet")
    rows = frame[frame["source"] == "real"].copy()
    rows["label"] = rows["label"].astype(str)
    return rows.reset_index(drop=True)


def _load(root: Path, rows: pd.DataFrame, index: Mapping[str, int], shape: tuple[int, int, int]):
    c, h, w = shape
    if rows.empty:
        return torch.empty(0, c, h, w), torch.empty(0, dtype=torch.int64)
    x = load_images(root, list(rows["path"]), c)
    if tuple(x.shape[1:]) != shape:
        raise UserError(f"{root}: images are {tuple(x.shape[1:])} but the judge was trained on {shape}; "
                        "rerun the judge step on this data")
    return x, torch.tensor([index[v] for v in rows["label"]], dtype=torch.int64)


def _read_inputs(ingest_dir: Path, filter_dir: Path, class_names: list[str],
                 image_shape: tuple[int, int, int]) -> _Data:
    real = real_rows(ingest_dir)
    synthetic = synthetic_rows(filter_dir)
    index = {name: i for i, name in enumerate(class_names)}
    for what, frame in (("real", real), ("synthetic", synthetic)):
        unknown = sorted(set(frame["label"]) - set(index), key=natural_key)
        if unknown:
            raise UserError(f"{what} images of classes {unknown} are not among the judge's classes {class_names}; "
                            "rerun the judge step on this data")
    split = {s: real[real["split"] == s] for s in ("train", "val", "test", "heldback")}
    if split["test"].empty:
        raise UserError(f"{ingest_dir / 'manifest.parquet'}: no real test images; utility is scored on the test "
                        "split (set data.test_fraction > 0 or give the source a test split)")
    loaded = {s: _load(ingest_dir, rows, index, image_shape) for s, rows in split.items()}
    syn_x, syn_y = _load(filter_dir, synthetic[synthetic["accepted"].astype(bool)], index, image_shape)
    return _Data(class_names, *loaded["train"], *loaded["val"], *loaded["test"], *loaded["heldback"],
                 syn_x, syn_y, synthetic)


def default_minority(train_counts: Mapping[str, int]) -> list[str]:
    """Classes whose real train count is below half the largest."""
    largest = max(train_counts.values(), default=0)
    return [name for name, n in train_counts.items() if n < largest / 2]


# ------------------------------------------------------------------------------------------------- set quality


def _entry(value: float | None, n_real: int, n_synthetic: int, reason: str | None = None, **extra: Any) -> dict:
    value = _finite(value)
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
        out["kid"] = {"mean": _finite(k.mean), "std": _finite(k.std), "subset_size": k.subset_size,
                      "subsets": k.subsets, "n_real": n, "n_synthetic": m, "reason": None}
    else:
        out["kid"] = {"mean": None, "std": None, "subset_size": None, "subsets": params.kid_subsets,
                      "n_real": n, "n_synthetic": m, "reason": f"KID needs >= 2 images per set; got {n} real, {m} "
                                                              "synthetic"}
    if min(n, m) > PR_K:
        pr = M.precision_recall(real, fake, k=PR_K)
        out["precision"] = _entry(pr.precision, n, m, k=PR_K)
        out["recall"] = _entry(pr.recall, n, m, k=PR_K)
    else:
        why = f"needs > {PR_K} images per set (k={PR_K}); got {n} real, {m} synthetic"
        out["precision"] = _entry(None, n, m, why, k=PR_K)
        out["recall"] = _entry(None, n, m, why, k=PR_K)
    if n > DC_K and m >= 1:
        dc = M.density_coverage(real, fake, k=DC_K)
        out["density"] = _entry(dc.density, n, m, k=DC_K)
        out["coverage"] = _entry(dc.coverage, n, m, k=DC_K)
    else:
        why = f"needs > {DC_K} real images (k={DC_K}) and >= 1 synthetic; got {n} real, {m} synthetic"
        out["density"] = _entry(None, n, m, why, k=DC_K)
        out["coverage"] = _entry(None, n, m, why, k=DC_K)
    return out


def _diversity(real: torch.Tensor, fake: torch.Tensor) -> dict:
    n, m = int(real.shape[0]), int(fake.shape[0])
    syn = M.within_class_diversity(fake) if m >= 2 else None
    ref = M.within_class_diversity(real) if n >= 2 else None
    missing = [f"{what} has {k} (< 2) images" for what, k in (("real", n), ("synthetic", m)) if k < 2]
    return {"synthetic": _finite(syn), "real": _finite(ref), "n_real": n, "n_synthetic": m,
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
        "synthetic": _finite(float(np.mean([d["synthetic"] for d in both]))) if both else None,
        "real": _finite(float(np.mean([d["real"] for d in both]))) if both else None,
        "n_real": int(in_ref.sum()), "n_synthetic": int(in_syn.sum()), "classes": len(both),
        "reason": None if both else "no class has >= 2 real and >= 2 synthetic images"}
    macro: dict[str, dict] = {}
    for key in ("fid", "precision", "recall", "density", "coverage"):
        vals = [v[key]["value"] for v in per_class.values() if v[key]["value"] is not None]
        macro[key] = {"value": _finite(float(np.mean(vals))) if vals else None, "classes": len(vals),
                      "reason": None if vals else "no class has enough images"}
    kids = [v["kid"]["mean"] for v in per_class.values() if v["kid"]["mean"] is not None]
    macro["kid"] = {"value": _finite(float(np.mean(kids))) if kids else None, "classes": len(kids),
                    "reason": None if kids else "no class has enough images"}
    return {"reference": reference, "overall": overall, "macro": macro, "per_class": per_class}


# ---------------------------------------------------------------------------------------------- training sets


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


def _real_synthetic(data: _Data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``real_synthetic`` set and a mask of its repeated copies (rows that are not an original image)."""
    k, n, m = len(data.class_names), data.train_x.shape[0], data.syn_x.shape[0]
    xo, yo = _repeat_to_balance(data.train_x, data.train_y, k)
    x, y = _repeat_to_balance(torch.cat([xo, data.syn_x]), torch.cat([yo, data.syn_y]), k)
    copy = torch.ones(x.shape[0], dtype=torch.bool)
    copy[:n] = False  # [real | real repeats | synthetic | repeats of both]
    copy[xo.shape[0]:xo.shape[0] + m] = False
    return x, y, copy


def training_set(condition: str, data: _Data, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
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
    if condition in ("real_synthetic", "real_classical_aug_synthetic"):
        xs, ys, copy = _real_synthetic(data)
        if condition == "real_classical_aug_synthetic":
            xs = xs.clone()
            xs[copy] = augment_images(xs[copy], seed)
        return xs, ys
    if condition == "synthetic_only":
        return data.syn_x, data.syn_y
    if condition == "real_oracle":
        return torch.cat([x, data.heldback_x]), torch.cat([y, data.heldback_y])
    raise ValueError(f"unknown condition {condition!r}; conditions: {', '.join(CONDITIONS)}")


def independent_classifier(name: str, seed: int):
    """The second classifier family (``EvaluateParams.independent``): an unfitted scikit-learn estimator on
    flattened pixels. Nothing is shared with the project's network: not the architecture, the optimiser, nor the
    in-training shift augmentation."""
    from sklearn.ensemble import ExtraTreesClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "extra_trees":
        return ExtraTreesClassifier(n_estimators=200, random_state=seed, n_jobs=1)
    if name == "logistic_regression":
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed))
    raise ValueError(f"unknown independent classifier {name!r}; choose extra_trees or logistic_regression")


def _pixels(x: torch.Tensor) -> np.ndarray:
    return x.reshape(x.shape[0], -1).numpy().astype(np.float32)


# ------------------------------------------------------------------------------------------------------ utility


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


def _gap_closed(results: Mapping[str, dict], condition: str, metric: str, baseline: str | None) -> dict:
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
        out["gap_closed"][condition] = {m: _gap_closed(out, condition, m, best[m]) for m in COMPARED}
    return out


def families(utility: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The per-family results of ``utility_metrics``: the project's classifier, then the independent one."""
    return {PROJECT_FAMILY: utility, utility["independent"]["family"]: utility["independent"]}


_LABELS = {"balanced_accuracy": "balanced accuracy", "minority_recall": "minority recall"}


def gate_verdict(utility: Mapping[str, Any], margin: float) -> dict[str, Any]:
    """The utility gate: may the synthetic images be published?

    Rule: for each classifier family and each compared metric (balanced accuracy, minority recall), take the
    seed-paired difference ``real_synthetic - best real baseline`` and its 95% t-interval. The gate **refuses**
    when any of these intervals lies wholly below ``-margin`` (the synthetic images measurably hurt); otherwise it
    passes. An interval that straddles zero passes: the seed noise could not tell. With no accepted synthetic image
    there is nothing to measure and the gate passes (``real_synthetic`` then equals ``real_oversampled``).

    Returns ``{"passed", "rule", "margin", "condition", "checks": [...], "verdict"}``; ``verdict`` is one line
    naming the numbers.
    """
    checks = []
    for family, results in families(utility).items():
        for metric in COMPARED:
            d = results["paired_difference"].get(GATED, {}).get(metric, {})
            if d.get("mean") is None:
                continue
            checks.append({"family": family, "metric": metric, "baseline": d["baseline"], "mean": d["mean"],
                           "ci95": d["ci95"], "hurts": d["ci95"][1] < -margin})

    def line(c: Mapping[str, Any]) -> str:
        return (f"{c['family']} {_LABELS[c['metric']]} {c['mean']:+.3f} [95% CI {c['ci95'][0]:+.3f}, "
                f"{c['ci95'][1]:+.3f}] vs {c['baseline']}")

    failed = [c for c in checks if c["hurts"]]
    if failed:
        verdict = (f"utility gate refused: {GATED} measurably hurts against the best real baseline "
                   f"(whole 95% CI below -{margin:g}): " + "; ".join(line(c) for c in failed))
    else:
        gains = [c for c in checks if c["ci95"][0] > 0]
        verdict = (f"utility gate passed: no measured harm against the best real baseline (margin {margin:g}); "
                   + ("; ".join(line(c) for c in checks) if checks else "no comparison was defined"))
        if checks and not gains:
            verdict += "; no measured gain either"
    return {"passed": not failed, "margin": margin, "condition": GATED, "checks": checks, "verdict": verdict,
            "rule": f"refuse when, for either classifier family and either of balanced accuracy / minority recall, "
                    f"the 95% t-interval (paired over seeds) of {GATED} minus the best real baseline lies wholly "
                    f"below -{margin:g}"}


# Which choice was made on what data: the report prints this list.
CHOICES = (
    {"choice": "best real baseline (per metric and classifier family)",
     "made_on": "the test split: the better mean of real_oversampled and real_classical_aug; taking the stronger "
                "opponent only makes the comparison stricter"},
    {"choice": "real_synthetic recipe (the oversampled real set plus the synthetic images)",
     "made_on": "the bundled example's test split, once (docs/BENCHMARKS.md); fixed since, not re-tuned per dataset"},
    {"choice": "the utility gate's rule and margin, the validation search's candidates",
     "made_on": "fixed in code/params before any result of this dataset"},
    {"choice": "filter thresholds (confidence, realism, memorization)",
     "made_on": "the real val split (memorization quantile, judge calibration) and fixed params"},
    {"choice": "generator family and its sampling knobs (guidance, steps, temperature), plan quotas",
     "made_on": "params.yaml as given; nothing is chosen by looking at the test split"},
    {"choice": "classifier recipes of both families",
     "made_on": "fixed in code/params before any result; identical for every condition"},
)


def utility_metrics(data: _Data, params: EvaluateParams, minority: Sequence[str], device: torch.device, *,
                    real_f: np.ndarray | None = None, syn_f: np.ndarray | None = None,
                    console: Console | None = None) -> dict[str, Any]:
    """Train both classifier families under every condition and seed; score on the real test split (module doc).

    ``real_f`` (features of the real train then val images) and ``syn_f`` (of the accepted synthetic images) are the
    feature space of the k-center selection; without them ``real_synthetic_chosen`` is not run."""
    conditions = [c for c in CONDITIONS if c != "real_oracle" or data.heldback_x.shape[0] > 0]
    skipped: dict[str, str] = {}
    if data.heldback_x.shape[0] == 0:
        skipped["real_oracle"] = "the manifest has no heldback rows"
    if data.syn_x.shape[0] == 0:
        conditions.remove("synthetic_only")
        skipped["synthetic_only"] = "no accepted synthetic images"
    recipe = None
    if not params.choose_on_validation or data.syn_x.shape[0] == 0 or real_f is None or syn_f is None:
        conditions.remove("real_synthetic_chosen")
        skipped["real_synthetic_chosen"] = ("evaluate.choose_on_validation is false" if not params.choose_on_validation
                                            else "no accepted synthetic images")
    else:
        recipe = choose_recipe(data, real_f, syn_f, params, minority, device)
        chosen = _with_synthetic(data, synthetic_subset(data, real_f[:data.train_x.shape[0]], syn_f, recipe["shares"],
                                                        recipe["selection"], params.classifier.seed))
    k = len(data.class_names)
    truth = data.test_y.numpy()
    runs: dict[str, dict[str, list[dict]]] = {f: {c: [] for c in conditions}
                                              for f in (PROJECT_FAMILY, params.independent)}
    sizes: dict[str, dict[str, int]] = {}
    seconds: dict[str, float] = {}
    columns = (TextColumn("[bold]evaluate[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=False) as bar:
        task = bar.add_task("", total=len(conditions) * params.seeds)
        for condition in conditions:
            start = time.perf_counter()
            for i in range(params.seeds):
                bar.update(task, description=f"{condition} seed {i + 1}/{params.seeds}")
                seed = params.classifier.seed + i
                x, y = (training_set("real_synthetic", chosen, seed) if condition == "real_synthetic_chosen"
                        else training_set(condition, data, seed))
                sizes[condition] = {name: int((y == j).sum()) for j, name in enumerate(data.class_names)}
                config = dataclasses.replace(params.classifier, seed=seed)
                model = train_judge(x, y, num_classes=k, config=config, device=device)
                pred = model.predict_logits(data.test_x).argmax(dim=1).numpy()
                runs[PROJECT_FAMILY][condition].append(score(pred, truth, data.class_names, minority))
                other = independent_classifier(params.independent, seed).fit(_pixels(x), y.numpy())
                pred = other.predict(_pixels(data.test_x))
                runs[params.independent][condition].append(score(pred, truth, data.class_names, minority))
                bar.advance(task)
            seconds[condition] = round(time.perf_counter() - start, 2)

    out = summarize(runs[PROJECT_FAMILY], data.class_names, params.seeds)
    out["independent"] = {"family": params.independent, "input": "raw pixels, flattened",
                          **summarize(runs[params.independent], data.class_names, params.seeds)}
    out["gate"] = gate_verdict(out, params.gate_margin)
    out["choices"] = [dict(c) for c in CHOICES]
    if recipe is not None:
        out["recipe"] = recipe
        out["choices"].append({"choice": "real_synthetic_chosen: selection order and per-class synthetic share "
                                         f"({recipe['selection']}; {recipe['shares']})",
                               "made_on": recipe["validated_on"] + "; the test split is read once, to score it"})
    out["setup"] = {
        "conditions": conditions, "skipped": skipped, "seeds": params.seeds, "test_size": int(truth.shape[0]),
        "test_per_class": {name: int((truth == j).sum()) for j, name in enumerate(data.class_names)},
        "minority_classes": list(minority), "train_per_class": sizes, "train_seconds": seconds,
        "classifier": dataclasses.asdict(params.classifier), "independent": params.independent,
        "device": str(device), "std": "sample standard deviation over seeds (ddof=1)",
        "baselines": list(BASELINES), "context": "real_only (untreated; shown, never a baseline for gains)",
    }
    return out


# ------------------------------------------------------------------------------------- recipe chosen on validation

SHARES = (0.0, 0.5, 1.0)  # candidate shares of a class's accepted synthetic images
SELECTIONS = ("k_center", "random")  # candidate orders the share is taken in
MIN_VAL_PER_CLASS = 5  # fewer real val images in a minority class: k-fold over train + val instead
FOLDS = 3


def k_center_order(real_f: np.ndarray, syn_f: np.ndarray) -> np.ndarray:
    """Greedy k-center order (Gonzalez 1985) of the synthetic rows, with the real images as the first centres:
    each next pick is the synthetic image farthest (Euclidean, in the feature space) from every real image and
    every synthetic image picked before it. A prefix of this order covers the class beyond what the real images
    already show, and near-duplicates come last."""
    from sklearn.metrics import pairwise_distances

    n = syn_f.shape[0]
    far = pairwise_distances(syn_f, real_f).min(axis=1) if real_f.shape[0] else np.full(n, np.inf)
    order = np.empty(n, dtype=np.int64)
    for step in range(n):
        pick = int(np.argmax(far))
        order[step] = pick
        far = np.minimum(far, pairwise_distances(syn_f, syn_f[pick:pick + 1]).ravel())
        far[order[:step + 1]] = -np.inf
    return order


def synthetic_subset(data: _Data, real_f: np.ndarray, syn_f: np.ndarray, shares: Mapping[str, float],
                     selection: str, seed: int) -> np.ndarray:
    """Rows of the accepted synthetic images to keep: per class, the first ``round(share * n)`` of its images in
    ``selection`` order (``k_center_order`` against that class's real train features, or a seeded permutation)."""
    keep = []
    for k, name in enumerate(data.class_names):
        rows = np.flatnonzero(data.syn_y.numpy() == k)
        n = round(shares.get(name, 1.0) * rows.size)
        if n == 0:
            continue
        if selection == "k_center":
            order = k_center_order(real_f[data.train_y.numpy() == k], syn_f[rows])
        else:
            order = np.random.default_rng([seed, k]).permutation(rows.size)
        keep.append(rows[order[:n]])
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, dtype=np.int64)


def _with_synthetic(data: _Data, rows: np.ndarray) -> _Data:
    index = torch.from_numpy(rows)
    return dataclasses.replace(data, syn_x=data.syn_x[index], syn_y=data.syn_y[index])


def validation_folds(data: _Data, real_f: np.ndarray, minority: Sequence[str]) -> tuple[list[tuple], str]:
    """(fold data with train = the fold's real train images and test = its held-out real images, their
    features) for each fold, and how they were made: the val split itself, or, when a minority class has fewer
    than ``MIN_VAL_PER_CLASS`` val images, ``FOLDS``-fold stratified splits of train + val. Never the test split."""
    from sklearn.model_selection import StratifiedKFold

    val_counts = [int((data.val_y == data.class_names.index(c)).sum()) for c in minority]
    n = data.train_x.shape[0]
    if val_counts and min(val_counts) >= MIN_VAL_PER_CLASS:
        fold = dataclasses.replace(data, test_x=data.val_x, test_y=data.val_y)
        return [(fold, real_f[:n])], "the real val split"
    x, y = torch.cat([data.train_x, data.val_x]), torch.cat([data.train_y, data.val_y])
    splits = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=0).split(np.zeros(len(y)), y.numpy())
    folds = []
    for fit, held in splits:
        fit_t, held_t = torch.from_numpy(fit), torch.from_numpy(held)
        folds.append((dataclasses.replace(data, train_x=x[fit_t], train_y=y[fit_t], test_x=x[held_t],
                                          test_y=y[held_t]), real_f[fit]))
    return folds, f"{FOLDS}-fold stratified splits of real train + val (a minority class has < {MIN_VAL_PER_CLASS} " \
                  "val images)"


def _candidate(selection: str, share: float) -> tuple[str, float]:
    """None or all of a class's images are the same set in any order: one candidate, not one per order."""
    return (selection, share) if 0 < share < 1 else ("all", share)


def choose_recipe(data: _Data, real_f: np.ndarray, syn_f: np.ndarray, params: EvaluateParams,
                  minority: Sequence[str], device: torch.device) -> dict[str, Any]:
    """Choose, on validation only, the selection order and a per-class share of the accepted synthetic images.

    Every candidate (``SELECTIONS`` x ``SHARES``, share 0 and 1 once) builds the ``real_synthetic`` set from the
    fold's real train images and its share of the synthetic ones, trains the project's classifier
    ``validation_seeds`` times and is scored on the fold's held-out real images. The selection order is the one
    whose partial-share candidates reach the higher mean of (balanced accuracy + minority recall) / 2; then,
    per class with synthetic images, the share with the highest mean F1 of that class (ties: the smaller share).
    """
    from sklearn.metrics import f1_score

    folds, how = validation_folds(data, real_f, minority)
    k = len(data.class_names)
    candidates = list(dict.fromkeys(_candidate(s, share) for s in SELECTIONS for share in SHARES))
    scored: dict[tuple[str, float], list[dict]] = {c: [] for c in candidates}
    for selection, share in candidates:
        for fold, fold_real_f in folds:
            for i in range(params.validation_seeds):
                seed = params.classifier.seed + i
                rows = synthetic_subset(fold, fold_real_f, syn_f, dict.fromkeys(data.class_names, share),
                                        selection, seed)
                x, y = training_set("real_synthetic", _with_synthetic(fold, rows), seed)
                model = train_judge(x, y, num_classes=k, config=dataclasses.replace(params.classifier, seed=seed),
                                    device=device)
                truth = fold.test_y.numpy()
                pred = model.predict_logits(fold.test_x).argmax(dim=1).numpy()
                s = score(pred, truth, data.class_names, minority)
                s["f1"] = dict(zip(data.class_names, f1_score(truth, pred, labels=list(range(k)), average=None,
                                                              zero_division=0).tolist(), strict=True))
                scored[(selection, share)].append(s)

    def objective(c: tuple[str, float]) -> float:
        return float(np.mean([(s["balanced_accuracy"] + (s["minority_recall"] or 0.0)) / 2 for s in scored[c]]))

    partial = [share for share in SHARES if 0 < share < 1]
    selection = max(SELECTIONS, key=lambda s: np.mean([objective((s, share)) for share in partial]))
    with_synthetic = [n for j, n in enumerate(data.class_names) if bool((data.syn_y == j).any())]
    shares = {}
    for name in with_synthetic:
        options = [_candidate(selection, share) for share in SHARES]
        shares[name] = max(options, key=lambda c: (np.mean([s["f1"][name] for s in scored[c]]), -c[1]))[1]
    return {"selection": selection, "shares": shares, "validated_on": how,
            "validation_seeds": params.validation_seeds,
            "candidates": [{"selection": s, "share": share, "objective": objective((s, share)),
                            "f1": {n: float(np.mean([x["f1"][n] for x in scored[(s, share)]])) for n in with_synthetic}}
                           for s, share in candidates]}


# ------------------------------------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # object API: no pyplot state, the Agg canvas renders the PNG

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_utility(utility: Mapping[str, Any], path: Path) -> Path:
    """Bars of mean balanced accuracy and minority recall per condition, std error bars, per-seed dots."""
    conditions = utility["setup"]["conditions"]
    metrics = (("balanced_accuracy", "balanced accuracy", "#4C72B0"), ("minority_recall", "minority recall",
                                                                        "#DD8452"))
    fig = _figure(max(6.0, 1.3 * len(conditions) + 2), 4.2)
    ax = fig.add_subplot()
    xs = np.arange(len(conditions))
    width = 0.38
    for j, (key, label, colour) in enumerate(metrics):
        pos = xs + (j - 0.5) * width
        means = [utility[c][key]["mean"] if utility[c][key]["mean"] is not None else np.nan for c in conditions]
        stds = [utility[c][key]["std"] if utility[c][key]["std"] is not None else 0.0 for c in conditions]
        ax.bar(pos, means, width, yerr=stds, capsize=4, label=label, color=colour, alpha=0.85)
        for p, c in zip(pos, conditions, strict=True):
            vals = utility[c][key]["values"]
            ax.scatter([p] * len(vals), vals, s=9, color="black", zorder=3)
    ax.set_xticks(xs, [c.replace("_", "\n", 1) for c in conditions])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("on the real test split")
    ax.set_title(f"Downstream utility (mean ± std over {utility['setup']['seeds']} seeds; dots: seeds)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path)
    return path


def plot_counts(counts: Mapping[str, Any], class_names: Sequence[str], path: Path) -> Path:
    """Stacked bars per class: real train images, plus accepted synthetic ones (after)."""
    fig = _figure(max(5.0, 0.55 * len(class_names) + 2), 3.6)
    ax = fig.add_subplot()
    xs = np.arange(len(class_names))
    real = [counts["before"][c] for c in class_names]
    syn = [counts["synthetic_accepted"][c] for c in class_names]
    ax.bar(xs, real, 0.7, label="real train (before)", color="#4C72B0")
    ax.bar(xs, syn, 0.7, bottom=real, label="+ accepted synthetic (after)", color="#55A868")
    ax.set_xticks(xs, list(class_names))
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.set_title("Class counts before / after")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.savefig(path)
    return path


def plot_per_class_recall(utility: Mapping[str, Any], class_names: Sequence[str], minority: Sequence[str],
                          path: Path) -> Path:
    """Heat map of mean test recall, conditions x classes; minority classes marked with *."""
    conditions = utility["setup"]["conditions"]
    grid = np.array([[utility[c]["per_class_recall"].get(n, {}).get("mean", np.nan) for n in class_names]
                     for c in conditions], dtype=np.float64)
    fig = _figure(max(5.0, 0.6 * len(class_names) + 2.5), 0.45 * len(conditions) + 1.6)
    ax = fig.add_subplot()
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(np.arange(len(class_names)), [f"{n}*" if n in minority else n for n in class_names])
    ax.set_yticks(np.arange(len(conditions)), list(conditions))
    for (r, c), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.set_title("Per-class test recall (mean over seeds; * minority)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------------------------------- the step


_FILTER_CLASS_FIELDS = ("acceptance_rate", "needed", "shortfall", "met", "generated_topup")
_FILTER_TOP_FIELDS = ("met", "shortfall", "thresholds", "totals", "rounds_used", "feature_space")


def acceptance(synthetic: pd.DataFrame, class_names: Sequence[str], summary: Mapping[str, Any] | None) -> dict:
    """Per class: generated, accepted (kept), kept share and rejection reasons counted from the filter manifest,
    with the filter's own per-class view from ``filter_summary.json`` (``acceptance_rate``: the share that passed
    every test, before surplus images were dropped; ``needed``, ``shortfall``, ...) and its thresholds."""
    summary = summary or {}
    filter_classes = summary.get("classes", {}) if isinstance(summary.get("classes"), Mapping) else {}
    per_class = {}
    for name in class_names:
        rows = synthetic[synthetic["label"] == name]
        accepted = int(rows["accepted"].astype(bool).sum())
        reasons = rows.loc[~rows["accepted"].astype(bool), "reject_reason"].fillna("(none given)").astype(str)
        entry: dict[str, Any] = {
            "generated": len(rows), "accepted": accepted, "kept_rate": accepted / len(rows) if len(rows) else None,
            "reject_reasons": {str(k): int(v) for k, v in reasons.value_counts().sort_index().items()}}
        from_filter = filter_classes.get(name, {})
        entry.update({k: from_filter[k] for k in _FILTER_CLASS_FIELDS if k in from_filter})
        per_class[name] = entry
    return {"per_class": per_class, "source": FILTER_SUMMARY if summary else "filter manifest only",
            **{k: summary[k] for k in _FILTER_TOP_FIELDS if k in summary}}


def evaluate_step(ingest_dir: Path, filter_dir: Path, judge_dir: Path, params: EvaluateParams, out_dir: Path, *,
                  extractor: str | Path | None = None, console: Console | None = None) -> Path:
    """Measure the accepted synthetic images (set quality, downstream utility); write ``out_dir/metrics.json``.

    Also writes ``utility.png``, ``class_counts.png`` and ``per_class_recall.png``, the tables ``utility.csv`` and
    ``per_class.csv``, and the headline numbers ``summary.json`` (``tasks/headline.py``) into ``out_dir``.

    Args:
        ingest_dir: the ingest step's folder (``manifest.parquet`` and the real images).
        filter_dir: the filter step's folder (``manifest.parquet`` with the synthetic rows and their images,
            ``filter_summary.json``).
        judge_dir: the judge step's folder (``judge.pt`` + ``judge.json``): the feature space and class order.
        params: the ``evaluate`` section.
        out_dir: where the metrics and the charts go (created when absent).
        extractor: a local feature-extractor file (``filter.extractor``); None: the one the filter used (the
            ``feature_space`` of ``filter_summary.json``), else the judge's features.
        console: where the progress bar goes (stderr by default).

    Returns:
        The path of ``metrics.json``.

    Raises:
        UserError: a manifest or the judge is missing, there are no real test images, a class is unknown to the
            judge, or a ``minority_classes`` name is not a class.
    """
    console = console or Console(stderr=True)
    device = pick_device(params.device)
    judge, class_names = load_judge_step(judge_dir, device=device)
    data = _read_inputs(ingest_dir, filter_dir, class_names, judge.image_shape)
    train_counts = {name: int((data.train_y == i).sum()) for i, name in enumerate(class_names)}
    if params.minority_classes is None:
        minority = default_minority(train_counts)
    else:
        unknown = [c for c in params.minority_classes if c not in class_names]
        if unknown:
            raise UserError(f"evaluate.minority_classes: {unknown} are not classes of this dataset "
                            f"({class_names})")
        minority = sorted(params.minority_classes, key=natural_key)
    summary_path = filter_dir / FILTER_SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if extractor is None and summary and summary.get("feature_space") not in (None, "judge"):
        extractor = summary["feature_space"]  # measure in the space the filter used

    ref_x, ref_y = torch.cat([data.train_x, data.val_x]), torch.cat([data.train_y, data.val_y])
    ref_f = embed(ref_x, judge, extractor=extractor)
    syn_f = embed(data.syn_x, judge, extractor=extractor) if data.syn_x.shape[0] else torch.empty(0, ref_f.shape[1])
    quality = quality_metrics(ref_f, ref_y, syn_f, data.syn_y, class_names, params)
    if data.heldback_x.shape[0]:
        # The oracle's view: the real images the scarce classes lost are the distribution the synthetic ones stand
        # in for, and often the only real set large enough for FID in those classes.
        held_f = embed(data.heldback_x, judge, extractor=extractor)
        quality["vs_heldback"] = quality_metrics(held_f, data.heldback_y, syn_f, data.syn_y, class_names, params,
                                                 reference=REFERENCE_HELDBACK)
    del judge

    syn_counts = {name: int((data.syn_y == i).sum()) for i, name in enumerate(class_names)}
    counts = {
        "before": train_counts,
        "after": {n: train_counts[n] + syn_counts[n] for n in class_names},
        "synthetic_accepted": syn_counts,
        "synthetic_generated": {n: int((data.synthetic["label"] == n).sum()) for n in class_names},
        "real_val": {n: int((data.val_y == i).sum()) for i, n in enumerate(class_names)},
        "real_test": {n: int((data.test_y == i).sum()) for i, n in enumerate(class_names)},
        "real_heldback": {n: int((data.heldback_y == i).sum()) for i, n in enumerate(class_names)},
    }
    utility = utility_metrics(data, params, minority, device, real_f=ref_f.numpy(), syn_f=syn_f.numpy(),
                              console=console)

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {"utility": plot_utility(utility, out_dir / PLOT_UTILITY).name,
             "class_counts": plot_counts(counts, class_names, out_dir / PLOT_COUNTS).name,
             "per_class_recall": plot_per_class_recall(utility, class_names, minority, out_dir / PLOT_RECALL).name}
    result = {
        "format": FORMAT,
        "classes": class_names,
        "minority_classes": minority,
        "feature_space": {"extractor": str(extractor) if extractor is not None else "judge penultimate features",
                          "dim": int(ref_f.shape[1]), "judge_dir": str(judge_dir)},
        "counts": counts,
        "acceptance": acceptance(data.synthetic, class_names, summary),
        "quality": quality,
        "utility": utility,
        "plots": plots,
    }
    path = out_dir / METRICS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(result), indent=2, allow_nan=False))
    tmp.replace(path)
    write_tables(counts, result["acceptance"], utility, class_names, out_dir)
    write_headline(_clean(result), out_dir / SUMMARY_FILE)  # the few numbers `dvc metrics show` prints
    _print_summary(console, utility)
    return path


def write_tables(counts: Mapping[str, Any], accepted: Mapping[str, Any], utility: Mapping[str, Any],
                 class_names: Sequence[str], out_dir: Path) -> None:
    """``utility.csv`` (one row per condition) and ``per_class.csv`` (one row per class): the tables
    ``dvc plots`` draws and compares across experiments."""
    conditions = [c for c in CONDITIONS if c in utility]
    metrics = ("balanced_accuracy", "macro_f1", "minority_recall")
    other = utility["independent"]
    rows = [{"condition": c, **{f"{m}_{k}": utility[c][m][k] for m in metrics for k in ("mean", "std")},
             **{f"{other['family']}_{m}_{k}": other[c][m][k] for m in metrics for k in ("mean", "std")}}
            for c in conditions]
    pd.DataFrame(rows).to_csv(out_dir / TABLE_UTILITY, index=False)
    rows = [{"class": name, "real": counts["before"][name], "synthetic_accepted": counts["synthetic_accepted"][name],
             "kept_rate": accepted["per_class"][name]["kept_rate"],
             **{f"recall_{c}": utility[c]["per_class_recall"].get(name, {}).get("mean") for c in conditions}}
            for name in class_names]
    pd.DataFrame(rows).to_csv(out_dir / TABLE_PER_CLASS, index=False)


class UtilityGateRefused(UserError):
    """The synthetic images measurably hurt against the best real baseline: nothing is published."""


def enforce_gate(evaluate_dir: Path, enabled: bool) -> dict[str, Any]:
    """The utility gate's verdict from ``evaluate_dir/metrics.json``; raises when it refused and ``enabled``.

    Raises:
        UtilityGateRefused: one line with the verdict's numbers, where the report is, and how to publish anyway.
    """
    gate = read_metrics(evaluate_dir)["utility"]["gate"]
    if enabled and not gate["passed"]:
        raise UtilityGateRefused(f"{gate['verdict']}. Nothing published; the report says why. To publish anyway: "
                                 "-S publish.utility_gate=false")
    return gate


def read_metrics(evaluate_dir: Path) -> dict[str, Any]:
    """The ``metrics.json`` written by ``evaluate_step`` into ``evaluate_dir``."""
    path = evaluate_dir / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{path}: metrics not found; run `synthaug evaluate` first")
    return json.loads(path.read_text())


def gain_lines(utility: Mapping[str, Any]) -> list[str]:
    """One plain-text line per classifier family, treated condition and compared metric: the seed-paired gain over
    the best real baseline with its 95% interval, and the share of the baseline -> oracle gap closed."""
    lines = []
    for family, results in families(utility).items():
        for condition, paired in results["paired_difference"].items():
            for metric in COMPARED:
                d, g = paired[metric], results["gap_closed"][condition][metric]
                if d.get("mean") is None:
                    lines.append(f"{family} {condition} {_LABELS[metric]}: undefined ({d.get('reason')})")
                    continue
                gap = (f"{g['value']:.0%} of the {d['baseline']} -> real_oracle gap closed" if g["value"] is not None
                       else f"gap closed undefined ({g['reason']})")
                lines.append(f"{family} {condition} {_LABELS[metric]}: {d['mean']:+.3f} [95% CI {d['ci95'][0]:+.3f}, "
                             f"{d['ci95'][1]:+.3f}] vs {d['baseline']}; {gap}")
    return lines


def _print_summary(console: Console, utility: Mapping[str, Any]) -> None:
    from rich.table import Table

    fams = families(utility)
    table = Table(title="utility on the real test split (mean ± std over seeds; real_only: context only)")
    table.add_column("condition", justify="left")
    for family in fams:
        table.add_column(f"{family} bal. acc.", justify="right")
        table.add_column(f"{family} minority rec.", justify="right")

    def fmt(s: Mapping[str, Any]) -> str:
        return "—" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"

    for c in utility["setup"]["conditions"]:
        table.add_row(c, *(fmt(r[c][m]) for r in fams.values() for m in COMPARED))
    console.print(table)
    console.print("gain over the best real baseline (paired by seed):", highlight=False)
    for line in gain_lines(utility):
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    console.print(utility["gate"]["verdict"], highlight=False, soft_wrap=True)


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become null, numpy scalars become Python numbers."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return _finite(float(obj))
    return obj
