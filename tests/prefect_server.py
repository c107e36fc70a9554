"""A real Prefect server for the tests that need one (schedules, served flow runs): ``prefect server start`` in a
subprocess, one for the whole test run (its own PREFECT_HOME, analytics off, scheduler every second), and the
helpers that serve deployments in other subprocesses and read runs and logs back through the API.

This process talks to the server only inside ``api(url)`` (``temporary_settings``), so the rest of the test session
keeps its temporary server. Every subprocess runs in its own process group and is killed with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PREFECT = str(Path(sys.executable).with_name("prefect"))
SERVER_START_S = 120  # a fresh PREFECT_HOME migrates its database first; slow on a busy 2-core machine




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "NO_ALBUMENTATIONS_UPDATE": "1",
                "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(REPO), "PREFECT_LOGGING_LEVEL": "INFO",
                # one thread per process: on a shared 2-core machine torch's default threads make tiny steps 3x slower
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra})
    return env


@contextmanager
def process_group(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        for sig, wait in ((signal.SIGINT, 10), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        with suppress(ProcessLookupError):  # the flow-run children of a runner live in the same group
            os.killpg(proc.pid, signal.SIGKILL)


def tail(log: Path, n: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log.exists() else "(no log)"


def wait_for(what: str, check, timeout: float, log: Path | None = None, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n" + (tail(log) if log else ""))


@pytest.fixture(scope="session")
def prefect_server_process(tmp_path_factory) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """`prefect server start` on a free loopback port, one for the whole test run; killed with its process group at
    the end."""
    root = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = server_env(root / "home", PREFECT_SERVER_UI_ENABLED="false", PREFECT_SERVER_LOGGING_LEVEL="WARNING",
               PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
               PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="1")
    log = root / "server.log"
    with process_group([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log) as proc:
        yield proc, f"http://127.0.0.1:{port}/api", log


@pytest.fixture(scope="session")
def server(prefect_server_process) -> str:
    """The API URL of the module's Prefect server, once /api/health answers."""
    import httpx

    proc, url, log = prefect_server_process

    def healthy() -> bool:
        assert proc.poll() is None, f"prefect server exited ({proc.returncode}):\n{tail(log)}"
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("the Prefect server's /api/health", healthy, SERVER_START_S, log)
    return url


@contextmanager
def api(url: str):
    """This process's Prefect client talks to ``url`` inside the block (settings restored afterwards)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


@contextmanager
def serving(url: str, tmp: Path, script: str, name: str) -> Iterator[Path]:
    """Run ``script`` (which serves deployments) in a subprocess pointed at the server; yields its log."""
    log = tmp / f"{name}.log"
    env = server_env(tmp / f"{name}-home", PREFECT_API_URL=url, PREFECT_RUNNER_POLL_FREQUENCY="1",
               PYTHONPATH=os.pathsep.join([str(REPO), str(tmp)]))
    with process_group([PYTHON, "-c", textwrap.dedent(script)], env, log):
        yield log


def find_deployment(client, name: str, log: Path, timeout: float = 90):
    from prefect.exceptions import ObjectNotFound

    def found():
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None

    return wait_for(f"deployment {name} to be registered", found, timeout, log)


def flow_runs(client, deployment_id=None, flow_name: str | None = None) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowFilter, FlowFilterName

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])) if deployment_id else None,
        flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])) if flow_name else None, limit=200)


def pipeline_runs(client, workdir: Path, flow_name: str = "augment") -> list:
    """The runs of the flow ``flow_name`` that worked in ``workdir`` (their ``workdir`` parameter): the server is
    shared by the whole test session, so other tests' runs are on it too."""
    return [r for r in flow_runs(client, flow_name=flow_name)
            if Path(str(r.parameters.get("workdir", ""))).resolve() == Path(workdir).resolve()]


def final_runs(client, run_ids: list, log: Path, timeout: float) -> list:
    def done():
        runs = [client.read_flow_run(i) for i in run_ids]
        return runs if all(r.state is not None and r.state.is_final() for r in runs) else None

    return wait_for(f"runs {[str(i)[:8] for i in run_ids]} to finish", done, timeout, log, every=1)


def artifact_markdown(client, run_id) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    only_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
    return "\n".join(str(a.data) for a in client.read_artifacts(artifact_filter=only_run))


