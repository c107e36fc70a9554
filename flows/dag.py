"""The pipeline's steps, declared once. The Prefect flow runs them, the CLI exposes them, and
``dvc.yaml`` is generated from them (a test keeps the committed file identical).

A step reads params sections, files of earlier steps (``deps``, relative to the workdir) and code
(``code``); it writes ``outs`` (relative to the workdir). Its cache key is the hash of all three.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flows.params import Params

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORKDIR = Path("data/work")

Record = dict[str, Any]  # what a step returns: small, JSON-able facts (paths, hashes, counts)


@dataclass(frozen=True)
class Step:
    name: str
    help: str
    run: Callable[[Params, Path], Record]
    params: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    code: tuple[str, ...]


def _ingest(p: Params, workdir: Path) -> Record:
    from tasks.ingest import ingest

    result = ingest(p.data, workdir / "ingest", cache_dir=workdir / "sources")
    return {"manifest": str(result.manifest_path)}


def _plan(p: Params, workdir: Path) -> Record:
    from tasks.plan import make_plan

    plan = make_plan(workdir / "ingest" / "manifest.parquet", p.plan, workdir / "plan")
    return {"plan": str(workdir / "plan" / "plan.csv"), "to_generate": int(plan["to_generate"].sum())}


def _train(p: Params, workdir: Path) -> Record:
    from tasks.train import train

    result = train(workdir / "ingest" / "manifest.parquet", p.model, workdir / "model")
    return {"checkpoint": str(result.checkpoint_dir), "checkpoint_hash": result.checkpoint_hash}


def _generate(p: Params, workdir: Path) -> Record:
    from tasks.generate import generate_from_plan

    manifest = generate_from_plan(workdir / "plan" / "plan.csv", workdir / "model" / "checkpoint", p.generate,
                                  workdir / "generate")
    return {"manifest": str(manifest)}


STEPS: tuple[Step, ...] = (
    Step("ingest", "Read the source dataset into normalized images, manifest.parquet and quarantine.parquet.",
         _ingest, params=("data",), deps=(), outs=("ingest",),
         code=("tasks/ingest.py", "tasks/sources.py", "tasks/example.py", "tasks/manifest.py")),
    Step("plan", "Decide how many synthetic images each class gets (plan.csv).",
         _plan, params=("plan",), deps=("ingest/manifest.parquet",), outs=("plan",),
         code=("tasks/plan.py",)),
    Step("train", "Train or fine-tune the model.family generator on the real train split.",
         _train, params=("model",), deps=("ingest/manifest.parquet",), outs=("model",),
         code=("tasks/train.py", "models")),
    Step("generate", "Sample the planned number of images per class, one file per seed.",
         _generate, params=("generate",), deps=("plan/plan.csv", "model/checkpoint"), outs=("generate",),
         code=("tasks/generate.py", "models")),
)


def step(name: str) -> Step:
    for s in STEPS:
        if s.name == name:
            return s
    raise ValueError(f"unknown step {name!r}; steps: {', '.join(s.name for s in STEPS)}")


def _hash_path(digest: hashlib._Hash, path: Path) -> None:
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    for f in files:
        if f.is_file():
            digest.update(f.relative_to(path.parent).as_posix().encode())
            digest.update(hashlib.sha256(f.read_bytes()).digest())


def cache_key(s: Step, params: Params, workdir: Path, extra: str = "") -> str:
    """Content hash of what the step reads: its params sections, its input files and its code."""
    digest = hashlib.sha256(s.name.encode())
    sections = {name: params.model_dump(mode="json")[name] for name in s.params}
    digest.update(json.dumps(sections, sort_keys=True).encode())
    for dep in s.deps:
        _hash_path(digest, workdir / dep)
    for code in s.code:
        _hash_path(digest, REPO_ROOT / code)
    digest.update(extra.encode())
    return digest.hexdigest()


def dvc_yaml(workdir: Path = DEFAULT_WORKDIR) -> str:
    """``dvc.yaml`` for the same DAG: one stage per step, each running that step through the CLI."""
    stages = {}
    for s in STEPS:
        stage: dict[str, Any] = {"cmd": f"synthaug {s.name} --workdir {workdir.as_posix()}"}
        deps = [c for c in s.code if (REPO_ROOT / c).exists()] + [(workdir / d).as_posix() for d in s.deps]
        stage["deps"] = deps
        stage["params"] = list(s.params)
        stage["outs"] = [(workdir / o).as_posix() for o in s.outs]
        stages[s.name] = stage
    header = "# Generated from flows/dag.py by `synthaug dag --write`; a test keeps the two identical.\n"
    return header + yaml.safe_dump({"stages": stages}, sort_keys=False)
