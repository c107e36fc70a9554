"""``synthaug tune``: choose the synthetic recipe (``evaluate.recipe``: share, order and loss weight of the accepted
synthetic images) on validation data only.

A trial scores one recipe: every classifier family trained on ``real_synthetic`` built from the validation folds'
real train images plus the recipe's synthetic images, scored on the folds' held-out real images
(``tasks.core.evaluation.recipe.validation_folds``: the real val split, or k-fold over train + val where a minority
class has too few val images). Its objective is the mean, over the classifier families and the two compared metrics
(balanced accuracy, minority recall), of the gain over the best real baseline (``real_oversampled`` or
``real_classical_aug``) on the same folds and seeds. The test split is not read here: the flow (``flows/tune.py``)
confirms the winner once, by running the evaluate step with it.

The search itself (Optuna, each trial a Prefect task) is the flow's; this module holds what a trial computes and
the files the tuner writes: ``<workdir>/tune/trials.json`` and the params file with the winning recipe.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synthaug.models.common import pick_device
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.evaluation.downstream import BASELINES, COMPARED
from synthaug.tasks.core.evaluation.inputs import Inputs, read_inputs
from synthaug.tasks.core.evaluation.recipe import mean_score, validation_folds, validation_gain, validation_runs
from synthaug.tasks.core.io.files import write_atomic
from synthaug.tasks.core.params.evaluate import SELECTIONS, EvaluateParams, SyntheticRecipe
from synthaug.tasks.core.params.tune import TuneParams

TRIALS_FILE = "trials.json"
SHARES = (0.1, 1.0)  # the share's search range
WEIGHTS = (0.25, 4.0)  # the loss weight's search range (log scale)


def suggest(trial: Any, guidance: Sequence[float] = ()) -> dict[str, Any]:
    """A trial's params from an Optuna trial: the search space of the tuner (``guidance``: the candidate sampling
    guidance scales, the params' own first; searched when there are two or more)."""
    params = {"share": trial.suggest_float("share", *SHARES),
              "selection": trial.suggest_categorical("selection", list(SELECTIONS)),
              "weight": trial.suggest_float("weight", *WEIGHTS, log=True)}
    if len(guidance) > 1:
        params["guidance"] = trial.suggest_categorical("guidance", list(guidance))
    return params


# The default recipe as a trial's params (the searched keys of ``SyntheticRecipe``): scored first.
DEFAULT_TRIAL = SyntheticRecipe().model_dump(include={"share", "selection", "weight"})


def default_trial(guidance: Sequence[float] = ()) -> dict[str, Any]:
    """The default trial: the default recipe, sampled with the params' own guidance (``guidance[0]``) when the
    guidance is searched."""
    return {**DEFAULT_TRIAL, "guidance": guidance[0]} if len(guidance) > 1 else dict(DEFAULT_TRIAL)


def _inputs(ingest_dir: Path, filter_dir: Path, judge_dir: Path, params: EvaluateParams) -> tuple[Inputs, list, str]:
    """The data, its features and the validation folds, read once per process (every trial uses them)."""
    return _read_once(ingest_dir, filter_dir, judge_dir, params.model_dump_json())


@functools.lru_cache(maxsize=8)  # a few guidance candidates' images
def _read_once(ingest_dir: Path, filter_dir: Path, judge_dir: Path, params_json: str) -> tuple[Inputs, list, str]:
    params = EvaluateParams.model_validate_json(params_json)
    inputs = read_inputs(ingest_dir, filter_dir, judge_dir, params, device=pick_device(params.device))
    folds, how = validation_folds(inputs.data, inputs.real_f, inputs.minority)
    return inputs, folds, how


def _validation_params(params: EvaluateParams, seeds: int, recipe: dict[str, Any] | None = None) -> EvaluateParams:
    update: dict[str, Any] = {"validation_seeds": seeds}
    if recipe is not None:
        update["recipe"] = SyntheticRecipe(**recipe)
    return params.model_copy(update=update)


def score_baselines(ingest_dir: Path, filter_dir: Path, judge_dir: Path, params: EvaluateParams,
                    seeds: int, *, processes: int | None = None) -> dict[str, Any]:
    """Both families under each real baseline on the validation folds: what every trial's gain is measured from
    (classifier runs on ``processes`` CPU processes, as ``validation_runs``)."""
    inputs, folds, how = _inputs(ingest_dir, filter_dir, judge_dir, params)
    if inputs.data.syn_x.shape[0] == 0:
        raise UserError(f"{filter_dir}: no accepted synthetic images; there is no recipe to tune (rerun the filter "
                        "step, or generate more)")
    device = pick_device(params.device)
    runs = {c: validation_runs(folds, inputs.syn_f, _validation_params(params, seeds), inputs.minority, device, c,
                               processes=processes) for c in BASELINES}
    return {"validated_on": how, "minority": inputs.minority, "runs": runs}


def score_trial(ingest_dir: Path, filter_dir: Path, judge_dir: Path, params: EvaluateParams, seeds: int,
                recipe: dict[str, Any], baselines: dict[str, Any], *, processes: int | None = None) -> dict[str, Any]:
    """One recipe on the validation folds, with the synthetic images of ``filter_dir``: {"recipe", "gains" (per
    family and metric), "objective"}."""
    inputs, folds, _ = _inputs(ingest_dir, filter_dir, judge_dir, params)
    device = pick_device(params.device)
    runs = validation_runs(folds, inputs.syn_f, _validation_params(params, seeds, recipe), inputs.minority, device,
                           "real_synthetic", processes=processes)
    return {"recipe": recipe, **validation_gain(runs, baselines["runs"])}


def choose(trials: list[dict[str, Any]], min_gain: float, default_params: dict[str, Any] = DEFAULT_TRIAL
           ) -> dict[str, Any]:
    """The winning trial: the best validation objective, unless it beats the default trial's (``default_params``) by
    ``min_gain`` or less (then the default stays)."""
    default = next((t for t in trials if t["recipe"] == default_params), None)
    best = max(trials, key=lambda t: t["objective"])
    if default is not None and best["objective"] - default["objective"] <= min_gain:
        return default
    return best


def write_trials(path: Path, trials: list[dict[str, Any]], winner: dict[str, Any], baselines: dict[str, Any],
                 tune: TuneParams) -> Path:
    """``trials.json``: every recipe with its validation gains, the winner, and how validation was done."""
    record = {"validated_on": baselines["validated_on"], "minority_classes": baselines["minority"],
              "objective": "mean over the classifier families and over balanced accuracy and minority recall of "
                           "the gain over the best real baseline (" + " or ".join(BASELINES) + ") on validation",
              "params": tune.model_dump(), "winner": winner, "trials": trials,
              "baselines": {c: {f: {m: mean_score(scores, m) for m in COMPARED} for f, scores in runs.items()}
                            for c, runs in baselines["runs"].items()}}
    write_atomic(json.dumps(record, indent=2), path)
    return path


def chosen_on(winner: dict[str, Any], trials: int, validated_on: str,
              default_params: dict[str, Any] = DEFAULT_TRIAL, guidance: Sequence[float] = ()) -> str:
    """The ``evaluate.recipe.chosen_on`` line the tuned params file carries into the report."""
    how = ("the default recipe kept: no other recipe beat its validation objective by more than tune.min_gain"
           if winner["recipe"] == default_params else "the best validation objective")
    sampled = (f"; sampling guidance {winner['recipe']['guidance']:g} of {', '.join(f'{w:g}' for w in guidance)}"
               if "guidance" in winner["recipe"] else "")
    return (f"synthaug tune: {how}, of {trials} recipes ({validated_on}; objective {winner['objective']:+.4f}"
            f"{sampled}); the test split was not read to choose it")
