"""The ``augment`` flow: every step of ``flows.dag.STEPS`` as a Prefect task with a content-based cache key.

A re-run with nothing changed gets each step's result from Prefect's cache (keyed on the step's params keys, input
files and code) and says so; a step whose outputs were deleted is run again. The publish step is never cached: it asks
the registry every time (and publishes nothing when the images and manifest are those of the latest version).

The run's log tells the story (``tasks/core/logs.py`` routes the ``synthaug`` logger to it): progress, the filter
summary and shortfall, the utility gate's verdict, the published tags. A problem the user must fix (``UserError``) is
one ERROR line there, its message, without a traceback (``one_line_errors``); other failures keep theirs.
"""

from __future__ import annotations

import json
import logging
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
from synthaug.tasks.core.errors import UserError, mask_secrets, masked_exception
from synthaug.tasks.core.io.locks import workdir_lock
from synthaug.tasks.core.logs import enable
from synthaug.tasks.core.render import render


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
            if isinstance(exc, UserError):
                report_user_error(exc)
            masked = masked_exception(exc)
            if masked is exc:
                raise
            raise masked from None
        if key is not None:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text(key)
        return record

    if step.always_changed or step.publishes:
        return task(run, name=step.name, cache_policy=NO_CACHE, retries=step.retries, retry_delay_seconds=[5, 30],
                    retry_condition_fn=transient)
    return task(run, name=step.name, cache_key_fn=_key(step), persist_result=True,
                result_storage=(workdir / ".prefect-results").resolve(), refresh_cache=bool(missing) or overwritten,
                retries=step.retries, retry_delay_seconds=[5, 30], retry_condition_fn=transient)


class _OneLineUserErrors(logging.Filter):
    """On Prefect's run loggers: a ``UserError`` is one ERROR line per flow run, its message (secrets masked). The
    first record carrying it becomes that line (unless ``report_user_error`` logged it already); later ones (the task
    engine's "failed with exception" and the flow engine's "Encountered exception", each with a traceback) are
    dropped, and "Finished in state Failed(...)" lines repeating it are logged at INFO."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def remember(self, run: str, exc: BaseException) -> bool:
        """Record ``exc`` for flow run ``run``; False when it was already."""
        key = (run, _gist(str(exc)))
        new = key not in self.seen
        self.seen.add(key)
        return new

    def filter(self, record: logging.LogRecord) -> bool:
        run = str(getattr(record, "flow_run_id", "") or "")
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UserError):
            if not self.remember(run, exc):
                return False
            record.msg, record.args, record.exc_info, record.exc_text = one_line(exc), (), None, None
            record.levelno, record.levelname = logging.ERROR, "ERROR"
            return True
        if record.levelno >= logging.ERROR and str(record.msg).startswith("Finished in state"):
            said = _unquoted(record.getMessage())  # whole: the gist may come after the first 80 characters
            if any(r == run and gist and gist in said for r, gist in self.seen):
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_FILTER = _OneLineUserErrors()
RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


def _unquoted(text: str) -> str:
    """``text`` without quotes and backslashes (Prefect repeats messages through ``repr``)."""
    return "".join(ch for ch in text if ch not in "'\"\\")


def _gist(text: str) -> str:
    """The first 80 characters of a message's first line, unquoted."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return _unquoted(first)[:80]


def one_line(exc: BaseException) -> str:
    """A user error as the command line prints it: its message, secrets masked."""
    return mask_secrets(str(exc).strip()) or type(exc).__name__


def one_line_errors() -> None:
    """Install the filter of ``_OneLineUserErrors`` on Prefect's run loggers (once per process)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def report_user_error(exc: UserError) -> None:
    """Log ``exc`` as the one ERROR line of the current run (a task's or a flow's) before it propagates."""
    one_line_errors()
    logger = get_run_logger()
    run = getattr(logger, "extra", {}).get("flow_run_id")
    if _FILTER.remember(str(run or ""), exc):
        logger.error("%s", one_line(exc))


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
    one_line_errors()
    root = Path(workdir)
    records: dict[str, Record] = {}
    with workdir_lock(root):  # the whole run: another writer would delete files between our steps
        for step in steps:
            state = step_task(step, root, params)(params, workdir, return_state=True)
            records[step.name] = state.result()
            if state.name == "Cached":
                logger.info("%s: unchanged inputs, params and code: reused the cached result", step.name)
                records[step.name] = {"reused": "cached result of an earlier run", **records[step.name]}
            if step.publishes:
                _say_published(logger, records[step.name])
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


def _say_published(logger: Any, record: Record) -> None:
    """The published tag (or why nothing was published) and how to fetch it, in the run's log."""
    if record.get("new"):
        logger.info("published %s in %s; fetch it: %s", record["tag"], record["registry"], record.get("fetch"))
    else:
        logger.info("nothing new published: the images and manifest are those of %s; fetch it: %s", record["tag"],
                    record.get("fetch"))


def _summary_artifacts(workdir: Path, records: dict[str, Record]) -> None:
    """The run at a glance in the Prefect UI: a markdown summary (the verdict, the published version and how to fetch
    it, acceptance, utility) and a per-class table."""
    from synthaug.tasks.core.evaluation.gate import headline_gains

    plan = PLAN_CSV.read(workdir)
    per_class = PER_CLASS_TABLE.read(workdir)
    table = plan.merge(per_class.drop(columns=["real"]), on="class", how="left")
    metrics = METRICS.read(workdir)
    utility = metrics["utility"]
    gate = utility["gate"]
    published = records["publish"]
    shortfall = records["filter"].get("shortfall") or {}
    counts = metrics["counts"]
    generated, accepted = (sum(counts[k].values()) for k in ("synthetic_generated", "synthetic_accepted"))
    summary = render("artifact_augment.md.j2", verdict=gate["verdict"], published=published, accepted=accepted,
                     generated=generated, shortfall=", ".join(f"{k}: {v}" for k, v in shortfall.items()) or "none",
                     gains=headline_gains(utility), to_generate=int(plan["to_generate"].sum()), classes=len(plan),
                     conditions=[(c, utility[c]) for c in utility["setup"]["conditions"]],
                     report=published.get("report") or records["report"]["report"],
                     metrics=records["evaluate"]["metrics"])
    create_markdown_artifact(summary, key="augment-summary", description="verdict, published version, utility")
    create_table_artifact(json.loads(table.to_json(orient="records")), key="augment-per-class",
                          description="per class: plan, accepted synthetic images, recall per condition")
