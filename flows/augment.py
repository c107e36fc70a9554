"""The ``augment`` flow: every step of ``flows.dag.STEPS`` as a Prefect task with a content-based cache key.

A re-run with nothing changed gets each step's result from Prefect's cache (keyed on the step's params
sections, input files and code) and says so; a step whose outputs were deleted is run again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext

from flows.dag import STEPS, Record, Step, cache_key
from flows.params import Params


def _key(step: Step):
    def key_fn(_: TaskRunContext, args: dict[str, Any]) -> str:
        return cache_key(step, args["params"], Path(args["workdir"]))

    return key_fn


def _step_task(step: Step, workdir: Path):
    missing = [o for o in step.outputs if not (workdir / o).exists()]

    def run(params: Params, workdir: str) -> Record:
        return step.run(params, Path(workdir))

    return task(run, name=step.name, cache_key_fn=_key(step), persist_result=True,
                result_storage=(workdir / ".prefect-results").resolve(), refresh_cache=bool(missing),
                retries=2 if step.name == "ingest" else 0, retry_delay_seconds=[2, 10])


@flow(name="augment", log_prints=True)
def augment(params: Params, workdir: str = "data/work") -> dict[str, Record]:
    """Run every step in order; returns each step's record."""
    logger = get_run_logger()
    root = Path(workdir)
    records: dict[str, Record] = {}
    for step in STEPS:
        state = _step_task(step, root)(params, workdir, return_state=True)
        records[step.name] = state.result()
        if state.name == "Cached":
            logger.info("%s: unchanged inputs, params and code: reused the cached result", step.name)
            records[step.name] = {"reused": "cached result of an earlier run", **records[step.name]}
    lines = [f"- **{name}**: " + ", ".join(f"{k} = `{v}`" for k, v in rec.items()) for name, rec in records.items()]
    create_markdown_artifact("# synthaug augment\n\n" + "\n".join(lines), key="augment-summary")
    return records
