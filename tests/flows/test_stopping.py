"""Stop signals (flows/stopping.py): SIGTERM and SIGINT stop a command within seconds, exit 128 + the signal number,
release the workdir lock, end the processes the command started, and leave what a re-run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from synthaug.flows.stopping import GRACE_S, exit_code
from synthaug.tasks.core.io.locks import WORKDIR_LOCK, workdir_lock
from tests.markers import integration, slow
from tests.toy import TINY, digits_folder

pytestmark = integration
REPO = Path(__file__).resolve().parents[2]
SYNTHAUG = str(Path(sys.executable).with_name("synthaug"))
STOP_S = 5.0  # "within seconds": from the signal to the exit of a command that unwinds (no watchdog needed)

# A command's shape: the handler installed, the workdir locked, a process started for the work, then waiting; the
# exit code as `synthaug` (flows/cli.py main) gives it.
HOLDER = """
import subprocess, sys, time
from pathlib import Path
from synthaug.flows.stopping import Stopped, exit_code, install
from synthaug.tasks.core.io.locks import workdir_lock

install()
try:
    with workdir_lock(Path({workdir!r})):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print(child.pid, flush=True)
        {wait}
except Stopped as exc:
    sys.exit(exit_code(exc.signum))
"""


def start(script: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, text=True, **popen)


def stop(proc: subprocess.Popen, signum: int, timeout: float) -> tuple[int, float]:
    """Send ``signum``; the exit code and the seconds it took (fails after ``timeout``, killing the process)."""
    t0 = time.monotonic()
    proc.send_signal(signum)
    try:
        return proc.wait(timeout), time.monotonic() - t0
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running {timeout:.0f} s after {signal.Signals(signum).name}")


def assert_gone(pid: int) -> None:
    try:
        child = psutil.Process(pid)
        child.wait(2)  # a zombie of the stopped process's child is reaped by init
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        pytest.fail(f"process {pid} ({child.status()}) outlived the command that started it")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_unwinds_releases_the_lock_and_ends_the_children(tmp_path, signum):
    proc = start(HOLDER.format(workdir=str(tmp_path), wait="time.sleep(120)"), stdout=subprocess.PIPE)
    child = int(proc.stdout.readline())
    assert (tmp_path / (WORKDIR_LOCK + ".owner")).exists()
    code, seconds = stop(proc, signum, timeout=GRACE_S)
    assert code == exit_code(signum) == 128 + signum and seconds < STOP_S
    assert not (tmp_path / (WORKDIR_LOCK + ".owner")).exists()  # the with block unwound: the owner note removed
    assert_gone(child)
    with workdir_lock(tmp_path, timeout=0):  # free at once
        pass


def test_the_watchdog_ends_a_command_that_keeps_running(tmp_path):
    """A command that swallows ``Stopped`` (here: catches KeyboardInterrupt and goes on) is ended GRACE_S seconds
    after the signal, its children killed, with the signal's exit code; a second signal ends it at once."""
    keeps_running = ("try:\n            print('ready', flush=True)\n            time.sleep(120)\n"
                     "        except KeyboardInterrupt:\n            time.sleep(120)")
    proc = start(HOLDER.format(workdir=str(tmp_path), wait=keeps_running), stdout=subprocess.PIPE)
    child = int(proc.stdout.readline())
    assert proc.stdout.readline() == "ready\n"
    code, seconds = stop(proc, signal.SIGTERM, timeout=GRACE_S + 10)
    assert code == exit_code(signal.SIGTERM) and GRACE_S <= seconds < GRACE_S + STOP_S
    assert_gone(child)

    proc = start(HOLDER.format(workdir=str(tmp_path), wait=keeps_running), stdout=subprocess.PIPE)
    child = int(proc.stdout.readline())
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    code, seconds = stop(proc, signal.SIGINT, timeout=GRACE_S)
    assert code == exit_code(signal.SIGINT) and seconds < STOP_S
    assert_gone(child)


@slow
def test_synthaug_run_stops_during_training_and_the_next_command_resumes(tmp_path):
    """`synthaug run` sent SIGTERM while it trains exits 143 within seconds, its flow run recorded as Crashed and
    the workdir lock released; `synthaug train` then takes the workdir at once and resumes from the checkpoint."""
    work = tmp_path / "work"
    train = [*TINY, f"data.source={digits_folder(tmp_path / 'source')}", f"publish.registry={tmp_path / 'registry'}",
             "model.vae.steps=300", "model.vae.checkpoint_every=20"]  # after TINY's: the later value wins
    args = [arg for override in train for arg in ("-S", override)]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "OMP_NUM_THREADS": "1",
           "SYNTHAUG_LOCK_TIMEOUT": "0"}  # the workdir must be free at once
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen([SYNTHAUG, "run", "-w", str(work), *args], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    train_log = work / "model" / "train_log.jsonl"
    deadline = time.monotonic() + 240
    while not (train_log.exists() and len(train_log.read_text().splitlines()) >= 30):  # past the first checkpoint
        assert proc.poll() is None, f"`synthaug run` ended before training:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    code, seconds = stop(proc, signal.SIGTERM, timeout=GRACE_S + 10)
    text = log.read_text()  # unwound, not ended by the watchdog (which would also need no more than GRACE_S + 2 s)
    assert code == 143 and seconds < GRACE_S, f"exit {code} after {seconds:.1f} s:\n{text[-3000:]}"
    assert "Crashed('Execution was aborted by a termination signal.')" in text
    assert "stopped (SIGTERM); run the same command again to continue" in text
    assert len(train_log.read_text().splitlines()) < 300  # stopped mid-training

    again = subprocess.run([SYNTHAUG, "train", "-w", str(work), *args], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    summary = json.loads((work / "model" / "train.json").read_text())
    assert summary["resumed_from"] > 0 and summary["resumed_from"] % 20 == 0, summary
    steps = [json.loads(line)["step"] for line in train_log.read_text().splitlines()]
    assert steps == list(range(1, 301))  # the killed attempt's lines past its checkpoint were dropped
