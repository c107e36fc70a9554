"""`synthaug tune` end to end at toy size: Optuna trials as Prefect tasks, the winner in a params file that loads and
says how it was chosen, one evaluation with it on test, and a resumed study that scores only the missing trials."""

import json

import pytest

from flows.params import load_params
from flows.tune import tune
from tasks.tune import DEFAULT_TRIAL
from tests.toy import TINY, digits_folder

TUNE = ["tune.trials=3", "tune.seeds=1", "evaluate.seeds=3"]
# A 2-step generator's images pass only a lenient filter; the tuner needs some accepted images to choose among.
LENIENT = ["filter.min_confidence=0.0", "filter.realism_k=25", "filter.memorization_quantile=0.0",
           "filter.duplicate_fraction=0.0"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    source = digits_folder(root / "digits")
    params = load_params(None, [*TINY, f"data.source={source}", "plan.ratio=0.5", "plan.cap=6", *LENIENT, *TUNE])
    out = root / "params.tuned.yaml"
    result = tune(params, str(root / "work"), str(out))
    return root, params, out, result


def test_the_winner_is_written_loadable_and_evaluated_once_on_test(tuned) -> None:
    root, params, out, result = tuned
    trials = json.loads((root / "work" / "tune" / "trials.json").read_text())
    assert len(trials["trials"]) == 3 and trials["trials"][0]["recipe"] == DEFAULT_TRIAL  # the default goes first
    assert "test" not in trials["validated_on"]
    best = max(t["objective"] for t in trials["trials"])
    assert trials["winner"]["objective"] in (best, trials["trials"][0]["objective"])
    loaded = load_params(out)  # the file the user commits: every param of the run, the recipe replaced
    assert loaded.data == params.data and loaded.model == params.model
    recipe = loaded.evaluate.recipe
    assert {k: getattr(recipe, k) for k in DEFAULT_TRIAL} == pytest.approx(trials["winner"]["recipe"])
    assert recipe.chosen_on.startswith("synthaug tune") and "test split was not read" in recipe.chosen_on
    metrics = json.loads((root / "work" / "evaluate" / "metrics.json").read_text())
    assert metrics["utility"]["setup"]["recipe"] == recipe.model_dump()  # the evaluation ran with the winner
    assert any(c["made_on"] == recipe.chosen_on for c in metrics["utility"]["choices"])
    assert (root / "work" / "report" / "report.html").is_file()
    assert result["gate"] == metrics["utility"]["gate"]["verdict"] and result["test"]


def test_a_resumed_study_scores_only_the_missing_trials(tuned) -> None:
    root, params, out, _ = tuned
    before = json.loads((root / "work" / "tune" / "trials.json").read_text())["trials"]
    more = params.model_copy(update={"tune": params.tune.model_copy(update={"trials": 4})})
    tune(more, str(root / "work"), str(out))
    after = json.loads((root / "work" / "tune" / "trials.json").read_text())["trials"]
    assert [t["number"] for t in after] == [0, 1, 2, 3]
    assert after[:3] == before  # the first three were read back from the study, not scored again

