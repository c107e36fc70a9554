"""Issue 29, findings 2 and 3: a published dataset version and its generator version hold no absolute local path
and no credential. The run's every path and URL carries a marker (source repository, registry, remote, workdir)
and so do the credentials in its environment; every file of both fetched versions is searched for it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synthaug.flows.code_deps import REPO_ROOT
from synthaug.flows.dag import STEPS
from synthaug.flows.params import load_params
from synthaug.tasks.core.publishing.registry import fetch, fetch_generator
from tests.markers import integration, slow
from tests.toy import TINY, digits_folder

pytestmark = [integration, slow]

MARKER = "mArKeR-29"
NAME = "marker"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_published_versions_hold_no_local_path_and_no_credential(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / MARKER
    repo = root / "source-repo"
    digits_folder(repo / "data" / "digits", {"0": 12, "1": 12, "2": 4})
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "source")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", f"AKIA{MARKER}")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"secret-{MARKER}")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))
    registry = root / "registry" / "repo"
    params = load_params(None, [*TINY, "data.source=data/digits", f"data.repo={repo}", "data.image_size=8",
                                f"publish.registry={registry}", f"publish.remote={root / 'registry' / 'remote'}",
                                f"publish.name={NAME}"])
    workdir = root / "work"
    for step in STEPS:
        step.run(params, workdir)

    dataset = fetch(str(registry), NAME, "latest", tmp_path / "got" / "dataset")
    generator = fetch_generator(str(registry), f"{NAME}-generator/latest", tmp_path / "got" / "generator")
    files = [p for folder in (dataset, generator) for p in sorted(folder.rglob("*")) if p.is_file()]
    assert {"params.yaml", "card.md", "metrics.json", "manifest.parquet", "report.html", "generator.json",
            "train_log.jsonl"} <= {p.name for p in files}
    local = [MARKER, str(tmp_path), str(Path.home()), str(REPO_ROOT)]
    found = {}
    for path in files:
        data = path.read_bytes()
        if path.suffix == ".parquet":  # its key-value metadata, decoded
            data += repr(pq.read_schema(path).metadata).encode()
        hits = [text for text in local if text.encode() in data]
        if hits:
            found[path.relative_to(tmp_path / "got").as_posix()] = hits
    assert not found, found
    params_text = (dataset / "params.yaml").read_text()
    assert "repo: local:source-repo" in params_text and "registry: local:repo" in params_text
