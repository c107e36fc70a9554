"""The ``augment`` flow: every step of ``flows.dag.STEPS`` as a Prefect task with a content-based cache key.

A re-run with nothing changed gets each step's result from Prefect's cache (keyed on the step's params
sections, input files and code) and says so; a step whose outputs were deleted is run again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from synthaug.flows.catalog import INGEST_MANIFEST, METRICS, PER_CLASS_TABLE, PLAN_CSV
from synthaug.flows.dag import STEPS, Record, Step, cache_key
from synthaug.flows.params import Params
from synthaug.flows.preflight import preflight
from synthaug.tasks.core.errors import UserError, masked_exception
from synthaug.tasks.core.io.locks import workdir_lock
from synthaug.tasks.core.logs import enable


def _key(step: Step):
    def key_fn(_: TaskRunContext, args: dict[str, Any]) -> str:
        # The workdir is part of the key: another workdir's cached record would point at files not here.
        workdir = Path(args["workdir"]).resolve()
        return cache_key(step, args["params"], workdir, extra=str(workdir))

    return key_fn


def _stamp(step: Step, workdir: Path) -> Path:
    """Where the cache key of the run that last wrote ``step``'s outputs is kept."""
    return workdir / ".prefect-results" / "outputs-of" / step.name


def step_task(step: Step, workdir: Path, params: Params | None = None):
    """The Prefect task running ``step`` in ``workdir``, cached on its content key; re-run when outputs are gone,
    or when another run (other params: the ``anonymize`` flow plans differently) wrote them since (``_stamp``)."""
    missing = [o for o in step.outputs if not (workdir / o).exists()]
    stamp = _stamp(step, workdir)
    key = None if params is None else _key(step)(None, {"params": params, "workdir": str(workdir)})
    overwritten = key is not None and stamp.is_file() and stamp.read_text() != key

    def run(params: Params, workdir: str) -> Record:
        try:
            record = step.run(params, Path(workdir))
        except Exception as exc:  # Prefect stores the message as the run's state: no credential in it
            masked = masked_exception(exc)
            if masked is exc:
                raise
            raise masked from None
        if key is not None:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text(key)
        return record

    if step.always_changed:
        return task(run, name=step.name, cache_policy=NO_CACHE, retries=step.retries, retry_delay_seconds=[5, 30],
                    retry_condition_fn=transient)
    return task(run, name=step.name, cache_key_fn=_key(step), persist_result=True,
                result_storage=(workdir / ".prefect-results").resolve(), refresh_cache=bool(missing) or overwritten,
                retries=step.retries, retry_delay_seconds=[5, 30], retry_condition_fn=transient)


def transient(_task: Any, _run: Any, state: Any) -> bool:
    """Retry a failed step unless the failure is the user's to fix (bad input, a refused gate, a full or read-only
    remote, a missing tag): that would fail the same way again. A registry or remote that timed out or refused the
    connection (``PublishError.transient``) is retried."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, UserError) or bool(getattr(error, "transient", False))


def run_steps(steps: Sequence[Step], params: Params, workdir: str) -> dict[str, Record]:
    """Run ``steps`` in order as cached tasks (inside a flow); returns each step's record. A failing step raises.

    The workdir is locked for the whole run; after ingest, ``flows.preflight`` checks what later steps will need.
    """
    logger = get_run_logger()
    enable()  # the steps' synthaug records (progress, filter summary, published tag) at INFO in the run's log
    root = Path(workdir)
    records: dict[str, Record] = {}
    with workdir_lock(root):  # the whole run: another writer would delete files between our steps
        for step in steps:
            state = step_task(step, root, params)(params, workdir, return_state=True)
            records[step.name] = state.result()
            if state.name == "Cached":
                logger.info("%s: unchanged inputs, params and code: reused the cached result", step.name)
                record = {"reused": "cached result of an earlier run", **records[step.name]}
                for flag in ("new", "generator_new"):  # the earlier run published those versions; this one nothing
                    if flag in record:
                        record[flag] = False
                records[step.name] = record
            if step.name == "ingest" and "train" in [s.name for s in steps]:
                for note in preflight(params, INGEST_MANIFEST.path(root)):
                    logger.warning("preflight: %s", note)
    return records


@flow(name="augment", log_prints=True)
def augment(params: Params, workdir: str = "data/work") -> dict[str, Record]:
    """Run every step in order; returns each step's record."""
    records = run_steps(STEPS, params, workdir)
    _summary_artifacts(Path(workdir), records)
    return records


def _summary_artifacts(workdir: Path, records: dict[str, Record]) -> None:
    """The run at a glance in the Prefect UI: a markdown summary and a per-class table."""
    plan = PLAN_CSV.read(workdir)
    per_class = PER_CLASS_TABLE.read(workdir)
    table = plan.merge(per_class.drop(columns=["real"]), on="class", how="left")
    metrics = METRICS.read(workdir)
    utility = metrics["utility"]
    published = records["publish"]
    shortfall = records["filter"].get("shortfall") or {}
    lines = [
        "# synthaug augment", "",
        f"**Dataset:** `{published['registry']}` @ `{published['tag']}`"
        + ("" if published.get("new") else " (nothing new to publish)"), "",
        f"**Plan:** {int(plan['to_generate'].sum())} synthetic images to generate over {len(plan)} classes.", "",
        "**Shortfall after top-up:** " + (", ".join(f"{k}: {v}" for k, v in shortfall.items()) or "none"), "",
        "| condition | balanced accuracy | minority recall |", "|---|---|---|",
        *(f"| {c} | {utility[c]['balanced_accuracy']['mean']:.3f} ± {utility[c]['balanced_accuracy']['std']:.3f} | "
          f"{_fmt(utility[c]['minority_recall']['mean'])} |"
          for c in utility["setup"]["conditions"]),
        "", f"Report: `{records['report']['report']}`; metrics: `{records['evaluate']['metrics']}`.",
    ]
    create_markdown_artifact("\n".join(lines), key="augment-summary", description="plan, acceptance, utility")
    create_table_artifact(json.loads(table.to_json(orient="records")), key="augment-per-class",
                          description="per class: plan, accepted synthetic images, recall per condition")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
