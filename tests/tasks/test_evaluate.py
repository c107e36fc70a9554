"""The evaluate step on a tiny digits workdir: every metrics.json key, consistent counts, utility in [0, 1], the
paired-difference interval, the FID/KID wiring against models.metrics, the charts; and its helpers one by one."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from rich.console import Console
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, f1_score

from synthaug.models import metrics as M
from synthaug.models.config import JudgeConfig
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.evaluation.downstream import (
    BASELINES,
    COMPARED,
    CONDITIONS,
    MIN_GAP,
    TREATED,
    augment_images,
    best_real_baseline,
    families,
    fill_indices,
    gap_closed,
    paired_difference,
    score,
    summarize,
)
from synthaug.tasks.core.evaluation.gate import gate_verdict
from synthaug.tasks.core.evaluation.inputs import default_minority
from synthaug.tasks.core.evaluation.recipe import k_center_order
from synthaug.tasks.core.io.images import load_images
from synthaug.tasks.core.io.manifest import read_manifest
from synthaug.tasks.core.params.evaluate import DEFAULT_CLASSIFIER, EvaluateParams
from synthaug.tasks.core.scoring.features import embed, load_judge_step
from synthaug.tasks.evaluate.step import CHOICES, evaluate_step
from tests.markers import slow
from tests.workdirs import CLASSES, HELDBACK, SEEDS, TEST, TRAIN, VAL, tiny_params

# One test process builds the evaluated tiny workdir (a session fixture) for both modules.
pytestmark = pytest.mark.xdist_group("evaluated-workdir")


@pytest.fixture(scope="module")
def workdir(evaluated_workdir: dict[str, Any]) -> dict[str, Any]:
    return evaluated_workdir


@pytest.fixture(scope="module")
def metrics(workdir: dict[str, Path]) -> dict[str, Any]:
    return json.loads((workdir["evaluate"] / "metrics.json").read_text())


SET_METRIC_KEYS = {
    "fid": {"value", "n_real", "n_synthetic", "reason"},
    "kid": {"mean", "std", "subset_size", "subsets", "n_real", "n_synthetic", "reason"},
    "precision": {"value", "k", "n_real", "n_synthetic", "reason"},
    "recall": {"value", "k", "n_real", "n_synthetic", "reason"},
    "density": {"value", "k", "n_real", "n_synthetic", "reason"},
    "coverage": {"value", "k", "n_real", "n_synthetic", "reason"},
    "within_class_diversity": {"synthetic", "real", "n_real", "n_synthetic", "reason"},
}
SUMMARY_KEYS = {"mean", "std", "values"}
FAMILIES = ("cnn", "extra_trees", "logistic_regression")


def _check_set_block(block: dict, where: str) -> None:
    for name, keys in SET_METRIC_KEYS.items():
        assert name in block, f"{where}: missing {name}"
        missing = keys - set(block[name])
        assert not missing, f"{where}.{name}: missing {missing}"
        entry = block[name]
        value = entry["mean"] if name == "kid" else entry.get("value", entry.get("synthetic"))
        if value is None:
            assert isinstance(entry["reason"], str) and entry["reason"], f"{where}.{name}: null without a reason"
        else:
            assert math.isfinite(value), f"{where}.{name} = {value}"


def test_metrics_json_has_every_key(metrics: dict) -> None:
    for key in ("format", "classes", "minority_classes", "feature_space", "counts", "acceptance", "quality",
                "novelty", "utility", "plots"):
        assert key in metrics, key
    assert metrics["classes"] == list(CLASSES)
    assert metrics["minority_classes"] == ["3"]
    for key in ("before", "after", "synthetic_accepted", "synthetic_generated", "real_val", "real_test",
                "real_heldback"):
        assert set(metrics["counts"][key]) == set(CLASSES), key
    quality = metrics["quality"]
    assert quality["reference"] == "real train + val"
    _check_set_block(quality["overall"], "quality.overall")
    assert set(quality["per_class"]) == set(CLASSES)
    for name, block in quality["per_class"].items():
        _check_set_block(block, f"quality.per_class.{name}")
    assert set(quality["macro"]) == {"fid", "kid", "precision", "recall", "density", "coverage"}
    held = quality["vs_heldback"]
    assert set(held["per_class"]) == {"3"}  # only the class with heldback images
    _check_set_block(held["overall"], "quality.vs_heldback.overall")

    utility = metrics["utility"]
    assert utility["setup"]["conditions"] == list(CONDITIONS)
    assert utility["setup"]["skipped"] == {}
    for condition in CONDITIONS:
        for metric in ("balanced_accuracy", "macro_f1", "minority_recall"):
            assert set(utility[condition][metric]) >= SUMMARY_KEYS, (condition, metric)
        assert set(utility[condition]["per_class_recall"]) == set(CLASSES)
        for summary in utility[condition]["per_class_recall"].values():
            assert set(summary) >= SUMMARY_KEYS
    for results in families(utility).values():
        assert set(results["paired_difference"]) == set(results["gap_closed"]) == set(TREATED)
        for condition in TREATED:
            for metric in COMPARED:
                assert results["paired_difference"][condition][metric]["baseline"] in BASELINES
                assert {"mean", "ci95", "values"} <= set(results["paired_difference"][condition][metric])
                assert {"value", "reason", "baseline"} <= set(results["gap_closed"][condition][metric])
    assert list(families(utility)) == ["cnn", "extra_trees", "logistic_regression"]  # the default families
    assert {"passed", "passes", "evidence", "rule", "margin", "checks", "verdict"} <= set(utility["gate"])
    assert [c["choice"] for c in utility["choices"][:len(CHOICES)]] == [c["choice"] for c in CHOICES]
    acceptance = metrics["acceptance"]
    assert set(acceptance["per_class"]) == set(CLASSES)
    assert acceptance["source"] == "filter_summary.json" and acceptance["thresholds"] == {"min_confidence": 0.5}
    assert acceptance["per_class"]["3"]["acceptance_rate"] == 0.75  # the filter's own per-class view
    assert {"generated", "accepted", "kept_rate", "reject_reasons", "shortfall"} <= set(acceptance["per_class"]["3"])
    assert metrics["plots"] == {"utility": "utility.png", "class_counts": "class_counts.png",
                                "per_class_recall": "per_class_recall.png"}


def test_counts_are_consistent(workdir: dict[str, Path], metrics: dict) -> None:
    real, _ = read_manifest(workdir["ingest"] / "manifest.parquet")
    syn, _ = read_manifest(workdir["filter"] / "manifest.parquet")
    counts = metrics["counts"]
    accepted = syn[syn["accepted"]]
    for c in CLASSES:
        assert counts["before"][c] == TRAIN[c] == ((real["label"] == c) & (real["split"] == "train")).sum()
        assert counts["synthetic_accepted"][c] == (accepted["label"] == c).sum()
        assert counts["synthetic_generated"][c] == (syn["label"] == c).sum()
        assert counts["after"][c] == counts["before"][c] + counts["synthetic_accepted"][c]
        assert counts["real_test"][c] == TEST
        per_class = metrics["quality"]["per_class"][c]
        for entry in per_class.values():  # every metric says what it was computed on
            assert entry["n_real"] == TRAIN[c] + VAL
            assert entry["n_synthetic"] == counts["synthetic_accepted"][c]
        acc = metrics["acceptance"]["per_class"][c]
        assert acc["generated"] == counts["synthetic_generated"][c]
        assert acc["accepted"] == counts["synthetic_accepted"][c]
        assert sum(acc["reject_reasons"].values()) == acc["generated"] - acc["accepted"]
    overall = metrics["quality"]["overall"]
    assert overall["classes"] == ["1", "3"]  # pooled over the classes that have accepted synthetic images
    assert overall["fid"]["n_real"] == TRAIN["1"] + TRAIN["3"] + 2 * VAL
    assert overall["fid"]["n_synthetic"] == len(accepted)
    setup = metrics["utility"]["setup"]
    assert setup["train_per_class"]["real_only"] == TRAIN
    for condition in ("real_oversampled", "real_classical_aug"):
        assert setup["train_per_class"][condition] == {c: max(TRAIN.values()) for c in CLASSES}, condition
    # the oversampled real set + synthetic, then filled by repetition up to the largest class after adding
    most_synthetic = max(counts["synthetic_accepted"].values())
    assert setup["train_per_class"]["real_synthetic"] == {c: max(TRAIN.values()) + most_synthetic for c in CLASSES}
    assert setup["train_per_class"]["real_classical_aug_synthetic"] == setup["train_per_class"]["real_synthetic"]
    assert setup["train_per_class"]["synthetic_only"] == counts["synthetic_accepted"]
    assert setup["train_per_class"]["real_oracle"] == {c: TRAIN[c] + (HELDBACK if c == "3" else 0) for c in CLASSES}


def test_too_small_sets_are_null_with_reasons(metrics: dict) -> None:
    per_class = metrics["quality"]["per_class"]
    # "3": 8 real (< fid_min_samples=10) -> no FID; "0" has no synthetic images at all.
    assert per_class["3"]["fid"]["value"] is None and "got 8 real" in per_class["3"]["fid"]["reason"]
    assert per_class["3"]["kid"]["mean"] is not None
    for name in ("fid", "precision", "recall", "density", "coverage"):
        assert per_class["0"][name]["value"] is None and per_class["0"][name]["reason"]
    assert per_class["0"]["within_class_diversity"]["real"] is not None
    assert per_class["0"]["within_class_diversity"]["synthetic"] is None
    # Against the 20 heldback images of "3" there is enough for FID.
    assert metrics["quality"]["vs_heldback"]["per_class"]["3"]["fid"]["value"] is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_utility_numbers_are_rates_over_the_seeds(metrics: dict, family: str) -> None:
    utility = families(metrics["utility"])[family]
    for condition in CONDITIONS:
        summaries = [utility[condition][m] for m in ("balanced_accuracy", "macro_f1", "minority_recall")]
        summaries += list(utility[condition]["per_class_recall"].values())
        for s in summaries:
            assert len(s["values"]) == SEEDS
            assert all(0.0 <= v <= 1.0 for v in s["values"]), (condition, s)
            assert s["mean"] == pytest.approx(np.mean(s["values"]))
            assert s["std"] == pytest.approx(np.std(s["values"], ddof=1))
        # minority recall is the mean recall over the minority classes ("3" alone here)
        assert utility[condition]["minority_recall"]["values"] == utility[condition]["per_class_recall"]["3"]["values"]
        # balanced accuracy is the mean per-class recall
        per_seed = np.mean([utility[condition]["per_class_recall"][c]["values"] for c in CLASSES], axis=0)
        assert utility[condition]["balanced_accuracy"]["values"] == pytest.approx(per_seed)


@pytest.mark.parametrize("family", FAMILIES)
def test_gains_are_measured_from_the_best_real_baseline(metrics: dict, family: str) -> None:
    """Per metric, the better of real_oversampled and real_classical_aug is the baseline; real_only never is."""
    utility = families(metrics["utility"])[family]
    for metric in COMPARED:
        best = max(BASELINES, key=lambda c: utility[c][metric]["mean"])
        assert utility["best_real_baseline"][metric] == best
        for condition in TREATED:
            d = utility["paired_difference"][condition][metric]
            assert d["baseline"] == best
            expected = np.subtract(utility[condition][metric]["values"], utility[best][metric]["values"])
            assert d["values"] == pytest.approx(expected)
            assert d["mean"] == pytest.approx(expected.mean())
            lo, hi = d["ci95"]
            half = stats.t.ppf(0.975, SEEDS - 1) * np.std(expected, ddof=1) / math.sqrt(SEEDS)
            assert (lo, hi) == pytest.approx((expected.mean() - half, expected.mean() + half))
            gap = utility["gap_closed"][condition][metric]
            means = {c: utility[c][metric]["mean"] for c in (best, condition, "real_oracle")}
            assert gap["baseline"] == best
            if gap["value"] is None:
                assert means["real_oracle"] - means[best] < MIN_GAP and gap["reason"]
            else:
                assert gap["value"] == pytest.approx((means[condition] - means[best])
                                                     / (means["real_oracle"] - means[best]))
    assert "real_only" not in json.dumps({k: utility[k] for k in ("best_real_baseline", "paired_difference",
                                                                  "gap_closed")})


def test_independent_families_are_other_models(metrics: dict) -> None:
    """Each independent family's scores are its own (not a copy of another family's) and follow the same
    conditions; logistic regression's seeds differ even where the training set is the same (its bootstrap)."""
    utility = metrics["utility"]
    assert utility["setup"]["independent"] == ["extra_trees", "logistic_regression"]  # evaluate.linear
    fams = list(families(utility).values())
    for i, a in enumerate(fams):
        for b in fams[i + 1:]:
            assert any(a[c]["balanced_accuracy"]["values"] != b[c]["balanced_accuracy"]["values"] for c in CONDITIONS)
    lr = utility["independent"]["logistic_regression"]["real_oversampled"]["balanced_accuracy"]["values"]
    assert len(set(lr)) > 1, lr


def test_gate_verdict_in_metrics_matches_the_rule(metrics: dict) -> None:
    utility = metrics["utility"]
    gate = utility["gate"]
    assert gate == gate_verdict(utility, tiny_params().gate_margin)
    assert len(gate["checks"]) == len(FAMILIES) * len(COMPARED)  # every family, both metrics
    for check in gate["checks"]:
        d = families(utility)[check["family"]]["paired_difference"]["real_synthetic"][check["metric"]]
        assert check["ci95"] == d["ci95"] and check["hurts"] == (d["ci95"][1] < -gate["margin"])
    assert gate["passed"] == gate["passes"]["harm"] == (not any(c["hurts"] for c in gate["checks"]))
    assert gate["passes"]["gain"] == (gate["passed"] and any(c["helps"] for c in gate["checks"]))


def test_fid_kid_wiring_matches_models_metrics(workdir: dict[str, Path], metrics: dict) -> None:
    """Recompute the features of the same sets independently and compare with models.metrics."""
    judge, class_names = load_judge_step(workdir["judge"])
    real, _ = read_manifest(workdir["ingest"] / "manifest.parquet")
    syn, _ = read_manifest(workdir["filter"] / "manifest.parquet")
    # The reference is the train rows then the val rows, in manifest order (KID's subsets depend on row order).
    ref = pd.concat([real[real["split"] == "train"], real[real["split"] == "val"]])
    accepted = syn[syn["accepted"]]
    feats = {}
    for what, root, rows in (("real", workdir["ingest"], ref), ("syn", workdir["filter"], accepted)):
        feats[what] = embed(load_images(root, list(rows["path"]), 1), judge)
        feats[what + "_labels"] = np.asarray(rows["label"], dtype=str)
    overall = metrics["quality"]["overall"]
    pooled = np.isin(feats["real_labels"], ["1", "3"])
    real_f, syn_f = feats["real"][torch.from_numpy(pooled)], feats["syn"]
    assert overall["fid"]["value"] == pytest.approx(M.fid(real_f, syn_f), rel=1e-6)
    k = M.kid(real_f, syn_f, subsets=10, subset_size=overall["kid"]["subset_size"], seed=0)
    assert overall["kid"]["mean"] == pytest.approx(k.mean, rel=1e-6, abs=1e-12)
    assert overall["kid"]["std"] == pytest.approx(k.std, rel=1e-6, abs=1e-12)
    pr = M.precision_recall(real_f, syn_f, k=3)
    assert (overall["precision"]["value"], overall["recall"]["value"]) == pytest.approx((pr.precision, pr.recall))
    dc = M.density_coverage(real_f, syn_f, k=5)
    assert (overall["density"]["value"], overall["coverage"]["value"]) == pytest.approx((dc.density, dc.coverage))
    one = torch.from_numpy(feats["real_labels"] == "1")
    syn_one = torch.from_numpy(feats["syn_labels"] == "1")
    k1 = M.kid(feats["real"][one], feats["syn"][syn_one], subsets=10,
               subset_size=min(1000, int(one.sum()), int(syn_one.sum())), seed=0)
    assert metrics["quality"]["per_class"]["1"]["kid"]["mean"] == pytest.approx(k1.mean, rel=1e-6, abs=1e-12)
    assert metrics["quality"]["per_class"]["1"]["within_class_diversity"]["synthetic"] == pytest.approx(
        M.within_class_diversity(feats["syn"][syn_one]))
    assert class_names == list(CLASSES)


def test_plots_are_pngs_with_content(workdir: dict[str, Path]) -> None:
    for name in ("utility.png", "class_counts.png", "per_class_recall.png"):
        with Image.open(workdir["evaluate"] / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours is not None and len(colours) > 20, name


def test_progress_and_summary_are_printed(workdir: dict[str, Path]) -> None:
    log = workdir["log"].getvalue()  # type: ignore[attr-defined]
    assert "evaluate" in log and f"{len(CONDITIONS) * SEEDS}/{len(CONDITIONS) * SEEDS}" in log
    assert "real_synthetic" in log and "real_classical_aug_synthetic" in log
    assert "gain over the best real baseline" in log  # the gate's verdict is a log line: test_gate_verdict_is_logged
    assert "extra_trees" in log


def test_unknown_minority_class_is_a_user_error(workdir: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="minority_classes"):
        evaluate_step(workdir["ingest"], workdir["filter"], workdir["judge"], tiny_params(minority_classes=["7"]),
                      tmp_path / "out", console=Console(file=io.StringIO()))


# ------------------------------------------------------------------------------------------------- the helpers


def test_params_defaults_and_validation() -> None:
    p = EvaluateParams()
    assert p.seeds == 3 and p.classifier == DEFAULT_CLASSIFIER and p.minority_classes is None
    assert EvaluateParams.model_validate({"classifier": {"steps": 10}}).classifier.steps == 10
    for bad in ({"seeds": 2}, {"unknown": 1}, {"classifier": {"steps": 0}}, {"minority_classes": ["3", "3"]}):
        with pytest.raises(ValidationError):
            EvaluateParams.model_validate(bad)


def test_score_matches_sklearn() -> None:
    truth = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    pred = np.array([0, 1, 0, 1, 1, 2, 0, 2, 3, 3])
    s = score(pred, truth, ["a", "b", "c", "d"], ["b", "d"])
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, pred))
    assert s["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro"))
    assert s["per_class_recall"] == pytest.approx({"a": 2 / 3, "b": 1.0, "c": 0.5, "d": 1.0})
    assert s["minority_recall"] == pytest.approx(1.0)
    assert score(pred, truth, ["a", "b", "c", "d"], [])["minority_recall"] is None


def test_paired_difference_interval() -> None:
    d = paired_difference([0.9, 0.8, 0.85], [0.8, 0.8, 0.75])
    assert d["values"] == pytest.approx([0.1, 0.0, 0.1])
    half = stats.t.ppf(0.975, 2) * np.std([0.1, 0.0, 0.1], ddof=1) / math.sqrt(3)
    assert d["ci95"] == pytest.approx([d["mean"] - half, d["mean"] + half])
    same = paired_difference([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["mean"] == 0.0 and same["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="pairs"):
        paired_difference([0.5], [0.4])


def test_gap_closed_edge_cases() -> None:
    def cond(mean: float) -> dict:
        return {"m": {"mean": mean}}

    base = {"real_oversampled": cond(0.5), "real_synthetic": cond(0.7)}
    assert gap_closed(base, "real_synthetic", "m", "real_oversampled")["value"] is None
    flat = gap_closed({**base, "real_oracle": cond(0.505)}, "real_synthetic", "m", "real_oversampled")
    assert flat["value"] is None and "no gap" in flat["reason"]
    half = gap_closed({**base, "real_oracle": cond(0.9)}, "real_synthetic", "m", "real_oversampled")
    assert half["value"] == pytest.approx(0.5) and half["baseline"] == "real_oversampled"
    # from the best real baseline, not from real_only: real_only at 0.0 changes nothing
    with_only = gap_closed({**base, "real_only": cond(0.0), "real_oracle": cond(0.9)}, "real_synthetic", "m",
                            "real_oversampled")
    assert with_only["value"] == pytest.approx(0.5)


def test_best_real_baseline_is_per_metric_and_ignores_real_only() -> None:
    results = {"real_only": {"balanced_accuracy": {"mean": 0.99}, "minority_recall": {"mean": 0.99}},
               "real_oversampled": {"balanced_accuracy": {"mean": 0.90}, "minority_recall": {"mean": 0.70}},
               "real_classical_aug": {"balanced_accuracy": {"mean": 0.89}, "minority_recall": {"mean": 0.75}}}
    assert best_real_baseline(results, "balanced_accuracy") == "real_oversampled"
    assert best_real_baseline(results, "minority_recall") == "real_classical_aug"


def _utility_with(diff: float, spread: float) -> dict:
    """A utility block where real_synthetic = real_oversampled + diff (+- spread per seed), both families."""
    base = [0.80, 0.82, 0.84]
    values = {"real_oversampled": base, "real_classical_aug": [v - 0.05 for v in base],
              "real_synthetic": [v + diff + s for v, s in zip(base, (-spread, 0.0, spread), strict=True)]}
    runs = {c: [{"balanced_accuracy": v, "macro_f1": v, "minority_recall": v, "per_class_recall": {}}
                for v in vals] for c, vals in values.items()}
    out = summarize(runs, [], 3)
    out["independent"] = {"extra_trees": summarize(runs, [], 3)}
    return out


def test_gate_says_what_the_evidence_shows_and_what_each_rule_does() -> None:
    """hurts: the harm rule (and gain) refuse; no measurable effect (noise, or harm within the margin): harm
    publishes, gain refuses; helps: both publish. The one-line verdict leads with the evidence."""
    hurt = gate_verdict(_utility_with(-0.10, 0.01), 0.01)
    assert not hurt["passed"] and hurt["passes"] == {"harm": False, "gain": False}
    assert hurt["verdict"].startswith("utility evidence: hurts — real_synthetic measurably hurts")
    assert "-0.100" in hurt["verdict"] and "real_oversampled" in hurt["verdict"]
    assert hurt["verdict"].endswith("(publish.utility_gate: harm refuses, gain refuses)")
    assert hurt["situation"] == "harm" and hurt["evidence"] == "hurts"
    noisy = gate_verdict(_utility_with(-0.02, 0.05), 0.01)  # interval straddles zero: not measurable harm
    assert noisy["passes"] == {"harm": True, "gain": False} and noisy["evidence"] == "no measurable effect"
    assert noisy["verdict"].startswith("utility evidence: no measurable effect — every 95% CI")
    assert noisy["verdict"].endswith("(publish.utility_gate: harm publishes, gain refuses)")
    assert noisy["situation"] == "no_gain"
    small = gate_verdict(_utility_with(-0.005, 0.001), 0.01)  # harm smaller than the margin
    assert small["passed"] and small["situation"] == "no_gain" and not small["passes"]["gain"]
    helps = gate_verdict(_utility_with(0.05, 0.005), 0.01)
    assert helps["passes"] == {"harm": True, "gain": True} and helps["situation"] == "gain"
    assert helps["verdict"].startswith("utility evidence: helps — real_synthetic measurably helps")
    assert "no measurable" not in helps["verdict"] and len(helps["verdict"].splitlines()) == 1


def test_gain_needs_no_harm_in_any_family() -> None:
    """One family gains, another measurably loses: the evidence is harm, and neither rule publishes."""
    utility = _utility_with(0.05, 0.005)
    utility["independent"] = {"extra_trees": _utility_with(-0.10, 0.01)}
    mixed = gate_verdict(utility, 0.01)
    assert mixed["evidence"] == "hurts" and mixed["passes"] == {"harm": False, "gain": False}


def test_with_nothing_accepted_the_verdict_says_so_not_that_synthetic_images_hurt() -> None:
    """0 of N accepted: real_synthetic is the oversampled real set; even where it measures worse than the best
    baseline (classical augmentation), the verdict blames no synthetic image and the gate passes."""
    nothing = gate_verdict(_utility_with(-0.116, 0.01), 0.01, accepted=0, generated=364)
    assert nothing["passes"] == {"harm": True, "gain": False} and nothing["situation"] == "nothing_accepted"
    assert "accepted none of the 364 generated synthetic images" in nothing["verdict"]
    assert "hurts" not in nothing["verdict"] and "real images only" in nothing["verdict"]


def test_gate_verdict_is_logged(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The verdict is a log record of the synthaug logger (it reaches the Prefect run's log): WARNING when the gate
    refused or there was nothing to judge, INFO otherwise."""
    from synthaug.tasks.core.evaluation.gate import log_verdict

    monkeypatch.setattr(logging.getLogger("synthaug"), "propagate", True)  # the CLI's stderr handler may own it
    caplog.set_level(logging.INFO, logger="synthaug")
    for utility, kwargs, level in ((_utility_with(-0.10, 0.01), {}, logging.WARNING),
                                   (_utility_with(0.05, 0.005), {}, logging.INFO),
                                   (_utility_with(0.05, 0.005), {"accepted": 0}, logging.WARNING)):
        caplog.clear()
        gate = gate_verdict(utility, 0.01, **kwargs)
        log_verdict(gate)
        (record,) = caplog.records
        assert (record.name, record.levelno, record.getMessage()) == ("synthaug.evaluate", level, gate["verdict"])


def test_classical_aug_synthetic_augments_only_the_copies(workdir: dict[str, Path]) -> None:
    from synthaug.tasks.core.evaluation.downstream import training_set
    from synthaug.tasks.core.evaluation.inputs import read_data

    judge, class_names = load_judge_step(workdir["judge"])
    data = read_data(workdir["ingest"], workdir["filter"], class_names, judge.image_shape)
    plain_x, plain_y = training_set("real_synthetic", data, 0)
    aug_x, aug_y = training_set("real_classical_aug_synthetic", data, 0)
    assert torch.equal(plain_y, aug_y)
    same = (plain_x == aug_x).flatten(1).all(dim=1)
    n, oversampled = data.train_x.shape[0], 4 * max(TRAIN.values())
    m = data.syn_x.shape[0]
    assert same[:n].all() and same[oversampled:oversampled + m].all()  # the originals, real and synthetic
    assert not same[n:oversampled].all() and not same[oversampled + m:].all()  # the copies are augmented


def test_real_synthetic_sets_train_as_many_passes_as_the_baselines(workdir: dict[str, Path]) -> None:
    from synthaug.tasks.core.evaluation.downstream import classifier_config, training_set
    from synthaug.tasks.core.evaluation.inputs import read_data

    judge, class_names = load_judge_step(workdir["judge"])
    data = read_data(workdir["ingest"], workdir["filter"], class_names, judge.image_shape)
    params = tiny_params()
    balanced = training_set("real_oversampled", data, 0)[1].numel()
    for condition in ("real_synthetic", "real_classical_aug_synthetic"):
        size = training_set(condition, data, 0)[1].numel()
        assert size > balanced  # the synthetic images make the set larger
        config = classifier_config(params, condition, data, size, seed=7)
        assert config.seed == 7 and config.steps == math.ceil(params.classifier.steps * size / balanced)
        fixed = classifier_config(params.model_copy(update={"equal_passes": False}), condition, data, size, seed=7)
        assert fixed.steps == params.classifier.steps
    for condition in ("real_oversampled", "real_classical_aug", "real_only", "real_oracle"):
        size = training_set(condition, data, 0)[1].numel()
        assert classifier_config(params, condition, data, size, seed=0).steps == params.classifier.steps


def test_fill_indices_balance_and_keep_order() -> None:
    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    fill = fill_indices(labels, 4)
    counts = np.bincount(np.concatenate([labels, labels[fill]]), minlength=4)
    assert counts.tolist() == [4, 4, 4, 0]
    assert fill.tolist() == [4, 4, 4, 5, 6]  # class 1 repeats its one image, class 2 cycles 5, 6
    assert fill_indices(np.array([1, 1]), 2).size == 0


def test_default_minority() -> None:
    assert default_minority({"a": 100, "b": 49, "c": 50, "d": 6}) == ["b", "d"]
    assert default_minority({"a": 10, "b": 10}) == []


def test_augmentation_is_seeded_and_small() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 16, 16, generator=gen) * 2 - 1
    a, b, c = augment_images(images, 1), augment_images(images, 1), augment_images(images, 2)
    assert a.shape == images.shape and float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.allclose(a, images, atol=0.02)


def test_default_classifier_is_the_judge_network() -> None:
    assert dataclasses.asdict(DEFAULT_CLASSIFIER).keys() == dataclasses.asdict(JudgeConfig()).keys()
    assert DEFAULT_CLASSIFIER.steps == 1000 and DEFAULT_CLASSIFIER.width == 16


# ------------------------------------------------------------------------------- the recipe chosen on validation


def test_k_center_order_matches_its_definition() -> None:
    """Each pick is the synthetic image farthest from the real images and the earlier picks (scipy distances)."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    real, syn = rng.normal(size=(5, 3)), rng.normal(size=(12, 3))
    order = k_center_order(real, syn)
    assert sorted(order.tolist()) == list(range(12))
    centres = list(real)
    for step, pick in enumerate(order):
        rest = [i for i in range(12) if i not in order[:step]]
        nearest = cdist(syn[rest], np.array(centres)).min(axis=1)
        assert pick == rest[int(np.argmax(nearest))], step
        centres.append(syn[pick])
    assert k_center_order(np.empty((0, 3)), syn)[0] in range(12)


def test_synthetic_subset_takes_each_class_share_in_order(workdir: dict[str, Path]) -> None:
    from synthaug.tasks.core.evaluation.inputs import read_data
    from synthaug.tasks.core.evaluation.recipe import synthetic_subset

    judge, class_names = load_judge_step(workdir["judge"])
    data = read_data(workdir["ingest"], workdir["filter"], class_names, judge.image_shape)
    real_f = embed(data.train_x, judge).numpy()
    syn_f = embed(data.syn_x, judge).numpy()
    syn_y = data.syn_y.numpy()
    n3, n1 = int((syn_y == 3).sum()), int((syn_y == 1).sum())
    rows = synthetic_subset(data, real_f, syn_f, {"3": 0.5, "1": 0.0}, "k_center", 0)
    assert (syn_y[rows] == 3).sum() == round(0.5 * n3) and (syn_y[rows] == 1).sum() == 0
    threes = np.flatnonzero(syn_y == 3)
    expected = threes[k_center_order(real_f[data.train_y.numpy() == 3], syn_f[threes])[:round(0.5 * n3)]]
    assert rows.tolist() == sorted(expected.tolist())
    everything = synthetic_subset(data, real_f, syn_f, {}, "random", 0)  # no share given: all of a class
    assert everything.tolist() == list(range(n3 + n1))


def test_recipe_is_chosen_on_validation_and_scored_once(metrics: dict) -> None:
    utility = metrics["utility"]
    recipe = utility["recipe"]
    assert "real_synthetic_chosen" in utility["setup"]["conditions"]
    assert recipe["selection"] in ("k_center", "random") and set(recipe["shares"]) == {"1", "3"}
    assert all(share in (0.0, 0.5, 1.0) for share in recipe["shares"].values())
    assert recipe["validated_on"].startswith("3-fold")  # 4 val images of the minority class: k-fold train + val
    assert len(recipe["candidates"]) == 4  # none, all, and half in each of the two orders
    chosen = utility["setup"]["train_per_class"]["real_synthetic_chosen"]
    synthetic = metrics["counts"]["synthetic_accepted"]
    kept = {c: round(recipe["shares"].get(c, 1.0) * synthetic[c]) for c in CLASSES}
    assert chosen == {c: max(TRAIN.values()) + max(kept.values()) for c in CLASSES}
    assert any("real_synthetic_chosen" in c["choice"] and "fold" in c["made_on"] for c in utility["choices"])


def test_validation_folds_never_hold_test_images(workdir: dict[str, Path]) -> None:
    from synthaug.tasks.core.evaluation.inputs import read_data
    from synthaug.tasks.core.evaluation.recipe import validation_folds

    judge, class_names = load_judge_step(workdir["judge"])
    data = read_data(workdir["ingest"], workdir["filter"], class_names, judge.image_shape)
    real_f = np.zeros((data.train_x.shape[0] + data.val_x.shape[0], 4))
    folds, how = validation_folds(data, real_f, ["3"])
    assert len(folds) == 3 and how.startswith("3-fold")
    pool = torch.cat([data.train_x, data.val_x]).flatten(1)
    held = torch.cat([f.test_x for f, _ in folds]).flatten(1)
    assert held.shape[0] == pool.shape[0]  # every real train + val image held out once, no test image
    assert not (torch.cdist(held.float(), data.test_x.flatten(1).float()) == 0).any()
    doubled = dataclasses.replace(data, val_x=torch.cat([data.val_x] * 2), val_y=torch.cat([data.val_y] * 2))
    single, how = validation_folds(doubled, real_f, ["3"])  # 8 val images of "3": the val split itself
    assert len(single) == 1 and how == "the real val split"
    assert torch.equal(single[0][0].test_y, doubled.val_y) and torch.equal(single[0][0].train_y, data.train_y)


@slow
def test_classifier_runs_give_the_same_results_in_any_number_of_processes(workdir: dict[str, Path], metrics: dict,
                                                                       tmp_path: Path) -> None:
    # The fixture ran its 24 classifier runs (and the validation search's) in 2 worker processes; here in this one.
    evaluate_step(workdir["ingest"], workdir["filter"], workdir["judge"], tiny_params(), tmp_path,
                  console=Console(file=io.StringIO()), processes=1)
    alone = json.loads((tmp_path / "metrics.json").read_text())["utility"]
    spread = metrics["utility"]
    assert (spread["setup"]["workers"], alone["setup"]["workers"]) == (2, 1)
    assert spread["setup"]["threads_per_run"] == alone["setup"]["threads_per_run"] == 1
    for family, results in families(spread).items():
        for condition in spread["setup"]["conditions"]:
            assert results[condition] == families(alone)[family][condition], (family, condition)
    assert spread["recipe"] == alone["recipe"] and spread["gate"] == alone["gate"]


def test_logistic_regression_fits_a_seeded_stratified_bootstrap_and_a_single_class() -> None:
    """Each seed a different draw with the class counts kept; one class (synthetic_only of one scarce class) is
    predicted as that class, as the other families do."""
    from synthaug.tasks.core.evaluation.downstream import fit_independent, stratified_bootstrap

    labels = np.array([0] * 6 + [1] * 4)
    a, b = stratified_bootstrap(labels, 0), stratified_bootstrap(labels, 1)
    assert np.bincount(labels[a]).tolist() == np.bincount(labels[b]).tolist() == [6, 4]
    assert not np.array_equal(a, b) and np.array_equal(a, stratified_bootstrap(labels, 0))
    x = torch.randn(5, 1, 4, 4)
    model = fit_independent("logistic_regression", 0, x, torch.full((5,), 3))
    assert model.predict(x.reshape(5, -1).numpy()).tolist() == [3] * 5
