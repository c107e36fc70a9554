"""The ``tune`` flow (``synthaug tune``): an Optuna search for the synthetic recipe, each trial a Prefect task.

1. The augment steps up to the filter run as in ``synthaug run`` (cached: a finished run's are reused).
2. With ``tune.guidance``, each candidate sampling guidance is sampled and filtered once into
   ``<workdir>/tune/guidance-<w>/`` (the generate and filter steps, with the workdir's model, plan and judge).
3. The real baselines are scored on the validation folds once; then the default recipe and ``tune.trials - 1``
   recipes from Optuna's TPE sampler (with a guidance each, when searched), each a Prefect task on the configured
   runner (``runner``), scored on the same folds (``tasks/tune.py``). The study lives in
   ``<workdir>/tune/study.db``: an interrupted search resumes where it stopped, and is started afresh only when the
   data, the generator's images, the evaluate params, the guidance candidates or the code change.
4. The winner (``tasks.tune.choose``) is written into a params file the user can commit, with
   ``evaluate.recipe.chosen_on`` saying how it was chosen (and ``generate.guidance_scale`` when another guidance
   won), and confirmed once on the test split: the steps up to the report run with it in the workdir (cached, but
   generate and filter again when its guidance is not the params'), so ``synthaug run -p <that file>`` reuses that
   evaluation and publishes only if its utility gate passes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from synthaug.flows.augment import run_steps
from synthaug.flows.catalog import FILTER, INGEST, JUDGE, METRICS, MODEL, PLAN, TUNE, TUNE_TRIALS
from synthaug.flows.code_deps import REPO_ROOT
from synthaug.flows.dag import STEPS, cache_key, step, steps_through
from synthaug.flows.params import Params, dump_params
from synthaug.flows.runners import local_workers
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.evaluation.gate import gain_lines
from synthaug.tasks.core.io.files import file_sha256, write_atomic
from synthaug.tasks.core.io.locks import workdir_lock
from synthaug.tasks.core.params.evaluate import EvaluateParams, SyntheticRecipe
from synthaug.tasks.tune import (
    DEFAULT_TRIAL,
    choose,
    chosen_on,
    default_trial,
    score_baselines,
    score_trial,
    suggest,
    write_trials,
)

UPSTREAM = steps_through("filter")
STUDY_DB = "study.db"
TUNER_CODE = ("tasks/tune.py", "flows/tune.py")  # a change to either starts a new study


@task(name="tune-baselines", cache_policy=NO_CACHE, persist_result=False)
def _baselines(dirs: tuple[Path, Path, Path], params: Params) -> dict[str, Any]:
    return score_baselines(*dirs, params.evaluate, params.tune.seeds, processes=params.runner.cpu_processes)


@task(name="tune-trial", cache_policy=NO_CACHE, persist_result=False)
def _trial(dirs: tuple[Path, Path, Path], params: Params, recipe: dict[str, Any],
           baselines: dict[str, Any]) -> dict[str, Any]:
    return score_trial(*dirs, params.evaluate, params.tune.seeds, recipe, baselines,
                       processes=params.runner.cpu_processes)


def guidance_candidates(params: Params) -> list[float]:
    """The sampling guidance scales the tuner searches: the params' own first (``generate.guidance_scale``, else
    the model's), then ``tune.guidance``; empty when ``tune.guidance`` is."""
    if not params.tune.guidance:
        return []
    own = params.generate.guidance_scale
    if own is None:
        own = params.model.family_config().guidance_scale  # the params check: tune.guidance needs a guided family
    return list(dict.fromkeys([float(own), *params.tune.guidance]))


def _with_guidance(params: Params, guidance: float) -> Params:
    return params.model_copy(update={"generate": params.generate.model_copy(update={"guidance_scale": guidance})})


@task(name="tune-sample", cache_policy=NO_CACHE, persist_result=False)
def _sample(params: Params, root: Path, guidance: float) -> Path:
    """The generate and filter steps at ``guidance`` in ``<workdir>/tune/guidance-<w>/``, whose ingest, plan, model
    and judge are the workdir's (linked); returns its filter folder. Resumes as the steps do."""
    sub = TUNE.path(root) / f"guidance-{guidance!r}"  # repr: two candidates never share a folder
    sub.mkdir(parents=True, exist_ok=True)
    for artifact in (INGEST, PLAN, MODEL, JUDGE):
        link, target = artifact.path(sub), artifact.path(root).resolve()
        if link.is_symlink() and link.resolve() != target:  # a moved workdir: point at this one
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    for name in ("generate", "filter"):
        step(name).run(_with_guidance(params, guidance), sub)
    return FILTER.path(sub)


def study_key(params: Params, root: Path) -> str:
    """What a study's trials depend on: the evaluate step's inputs and code with the recipe and test seeds left out
    (a tuned params file resumes the study that made it, unless another guidance won), the tuner's own code, the
    tune seeds and the guidance candidates."""
    base = params.model_copy(update={"evaluate": params.evaluate.model_copy(
        update={"recipe": SyntheticRecipe(), "seeds": EvaluateParams.model_fields["seeds"].default})})
    code = "".join(file_sha256(REPO_ROOT / rel) for rel in TUNER_CODE)
    return hashlib.sha256((cache_key(step("evaluate"), base, root, extra=code)
                           + f"{params.tune.seeds}/{params.tune.seed}/{guidance_candidates(params)}").encode()
                          ).hexdigest()[:16]


def open_study(params: Params, root: Path, key: str, default: dict[str, Any]):
    """The Optuna study ``key`` names in ``<workdir>/tune/study.db``, the ``default`` trial queued unless scored."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = TUNE.path(root) / STUDY_DB
    path.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=f"sqlite:///{path.resolve()}", study_name=f"recipe-{key}",
                                direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=params.tune.seed))
    # A resumed study continues the sampler's random stream instead of replaying it from the seed: replayed, its
    # first suggestions were the recipes the interrupted run had already scored.
    study.sampler = optuna.samplers.TPESampler(seed=params.tune.seed + len(study.get_trials(deepcopy=False)))
    # The default recipe is always scored: the bar every winner must clear. A run killed while scoring it leaves
    # that trial RUNNING, so it is queued again unless it finished or waits in the queue.
    alive = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING)
    if not any((t.params or t.system_attrs.get("fixed_params")) == default and t.state in alive
               for t in study.get_trials(deepcopy=False)):  # a queued trial holds its params as fixed_params
        study.enqueue_trial(default)
    return study


def _search(params: Params, root: Path, key: str, guidance: list[float]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the trials still missing; returns every finished trial's record and the baselines."""
    import optuna

    logger = get_run_logger()
    default = default_trial(guidance)
    filters = {None: FILTER.path(root)}  # a trial without "guidance" uses the workdir's own images
    filters.update({w: _sample(params, root, w) if i else FILTER.path(root) for i, w in enumerate(guidance)})
    dirs = (INGEST.path(root), FILTER.path(root), JUDGE.path(root))
    baselines = _baselines(dirs, params)
    logger.info("tune: validating on %s; minority classes %s", baselines["validated_on"], baselines["minority"])
    study = open_study(params, root, key, default)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if done:
        logger.info("tune: resuming the study in %s: %d of %d trials already scored", TUNE.path(root) / STUDY_DB,
                    len(done), params.tune.trials)
    workers = max(1, local_workers(params.runner))
    while len(done) < params.tune.trials:
        batch = [study.ask() for _ in range(min(workers, params.tune.trials - len(done)))]
        chosen = [suggest(t, guidance) for t in batch]
        scored = {json.dumps(t.params, sort_keys=True): t for t in done}
        futures = [None if json.dumps(c, sort_keys=True) in scored else
                   _trial.submit((dirs[0], filters[c.get("guidance")], dirs[2]), params,
                                 {k: c[k] for k in DEFAULT_TRIAL}, baselines) for c in chosen]
        for trial, choice, future in zip(batch, chosen, futures, strict=True):
            same = scored.get(json.dumps(choice, sort_keys=True))
            # A recipe scored already (the sampler may suggest one again) is not trained and scored twice.
            result = future.result() if future is not None else {"gains": same.user_attrs.get("gains"),
                                                                  "objective": same.value}
            trial.set_user_attr("gains", result["gains"])
            study.tell(trial, result["objective"])
            done.append(study.trials[trial.number])
            logger.info("tune: trial %d/%d %s -> validation objective %+.4f", len(done), params.tune.trials,
                        _describe(choice), result["objective"])
    trials = [{"number": t.number, "recipe": {k: t.params[k] for k in default}, "objective": t.value,
               "gains": t.user_attrs.get("gains")} for t in done]
    return trials, baselines


def _describe(choice: dict[str, Any]) -> str:
    guidance = f", guidance {choice['guidance']:g}" if "guidance" in choice else ""
    return f"share {choice['share']:.2f}, {choice['selection']}, weight {choice['weight']:.2f}{guidance}"


@flow(name="tune", log_prints=True)
def tune(params: Params, workdir: str = "data/work", out: str = "params.tuned.yaml") -> dict[str, Any]:
    """Search the synthetic recipe on validation, write the winner to ``out``, confirm it once on test."""
    logger = get_run_logger()
    root = Path(workdir)
    run_steps([s for s in STEPS if s.name in UPSTREAM], params, workdir)
    with workdir_lock(root):
        key, guidance = study_key(params, root), guidance_candidates(params)
        trials, baselines = _search(params, root, key, guidance)
        winner = choose(trials, params.tune.min_gain, default_trial(guidance))
        write_trials(TUNE_TRIALS.path(root), trials, winner, baselines, params.tune)
    how = chosen_on(winner, len(trials), baselines["validated_on"], default_trial(guidance), guidance)
    recipe = SyntheticRecipe(**{k: winner["recipe"][k] for k in DEFAULT_TRIAL}, chosen_on=how)
    tuned = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"recipe": recipe})})
    if len(guidance) > 1 and winner["recipe"]["guidance"] != guidance[0]:  # searched, and another won
        tuned = _with_guidance(tuned, winner["recipe"]["guidance"])
    if study_key(params, root) != key:  # the lock was let go for the steps below: another run changed the data
        raise UserError(f"{root}: the data the recipe was validated on changed during `synthaug tune` (another run "
                        "wrote the workdir); run it again")
    path = Path(out)
    write_atomic(f"# Written by `synthaug tune` (trials: {TUNE_TRIALS.path(root)}); evaluate.recipe was chosen on "
                 "validation only.\n" + dump_params(tuned), path)
    logger.info("tune: winner %s (validation objective %+.4f); written to %s", _describe(winner["recipe"]),
                winner["objective"], path)
    # The one look at the test split; generate and filter run again only for another guidance than the params'.
    run_steps([s for s in STEPS if s.name in (*UPSTREAM, "evaluate", "report")], tuned, workdir)
    utility = METRICS.read(root)["utility"]
    return {"winner": winner["recipe"], "validation_objective": winner["objective"], "params": str(path),
            "trials": str(TUNE_TRIALS.path(root)), "test": gain_lines(utility), "gate": utility["gate"]["verdict"]}
