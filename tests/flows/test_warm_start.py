"""Generators as versions, end to end: a real Prefect server serving ``scheduled-augment``, a real git + DVC source
repository (a local-folder DVC remote) and a real data registry.

Revision 1 of the source publishes dataset v1 and generator v1; ``synthaug generate --generator <registry>@<tag>`` in
a fresh folder gives the bytes the pipeline sampled; a commit that adds images makes the next run fine-tune from
generator v1 (its Prefect log says so) and publish dataset v2 and generator v2 with lineage both ways; a run with
the source unchanged publishes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from synthaug.flows.serve import FLOW_NAME
from tests.markers import integration, slow
from tests.prefect_server import api, find_deployment, pipeline_runs, serving, tail, wait_for
from tests.toy import TINY, digits_folder, registry_tags

pytestmark = [integration, slow, pytest.mark.xdist_group("prefect-server")]

REPO = Path(__file__).resolve().parents[2]
DATASET = "digits-warm"
GEN = f"{DATASET}-generator"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def dvc(repo: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True, text=True)


def source_repo(root: Path) -> Path:
    """A git + DVC repository whose ``data/digits`` folder is tracked by DVC and pushed to a local remote."""
    repo = root / "source-repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "synthaug test")
    git(repo, "config", "user.email", "test@synthaug.invalid")
    dvc(repo, "init", "-q")
    dvc(repo, "remote", "add", "-d", "store", str(root / "source-remote"))
    commit_images(repo, {"0": 30, "1": 30, "2": 30, "3": 8}, "revision 1")
    return repo


def commit_images(repo: Path, counts: dict[str, int], message: str) -> str:
    digits_folder(repo / "data" / "digits", counts)
    dvc(repo, "add", "data/digits")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    dvc(repo, "push", "-q")
    return git(repo, "rev-parse", "HEAD")


def show(registry: Path, tag: str, rel: str, out: Path) -> Path:
    dvc(registry, "get", str(registry), rel, "--rev", tag, "-o", str(out))
    return out


def flow_logs(client, workdir: Path) -> str:
    """The log lines of the pipeline runs in ``workdir``."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    ids = [r.id for r in pipeline_runs(client, workdir)]
    logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200)
    return "\n".join(entry.message for entry in logs)


def test_new_source_revision_fine_tunes_from_the_published_generator(server, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))  # DVC's index stays in tmp (subprocesses too)
    source = source_repo(tmp_path)
    workdir, registry = tmp_path / "work", tmp_path / "registry"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"source": "data/digits", "repo": str(source), "rev": "main"},
        "publish": {"name": DATASET, "registry": str(registry / "repo"), "remote": str(registry / "remote")}}))
    script = f"""
        from pathlib import Path
        from synthaug.flows.serve import serve_command
        serve_command(Path({str(params)!r}), {TINY!r}, Path({str(workdir)!r}), cron="0 3 * * *")
    """
    with serving(server, tmp_path, script, "serve-warm") as log, api(server), get_client(sync_client=True) as client:
        deployment = find_deployment(client, f"{FLOW_NAME}/{DATASET}", log)

        # Revision 1: dataset v1 and generator v1, trained from scratch.
        first = run_deployment(deployment.id, timeout=180, poll_interval=1)
        assert first.state.is_completed(), f"{first.state}\n{tail(log, 80)}"
        assert registry_tags(registry / "repo") == [f"{GEN}/v1", f"{DATASET}/v1"]
        wait_for("the log of run 1", lambda: "no generator of digits-warm published" in flow_logs(client, workdir),
                 30)

        # Another machine with DVC access only: the published generator samples the same bytes for the same seeds.
        fresh = tmp_path / "elsewhere"
        fresh.mkdir()
        plan = pd.read_csv(workdir / "plan" / "plan.csv", dtype={"class": str})
        count = int(plan["to_generate"].max())
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-m", "synthaug", "generate", "--generator",
                               f"{registry / 'repo'}@{GEN}/v1", "--count", str(count), "--out", "out",
                               "-S", "generate.device=cpu"], cwd=fresh, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        ours = sorted((workdir / "generate" / "images").rglob("*.png"))
        assert ours, "the pipeline sampled no image"
        for image in ours:
            theirs = fresh / "out" / "images" / image.parent.name / image.name
            assert theirs.read_bytes() == image.read_bytes(), image.name
        from synthaug.tasks.core.io.manifest import read_manifest

        _, meta = read_manifest(fresh / "out" / "manifest.parquet")
        assert meta["generator_version"]["tag"] == f"{GEN}/v1"

        # Revision 2 adds images of the scarce class: the run fine-tunes from generator v1.
        rev2 = commit_images(source, {"3": 16}, "revision 2: more of the scarce class")
        second = run_deployment(deployment.id, timeout=180, poll_interval=1)
        assert second.state.is_completed(), f"{second.state}\n{tail(log, 80)}"
        assert registry_tags(registry / "repo") == [f"{GEN}/v1", f"{GEN}/v2", f"{DATASET}/v1", f"{DATASET}/v2"]
        wait_for("the fine-tuning line in the run's log",
                 lambda: f"fine-tuning from generator {GEN}/v1 for 1 of 2 steps"
                 in flow_logs(client, workdir), 30)

        # Lineage both ways: the dataset card names generator v2; generator v2 names revision 2 and generator v1.
        card = (show(registry / "repo", f"{DATASET}/v2", f"datasets/{DATASET}", tmp_path / "ds-v2") / "card.md")
        assert f"| generator version | {GEN}/v2 " in card.read_text()
        gen = show(registry / "repo", f"{GEN}/v2", f"models/{DATASET}", tmp_path / "gen-v2")
        lineage = json.loads((gen / "generator.json").read_text())
        assert lineage["source"]["resolved_rev"] == rev2 and lineage["origin"]["from"] == f"{GEN}/v1"
        assert lineage["steps"] == 1 and lineage["code_version"]
        assert f"| started from | {GEN}/v1 |" in (gen / "card.md").read_text()
        assert "model:" in (gen / "params.yaml").read_text()
        assert {p.name for p in gen.iterdir()} >= {"checkpoint", "train_log.jsonl", "samples.png", "card.md"}

        # The source unchanged: the next run publishes nothing.
        third = run_deployment(deployment.id, timeout=120, poll_interval=1)
        assert third.state.is_completed(), f"{third.state}\n{tail(log, 80)}"
        assert len(registry_tags(registry / "repo")) == 4
        assert len(pipeline_runs(client, workdir)) == 2
