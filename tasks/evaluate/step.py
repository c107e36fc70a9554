"""The ``evaluate`` step: is the accepted synthetic data any good, and does it help a classifier?

Three kinds of evidence go into ``<out_dir>/metrics.json`` (plus three PNG charts beside it):

**Set quality** in the filter's feature space (``tasks.core.scoring.features.embed``: the judge's penultimate embedding,
or the local extractor the filter used): FID, KID, improved precision/recall (k=3), density/coverage (k=5) and
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
scratch under each condition with one fixed recipe (``classifier``: same steps, batch size, cross-entropy with
every image at weight 1 but the synthetic ones at ``recipe.weight``), so that the training set is the only
difference:

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
- both take the accepted synthetic images as ``recipe`` says (``tasks.core.evaluation.downstream.SyntheticRecipe``: a
  share of each class's images in some order, and a loss weight for them; the defaults take every image at weight 1, and
  ``synthaug tune`` chooses them on validation);
- ``real_synthetic_chosen`` (``choose_on_validation``): ``real_synthetic`` with only a per-class share of the
  accepted synthetic images, taken in k-center (diversity) or random order; the order and the shares are chosen on
  validation only (``choose_recipe``: the real val split, or k-fold over train + val where val is tiny);
- ``synthetic_only``: the accepted synthetic images alone (train on synthetic, test on real);
- ``real_oracle`` (only when the manifest has ``heldback`` rows): real train + the heldback real images, the
  best the scarce classes could have been with the real images they lost.

Independent classifier families (``independent``: scikit-learn models on the raw pixels, extremely randomized
trees and logistic regression by default) are trained on exactly the same training sets and scored the same way, so
that a gain is not an artefact of one network; the simplest learner has to benefit too.

Each is trained ``seeds`` times (classifier seed ``classifier.seed + i``; the augmentation and the independent
model's seed too) and scored on the real ``test`` split: balanced accuracy, macro-F1, per-class recall and minority
recall (the mean recall over ``minority_classes``). Means, sample standard deviations (ddof=1) and the per-seed
values are stored. **Gains are measured from the best real baseline**, per metric and per classifier family: the
better mean of ``real_oversampled`` and ``real_classical_aug``. For ``real_synthetic`` and
``real_classical_aug_synthetic``: the seed-paired difference to that baseline with its 95% t-interval, and the
share of the baseline -> ``real_oracle`` gap closed. ``utility.gate`` applies the utility gate's rule
(``gate_verdict``) to those differences; the publish step enforces it.

On the CPU the classifier runs are spread over processes of one thread each (``runner.cpu_processes``, one per
core by default; ``tasks/core/evaluation/pool.py``): the results are the same for any number of processes.

**Novelty** per class (``tasks/evaluate/set_metrics.py``): how far the accepted synthetic images sit from the class's
own training images, in pixels and features, against the class's real val images.

Where the pieces live: set metrics and novelty ``tasks/evaluate/set_metrics.py``,
training conditions and their summary ``tasks/core/evaluation/downstream.py``, the chosen recipe and the runs
``tasks/core/evaluation/recipe.py``, the gate ``tasks/core/evaluation/gate.py``, the charts
``tasks/core/evaluation/charts.py``; this module reads the inputs, runs them and writes ``metrics.json`` and the
tables.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from synthaug.models.common import pick_device
from synthaug.tasks.core.evaluation.charts import plot_counts, plot_per_class_recall, plot_utility
from synthaug.tasks.core.evaluation.downstream import (
    BASELINES,
    COMPARED,
    CONDITIONS,
    PROJECT_FAMILY,
    EvalData,
    families,
    summarize,
)
from synthaug.tasks.core.evaluation.gate import gain_lines, gate_verdict, log_verdict
from synthaug.tasks.core.evaluation.inputs import read_inputs
from synthaug.tasks.core.evaluation.recipe import Setup, choose_recipe, run_conditions, synthetic_subset, with_synthetic
from synthaug.tasks.core.io.files import write_atomic
from synthaug.tasks.core.io.results import (
    FILTER_SUMMARY,
    METRICS_FILE,
    PLOT_COUNTS,
    PLOT_RECALL,
    PLOT_UTILITY,
    TABLE_PER_CLASS,
    TABLE_UTILITY,
)
from synthaug.tasks.core.params.evaluate import EvaluateParams, SyntheticRecipe
from synthaug.tasks.evaluate.headline import SUMMARY_FILE, write_headline
from synthaug.tasks.evaluate.set_metrics import finite, novelty, quality_metrics

FORMAT = "synthaug-metrics/2"  # 2: utility.independent maps each independent family to its results

REFERENCE_HELDBACK = "real heldback (oracle; classes with heldback images only)"


# ------------------------------------------------------------------------------------------------------ utility


# Which choice was made on what data: the report prints this list.
CHOICES = (
    {"choice": "best real baseline (per metric and classifier family)",
     "made_on": "the test split: the better mean of real_oversampled and real_classical_aug; taking the stronger "
                "opponent only makes the comparison stricter"},
    {"choice": "composition of real_synthetic (the oversampled real set plus the synthetic images)",
     "made_on": "the bundled example's test split, once (docs/BENCHMARKS.md); fixed since. How many synthetic images "
                "and how strongly: the synthetic recipe below"},
    {"choice": "the utility gate's rule and margin, the validation search's candidates",
     "made_on": "fixed in code/params before any result of this dataset"},
    {"choice": "filter thresholds (confidence, realism, memorization)",
     "made_on": "the real val split (memorization quantile, judge calibration) and fixed params"},
    {"choice": "generator family and its sampling knobs (guidance, steps, temperature), plan quotas",
     "made_on": "params.yaml as given; nothing is chosen by looking at the test split"},
    {"choice": "classifier recipes of every family",
     "made_on": "fixed in code/params before any result; identical for every condition"},
)


def utility_metrics(data: EvalData, params: EvaluateParams, minority: Sequence[str], device: torch.device, *,
                    real_f: np.ndarray | None = None, syn_f: np.ndarray | None = None,
                    console: Console | None = None, processes: int | None = None) -> dict[str, Any]:
    """Train every classifier family under every condition and seed; score on the real test split (module doc).

    ``real_f`` (features of the real train then val images) and ``syn_f`` (of the accepted synthetic images) are the
    feature space of the k-center selection; without them ``real_synthetic_chosen`` is not run. On the CPU the runs
    go to ``processes`` processes of one thread each (``tasks.core.evaluation.pool``; None: one per core)."""
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
        chosen = with_synthetic(data, synthetic_subset(data, real_f[:data.train_x.shape[0]], syn_f, recipe["shares"],
                                                        recipe["selection"], params.classifier.seed))
    truth = data.test_y.numpy()
    train_f = None if real_f is None else real_f[:data.train_x.shape[0]]
    if params.recipe.share < 1.0 and (train_f is None or syn_f is None):
        raise ValueError("evaluate.recipe.share < 1 selects images in the feature space: give real_f and syn_f")
    setups: list[Setup] = [(data, train_f, params)]
    if recipe is not None:  # real_synthetic_chosen: real_synthetic on its own shares, every image at weight 1
        setups.append((chosen, None, params.model_copy(update={"recipe": SyntheticRecipe()})))
    seeds = range(params.classifier.seed, params.classifier.seed + params.seeds)
    named = [(condition, (1, "real_synthetic", seed) if condition == "real_synthetic_chosen" else (0, condition, seed))
             for condition in conditions for seed in seeds]
    jobs = [job for _, job in named]
    columns = (TextColumn("[bold]evaluate[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=False) as bar:
        task = bar.add_task(f"{len(jobs)} classifier runs", total=len(jobs))
        results, workers = run_conditions(
            setups, jobs, syn_f, minority, device, processes=processes,
            on_done=lambda job: bar.update(
                task, advance=1, description=f"{'real_synthetic_chosen' if job[0] else job[1]} seed {job[2]} done"))

    runs: dict[str, dict[str, list[dict]]] = {f: {c: [] for c in conditions}
                                              for f in (PROJECT_FAMILY, *params.independent_families)}
    sizes: dict[str, dict[str, int]] = {}
    seconds: dict[str, float] = dict.fromkeys(conditions, 0.0)
    for (condition, _), (scores, size, elapsed) in zip(named, results, strict=True):
        for family, s in scores.items():
            runs[family][condition].append(s)
        sizes[condition] = size
        seconds[condition] = round(seconds[condition] + elapsed, 2)

    out = summarize(runs[PROJECT_FAMILY], data.class_names, params.seeds)
    out["independent"] = {f: {"input": "raw pixels, flattened", **summarize(runs[f], data.class_names, params.seeds)}
                          for f in params.independent_families}
    out["gate"] = gate_verdict(out, params.gate_margin, accepted=int(data.syn_x.shape[0]),
                               generated=len(data.synthetic))
    out["choices"] = [dict(c) for c in CHOICES]
    out["choices"].append({"choice": "synthetic recipe of real_synthetic and real_classical_aug_synthetic (share "
                                        f"{params.recipe.share:g}, order {params.recipe.selection}, loss weight "
                                        f"{params.recipe.weight:g})", "made_on": params.recipe.chosen_on})
    if recipe is not None:
        out["recipe"] = recipe
        out["choices"].append({"choice": "real_synthetic_chosen: selection order and per-class synthetic share "
                                         f"({recipe['selection']}; {recipe['shares']})",
                               "made_on": recipe["validated_on"] + "; the test split is read once, to score it"})
    out["setup"] = {
        "conditions": conditions, "skipped": skipped, "seeds": params.seeds, "test_size": int(truth.shape[0]),
        "test_per_class": {name: int((truth == j).sum()) for j, name in enumerate(data.class_names)},
        "minority_classes": list(minority), "train_per_class": sizes, "train_seconds": seconds,
        "classifier": dataclasses.asdict(params.classifier), "independent": list(params.independent_families),
        "workers": workers, "threads_per_run": 1 if device.type == "cpu" else None,
        "recipe": params.recipe.model_dump(),
        "device": str(device), "std": "sample standard deviation over seeds (ddof=1)",
        "baselines": list(BASELINES), "context": "real_only (untreated; shown, never a baseline for gains)",
    }
    return out


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
                  extractor: str | Path | None = None, console: Console | None = None,
                  processes: int | None = None) -> Path:
    """Measure the accepted synthetic images (set quality, downstream utility); write ``out_dir/metrics.json``.

    Also writes ``utility.png``, ``class_counts.png`` and ``per_class_recall.png``, the tables ``utility.csv`` and
    ``per_class.csv``, and the headline numbers ``summary.json`` (``tasks/evaluate/headline.py``) into ``out_dir``.

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
        processes: CPU processes for the classifier runs (``runner.cpu_processes``); None: one per core.

    Returns:
        The path of ``metrics.json``.

    Raises:
        UserError: a manifest or the judge is missing, there are no real test images, a class is unknown to the
            judge, or a ``minority_classes`` name is not a class.
    """
    console = console or Console(stderr=True)
    device = pick_device(params.device)
    inputs = read_inputs(ingest_dir, filter_dir, judge_dir, params, extractor=extractor, device=device)
    data, class_names, minority, summary = inputs.data, inputs.data.class_names, inputs.minority, inputs.summary
    train_counts = {name: int((data.train_y == i).sum()) for i, name in enumerate(class_names)}
    ref_f, syn_f = torch.from_numpy(inputs.real_f), torch.from_numpy(inputs.syn_f)
    ref_y = torch.cat([data.train_y, data.val_y])
    quality = quality_metrics(ref_f, ref_y, syn_f, data.syn_y, class_names, params)
    if data.heldback_x.shape[0]:
        # The oracle's view: the real images the scarce classes lost are the distribution the synthetic ones stand
        # in for, and often the only real set large enough for FID in those classes.
        held_f = torch.from_numpy(inputs.embed(data.heldback_x))
        quality["vs_heldback"] = quality_metrics(held_f, data.heldback_y, syn_f, data.syn_y, class_names, params,
                                                 reference=REFERENCE_HELDBACK)
    extractor = inputs.extractor

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
    utility = utility_metrics(data, params, minority, device, real_f=inputs.real_f, syn_f=inputs.syn_f,
                              console=console, processes=processes)
    novel = novelty(data, minority, inputs.real_f, inputs.syn_f)

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {"utility": plot_utility(utility, out_dir / PLOT_UTILITY).name,
             "class_counts": plot_counts(counts, class_names, out_dir / PLOT_COUNTS).name,
             "per_class_recall": plot_per_class_recall(utility, class_names, minority, out_dir / PLOT_RECALL).name}
    result = {
        "format": FORMAT,
        "classes": class_names,
        "minority_classes": minority,
        "feature_space": {"extractor": str(extractor) if extractor is not None else "judge penultimate features",
                          "dim": int(ref_f.shape[1]), "judge_dir": judge_dir.name},
        "counts": counts,
        "acceptance": acceptance(data.synthetic, class_names, summary),
        "quality": quality,
        "novelty": novel,
        "utility": utility,
        "plots": plots,
    }
    path = out_dir / METRICS_FILE
    write_atomic(json.dumps(_clean(result), indent=2, allow_nan=False), path)
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
    fams = families(utility)
    rows = [{"condition": c, **{f"{m}_{k}": utility[c][m][k] for m in metrics for k in ("mean", "std")},
             **{f"{f}_{m}_{k}": r[c][m][k] for f, r in fams.items() if f != PROJECT_FAMILY
                for m in metrics for k in ("mean", "std")}}
            for c in conditions]
    pd.DataFrame(rows).to_csv(out_dir / TABLE_UTILITY, index=False)
    rows = [{"class": name, "real": counts["before"][name], "synthetic_accepted": counts["synthetic_accepted"][name],
             "kept_rate": accepted["per_class"][name]["kept_rate"],
             **{f"recall_{c}": utility[c]["per_class_recall"].get(name, {}).get("mean") for c in conditions}}
            for name in class_names]
    pd.DataFrame(rows).to_csv(out_dir / TABLE_PER_CLASS, index=False)


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
    log_verdict(utility["gate"])  # a log line (stderr, and the Prefect run's log), not only the terminal


def _clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become null, numpy scalars become Python numbers."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return finite(float(obj))
    return obj
