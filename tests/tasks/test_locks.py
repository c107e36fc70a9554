"""One writer at a time, between real processes: publishes to one registry and runs on one workdir are serialized,
every tag stays on the branch, and a writer that waits too long stops with a message naming the holder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from synthaug.flows.code_deps import REPO_ROOT
from synthaug.tasks.core.io.locks import TIMEOUT_ENV, registry_lock, workdir_lock
from tests.markers import integration, slow
from tests.tasks.test_publish import NAME, git, hermetic, make_dataset, tags  # noqa: F401  (hermetic: a fixture)
from tests.toy import TINY, digits_folder

pytestmark = [integration]

PUBLISH = textwrap.dedent("""
    import sys
    from pathlib import Path
    from synthaug.tasks.core.params.publish import PublishParams
    from synthaug.tasks.publish.step import publish
    params = PublishParams(name=sys.argv[1], registry=sys.argv[2], remote=sys.argv[3])
    result = publish(Path(sys.argv[4]), params, workdir=Path(sys.argv[5]))
    print(result.tag, result.content_hash)
""")


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "NO_ALBUMENTATIONS_UPDATE": "1", "DVC_NO_ANALYTICS": "1"}


def wait_until_all_wait(procs: list[subprocess.Popen], logs: list[Path], said: str, seconds: float = 600) -> None:
    """Until every process has said ``said`` in its stderr log (it is blocked on the lock the test holds)."""
    deadline = time.monotonic() + seconds
    while not all(said in " ".join(log.read_text().split()) for log in logs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
            log.read_text()[-2000:] for log in logs]
        time.sleep(0.5)


def on_branch(repo: Path, tag: str, branch: str = "main") -> bool:
    done = subprocess.run(["git", "merge-base", "--is-ancestor", tag, branch], cwd=repo, capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("kind", ["working", "bare"])
def test_two_publishes_in_parallel_processes_are_serialized_and_every_tag_is_on_main(tmp_path: Path,
                                                                                    kind: str) -> None:
    registry, remote = tmp_path / "registry", tmp_path / "remote"
    if kind == "bare":
        subprocess.run(["git", "init", "--quiet", "--bare", "-b", "main", str(registry)], check=True)
    datasets = [make_dataset(tmp_path / f"ds{i}", f"variant {i}") for i in range(2)]
    logs = [tmp_path / f"publish{i}.err" for i in range(2)]
    with registry_lock(str(registry)):  # both start while the registry is busy, so they contend when it frees
        procs = [subprocess.Popen([sys.executable, "-c", PUBLISH, NAME, str(registry), str(remote),
                                   str(datasets[i]), str(tmp_path / f"work{i}")], env=env(), stdout=subprocess.PIPE,
                                  stderr=logs[i].open("w"), text=True) for i in range(2)]
        wait_until_all_wait(procs, logs, f"waiting for registry {registry}")
    outs = [(p.communicate(timeout=300)[0], p.returncode) for p in procs]

    for (_, code), log in zip(outs, logs, strict=True):
        assert code == 0, log.read_text()
    published = sorted(out.split()[0] for out, _ in outs)
    assert published == [f"{NAME}/v1", f"{NAME}/v2"]
    assert len({out.split()[1] for out, _ in outs}) == 2  # two contents, two versions
    assert tags(registry) == published
    assert all(on_branch(registry, tag) for tag in published)


def test_a_second_writer_of_a_workdir_waits_then_stops_naming_the_holder(tmp_path: Path) -> None:
    work = tmp_path / "work"
    with workdir_lock(work):
        done = subprocess.run([sys.executable, "-m", "synthaug", "plan", "--workdir", str(work)], cwd=tmp_path,
                              env={**env(), TIMEOUT_ENV: "2"}, capture_output=True, text=True, timeout=120)
    said = " ".join(done.stderr.split())  # the console wraps long lines
    assert done.returncode == 1
    assert f"waiting for workdir {work}: held by process {os.getpid()}" in said
    assert f"workdir {work} is busy: held by process {os.getpid()}" in said
    assert "Traceback" not in said
    assert not (work / "plan").exists()  # it wrote nothing


@slow
def test_two_runs_on_one_workdir_in_parallel_are_serialized(tmp_path: Path) -> None:
    """Two `synthaug run` with different sources on one workdir (one crashed on a missing file): both finish,
    one after the other, and both versions are on the registry's branch."""
    work = tmp_path / "work"
    runs, logs = [], []
    with workdir_lock(work):  # both runs start while the workdir is busy, so they contend for it when it frees
        for i, counts in enumerate(({"0": 20, "1": 20, "2": 6}, {"0": 20, "1": 6, "2": 20})):
            source = digits_folder(tmp_path / f"source{i}", counts)
            overrides = [*TINY, f"data.source={source}", f"publish.registry={tmp_path / 'registry'}",
                         f"publish.remote={tmp_path / 'remote'}", "publish.name=toy"]
            cmd = [sys.executable, "-m", "synthaug", "run", "--workdir", str(work), *(f"-S{o}" for o in overrides)]
            logs.append(tmp_path / f"run{i}.log")
            runs.append(subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=logs[-1].open("w"),
                                         env={**env(), "PREFECT_HOME": str(tmp_path / f"prefect{i}"),
                                              "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600"}))
        wait_until_all_wait(runs, logs, f"waiting for workdir {work}")
    codes = [r.wait(timeout=900) for r in runs]
    assert codes == [0, 0], [log.read_text()[-3000:] for log in logs]
    tags = ["toy-generator/v1", "toy-generator/v2", "toy/v1", "toy/v2"]  # each run trained its own generator
    assert git("tag", "--list", "*/v*", cwd=tmp_path / "registry").split() == tags
    assert all(on_branch(tmp_path / "registry", t) for t in tags)
