"""Assemble the dataset folder a version of the ``augment`` flow publishes (README "Published datasets")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from synthaug.tasks.core.io.files import link_or_copy
from synthaug.tasks.core.io.manifest import read_manifest, write_manifest
from synthaug.tasks.core.publishing.card import write_card
from synthaug.tasks.core.publishing.public import public_lineage, public_params_yaml
from synthaug.tasks.core.publishing.registry import code_version
from synthaug.tasks.core.render import run_info, stamp_run


def assemble(ingest_dir: Path, filter_dir: Path, evaluate_dir: Path, report_dir: Path, params_yaml: str,
             out_dir: Path, *, name: str | None = None, license: str | None = None,
             gate_enforced: bool = True) -> Path:
    """Build ``out_dir`` from scratch (a half-built folder from a killed run is replaced, never mixed); ``name``:
    the dataset's published name, shown with the run in the report and the card (``run.json``); ``license``: the
    card's license id (None: unknown); ``gate_enforced``:
    ``publish.utility_gate``, which the card mentions when the gate refused."""
    real, lineage = read_manifest(ingest_dir / "manifest.parquet")
    lineage = public_lineage(lineage)  # (ingest records it so; a manifest ingested before it did may not)
    params_yaml = public_params_yaml(params_yaml)  # no local path in a published file
    synthetic, _ = read_manifest(filter_dir / "manifest.parquet")
    generators = synthetic["generator"]  # the run's generator family, whether or not its images were accepted
    real = real[real["split"] != "heldback"]
    synthetic = synthetic[synthetic["accepted"]]
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for root, rows in ((ingest_dir, real), (filter_dir, synthetic)):
        for rel in rows["path"]:
            link_or_copy(root / rel, out_dir / rel)
    frame = pd.concat([real, synthetic], ignore_index=True)
    write_manifest(frame, out_dir / "manifest.parquet", metadata=lineage)
    metrics = json.loads((evaluate_dir / "metrics.json").read_text())
    shutil.copyfile(evaluate_dir / "metrics.json", out_dir / "metrics.json")
    shutil.copyfile(report_dir / "report.html", out_dir / "report.html")
    (out_dir / "params.yaml").write_text(params_yaml)
    checkpoints = sorted(set(synthetic["checkpoint"].dropna()))
    source = {k: lineage.get(k) for k in ("source", "repo", "rev", "resolved_rev", "content_hash")}
    run = run_info(lineage, generators, dataset=name, code_version=code_version())
    write_card(out_dir, source=source, params_yaml=params_yaml, code_version=code_version(),
               checkpoint=", ".join(checkpoints) or None, metrics=metrics, run=run, license=license,
               gate_enforced=gate_enforced)
    stamp_run(out_dir, run)  # the report step knew neither the name nor the code version
    return out_dir
