"""Scheduled publishing: ``scheduled_augment`` runs the pipeline only when what it would publish has changed.

``scheduled_augment`` first computes a fingerprint of what a run would publish: the source (its resolved git revision
and the sha256 of its files, the same lineage ingest writes into the manifest), the resolved params (``dump_params``)
and the code (``code_version()`` plus a hash of the package sources, so uncommitted edits count too). When it equals
the fingerprint recorded by the last successful run of the same dataset (``<workdir>/schedule/<publish.name>.json``,
beside the step cache in ``<workdir>/.prefect-results``) it logs "no change", leaves a markdown artifact and returns
without running the pipeline. Otherwise it runs the ``augment`` flow (a child flow run) and records the new
fingerprint once that run has succeeded; a failed run records nothing, so the next one tries again.

One run per dataset at a time, by two Prefect mechanisms:

- the deployment has ``concurrency_limit=1`` with the ENQUEUE strategy: a run of the same deployment that comes due
  while one is active waits in the state ``AwaitingConcurrencySlot`` (retried by the server) and starts after it;
- inside the flow, the whole check-run-record sequence holds the single slot of the global concurrency limit
  ``synthaug-dataset-<name>`` (created on first use), so runs of different deployments of the same dataset (a served
  one, a work-pool one, a manual one) wait for each other too. The slot is leased: a crashed run frees it when the
  lease expires (5 minutes).

Schedules need a real Prefect server (``prefect server start`` and ``PREFECT_API_URL``): a flow served against the
temporary server that Prefect starts when ``PREFECT_API_URL`` is unset never runs its schedule, so ``serve_command``
refuses to start without one. ``prefect.yaml`` declares the same deployment for a work pool (``prefect deploy --all``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from synthaug.flows.code_deps import REPO_ROOT
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.files import tree_sha256, write_atomic
from synthaug.tasks.core.render import render

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

    from synthaug.flows.params import Params
    from synthaug.tasks.core.params.data import DataParams


FLOW_NAME = "scheduled-augment"
DEFAULT_CRON = "0 3 * * *"  # every day at 03:00 (the server's timezone, UTC unless configured)
STATE_DIR = "schedule"  # <workdir>/schedule/<publish.name>.json: the fingerprint of the last successful run
LOCK_PREFIX = "synthaug-dataset-"
CODE_DIRS = ("synthaug", "flows", "tasks", "models")
CODE_FILES = ("pyproject.toml",)
START_SERVER_HELP = (
    "start one with `prefect server start` (in another terminal, or as a service), then "
    "`export PREFECT_API_URL=http://127.0.0.1:4200/api` and run this again"
)


class ServeError(UserError):
    """Serving or running a schedule is impossible as configured; the message says what to start or change."""


# ---------------------------------------------------------------------------------------------------------------------
# fingerprint


@dataclass(frozen=True)
class Fingerprint:
    """What a run would publish, hashed. ``parts``: source lineage, resolved params YAML, code version and hash."""

    digest: str
    parts: dict[str, Any]

    def changed(self, recorded: dict[str, Any] | None) -> list[str]:
        """Names of the parts that differ from a recorded fingerprint (all of them when there is none)."""
        before = (recorded or {}).get("parts") or {}
        return [key for key, value in self.parts.items() if before.get(key) != value]


def source_lineage(data: DataParams, cache_dir: Path) -> dict[str, Any]:
    """The source's lineage as ingest records it (source, repo, rev, resolved_rev, content_hash), without ingesting.

    A DVC source is fetched into ``cache_dir`` (keyed by the resolved commit, so ingest reuses the copy); a local
    source is only read to hash its files.
    """
    from rich.console import Console

    from synthaug.tasks.core.sources.readers import content_hash, read_source
    from synthaug.tasks.ingest import locate

    path, lineage = locate(data, cache_dir, Console(stderr=True))
    lineage["content_hash"] = content_hash(read_source(path))
    return lineage


def code_digest(root: Path = REPO_ROOT) -> str:
    """sha256 over the pipeline's Python sources and ``pyproject.toml`` (path and bytes of each file)."""
    files = [f for d in CODE_DIRS for f in (root / d).rglob("*.py")] + [root / f for f in CODE_FILES]
    return tree_sha256([f for f in files if f.is_file()], root)


def fingerprint(params: Params, workdir: Path) -> Fingerprint:
    """The fingerprint of what running ``augment(params, workdir)`` now would publish."""
    from synthaug.flows.catalog import SOURCES
    from synthaug.flows.params import dump_params
    from synthaug.tasks.core.publishing.registry import code_version

    parts = {
        "source": source_lineage(params.data, SOURCES.path(workdir)),  # the cache folder the ingest step uses
        "params": dump_params(params),
        "code_version": code_version(),
        "code_hash": code_digest(),
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return Fingerprint(digest, parts)


def state_path(workdir: Path, name: str) -> Path:
    return Path(workdir) / STATE_DIR / f"{name}.json"


def read_recorded(workdir: Path, name: str) -> dict[str, Any] | None:
    """The record of the last successful run of dataset ``name`` (None when there is none or it is unreadable)."""
    path = state_path(workdir, name)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # a damaged record only costs one pipeline run, which rewrites it
    return record if isinstance(record, dict) and isinstance(record.get("fingerprint"), str) else None


def write_recorded(workdir: Path, name: str, record: dict[str, Any]) -> Path:
    """Write the record atomically (a reader sees the old or the new one, never half of one)."""
    path = state_path(workdir, name)
    write_atomic(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n", path)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# one run per dataset at a time


def lock_name(dataset: str) -> str:
    return f"{LOCK_PREFIX}{dataset}"


def ensure_lock(name: str) -> None:
    """Create the global concurrency limit ``name`` with one slot, or make an existing one active with one slot."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.logging import get_logger

    with get_client(sync_client=True) as client:
        try:
            current = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # another run created it first: the same limit
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1, active=True))
            return
        if current.limit != 1 or not current.active:
            get_logger("synthaug.serve").warning(
                "concurrency limit %s had limit=%s active=%s; set back to one active slot (to stop the schedule, "
                "pause the deployment instead)", name, current.limit, current.active)
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1, active=True))


@contextmanager
def dataset_lock(dataset: str, *, timeout_s: float | None = None) -> Iterator[None]:
    """Hold the one slot of the global concurrency limit ``synthaug-dataset-<dataset>`` for the block.

    Waits while another run holds it (``timeout_s=None``: as long as it takes); raises ServeError on timeout.
    """
    from prefect.concurrency.sync import concurrency
    from prefect.logging import get_logger

    log = get_logger("synthaug.serve")
    name = lock_name(dataset)
    ensure_lock(name)
    if _slots_taken(name):
        log.info("another run of %s holds the concurrency limit %s; waiting for it to finish", dataset, name)
    acquired = False
    try:
        with concurrency(name, occupy=1, timeout_seconds=timeout_s, strict=True):
            acquired = True
            yield
    except TimeoutError:
        if acquired:
            raise
        raise ServeError(f"another run of {dataset} still held the concurrency limit {name} after {timeout_s} s; "
                         f"nothing was run (see `prefect gcl inspect {name}`)") from None


def _slots_taken(name: str) -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots > 0


# ---------------------------------------------------------------------------------------------------------------------
# the flow


@task(name="fingerprint", cache_policy=NO_CACHE)
def fingerprint_task(params: Params, workdir: str) -> Fingerprint:
    from synthaug.flows.augment import report_user_error

    try:
        return fingerprint(params, Path(workdir))
    except UserError as exc:  # one ERROR line in the run's log, no traceback (flows/augment.py)
        report_user_error(exc)
        raise


@flow(name=FLOW_NAME, log_prints=True)
def scheduled_augment(params_file: str = "params.yaml", overrides: list[str] | None = None,
                      workdir: str = "data/work", force: bool = False,
                      lock_timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``augment`` when the source, the resolved params or the code changed since the last successful run.

    Args:
        params_file: params.yaml to read at run time, so that edits reach the next scheduled run.
        overrides: ``section.key=value`` overrides applied after the file (as ``-S``).
        workdir: the pipeline's work folder (step outputs, the step cache and the recorded fingerprints).
        force: run the pipeline even when nothing changed.
        lock_timeout_s: how long to wait for another run of the same dataset to finish (None: as long as it takes).

    Returns ``status`` ("unchanged" or "ran"), the dataset name, the fingerprint, the changed parts and, after a run,
    the ``publish`` step's record (its tag, and ``new=False`` when the content equalled the latest version).
    """
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import flow_run

    from synthaug.flows.augment import augment, one_line_errors
    from synthaug.flows.params import load_params

    logger = get_run_logger()
    one_line_errors()  # a params or source error is one ERROR line in this run's log, without a traceback
    params = load_params(Path(params_file), overrides or [])
    name = params.publish.name
    root = Path(workdir)
    key = "schedule-" + re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    with dataset_lock(name, timeout_s=lock_timeout_s):
        current = fingerprint_task(params, workdir)
        recorded = read_recorded(root, name)
        changed = current.changed(recorded)
        if recorded is not None and recorded["fingerprint"] == current.digest and not force:
            logger.info("%s: no change since flow run %s (%s): source, params and code are the same; not running "
                        "the pipeline", name, recorded.get("flow_run_id"), recorded.get("recorded_at"))
            create_markdown_artifact(_summary_markdown(name, current, recorded=recorded), key=key,
                                     description=f"{name}: no change, nothing run")
            return {"status": "unchanged", "dataset": name, "fingerprint": current.digest, "changed": []}
        why = "forced" if force and not changed else ("first run" if recorded is None else ", ".join(changed))
        logger.info("%s: running the pipeline (%s)", name, why)
        records = augment(params, workdir)
        record = {"dataset": name, "fingerprint": current.digest, "parts": current.parts,
                  "flow_run_id": str(flow_run.get_id()), "recorded_at": datetime.now(UTC).isoformat(),
                  "publish": records.get("publish")}
        path = write_recorded(root, name, record)
        logger.info("%s: recorded fingerprint %s in %s", name, current.digest[:12], path)
        create_markdown_artifact(_summary_markdown(name, current, why=why, records=records), key=key,
                                 description=f"{name}: pipeline run ({why})")
        return {"status": "ran", "dataset": name, "fingerprint": current.digest, "changed": changed,
                "publish": records.get("publish")}


def _summary_markdown(name: str, fp: Fingerprint, *, recorded: dict[str, Any] | None = None, why: str = "",
                      records: dict[str, Any] | None = None) -> str:
    """The check's artifact: ``records`` (a pipeline run, ``why``) or ``recorded`` (the last run; nothing changed)."""
    ran = records is not None
    published = (records or {}).get("publish") or {}
    last = ((recorded or {}).get("publish") or {}) if not ran else {}
    return render("artifact_serve.md.j2", name=name, ran=ran, why=why, published=published,
                  gate=((records or {}).get("evaluate") or {}).get("utility_gate"), recorded=recorded or {},
                  tag=last.get("tag") if isinstance(last, dict) else None, source=fp.parts["source"],
                  code_version=fp.parts["code_version"], code_hash=fp.parts["code_hash"], digest=fp.digest)


# ---------------------------------------------------------------------------------------------------------------------
# deployments and serving


def check_cron(cron: str) -> str:
    """Return ``cron`` when Prefect accepts it as a cron schedule; raise ServeError naming it otherwise."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)
    except (ValidationError, ValueError) as exc:
        raise ServeError(f"schedule {cron!r} is not a valid cron expression (minute hour day month weekday, "
                         f"e.g. {DEFAULT_CRON!r}): {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}"
                         ) from None
    return cron


def one_at_a_time(flow_obj: Any, name: str, *, cron: str | None = None, interval: float | None = None,
                  parameters: dict[str, Any] | None = None, description: str | None = None) -> RunnerDeployment:
    """A deployment of ``flow_obj`` that never runs twice at once: ``concurrency_limit=1``, later runs wait."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.types.entrypoint import EntrypointType

    return flow_obj.to_deployment(
        name=name, cron=cron, interval=interval, parameters=parameters or {}, description=description,
        tags=["synthaug"], entrypoint_type=EntrypointType.MODULE_PATH,
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE))


def scheduled_deployment(params: Params, params_file: Path, overrides: Sequence[str], workdir: Path,
                         cron: str) -> RunnerDeployment:
    """The deployment ``scheduled-augment/<publish.name>`` on ``cron``; paths are made absolute for the runner."""
    parameters = {"params_file": str(Path(params_file).absolute()), "overrides": list(overrides),
                  "workdir": str(Path(workdir).absolute())}
    return one_at_a_time(scheduled_augment, params.publish.name, cron=check_cron(cron), parameters=parameters,
                         description=f"Publish {params.publish.name} when its source, params or code change.")


def require_server() -> str:
    """The API URL of a reachable Prefect server; raise ServeError saying how to start one otherwise."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ServeError("PREFECT_API_URL is not set. Schedules need a running Prefect server: a flow served "
                         "against the temporary server Prefect starts on its own never runs its schedule; "
                         + START_SERVER_HELP)
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise ServeError(f"no Prefect server answers at PREFECT_API_URL={url} ({type(error).__name__}: {error}); "
                         + START_SERVER_HELP)
    return url


def serve_deployments(*deployments: RunnerDeployment) -> None:
    """Serve ``deployments`` from this process until SIGTERM or SIGINT (their schedules are paused on shutdown).

    Prefect's ``serve`` runs a ``Runner``, whose SIGTERM handler waits for the flow runs it started; this one is a
    ``Runner`` whose handler is ``flows/stopping.py``'s: the flow runs' processes are terminated (Prefect marks them
    Crashed), the deployments are paused (the server then schedules no runs that nobody would run) and the process
    exits within seconds with 143 (130 for SIGINT).
    """
    import asyncio

    from prefect.runner import Runner

    from synthaug.flows.stopping import install, on_signal

    class StoppingRunner(Runner):
        def handle_sigterm(self, signum: int, frame: Any = None) -> None:  # Runner.start installs it for SIGTERM
            on_signal(signum, frame)

    from synthaug.tasks.core.logs import get_logger

    url = require_server()
    install()  # SIGINT too (and SIGTERM before the runner starts)
    runner = StoppingRunner(pause_on_shutdown=True)
    ids = [runner.add_deployment(deployment) for deployment in deployments]
    get_logger("serve").info("serving %s from %s; SIGTERM or Ctrl-C stops it (and its runs) within seconds",
                             ", ".join(f"{d.flow_name}/{d.name}" for d in deployments), url)
    try:
        asyncio.run(runner.start())
    except KeyboardInterrupt as stopped:  # the runner's loop ended before its own shutdown could tidy up
        _after_stop(ids, str(stopped))
        raise


def _after_stop(deployment_ids: Sequence[Any], why: str) -> None:
    """Pause the served deployments and record their runs that were still going (their processes were terminated
    before they could say so) as Crashed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    going = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING,
                                                                                     StateType.PENDING])))
    with get_client(sync_client=True) as client:
        for deployment_id in deployment_ids:
            client.pause_deployment(deployment_id)
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
                                     flow_run_filter=going)
        for run in runs:
            client.set_flow_run_state(run.id, Crashed(message=f"the serving process was {why}"), force=True)


def serve_command(params_file: Path, overrides: Sequence[str] = (), workdir: Path = Path("data/work"),
                  cron: str | None = None) -> None:
    """Register ``scheduled-augment/<publish.name>`` with a cron schedule and serve it (blocks until interrupted).

    ``cron`` defaults to ``publish.schedule`` of the params (``DEFAULT_CRON`` while that key does not exist).
    Raises ServeError (before registering anything) when no Prefect server is configured and reachable.
    """
    from synthaug.flows.params import load_params
    from synthaug.tasks.core.logs import route_to_prefect

    route_to_prefect()  # the runs' training progress, filter summary and published tag in their log in the UI
    params = load_params(params_file, overrides)
    cron = cron or getattr(params.publish, "schedule", None) or DEFAULT_CRON
    deployment = scheduled_deployment(params, params_file, overrides, workdir, cron)
    serve_deployments(deployment)
