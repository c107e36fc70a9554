"""The synthetic recipe (share, order, loss weight) and what a tuning trial computes, on the tiny digits workdir of
the evaluate tests: which rows are synthetic, informativeness, the share, the validation gain, the winner rule."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from synthaug.tasks.core.evaluation.downstream import training_set, weighted_training_set
from synthaug.tasks.core.evaluation.inputs import read_data
from synthaug.tasks.core.evaluation.recipe import apply_recipe, informativeness, synthetic_subset, validation_gain
from synthaug.tasks.core.params.evaluate import SyntheticRecipe
from synthaug.tasks.core.scoring.features import embed, load_judge_step
from synthaug.tasks.evaluate.step import evaluate_step
from synthaug.tasks.tune import DEFAULT_TRIAL, choose, score_baselines, score_trial
from tests.markers import slow
from tests.workdirs import TRAIN, copy_workdir, tiny_params


@pytest.fixture(scope="module")
def workdir(tiny_workdir: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return copy_workdir(tiny_workdir, tmp_path_factory.mktemp("tune"))


@pytest.fixture(scope="module")
def data(workdir: dict[str, Path]):
    judge, class_names = load_judge_step(workdir["judge"])
    data = read_data(workdir["ingest"], workdir["filter"], class_names, judge.image_shape)
    return data, embed(data.train_x, judge).numpy(), embed(data.syn_x, judge).numpy()


def _rows_in(rows: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """For each row of ``rows``: is it an exact copy of some row of ``pool``?"""
    return (rows.flatten(1)[:, None] == pool.flatten(1)[None]).all(dim=2).any(dim=1)


@pytest.mark.parametrize("condition", ["real_synthetic", "real_classical_aug_synthetic"])
def test_synthetic_weight_falls_on_the_synthetic_rows_and_their_copies(data, condition: str) -> None:
    d, _, _ = data
    x, y = training_set("real_synthetic", d, 0)  # unaugmented, so every row is an exact image
    xc, yc, w = weighted_training_set(condition, d, 0, 0.25)
    assert torch.equal(yc, y) and torch.equal(xc, training_set(condition, d, 0)[0])  # the condition's own set
    assert w.shape == y.shape and set(w.unique().tolist()) == {0.25, 1.0}
    synthetic = w == 0.25
    assert bool(_rows_in(x[synthetic], d.syn_x).all()) and bool(_rows_in(x[~synthetic], d.train_x).all())
    oversampled, m = 4 * max(TRAIN.values()), d.syn_x.shape[0]
    assert not synthetic[:oversampled].any() and synthetic[oversampled:oversampled + m].all()  # [real | syn | copies]
    assert weighted_training_set(condition, d, 0, 1.0)[2] is None  # weight 1: the unweighted loss, as before
    assert weighted_training_set("real_oversampled", d, 0, 0.25)[2] is None


def test_informativeness_ranks_what_a_real_only_classifier_gets_wrong_first() -> None:
    rng = np.random.default_rng(0)
    real_f = np.concatenate([rng.normal(0, 0.3, (20, 2)), rng.normal(4, 0.3, (20, 2))])
    real_y = np.repeat([0, 1], 20)
    syn_f = np.array([[4.0, 4.0], [2.2, 2.2], [0.3, 0.3]])  # all labelled 1: typical, borderline, looks like a 0
    info = informativeness(real_f, real_y, syn_f, np.ones(3, dtype=np.int64))
    assert info[2] > info[1] > info[0] and info[0] < 0.1 and info[2] > 0.9


def test_informative_selection_and_share(data) -> None:
    d, real_f, syn_f = data
    info = informativeness(real_f, d.train_y.numpy(), syn_f, d.syn_y.numpy())
    rows = synthetic_subset(d, real_f, syn_f, {"3": 0.5, "1": 1.0}, "informative", 0)
    threes = np.flatnonzero(d.syn_y.numpy() == 3)
    kept = np.intersect1d(rows, threes)
    assert kept.size == round(0.5 * threes.size)
    assert info[kept].min() >= info[np.setdiff1d(threes, kept)].max()  # the most informative half
    half = apply_recipe(d, real_f, syn_f, SyntheticRecipe(share=0.5, selection="k_center"), 0)
    for k in (1, 3):
        assert int((half.syn_y == k).sum()) == round(0.5 * int((d.syn_y == k).sum()))
    assert apply_recipe(d, real_f, syn_f, SyntheticRecipe(), 0) is d  # every image: the data as it is


def test_validation_gain_is_measured_from_the_better_baseline() -> None:
    def runs(ba: float, mr: float) -> dict[str, list[dict]]:
        return {"cnn": [{"balanced_accuracy": ba, "minority_recall": mr}] * 2,
                "extra_trees": [{"balanced_accuracy": ba - 0.1, "minority_recall": mr - 0.1}] * 2}

    baselines = {"real_oversampled": runs(0.80, 0.50), "real_classical_aug": runs(0.78, 0.60)}
    gain = validation_gain(runs(0.85, 0.70), baselines)
    assert gain["gains"]["cnn"] == pytest.approx({"balanced_accuracy": 0.05, "minority_recall": 0.10})
    assert gain["objective"] == pytest.approx(0.075)


def test_the_winner_must_beat_the_default_by_more_than_min_gain() -> None:
    default = {"recipe": dict(DEFAULT_TRIAL), "objective": 0.010}
    close = {"recipe": {"share": 0.5, "selection": "k_center", "weight": 2.0}, "objective": 0.014}
    assert choose([default, close], 0.005) is default
    assert choose([default, close], 0.0) is close
    assert choose([close], 0.005) is close  # no default among the trials: the best


@slow
def test_a_trial_scores_validation_only_and_the_recipe_reaches_the_report(workdir, tmp_path) -> None:
    params = tiny_params(choose_on_validation=False)
    dirs = (workdir["ingest"], workdir["filter"], workdir["judge"])
    baselines = score_baselines(*dirs, params, 1)
    assert baselines["validated_on"].startswith("3-fold")  # 4 val images of the scarce class: k-fold train + val
    assert set(baselines["runs"]) == {"real_oversampled", "real_classical_aug"}
    assert all(len(scores) == 3 for runs in baselines["runs"].values() for scores in runs.values())  # 3 folds
    recipe = {"share": 0.5, "selection": "informative", "weight": 2.0}
    trial = score_trial(*dirs, params, 1, recipe, baselines)
    assert trial == score_trial(*dirs, params, 1, recipe, baselines)  # repeatable
    families = {"cnn", "extra_trees", *(["logistic_regression"] * params.linear)}  # every evaluated family
    assert set(trial["gains"]) == families and -1 <= trial["objective"] <= 1

    tuned = params.model_copy(update={"recipe": SyntheticRecipe(**recipe, chosen_on="a test's choice")})
    evaluate_step(*dirs, tuned, tmp_path / "evaluate", console=Console(file=io.StringIO()))
    utility = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())["utility"]
    assert utility["setup"]["recipe"]["weight"] == 2.0
    assert any(c["made_on"] == "a test's choice" and "informative" in c["choice"] for c in utility["choices"])
    sizes = utility["setup"]["train_per_class"]["real_synthetic"]
    accepted = {"3": 12, "1": 5}  # the fixture's accepted synthetic images per class; half of each is used
    assert sizes["3"] == max(TRAIN.values()) + round(0.5 * accepted["3"])
