"""The ``tune`` flow (``synthaug tune``): an Optuna search for the synthetic recipe, each trial a Prefect task.

1. The augment steps up to the filter run as in ``synthaug run`` (cached: a finished run's are reused).
2. The real baselines are scored on the validation folds once; then the default recipe and ``tune.trials - 1``
   recipes from Optuna's TPE sampler, each a Prefect task on the configured runner (``runner``), scored on the
   same folds (``tasks/tune.py``). The study lives in ``<workdir>/tune/study.db``: an interrupted search resumes
   where it stopped, and is started afresh only when the data, the generator's images, the evaluate params or the
   code change.
3. The winner (``tasks.tune.choose``) is written into a params file the user can commit, with
   ``evaluate.recipe.chosen_on`` saying how it was chosen, and confirmed once on the test split: the evaluate and
   report steps run with it in the workdir, so ``synthaug run -p <that file>`` reuses that evaluation and publishes
   only if its utility gate passes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.augment import run_steps
from flows.dag import REPO_ROOT, STEPS, cache_key, step
from flows.params import Params, dump_params
from flows.runners import local_workers
from tasks.core.catalog import FILTER, INGEST, JUDGE, METRICS, TUNE, TUNE_TRIALS
from tasks.core.errors import UserError
from tasks.core.files import file_sha256, write_atomic
from tasks.core.gate import gain_lines
from tasks.core.locks import workdir_lock
from tasks.core.utility import EvaluateParams, SyntheticRecipe
from tasks.tune import DEFAULT_TRIAL, choose, chosen_on, score_baselines, score_trial, suggest, write_trials

UPSTREAM = ("fingerprint", "ingest", "plan", "train", "generate", "judge", "filter")
STUDY_DB = "study.db"
TUNER_CODE = ("tasks/tune.py", "flows/tune.py")  # a change to either starts a new study


@task(name="tune-baselines", cache_policy=NO_CACHE, persist_result=False)
def _baselines(dirs: tuple[Path, Path, Path], params: Params) -> dict[str, Any]:
    return score_baselines(*dirs, params.evaluate, params.tune.seeds)


@task(name="tune-trial", cache_policy=NO_CACHE, persist_result=False)
def _trial(dirs: tuple[Path, Path, Path], params: Params, recipe: dict[str, Any],
           baselines: dict[str, Any]) -> dict[str, Any]:
    return score_trial(*dirs, params.evaluate, params.tune.seeds, recipe, baselines)


def study_key(params: Params, root: Path) -> str:
    """What a study's trials depend on: the evaluate step's inputs and code with the recipe and test seeds left out
    (a tuned params file resumes the study that made it), the tuner's own code, and the tune seeds."""
    base = params.model_copy(update={"evaluate": params.evaluate.model_copy(
        update={"recipe": SyntheticRecipe(), "seeds": EvaluateParams.model_fields["seeds"].default})})
    code = "".join(file_sha256(REPO_ROOT / rel) for rel in TUNER_CODE)
    return hashlib.sha256((cache_key(step("evaluate"), base, root, extra=code)
                           + f"{params.tune.seeds}/{params.tune.seed}").encode()).hexdigest()[:16]


def _study(params: Params, root: Path, key: str):
    """The Optuna study ``key`` names in ``<workdir>/tune/study.db``, the default recipe queued unless scored."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = TUNE.path(root) / STUDY_DB
    path.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=f"sqlite:///{path.resolve()}", study_name=f"recipe-{key}",
                                direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=params.tune.seed))
    # The default recipe is always scored: the bar every winner must clear. A run killed while scoring it leaves
    # that trial RUNNING, so it is queued again unless it finished or waits in the queue.
    alive = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING)
    if not any((t.params or t.system_attrs.get("fixed_params")) == DEFAULT_TRIAL and t.state in alive
               for t in study.get_trials(deepcopy=False)):  # a queued trial holds its params as fixed_params
        study.enqueue_trial(DEFAULT_TRIAL)
    return study


def _search(params: Params, root: Path, key: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the trials still missing; returns every finished trial's record and the baselines."""
    import optuna

    logger = get_run_logger()
    dirs = (INGEST.path(root), FILTER.path(root), JUDGE.path(root))
    baselines = _baselines(dirs, params)
    logger.info("tune: validating on %s; minority classes %s", baselines["validated_on"], baselines["minority"])
    study = _study(params, root, key)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if done:
        logger.info("tune: resuming the study in %s: %d of %d trials already scored", TUNE.path(root) / STUDY_DB,
                    len(done), params.tune.trials)
    workers = max(1, local_workers(params.runner))
    while len(done) < params.tune.trials:
        batch = [study.ask() for _ in range(min(workers, params.tune.trials - len(done)))]
        futures = [_trial.submit(dirs, params, suggest(t), baselines) for t in batch]
        for trial, future in zip(batch, futures, strict=True):
            result = future.result()
            trial.set_user_attr("gains", result["gains"])
            study.tell(trial, result["objective"])
            done.append(study.trials[trial.number])
            logger.info("tune: trial %d/%d %s -> validation objective %+.4f", len(done), params.tune.trials,
                        _describe(result["recipe"]), result["objective"])
    trials = [{"number": t.number, "recipe": {k: t.params[k] for k in DEFAULT_TRIAL}, "objective": t.value,
               "gains": t.user_attrs.get("gains")} for t in done]
    return trials, baselines


def _describe(recipe: dict[str, Any]) -> str:
    return f"share {recipe['share']:.2f}, {recipe['selection']}, weight {recipe['weight']:.2f}"


@flow(name="tune", log_prints=True)
def tune(params: Params, workdir: str = "data/work", out: str = "params.tuned.yaml") -> dict[str, Any]:
    """Search the synthetic recipe on validation, write the winner to ``out``, confirm it once on test."""
    logger = get_run_logger()
    root = Path(workdir)
    run_steps([s for s in STEPS if s.name in UPSTREAM], params, workdir)
    with workdir_lock(root):
        key = study_key(params, root)
        trials, baselines = _search(params, root, key)
        winner = choose(trials, params.tune.min_gain)
        write_trials(TUNE_TRIALS.path(root), trials, winner, baselines, params.tune)
    recipe = SyntheticRecipe(**winner["recipe"], chosen_on=chosen_on(winner, len(trials), baselines["validated_on"]))
    tuned = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"recipe": recipe})})
    if study_key(params, root) != key:  # the lock was let go for the steps below: another run changed the data
        raise UserError(f"{root}: the data the recipe was validated on changed during `synthaug tune` (another run "
                        "wrote the workdir); run it again")
    path = Path(out)
    write_atomic(f"# Written by `synthaug tune` (trials: {TUNE_TRIALS.path(root)}); evaluate.recipe was chosen on "
                 "validation only.\n" + dump_params(tuned), path)
    logger.info("tune: winner %s (validation objective %+.4f); written to %s", _describe(winner["recipe"]),
                winner["objective"], path)
    run_steps([step("evaluate"), step("report")], tuned, workdir)  # the one look at the test split
    utility = METRICS.read(root)["utility"]
    return {"winner": winner["recipe"], "validation_objective": winner["objective"], "params": str(path),
            "trials": str(TUNE_TRIALS.path(root)), "test": gain_lines(utility), "gate": utility["gate"]["verdict"]}
