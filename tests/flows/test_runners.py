"""Sharded generation and filtering on real task runners: a Dask LocalCluster gives exactly the threads' result,
and a generation killed mid-way (SIGKILL of the real process) resumes to the uninterrupted result."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from synthaug.flows.dag import step
from synthaug.flows.params import load_params
from synthaug.flows.runners import shard_runner
from synthaug.tasks.core.params.runner import RunnerParams
from synthaug.tasks.filter.step import filter_step
from synthaug.tasks.generate import generate_from_plan
from tests.markers import integration, slow
from tests.toy import TINY, digits_folder

pytestmark = [integration, slow]

SHARD = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A workdir with ingest, plan, a tiny VAE checkpoint and a judge: what generate and filter read."""
    root = tmp_path_factory.mktemp("runners")
    source = digits_folder(root / "source")
    overrides = [*TINY, f"data.source={source}", "plan.strategy=target", "plan.target=40",
                 "filter.topup_rounds=1", f"runner.shard_size={SHARD}"]
    params = load_params(None, overrides)
    work = root / "work"
    for name in ("ingest", "plan", "train", "judge"):
        step(name).run(params, work)
    return {"root": root, "work": work, "params": params, "overrides": overrides}


def _copy_inputs(world, dest: Path) -> Path:
    for name in ("ingest", "plan", "model", "judge"):
        shutil.copytree(world["work"] / name, dest / name)
    return dest


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def run_command(world, work: Path, runner: RunnerParams) -> None:
    p = world["params"]
    with shard_runner(runner, "shards") as run_shards:  # one cluster for both steps
        generate_from_plan(work / "plan" / "plan.csv", work / "model" / "checkpoint", p.generate, work / "generate",
                           shard_size=runner.shard_size, run_shards=run_shards)
        filter_step(work / "ingest", work / "generate", work / "judge", work / "plan" / "plan.csv",
                    work / "model" / "checkpoint", p.filter, p.generate, work / "filter",
                    shard_size=runner.shard_size, run_shards=run_shards)


def test_dask_local_cluster_gives_exactly_the_threads_result(world, tmp_path):
    threads = _copy_inputs(world, tmp_path / "threads")
    dask = _copy_inputs(world, tmp_path / "dask")
    run_command(world, threads, RunnerParams(kind="threads", workers=2, shard_size=SHARD))
    run_command(world, dask, RunnerParams(kind="dask", workers=2, shard_size=SHARD))
    for name in ("generate", "filter"):
        a = pd.read_parquet(threads / name / "manifest.parquet")
        b = pd.read_parquet(dask / name / "manifest.parquet")
        assert len(a) > 2 * SHARD  # several shards, so both runners really ran some side by side
        pd.testing.assert_frame_equal(a, b)
        assert _files(threads / name / "images") == _files(dask / name / "images")
    shards = sorted(p.name for p in (dask / "generate" / "shards").iterdir())
    assert shards == sorted(p.name for p in (threads / "generate" / "shards").iterdir())


def test_killed_generation_resumes_to_the_uninterrupted_result(world, tmp_path):
    p = world["params"]
    reference = _copy_inputs(world, tmp_path / "reference")
    generate_from_plan(reference / "plan" / "plan.csv", reference / "model" / "checkpoint", p.generate,
                       reference / "generate", shard_size=4)
    killed = _copy_inputs(world, tmp_path / "killed")
    shards = killed / "generate" / "shards"
    cmd = [sys.executable, "-m", "synthaug", "generate", "-w", str(killed), *(a for o in world["overrides"]
                                                                          for a in ("-S", o)),
           "-S", "runner.shard_size=4"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    # A session of its own: the kill reaches the CLI and the temporary Prefect server it started.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(list(shards.glob("*.parquet"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the generation finished before it could be killed"
    total = -(-len(pd.read_parquet(reference / "generate" / "manifest.parquet")) // 4)
    done_at_kill = {f: f.stat().st_mtime_ns for f in shards.glob("*.parquet")}
    assert 2 <= len(done_at_kill) < total, "killed mid-way: some shards finished, not all"
    assert not (killed / "generate" / "manifest.parquet").exists()

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = pd.read_parquet(killed / "generate" / "manifest.parquet")
    pd.testing.assert_frame_equal(resumed, pd.read_parquet(reference / "generate" / "manifest.parquet"))
    assert resumed["path"].is_unique
    assert _files(killed / "generate" / "images") == _files(reference / "generate" / "images")  # every pixel
    assert {f.relative_to(killed / "generate").as_posix() for f in (killed / "generate" / "images").rglob("*")
            if f.is_file()} == set(resumed["path"])  # nothing extra, no half-written file
    assert not list((killed / "generate").rglob("*.tmp"))
    # the shards finished before the kill were skipped, not made again
    assert {f: f.stat().st_mtime_ns for f in done_at_kill} == done_at_kill
    assert len(list(shards.glob("*.parquet"))) == total
