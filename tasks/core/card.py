"""The dataset card (``card.md``): lineage, params and metrics of a published version, as markdown."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks.core.files import write_atomic

CARD_CHECKPOINT_ROW = "| generator checkpoint (sha256) |"


def write_card(dataset_dir: Path, *, source: Mapping[str, Any], params_yaml: str, code_version: str,
               checkpoint: str | None, metrics: Mapping[str, Any], summary: str | None = None,
               sections: Sequence[tuple[str, Sequence[str]]] = ()) -> Path:
    """Write ``dataset_dir/card.md``: lineage (source, code version, checkpoint), contents, metrics and params.

    Args:
        dataset_dir: the assembled dataset folder.
        source: where the real images came from, e.g. ``{"repo": ..., "rev": ..., "path": ..., "hash": ...}``.
        params_yaml: the resolved params.yaml text the dataset was made with.
        code_version: the pipeline code's version (see ``code_version()``).
        checkpoint: sha256 of the generator weights; None when the dataset has no synthetic images.
        metrics: the evaluation metrics (nested mappings are flattened to dotted keys).
        summary: the paragraph under the title; None: real plus synthetic images, as ``assemble`` publishes.
        sections: more ``(title, markdown lines)`` sections, placed after the metrics (e.g. the privacy gate).

    The card holds no timestamp: the same inputs give the same bytes, so republishing them is not a new version.
    """
    dataset_dir = Path(dataset_dir)
    name = dataset_dir.name
    summary = summary or ("Real images plus class-conditional synthetic images made by the synthaug pipeline. "
                          "Every image is listed in `manifest.parquet` with its label, split, source (real or "
                          "synthetic), generator, checkpoint and seed.")
    lines = [f"# Dataset card: {name}", "", summary, "",
             "## Lineage", "", "| | |", "|---|---|"]
    for key, value in source.items():
        lines.append(f"| source {_cell(key)} | {_cell(value)} |")
    if not source:
        lines.append("| source | (not recorded) |")
    lines.append(f"| pipeline code | {_cell(code_version)} |")
    lines.append(f"| generator checkpoint (sha256) | {_cell(checkpoint or 'none (no synthetic images)')} |")
    lines.append("")
    contents = _contents_table(dataset_dir / "manifest.parquet")
    if contents:
        lines += ["## Contents (accepted images)", "", *contents, ""]
    lines += ["## Metrics", ""]
    flat = _flatten(metrics)
    if flat:
        lines += ["| metric | value |", "|---|---|", *(f"| {_cell(k)} | {_cell(_fmt(v))} |" for k, v in flat)]
    else:
        lines.append("(none recorded)")
    for title, body in sections:
        lines += ["", f"## {title}", "", *body]
    lines += ["", "## Params", "", "The resolved `params.yaml` (also stored next to this card):", "",
              "```yaml", params_yaml.rstrip("\n"), "```", ""]
    path = dataset_dir / "card.md"
    write_atomic("\n".join(lines), path)
    return path


def _contents_table(manifest: Path) -> list[str]:
    if not manifest.is_file():
        return []
    from tasks.core.manifest import read_manifest

    frame, _ = read_manifest(manifest)
    frame = frame[frame["accepted"]]
    if frame.empty:
        return []
    counts = frame.groupby(["label", "source"]).size().unstack(fill_value=0)
    sources = [s for s in ("real", "synthetic") if s in counts.columns]
    rows = ["| label | " + " | ".join(sources) + " |", "|---" * (len(sources) + 1) + "|"]
    for label, row in counts.sort_index().iterrows():
        rows.append(f"| {_cell(label)} | " + " | ".join(str(int(row[s])) for s in sources) + " |")
    return rows


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items += _flatten(value, f"{full}.")
        else:
            items.append((full, value))
    return items


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _cell(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
