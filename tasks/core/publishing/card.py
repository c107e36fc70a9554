"""The dataset card (``card.md``, template ``tasks/templates/card.md.j2``): the run, lineage, params and metrics of
a published version, as markdown."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from synthaug.tasks.core.io.files import write_atomic
from synthaug.tasks.core.render import RunInfo, render, run_info

CARD_CHECKPOINT_ROW = "| generator checkpoint (sha256) |"


def write_card(dataset_dir: Path, *, source: Mapping[str, Any], params_yaml: str, code_version: str,
               checkpoint: str | None, metrics: Mapping[str, Any], summary: str | None = None,
               sections: Sequence[tuple[str, str]] = (), run: RunInfo | None = None) -> Path:
    """Write ``dataset_dir/card.md`` (template ``tasks/templates/card.md.j2``): the run, lineage, contents, metrics
    and params.

    Args:
        dataset_dir: the assembled dataset folder.
        source: where the real images came from: the ingest lineage (``source``, ``repo``, ``rev``,
            ``resolved_rev``, ``content_hash``); used when ``run`` is None.
        params_yaml: the resolved params.yaml text the dataset was made with.
        code_version: the pipeline code's version (see ``code_version()``); used when ``run`` is None.
        checkpoint: sha256 of the generator weights; None when the dataset has no synthetic images.
        metrics: the evaluation metrics (nested mappings are flattened to dotted keys).
        summary: the paragraph under the title; None: real plus synthetic images, as ``assemble`` publishes.
        sections: more ``(title, Markdown text)`` sections, placed after the metrics (e.g. the privacy gate's,
            rendered by ``tasks.core.privacy.record.card_section``).
        run: the run that made the dataset (``tasks/core/render.py``); publish fills in its version tag and date.

    The card holds no timestamp until publish stamps the registry's copy: the same inputs give the same bytes, so
    republishing them is not a new version.
    """
    dataset_dir = Path(dataset_dir)
    if run is None:
        run = run_info(source, (), code_version=code_version)
    summary = summary or ("Real images plus class-conditional synthetic images made by the synthaug pipeline. "
                          "Every image is listed in `manifest.parquet` with its label, split, source (real or "
                          "synthetic), generator, checkpoint and seed.")
    text = render("card.md.j2", folder=dataset_dir.name, run=run, summary=summary, checkpoint=checkpoint,
                  contents=_contents(dataset_dir / "manifest.parquet"),
                  metrics=[(k, "not measured" if v is None else _fmt(v)) for k, v in _flatten(metrics)],
                  sections=sections,
                  params_yaml=params_yaml.rstrip("\n"))
    path = dataset_dir / "card.md"
    write_atomic(text.encode("utf-8"), path)
    return path


def _contents(manifest: Path) -> dict[str, Any] | None:
    """Accepted images per label and source (real, synthetic) for the card's contents table."""
    if not manifest.is_file():
        return None
    from synthaug.tasks.core.io.manifest import read_manifest

    frame, _ = read_manifest(manifest)
    frame = frame[frame["accepted"]]
    if frame.empty:
        return None
    counts = frame.groupby(["label", "source"]).size().unstack(fill_value=0)
    sources = [s for s in ("real", "synthetic") if s in counts.columns]
    rows = [(label, [int(row[s]) for s in sources]) for label, row in counts.sort_index().iterrows()]
    return {"sources": sources, "rows": rows}


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


# The headline numbers the card lists; metrics.json beside it has everything. Gains and gaps are measured from the
# best real baseline (tasks/core/evaluation/downstream.py); the untreated real_only stays in metrics.json as context
# only.
CARD_METRICS = ("quality.overall", "utility.gate.verdict", "utility.best_real_baseline",
                "utility.real_oversampled", "utility.real_classical_aug", "utility.real_synthetic",
                "utility.real_classical_aug_synthetic", "utility.paired_difference", "utility.gap_closed",
                "utility.independent.best_real_baseline", "utility.independent.paired_difference",
                "utility.independent.gap_closed")


def card_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The ``CARD_METRICS`` of a ``metrics.json`` document, without per-seed values (the card lists these)."""
    picked: dict[str, Any] = {}
    for dotted in CARD_METRICS:
        node: Any = metrics
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            picked[dotted] = _without_values(node)
    return picked


def _without_values(node: Any) -> Any:
    """``node`` without its per-seed ``values`` lists, at any depth (the card shows means and intervals)."""
    if isinstance(node, dict):
        return {k: _without_values(v) for k, v in node.items() if k != "values"}
    return node
