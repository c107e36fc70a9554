"""How much of each class's synthetic images the synthetic conditions use, in which order and how strongly
(``evaluate.recipe``), and the scoring of such recipes on real train/val data only: the per-class shares of
``real_synthetic_chosen`` and the trials of ``synthaug tune``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from synthaug.models.judge import train_judge
from synthaug.tasks.core.evaluation.downstream import (
    BASELINES,
    COMPARED,
    WITH_SYNTHETIC,
    EvalData,
    classifier_config,
    score,
    train_and_score,
    training_set,
)
from synthaug.tasks.core.evaluation.pool import nbytes, run_jobs, worker_count
from synthaug.tasks.core.params.evaluate import EvaluateParams, SyntheticRecipe

SHARES = (0.0, 0.5, 1.0)  # candidate shares of a class's accepted synthetic images
CHOSEN_ORDERS = ("k_center", "random")  # real_synthetic_chosen: candidate orders the share is taken in
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


def informativeness(real_f: np.ndarray, real_y: np.ndarray, syn_f: np.ndarray, syn_y: np.ndarray) -> np.ndarray:
    """1 - the probability of each synthetic image's label under a real-only classifier: a logistic regression
    on the real train images' features, trained on them as imbalanced as they are. High: an image that
    classifier gets wrong, i.e. something the real images alone did not teach (the filter has already required the
    judge to label it confidently, so it is not simply off-label)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if syn_f.shape[0] == 0:
        return np.empty(0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(real_f, real_y)
    proba = model.predict_proba(syn_f)
    column = {int(c): i for i, c in enumerate(model.classes_)}
    return np.array([1.0 - (proba[r, column[int(k)]] if int(k) in column else 0.0) for r, k in enumerate(syn_y)])


def synthetic_subset(data: EvalData, real_f: np.ndarray, syn_f: np.ndarray, shares: Mapping[str, float],
                     selection: str, seed: int) -> np.ndarray:
    """Rows of the accepted synthetic images to keep: per class, the first ``round(share * n)`` of its images in
    ``selection`` order (``k_center_order`` against that class's real train features, ``informativeness``
    descending, or a seeded permutation). ``real_f``: the features of ``data.train_x``."""
    keep = []
    info = (informativeness(real_f, data.train_y.numpy(), syn_f, data.syn_y.numpy())
            if selection == "informative" else None)
    for k, name in enumerate(data.class_names):
        rows = np.flatnonzero(data.syn_y.numpy() == k)
        n = round(shares.get(name, 1.0) * rows.size)
        if n == 0:
            continue
        if selection == "k_center":
            order = k_center_order(real_f[data.train_y.numpy() == k], syn_f[rows])
        elif info is not None:
            order = np.argsort(-info[rows], kind="stable")
        else:
            order = np.random.default_rng([seed, k]).permutation(rows.size)
        keep.append(rows[order[:n]])
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, dtype=np.int64)


def with_synthetic(data: EvalData, rows: np.ndarray) -> EvalData:
    index = torch.from_numpy(rows)
    return dataclasses.replace(data, syn_x=data.syn_x[index], syn_y=data.syn_y[index])


def apply_recipe(data: EvalData, real_f: np.ndarray, syn_f: np.ndarray, recipe: SyntheticRecipe, seed: int) -> EvalData:
    """``data`` with only the synthetic images ``recipe`` uses (its share of every class, in its order);
    ``real_f``: the features of ``data.train_x``. Every image (share 1) leaves ``data`` as it is."""
    if recipe.share >= 1.0 or data.syn_x.shape[0] == 0:
        return data
    shares = dict.fromkeys(data.class_names, recipe.share)
    return with_synthetic(data, synthetic_subset(data, real_f, syn_f, shares, recipe.selection, seed))


# A training setup of ``run_conditions``: the real data (with any synthetic images), the features of its real train
# images (for a recipe's selection; None where the recipe takes every image) and the params it trains under.
Setup = tuple[EvalData, np.ndarray | None, EvaluateParams]
Job = tuple[int, str, int]  # (index of the setup, condition, classifier seed)


def _condition_run(shared: Mapping[str, Any], setup: int, condition: str,
                   seed: int) -> tuple[dict[str, dict], dict[str, int], float]:
    """One ``run_conditions`` job, in a worker process or here: ``train_and_score`` on the setup's data with its
    recipe's synthetic images; its scores, the training set's per-class size and the seconds it took."""
    start = time.perf_counter()
    data, real_f, params = shared["setups"][setup]
    if condition in WITH_SYNTHETIC:
        data = apply_recipe(data, real_f, shared["syn_f"], params.recipe, seed)
    scores, size = train_and_score(condition, data, seed, params, shared["minority"], shared["device"])
    return scores, size, time.perf_counter() - start


# One thread trains the evaluation CNN (width 16, batch 64, 16x16 pixels) at about 35 ms a step on the 2-core
# machines of docs/BENCHMARKS.md: this many pixels of batch a second. Only decides whether to start processes.
PIXELS_PER_SECOND = 64 * 16 * 16 / 0.035


def run_seconds(setup: Setup) -> float:
    """Rough one-thread seconds of one run of ``setup`` (the real + synthetic sets train up to about twice this)."""
    data, _, params = setup
    pixels = data.train_x.shape[2] * data.train_x.shape[3] * (params.classifier.width / 16) ** 2
    return params.classifier.steps * params.classifier.batch_size * pixels / PIXELS_PER_SECOND


def run_conditions(setups: Sequence[Setup], jobs: Sequence[Job], syn_f: np.ndarray | None, minority: Sequence[str],
                   device: torch.device, *, processes: int | None = None,
                   on_done: Callable[[Job], None] | None = None) -> tuple[list[tuple[dict, dict, float]], int]:
    """Every job's classifier runs (``train_and_score``, every family), in job order, spread over CPU processes of
    one thread each (``tasks.core.evaluation.pool``; ``processes`` None: one per core, or this process alone when the
    runs
    would take under a minute); and the number of processes used."""
    shared = {"setups": list(setups), "syn_f": syn_f, "minority": list(minority), "device": device}
    workers = worker_count(processes, len(jobs), nbytes(shared), work=sum(run_seconds(setups[s]) for s, _, _ in jobs))
    return run_jobs(_condition_run, jobs, shared, workers=workers, device=device, on_done=on_done), workers


def validation_runs(folds: Sequence[tuple], syn_f: np.ndarray, params: EvaluateParams, minority: Sequence[str],
                    device: torch.device, condition: str, *, processes: int | None = None) -> dict[str, list[dict]]:
    """{family: scores} of ``condition`` under ``params.recipe`` on every validation fold (``validation_folds``)
    and ``params.validation_seeds`` classifier seeds: every family trained on the fold's real train images (plus
    the recipe's synthetic images) and scored on its held-out real images; runs spread as ``run_conditions``."""
    jobs = [(f, condition, params.classifier.seed + i) for f in range(len(folds))
            for i in range(params.validation_seeds)]
    results, _ = run_conditions([(fold, real_f, params) for fold, real_f in folds], jobs, syn_f, minority, device,
                                processes=processes)
    runs: dict[str, list[dict]] = {}
    for scores, _, _ in results:
        for family, s in scores.items():
            runs.setdefault(family, []).append(s)
    return runs


def mean_score(scores: Sequence[dict], metric: str) -> float:
    """Mean of ``metric`` over runs; an undefined value (no minority image in a fold) counts as 0."""
    return float(np.mean([s[metric] if s[metric] is not None else 0.0 for s in scores]))


def validation_gain(runs: Mapping[str, list[dict]], baselines: Mapping[str, Mapping[str, list[dict]]]) -> dict:
    """The gain of ``runs`` over the best real baseline on validation, per family and compared metric (mean over
    folds and seeds, against the better mean of ``BASELINES``), and ``objective``: the mean of those gains."""
    gains = {family: {m: mean_score(scores, m) - max(mean_score(baselines[c][family], m) for c in BASELINES)
                      for m in COMPARED}
             for family, scores in runs.items()}
    return {"gains": gains, "objective": float(np.mean([g for f in gains.values() for g in f.values()]))}


def validation_folds(data: EvalData, real_f: np.ndarray, minority: Sequence[str]) -> tuple[list[tuple], str]:
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


def choose_recipe(data: EvalData, real_f: np.ndarray, syn_f: np.ndarray, params: EvaluateParams,
                  minority: Sequence[str], device: torch.device) -> dict[str, Any]:
    """Choose, on validation only, the selection order and a per-class share of the accepted synthetic images.

    Every candidate (``CHOSEN_ORDERS`` x ``SHARES``, share 0 and 1 once) builds the ``real_synthetic`` set from the
    fold's real train images and its share of the synthetic ones, trains the project's classifier
    ``validation_seeds`` times and is scored on the fold's held-out real images. The selection order is the one
    whose partial-share candidates reach the higher mean of (balanced accuracy + minority recall) / 2; then,
    per class with synthetic images, the share with the highest mean F1 of that class (ties: the smaller share).
    """
    from sklearn.metrics import f1_score

    folds, how = validation_folds(data, real_f, minority)
    k = len(data.class_names)
    candidates = list(dict.fromkeys(_candidate(s, share) for s in CHOSEN_ORDERS for share in SHARES))
    scored: dict[tuple[str, float], list[dict]] = {c: [] for c in candidates}
    for selection, share in candidates:
        for fold, fold_real_f in folds:
            for i in range(params.validation_seeds):
                seed = params.classifier.seed + i
                rows = synthetic_subset(fold, fold_real_f, syn_f, dict.fromkeys(data.class_names, share),
                                        selection, seed)
                x, y = training_set("real_synthetic", with_synthetic(fold, rows), seed)
                model = train_judge(x, y, num_classes=k, device=device,
                                    config=classifier_config(params, "real_synthetic", fold, len(y), seed))
                truth = fold.test_y.numpy()
                pred = model.predict_logits(fold.test_x).argmax(dim=1).numpy()
                s = score(pred, truth, data.class_names, minority)
                s["f1"] = dict(zip(data.class_names, f1_score(truth, pred, labels=list(range(k)), average=None,
                                                              zero_division=0).tolist(), strict=True))
                scored[(selection, share)].append(s)

    def objective(c: tuple[str, float]) -> float:
        return float(np.mean([(s["balanced_accuracy"] + (s["minority_recall"] or 0.0)) / 2 for s in scored[c]]))

    partial = [share for share in SHARES if 0 < share < 1]
    selection = max(CHOSEN_ORDERS, key=lambda s: np.mean([objective((s, share)) for share in partial]))
    classes_with_synthetic = [n for j, n in enumerate(data.class_names) if bool((data.syn_y == j).any())]
    shares = {}
    for name in classes_with_synthetic:
        options = [_candidate(selection, share) for share in SHARES]
        shares[name] = max(options, key=lambda c: (np.mean([s["f1"][name] for s in scored[c]]), -c[1]))[1]
    return {"selection": selection, "shares": shares, "validated_on": how,
            "validation_seeds": params.validation_seeds,
            "candidates": [{"selection": s, "share": share, "objective": objective((s, share)),
                            "f1": {n: float(np.mean([x["f1"][n] for x in scored[(s, share)]]))
                                   for n in classes_with_synthetic}}
                           for s, share in candidates]}
