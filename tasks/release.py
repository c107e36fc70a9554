"""Assemble the dataset a version publishes (DESIGN.md "Published dataset") from the steps' outputs.

It holds the real images the source gave for training and evaluation (``train``/``val``/``test``; images a
source held back stay out) and the accepted synthetic images, all under ``images/<label>/``, with one
manifest, the metrics, the report, the resolved params and a card naming the lineage.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.manifest import read_manifest, write_manifest
from tasks.publish import code_version, write_card

# The headline numbers the card lists; metrics.json beside it has everything.
CARD_METRICS = ("quality.overall", "utility.real_only", "utility.real_synthetic", "utility.paired_difference",
                "utility.gap_closed")


def assemble(ingest_dir: Path, filter_dir: Path, evaluate_dir: Path, report_dir: Path, params_yaml: str,
             out_dir: Path) -> Path:
    """Build ``out_dir`` from scratch (a half-built folder from a killed run is replaced, never mixed)."""
    real, lineage = read_manifest(ingest_dir / "manifest.parquet")
    synthetic, _ = read_manifest(filter_dir / "manifest.parquet")
    real = real[real["split"] != "heldback"]
    synthetic = synthetic[synthetic["accepted"]]
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for root, rows in ((ingest_dir, real), (filter_dir, synthetic)):
        for rel in rows["path"]:
            _link(root / rel, out_dir / rel)
    frame = pd.concat([real, synthetic], ignore_index=True)
    write_manifest(frame, out_dir / "manifest.parquet", metadata=lineage)
    metrics = json.loads((evaluate_dir / "metrics.json").read_text())
    shutil.copyfile(evaluate_dir / "metrics.json", out_dir / "metrics.json")
    shutil.copyfile(report_dir / "report.html", out_dir / "report.html")
    (out_dir / "params.yaml").write_text(params_yaml)
    checkpoints = sorted(set(synthetic["checkpoint"].dropna()))
    source = {k: lineage.get(k) for k in ("source", "repo", "rev", "resolved_rev", "content_hash")}
    write_card(out_dir, source=source, params_yaml=params_yaml, code_version=code_version(),
               checkpoint=", ".join(checkpoints) or None, metrics=_headline(metrics))
    return out_dir


def _link(src: Path, dst: Path) -> None:
    """Hard link when possible (no copy of large image sets), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    picked: dict[str, Any] = {}
    for dotted in CARD_METRICS:
        node: Any = metrics
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            picked[dotted] = {k: v for k, v in node.items() if k != "values"} if isinstance(node, dict) else node
    return picked
