"""What the filter and evaluate steps leave behind, read back: their rows, the filter summary and metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthaug.tasks.core.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

METRICS_FILE = "metrics.json"
FILTER_SUMMARY = "filter_summary.json"
TABLE_UTILITY = "utility.csv"
TABLE_PER_CLASS = "per_class.csv"
PLOT_UTILITY = "utility.png"  # the evaluate step's charts (tasks/core/evaluation/charts.py)
PLOT_COUNTS = "class_counts.png"
PLOT_RECALL = "per_class_recall.png"


def synthetic_rows(filter_dir: Path) -> pd.DataFrame:
    """The synthetic rows of the filter step's manifest (images relative to ``filter_dir``), accepted or not."""
    from synthaug.tasks.core.io.manifest import read_manifest

    frame, _ = read_manifest(filter_dir / "manifest.parquet")
    rows = frame[frame["source"] == "synthetic"].copy()
    rows["label"] = rows["label"].astype(str)
    return rows.reset_index(drop=True)


def real_rows(ingest_dir: Path) -> pd.DataFrame:
    """The real rows of the ingest step's manifest (images relative to ``ingest_dir``)."""
    from synthaug.tasks.core.io.manifest import read_manifest

    frame, _ = read_manifest(ingest_dir / "manifest.parquet")
    rows = frame[frame["source"] == "real"].copy()
    rows["label"] = rows["label"].astype(str)
    return rows.reset_index(drop=True)


def read_metrics(evaluate_dir: Path) -> dict[str, Any]:
    """The ``metrics.json`` written by ``evaluate_step`` into ``evaluate_dir``."""
    path = evaluate_dir / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{path}: metrics not found; run `synthaug evaluate` first")
    return json.loads(path.read_text())
