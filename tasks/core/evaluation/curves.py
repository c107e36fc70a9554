"""Learning curves of the scarce classes from the real images alone: would more real images of a class help a
classifier? If they would not, synthetic ones are unlikely to (``synthaug assess``, before any generator trains).

For each scarce class, every classifier family of the evaluation (``train_and_score``, under the
``real_oversampled`` baseline) are trained with 1/4, 1/2 and all of the class's train images, the other classes
whole, over a few seeds, and scored on the real **val** split (never test). A curve point keeps the training set's
size and layout: the class's rows hold only the point's share of its images, each repeated in turn. So points differ
only in how many distinct images of the class the classifier saw, and a class whose images are all copies of one
gives exactly the same classifier at every point. Per seed, the slope of the class's val recall against log2 of its
image count is the gain per doubling; its mean over seeds, with a t-interval, extrapolated one doubling beyond the
real count, is the estimate. It is an estimate from real images, not a measurement of synthetic ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from synthaug.tasks.core.evaluation.downstream import EvalData, train_and_score
from synthaug.tasks.core.evaluation.pool import nbytes, run_jobs, worker_count
from synthaug.tasks.core.evaluation.recipe import run_seconds
from synthaug.tasks.core.params.assess import AssessParams
from synthaug.tasks.core.params.evaluate import EvaluateParams
from synthaug.tasks.core.privacy.tstr import mean_interval

FRACTIONS = (0.25, 0.5, 1.0)  # of a scarce class's train images, at the curve's points
MIN_IMAGES = 3  # the fewest train images whose 1/4, 1/2 and all are three different counts
CONDITION = "real_oversampled"  # balanced by repetition, as the best real baseline may be: only the images vary
METRICS = ("recall", "balanced_accuracy")
WORTH, UNLIKELY, UNCLEAR = "worth trying", "unlikely to help", "cannot tell"


def curve_sizes(n: int) -> tuple[int, ...]:
    """The class's image counts at ``FRACTIONS`` of ``n`` (rounded up; distinct from ``MIN_IMAGES`` on)."""
    return tuple(math.ceil(f * n) for f in FRACTIONS)


def with_distinct(data: EvalData, k: int, count: int, seed: int) -> EvalData:
    """``data`` whose class-``k`` train rows hold only ``count`` of its images (a seeded choice), each repeated in
    turn; the training set keeps its size and layout."""
    rows = torch.nonzero(data.train_y == k).flatten()
    if count >= rows.numel():
        return data
    chosen = rows[torch.from_numpy(np.random.default_rng([seed, k]).permutation(rows.numel())[:count])]
    x = data.train_x.clone()
    x[rows] = data.train_x[chosen[torch.arange(rows.numel()) % count]]
    return dataclasses.replace(data, train_x=x)


def curve_run(shared: Mapping[str, Any], k: int | None, count: int, seed: int) -> dict[str, dict]:
    """One curve point and seed, in a worker process or here: every family's val scores ({family: score});
    ``k`` None: the full training set (every class's point at all of its images)."""
    data = shared["data"] if k is None else with_distinct(shared["data"], k, count, seed)
    scores, _ = train_and_score(CONDITION, data, seed, shared["params"], shared["scarce"], shared["device"])
    return scores


def _values(scores: dict, name: str) -> dict[str, float]:
    return {"recall": scores["per_class_recall"][name], "balanced_accuracy": scores["balanced_accuracy"]}


def _interval(values: Sequence[float]) -> dict[str, Any]:
    return {**mean_interval(values), "values": [float(v) for v in values]}


def family_curve(sizes: Sequence[int], points: Sequence[Sequence[Mapping[str, float]]],
                 min_gain: float) -> dict[str, Any]:
    """One family's curve of one class from ``points[i][s]`` (size i, seed s: its recall and balanced accuracy):
    per size the mean and interval over seeds; the per-seed slope per doubling; the estimate one doubling beyond
    the last size and the family's verdict: ``rises`` (the recall gain's interval lies above 0), ``flat`` (it lies
    below ``min_gain``) or ``uncertain``."""
    log2 = np.log2(np.asarray(sizes, dtype=np.float64))
    curve = {m: [_interval([seed[m] for seed in point]) for point in points] for m in METRICS}
    # Rounded: a flat curve's least-squares slope comes out as +-1e-17, which must not count as a rise.
    slope = {m: _interval([round(float(np.polyfit(log2, [point[s][m] for point in points], 1)[0]), 9)
                           for s in range(len(points[0]))]) for m in METRICS}
    now = curve["recall"][-1]["mean"]
    headroom = 1.0 - now  # recall cannot rise past 1, whatever the slope says
    low, high = (min(v, headroom) for v in slope["recall"]["ci"])
    gain = min(slope["recall"]["mean"], headroom)
    verdict = "flat" if high < min_gain else "rises" if low > 0 else "uncertain"
    return {"sizes": list(sizes), **curve, "slope_per_doubling": slope,
            "estimate": {"images": 2 * sizes[-1], "recall": now + gain, "gain": gain, "gain_ci95": [low, high]},
            "verdict": verdict}


def class_verdict(families: Mapping[str, Mapping[str, Any]]) -> str:
    """``WORTH`` when any family's curve rises, ``UNLIKELY`` when every family's is flat, else ``UNCLEAR``."""
    verdicts = [f["verdict"] for f in families.values()]
    if "rises" in verdicts:
        return WORTH
    return UNLIKELY if all(v == "flat" for v in verdicts) else UNCLEAR


def learning_curves(data: EvalData, scarce: Sequence[str], evaluate: EvaluateParams, assess: AssessParams,
                    device: torch.device, *, processes: int | None = None) -> dict[str, Any]:
    """Per scarce class: its train and val counts, per family its curve (``family_curve``) and its verdict
    (``class_verdict``). ``data.test_*`` is never read: the classifiers are scored on ``data.val_*``. Runs spread
    over CPU processes as the evaluation's (``tasks.core.evaluation.pool``)."""
    fold = dataclasses.replace(data, test_x=data.val_x, test_y=data.val_y)
    params = evaluate.model_copy(update={"classifier": dataclasses.replace(evaluate.classifier, steps=assess.steps)})
    seeds = [evaluate.classifier.seed + i for i in range(assess.seeds)]
    index = {name: data.class_names.index(name) for name in scarce}
    sizes = {name: curve_sizes(int((data.train_y == k).sum())) for name, k in index.items()}
    jobs = [(None, 0, s) for s in seeds] + [(index[c], n, s) for c in scarce for n in sizes[c][:-1] for s in seeds]
    shared = {"data": fold, "params": params, "scarce": list(scarce), "device": device}
    workers = worker_count(processes, len(jobs), nbytes(shared), work=len(jobs) * run_seconds((fold, None, params)))
    scores = dict(zip(jobs, run_jobs(curve_run, jobs, shared, workers=workers, device=device), strict=True))
    classes = {}
    for name, k in index.items():
        keys = [[(k, n, s) for s in seeds] for n in sizes[name][:-1]] + [[(None, 0, s) for s in seeds]]
        families = {family: family_curve(sizes[name], [[_values(scores[key][family], name) for key in point]
                                                       for point in keys], assess.min_gain)
                    for family in scores[jobs[0]]}
        classes[name] = {"train_images": sizes[name][-1], "val_images": int((data.val_y == k).sum()),
                         "families": families, "verdict": class_verdict(families)}
    return {"classes": classes, "workers": workers}


def estimates(record: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per scarce class of an ``assess.json`` record: its verdict and, per family, the estimated val recall one
    doubling beyond its real train images with the estimated gain and its interval (what a report can set beside
    the gain synthetic images achieved)."""
    return {name: {"verdict": c["verdict"], "families": {f: v["estimate"] for f, v in c["families"].items()}}
            for name, c in record["classes"].items()}
