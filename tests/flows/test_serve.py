"""Schedules against a real Prefect server: ``prefect server start`` in a subprocess, deployments served by
``flows.serve`` in other subprocesses, runs triggered and read back through the API.

One server for the module (its own PREFECT_HOME, analytics off, scheduler every second). This process talks to it
only inside ``api(url)`` (``temporary_settings``), so the rest of the test session keeps its temporary server.
Every subprocess runs in its own process group and is killed with it.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthaug.flows.serve import DEFAULT_CRON, FLOW_NAME, ServeError, lock_name, read_recorded, serve_command
from synthaug.flows.stopping import GRACE_S
from tests.markers import integration, slow
from tests.prefect_server import (
    api,
    artifact_markdown,
    final_runs,
    find_deployment,
    flow_runs,
    free_port,
    pipeline_runs,
    process_group,
    server_env,
    serving,
    tail,
    wait_for,
)
from tests.toy import TINY, digits_folder

pytestmark = [integration, pytest.mark.xdist_group("prefect-server")]

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
PREFECT = str(Path(sys.executable).with_name("prefect"))
SERVER_START_S = 120  # a fresh PREFECT_HOME migrates its database first; slow on a busy 2-core machine
SYNTHAUG = str(Path(sys.executable).with_name("synthaug"))
STOP_S = GRACE_S + 3  # "within seconds": the watchdog's limit, what a loaded machine may need to unwind
DATASET = "digits-sched"

# Stand-in flows for the guard and the schedule: written to a temp folder and imported by the serve subprocess.
STANDIN = '''
import time

from prefect import flow

from synthaug.flows.serve import dataset_lock


@flow(name="standin-guarded")
def guarded(log: str, sleep_s: float = 1.0, dataset: str = "standin") -> None:
    """Holds the dataset lock for sleep_s seconds and appends "start end" of that span to log."""
    with dataset_lock(dataset):
        start = time.time()
        time.sleep(sleep_s)
        end = time.time()
    with open(log, "a") as f:
        f.write(f"{start} {end}\\n")


@flow(name="standin-sleep")
def sleep(seconds: float) -> None:
    time.sleep(seconds)


@flow(name="standin-tick")
def tick() -> str:
    return "tick"
'''


def run_logs(client, run_id) -> list:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))


def assert_step_logs_reached_the_api(client, workdir: Path, log: Path) -> None:
    """The synthaug logger's records of the served run (PREFECT_LOGGING_EXTRA_LOGGERS, set by `synthaug serve`),
    read back from the server: training progress, the filter summary, the utility gate's verdict, the published
    tag."""
    (pipeline,) = pipeline_runs(client, workdir)

    def messages() -> str | None:
        text = "\n".join(f"{entry.name}: {entry.message}" for entry in run_logs(client, pipeline.id))
        return text if f"published {DATASET}/v1" in text else None

    text = wait_for("the published tag in the run's logs", messages, 30, log)
    assert re.search(r"synthaug\.train: train vae: 2/2 steps \w+=\S+", text), text
    assert re.search(r"synthaug\.filter: filter: accepted \d+ of \d+ generated .*; rejected: ", text), text
    assert re.search(r"synthaug\.generate: generate: \d+/\d+ images", text), text
    verdict = json.loads((workdir / "evaluate" / "metrics.json").read_text())["utility"]["gate"]["verdict"]
    assert verdict.startswith("utility evidence: ") and f"synthaug.evaluate: {verdict}" in text, text


# ---------------------------------------------------------------------------------------------------------------------
# tests


def test_fingerprint_names_what_changed(tmp_path):
    """Source bytes, a param and the code each change the fingerprint; nothing changed gives the same digest."""
    from synthaug.flows.params import load_params
    from synthaug.flows.serve import fingerprint

    source = digits_folder(tmp_path / "source", {"0": 3, "1": 3})
    params = load_params(None, [f"data.source={source}"])
    first = fingerprint(params, tmp_path / "work")
    assert first.parts["source"]["content_hash"] and first.parts["source"]["resolved_rev"] is None
    assert fingerprint(params, tmp_path / "work") == first
    assert first.changed({"fingerprint": first.digest, "parts": first.parts}) == []
    recorded = {"fingerprint": first.digest, "parts": first.parts}

    (source / "1" / "0.png").write_bytes((source / "0" / "0.png").read_bytes())
    after_edit = fingerprint(params, tmp_path / "work")
    assert after_edit.digest != first.digest and after_edit.changed(recorded) == ["source"]
    other = fingerprint(load_params(None, [f"data.source={source}", "plan.ratio=0.5"]), tmp_path / "work")
    assert "params" in other.changed(recorded)
    assert first.changed(None) == list(first.parts)


def test_serve_refuses_without_a_reachable_server(tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    params = tmp_path / "params.yaml"
    params.write_text(f"publish:\n  name: {DATASET}\n")
    with temporary_settings(restore_defaults={PREFECT_API_URL}), pytest.raises(ServeError) as err:
        serve_command(params, [], tmp_path / "work", cron="*/5 * * * *")
    assert "PREFECT_API_URL is not set" in str(err.value) and "never runs its schedule" in str(err.value)
    assert "prefect server start" in str(err.value)

    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}), \
            pytest.raises(ServeError, match=r"no Prefect server answers at .*prefect server start"):
        serve_command(params, [], tmp_path / "work")
    with pytest.raises(ServeError, match=r"'61 \* \* \* \*' is not a valid cron"):
        serve_command(params, [], tmp_path / "work", cron="61 * * * *")


def test_prefect_yaml_matches_params_and_the_flow():
    """prefect.yaml parses as Prefect 3.8's deploy config and agrees with params.yaml and the flow's signature."""
    import inspect

    from prefect.cli.deploy._models import PrefectYamlModel

    from synthaug.flows.params import load_params
    from synthaug.flows.serve import scheduled_augment

    raw = yaml.safe_load((REPO / "prefect.yaml").read_text())
    model = PrefectYamlModel.model_validate(raw)
    params = load_params(REPO / "params.yaml")
    (deployment,) = model.deployments
    assert deployment.name == params.publish.name
    assert deployment.entrypoint == "flows/serve.py:scheduled_augment"
    assert (deployment.schedules or [])[0].cron == getattr(params.publish, "schedule", DEFAULT_CRON)
    assert deployment.concurrency_limit.limit == 1 and deployment.concurrency_limit.collision_strategy == "ENQUEUE"
    assert deployment.work_pool.name == "gpu"
    assert set(deployment.parameters) <= set(inspect.signature(scheduled_augment.fn).parameters)
    # the worker's flow runs send the synthaug logger's records to the API (tasks/core/logs.py)
    env = raw["deployments"][0]["work_pool"]["job_variables"]["env"]
    assert "synthaug" in env["PREFECT_LOGGING_EXTRA_LOGGERS"].split(",")


def test_prefect_deploy_all_registers_the_work_pool_deployment(server, tmp_path):
    """`prefect deploy --all` accepts prefect.yaml: cron schedule, concurrency limit 1, the gpu pool."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with api(server), get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="gpu", type="process"))
        log = tmp_path / "deploy.log"
        done = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], cwd=REPO, capture_output=True, text=True,
                              env=server_env(tmp_path / "home", PREFECT_API_URL=server), timeout=120)
        log.write_text(done.stdout + done.stderr)
        assert done.returncode == 0, tail(log)
        params = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"][0]
        deployment = client.read_deployment_by_name(f"{FLOW_NAME}/{params['name']}")
        assert deployment.work_pool_name == "gpu"
        assert [s.schedule.cron for s in deployment.schedules] == [params["schedules"][0]["cron"]]
        assert deployment.global_concurrency_limit.limit == 1
        assert deployment.entrypoint == "flows/serve.py:scheduled_augment"


@slow
def test_scheduled_augment_runs_then_reports_no_change(server, tmp_path):
    """The real flow, served: the first run executes the pipeline and publishes <name>/v1, and its log on the server
    has the steps' progress, filter summary, the gate's verdict and tag; a second run with nothing changed records
    "no change", runs no pipeline and publishes nothing; a run with a missing source fails with one ERROR line, the
    fix, no traceback. The cron gives scheduled runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    from synthaug.flows.dag import STEPS

    workdir, registry = tmp_path / "work", tmp_path / "registry"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"source": str(digits_folder(tmp_path / "source"))},
                                      "publish": {"name": DATASET, "registry": str(registry / "repo"),
                                                  "remote": str(registry / "remote")}}))
    script = f"""
        from pathlib import Path
        from synthaug.flows.serve import serve_command
        serve_command(Path({str(params)!r}), {TINY!r}, Path({str(workdir)!r}), cron="0 3 * * *")
    """
    with serving(server, tmp_path, script, "serve-augment") as log, api(server), \
            get_client(sync_client=True) as client:
        deployment = find_deployment(client, f"{FLOW_NAME}/{DATASET}", log)
        assert deployment.global_concurrency_limit.limit == 1

        first = run_deployment(deployment.id, timeout=120, poll_interval=1)
        assert first.state.is_completed(), f"{first.state}\n{tail(log, 80)}"
        for step in STEPS:  # the pipeline ran: every step left its outputs
            for out in step.outs:
                assert (workdir / out).exists(), f"{step.name} wrote no {out}\n{tail(log, 80)}"
        assert_step_logs_reached_the_api(client, workdir, log)
        recorded = read_recorded(workdir, DATASET)
        assert recorded is not None and recorded["flow_run_id"] == str(first.id)
        assert recorded["parts"]["source"]["content_hash"] and recorded["parts"]["code_version"]
        ran = artifact_markdown(client, first.id)
        assert f"# {DATASET}: pipeline run" in ran and "Why: first run." in ran and "- fingerprint: `" in ran, ran
        (pipeline,) = pipeline_runs(client, workdir)
        summary = artifact_markdown(client, pipeline.id)  # the augment flow's own artifacts
        assert "# synthaug augment" in summary and "**Verdict:**" in summary, summary
        assert "| family | metric | best real baseline |" in summary and "| condition | balanced accuracy |" in summary

        second = run_deployment(deployment.id, timeout=60, poll_interval=1)
        assert second.state.is_completed(), f"{second.state}\n{tail(log, 80)}"
        unchanged = artifact_markdown(client, second.id)
        assert f"# {DATASET}: no change" in unchanged and f"published as `{DATASET}/v1`" in unchanged, unchanged
        assert read_recorded(workdir, DATASET) == recorded
        assert len(pipeline_runs(client, workdir)) == 1  # the second run started no pipeline

        # Published once: the unchanged run added no version.
        tags = subprocess.run(["git", "tag", "--list", "*/v*"], cwd=registry / "repo", capture_output=True, text=True,
                              check=True).stdout.split()
        assert tags == [f"{DATASET}-generator/v1", f"{DATASET}/v1"], tags
        assert recorded["publish"]["tag"] == f"{DATASET}/v1"

        # A run that cannot start (its source folder is missing): one ERROR line in its log, naming the fix.
        missing = tmp_path / "missing"
        failed = run_deployment(deployment.id, timeout=60, poll_interval=1,
                                parameters={"overrides": [*TINY, f"data.source={missing}"]})
        assert failed.state.is_failed(), f"{failed.state}\n{tail(log, 80)}"
        errors = wait_for("the failed run's ERROR line", lambda: [
            entry.message for entry in run_logs(client, failed.id) if entry.level >= logging.ERROR], 30, log)
        assert errors == [f"data.source: {missing} not found; set data.source to an image folder, a .csv/.parquet "
                          "table, a .npz file or example:digits"], errors
        assert not any("Traceback" in entry.message for entry in run_logs(client, failed.id))

        # The server's scheduler turned the cron into scheduled runs, each at 03:00 UTC.
        scheduled = wait_for("scheduled runs of the cron", lambda: [
            r for r in flow_runs(client, deployment.id)
            if r.state_type == StateType.SCHEDULED and r.auto_scheduled], 30)
        assert all((r.expected_start_time.hour, r.expected_start_time.minute) == (3, 0) for r in scheduled)


def test_one_run_per_dataset_at_a_time_and_interval_schedule(server, tmp_path):
    """Two runs of one deployment and one of another deployment of the same dataset, triggered at once, never
    overlap: the deployment limit holds the second run of `a` back (AwaitingConcurrencySlot), the dataset lock makes
    the run of `b` wait inside. Then an interval schedule: the server creates runs and the served process runs them.
    Each run holds the lock for 4 s: long enough for the served process to poll the second run of `a` while the first
    still runs, also on a loaded machine (with 1 s the first could finish before the second was polled)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.concurrency.sync import concurrency
    from prefect.deployments import run_deployment

    from synthaug.flows.serve import dataset_lock

    (tmp_path / "standin_flows.py").write_text(STANDIN)
    spans = tmp_path / "spans.txt"
    script = f"""
        from synthaug.flows.serve import one_at_a_time, serve_deployments
        from standin_flows import guarded, tick
        serve_deployments(one_at_a_time(guarded, "a", parameters={{"log": {str(spans)!r}, "sleep_s": 4.0}}),
                          one_at_a_time(guarded, "b", parameters={{"log": {str(spans)!r}, "sleep_s": 4.0}}),
                          tick.to_deployment("every-5s", interval=5, paused=True))
    """
    with serving(server, tmp_path, script, "serve-standin") as log, api(server), \
            get_client(sync_client=True) as client:
        a = find_deployment(client, "standin-guarded/a", log)
        b = find_deployment(client, "standin-guarded/b", log)
        ticker = find_deployment(client, "standin-tick/every-5s", log)

        runs = [run_deployment(d.id, timeout=0) for d in (a, a, b)]
        finished = final_runs(client, [r.id for r in runs], log, timeout=90)
        assert all(r.state.is_completed() for r in finished), [r.state for r in finished] + [tail(log)]

        # Runs of one deployment: the API's start/end times never overlap, and the later one was held back.
        of_a = sorted((r for r in finished if r.deployment_id == a.id), key=lambda r: r.start_time)
        assert of_a[0].end_time <= of_a[1].start_time, [(r.start_time, r.end_time) for r in of_a]
        held_back = [s.name for s in client.read_flow_run_states(of_a[1].id)]
        assert "AwaitingConcurrencySlot" in held_back, held_back
        # All three held the dataset lock one after another; the lock is free again.
        held = sorted(tuple(map(float, line.split())) for line in spans.read_text().splitlines())
        assert len(held) == 3
        assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(held)), held
        assert client.read_global_concurrency_limit_by_name(lock_name("standin")).active_slots == 0
        # A run that may not wait forever says who holds the lock.
        with concurrency(lock_name("standin"), strict=True), \
                pytest.raises(ServeError, match="another run of standin still held"), \
                dataset_lock("standin", timeout_s=1):
            pass

        # The interval schedule: the server's scheduler creates runs and the served process executes them.
        client.resume_deployment(ticker.id)
        try:
            wait_for("scheduled runs of the interval schedule", lambda: [
                r for r in flow_runs(client, ticker.id) if r.state_type == StateType.SCHEDULED and r.auto_scheduled],
                30, log)
            wait_for("a scheduled run to complete", lambda: [
                r for r in flow_runs(client, ticker.id) if r.auto_scheduled and r.state_type == StateType.COMPLETED],
                60, log)
        finally:
            client.pause_deployment(ticker.id)


def stopped_within(proc: subprocess.Popen, signum: int, log: Path) -> int:
    """Send ``signum`` to ``proc`` alone (not its group, as a container runtime does); its exit code, which must come
    within STOP_S seconds."""
    import signal

    proc.send_signal(signum)
    try:
        return proc.wait(STOP_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still serving {STOP_S:.0f} s after {signal.Signals(signum).name}\n{tail(log)}")


def test_synthaug_serve_stops_on_sigterm(server, tmp_path):
    """`synthaug serve` exits 143 within seconds of SIGTERM (Prefect's runner would wait for its runs), the
    deployment's schedule paused on the way out."""
    import signal

    from prefect.client.orchestration import get_client

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"publish": {"name": "digits-stop"}}))
    log = tmp_path / "synthaug-serve.log"
    env = server_env(tmp_path / "home", PREFECT_API_URL=server)
    command = [SYNTHAUG, "serve", "-p", str(params), "-w", str(tmp_path / "work"), "--cron", "0 3 * * *"]
    with process_group(command, env, log) as proc, api(server), get_client(sync_client=True) as client:
        deployment = find_deployment(client, f"{FLOW_NAME}/digits-stop", log)
        wait_for("the runner to serve", lambda: "serving scheduled-augment/digits-stop" in log.read_text(), 30, log)
        assert stopped_within(proc, signal.SIGTERM, log) == 143, tail(log)
        assert "stopped (SIGTERM)" in log.read_text()
        assert client.read_deployment(deployment.id).paused


def test_stopping_a_runner_ends_its_flow_runs(server, tmp_path):
    """SIGTERM to a process serving a deployment while one of its runs sleeps: the process exits within seconds, the
    run's process is terminated and the server records the run as Crashed."""
    import signal

    import psutil
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    (tmp_path / "standin_flows.py").write_text(STANDIN)
    script = """
        import sys
        from synthaug.flows.serve import one_at_a_time, serve_deployments
        from synthaug.flows.stopping import Stopped, exit_code
        from standin_flows import sleep
        try:
            serve_deployments(one_at_a_time(sleep, "long", parameters={"seconds": 300}))
        except Stopped as stopped:
            sys.exit(exit_code(stopped.signum))
    """
    with serving(server, tmp_path, script, "serve-sleep") as log, api(server), \
            get_client(sync_client=True) as client:
        deployment = find_deployment(client, "standin-sleep/long", log)
        run = run_deployment(deployment.id, timeout=0)
        wait_for("the run to start", lambda: client.read_flow_run(run.id).state.is_running(), 60, log)
        (runner,) = [p for p in psutil.process_iter(["cmdline"]) if "serve_deployments" in " ".join(
            p.info["cmdline"] or [])]
        children = runner.children(recursive=True)
        assert children, "the run's process"
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(STOP_S) == 143, tail(log)
        _, alive = psutil.wait_procs(children, timeout=STOP_S)
        assert not alive, [p.cmdline() for p in alive]
        (final,) = final_runs(client, [run.id], log, timeout=30)
        assert final.state.is_crashed() and "stopped by SIGTERM" in final.state.message, final.state
