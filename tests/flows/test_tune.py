"""`synthaug tune` end to end at toy size: Optuna trials as Prefect tasks, the winner in a params file that loads and
says how it was chosen, one evaluation with it on test, and a resumed study that scores only the missing trials."""

import json

import pytest

from synthaug.flows.params import load_params
from synthaug.flows.tune import tune
from synthaug.tasks.core.params.generate import GenerateParams
from synthaug.tasks.core.sampling import sampler_key
from synthaug.tasks.tune import DEFAULT_TRIAL
from tests.markers import slow
from tests.toy import TINY, digits_folder

pytestmark = [slow]

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
    # Issue 29: the resumed sampler replayed its seed, so the new trial was a recipe scored already.
    assert after[3]["recipe"] not in [t["recipe"] for t in before]


def test_the_study_key_ignores_the_recipe_and_test_seeds_but_not_the_tune_seeds(tuned) -> None:
    from synthaug.flows.tune import study_key

    root, params, out, _ = tuned
    work = root / "work"
    assert study_key(load_params(out), work) == study_key(params, work)  # the tuned file resumes its own study
    other = params.model_copy(update={"tune": params.tune.model_copy(update={"seeds": 2})})
    assert study_key(other, work) != study_key(params, work)


def test_a_default_trial_cut_off_while_running_is_queued_again(tuned, tmp_path) -> None:
    import optuna

    from synthaug.flows.tune import open_study
    from synthaug.tasks.tune import suggest

    _, params, _, _ = tuned
    study = open_study(params, tmp_path, "cut", DEFAULT_TRIAL)
    first = study.ask()
    assert suggest(first) == DEFAULT_TRIAL  # the queued default, now RUNNING: the process is killed here
    again = open_study(params, tmp_path, "cut", DEFAULT_TRIAL)
    waiting = [t for t in again.get_trials() if t.state == optuna.trial.TrialState.WAITING]
    assert [t.system_attrs["fixed_params"] for t in waiting] == [DEFAULT_TRIAL]
    assert open_study(params, tmp_path, "cut", DEFAULT_TRIAL).get_trials()[-1].state == optuna.trial.TrialState.WAITING
    assert len(open_study(params, tmp_path, "cut", DEFAULT_TRIAL).get_trials()) == 2  # queued once, not once per resume


# A diffusion generator at toy size: the family with a sampling guidance.
DIFFUSION = ["model.family=diffusion", "model.diffusion.steps=2", "model.diffusion.batch_size=8",
             "model.diffusion.channels=[8, 16]", "model.diffusion.attention_levels=[false, true]",
             "model.diffusion.norm_num_groups=4", "model.diffusion.num_head_channels=8",
             "model.diffusion.sample_steps=2", "model.diffusion.sample_batch_size=4",
             "model.diffusion.guidance_scale=2"]


@pytest.fixture(scope="module")
def guided(tmp_path_factory):
    """tune.guidance=[1]: the params' own guidance (2) and 1 searched with the recipe. The winner is forced to a
    guidance-1 trial (a 2-step generator's validation gains are noise), to follow it into the params file and the
    confirming run."""
    import synthaug.flows.tune

    root = tmp_path_factory.mktemp("tune-guidance")
    source = digits_folder(root / "digits")
    params = load_params(None, [*TINY, *DIFFUSION, f"data.source={source}", "plan.ratio=0.5", "plan.cap=6",
                                *LENIENT, *TUNE, "tune.trials=4", "tune.guidance=[1.0]"])
    out = root / "params.tuned.yaml"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthaug.flows.tune, "choose", lambda trials, min_gain, default: max(
            trials, key=lambda t: (t["recipe"]["guidance"] == 1.0, t["objective"])))
        tune(params, str(root / "work"), str(out))
    return root, out


def _pixels(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted((folder / "images").rglob("*.png"))}


def test_guidance_candidates_are_sampled_apart_and_searched_with_the_recipe(guided) -> None:
    root, _ = guided
    work = root / "work"
    trials = json.loads((work / "tune" / "trials.json").read_text())["trials"]
    assert trials[0]["recipe"] == {**DEFAULT_TRIAL, "guidance": 2.0}  # the default trial: the params' own guidance
    assert {t["recipe"]["guidance"] for t in trials} == {1.0, 2.0}
    candidate = work / "tune" / "guidance-1.0"
    assert (candidate / "filter" / "manifest.parquet").is_file()
    key = sampler_key(work / "model" / "checkpoint", GenerateParams(guidance_scale=1.0))
    assert (candidate / "generate" / ".checkpoint").read_text().strip() == key
    assert (candidate / "model").resolve() == (work / "model").resolve()  # sampled from the workdir's generator


def test_a_winning_guidance_goes_into_the_params_file_and_the_confirming_run(guided) -> None:
    root, out = guided
    work = root / "work"
    loaded = load_params(out)
    assert loaded.generate.guidance_scale == 1.0
    assert "sampling guidance 1 of 2, 1" in loaded.evaluate.recipe.chosen_on
    # The workdir was sampled again with the winner: the same images as the candidate's, then evaluated.
    key = sampler_key(work / "model" / "checkpoint", loaded.generate)
    assert (work / "generate" / ".checkpoint").read_text().strip() == key
    images = _pixels(work / "generate")
    assert images and images == _pixels(work / "tune" / "guidance-1.0" / "generate")
    metrics = json.loads((work / "evaluate" / "metrics.json").read_text())
    assert metrics["utility"]["setup"]["recipe"] == loaded.evaluate.recipe.model_dump()


def test_the_params_own_guidance_alone_is_no_search(tmp_path) -> None:
    """tune.guidance naming only the params' own guidance: nothing to search, no candidate folder, no crash."""
    source = digits_folder(tmp_path / "digits")
    params = load_params(None, [*TINY, *DIFFUSION, f"data.source={source}", "plan.ratio=0.5", "plan.cap=6",
                                *LENIENT, *TUNE, "tune.trials=2", "tune.guidance=[2.0]"])
    out = tmp_path / "params.tuned.yaml"
    result = tune(params, str(tmp_path / "work"), str(out))
    assert "guidance" not in result["winner"] and load_params(out).generate.guidance_scale is None
    assert not list((tmp_path / "work" / "tune").glob("guidance-*"))
