"""The dataset card (``card.md``, template ``tasks/templates/card.md.j2``), in the Hugging Face dataset card format: a
YAML header (license, task_categories, size_categories, source_datasets, tags), then the verdict first, intended and
out-of-scope use, how to load, the headline numbers, contents, generation, limitations and lineage. ``metrics.json``
beside the card keeps every number; the card shows the few that decide."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from synthaug.tasks.core.evaluation.gate import headline_gains
from synthaug.tasks.core.io.files import write_atomic
from synthaug.tasks.core.labels import natural_key
from synthaug.tasks.core.render import RunInfo, render, run_info

CARD_CHECKPOINT_ROW = "| generator checkpoint (sha256) |"
GENERATOR_ROW = "| generator version |"  # inserted after the checkpoint row when publish names the generator version
UNKNOWN_LICENSE = "unknown"  # Hugging Face's id for "the license is not known": the source's applies
# Hugging Face's size buckets: (upper bound, label), the first bound above the image count wins.
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))
SPLITS = ("train", "val", "test")
NOTHING = "nothing was accepted"
SITUATIONS = {"nothing_accepted": NOTHING, "harm": "the synthetic images hurt", "gain": "the synthetic images help",
              "no_gain": "no measurable effect"}  # tasks/core/evaluation/gate.py EVIDENCE


def write_card(dataset_dir: Path, *, source: Mapping[str, Any], params_yaml: str, code_version: str,
               checkpoint: str | None, metrics: Mapping[str, Any], summary: str | None = None,
               sections: Sequence[tuple[str, str]] = (), run: RunInfo | None = None, license: str | None = None,
               gate_enforced: bool = True, synthetic_only: bool = False) -> Path:
    """Write ``dataset_dir/card.md`` (template ``tasks/templates/card.md.j2``).

    Args:
        dataset_dir: the assembled dataset folder (its ``manifest.parquet`` gives the contents).
        source: where the real images came from: the ingest lineage (``source``, ``repo``, ``rev``,
            ``resolved_rev``, ``content_hash``); used when ``run`` is None.
        params_yaml: the resolved params.yaml text the dataset was made with (shipped beside the card, linked).
        code_version: the pipeline code's version (see ``code_version()``); used when ``run`` is None.
        checkpoint: sha256 of the generator weights; None when the dataset has no synthetic images.
        metrics: the ``metrics.json`` document (``{}``: none); the card shows the utility gate's verdict, the headline
            gains of every classifier family and the acceptance, and leaves everything else to metrics.json.
        summary: the paragraph under the verdict; None: what the manifest holds, in words.
        sections: more ``(title, Markdown text)`` sections, placed after the limitations (e.g. the privacy gate's,
            rendered by ``tasks.core.privacy.record.card_section``).
        run: the run that made the dataset (``tasks/core/render.py``); publish fills in its version tag and date.
        license: a Hugging Face license id (``publish.license``); None: ``unknown`` (the source's license applies).
        gate_enforced: ``publish.utility_gate``; False: the card says the gate did not decide publication.
        synthetic_only: an anonymized release (synthetic images only, judged by the privacy gate).

    The card holds no timestamp until publish stamps it: the same inputs give the same bytes.
    """
    dataset_dir = Path(dataset_dir)
    del params_yaml  # shipped beside the card as params.yaml and linked from its lineage; not repeated here
    if run is None:
        run = run_info(source, (), code_version=code_version)
    contents = _contents(dataset_dir / "manifest.parquet")
    utility = metrics.get("utility") if isinstance(metrics.get("utility"), Mapping) else None
    gate = utility.get("gate") if utility else None
    name = run.dataset or dataset_dir.name
    counts = _acceptance(metrics)
    synthetic = contents["synthetic"] if contents else 0
    text = render("card.md.j2", name=name, run=run, checkpoint=checkpoint, contents=contents,
                  header=_header(name, run, contents, license, synthetic_only=synthetic_only),
                  summary=summary or _summary(contents, run, counts),
                  gate=gate, situation=_situation(gate),
                  gains=_gains(utility) if utility and not synthetic_only and _situation(gate) != NOTHING else None,
                  test_size=(utility or {}).get("setup", {}).get("test_size"),
                  seeds=(utility or {}).get("setup", {}).get("seeds"), acceptance=counts,
                  recipe=(utility or {}).get("setup", {}).get("recipe"), gate_enforced=gate_enforced,
                  synthetic=synthetic, synthetic_only=synthetic_only, sections=sections)
    path = dataset_dir / "card.md"
    write_atomic(text.encode("utf-8"), path)
    return path


def _situation(gate: Mapping[str, Any] | None) -> str | None:
    if gate is None:
        return None
    return SITUATIONS[gate.get("situation") or ("no_gain" if gate["passed"] else "harm")]


def _header(name: str, run: RunInfo, contents: dict[str, Any] | None, license: str | None, *,
            synthetic_only: bool) -> str:
    """The YAML header (Hugging Face dataset card metadata), as YAML text."""
    total = contents["total"] if contents else 0
    size = next((label for bound, label in SIZE_CATEGORIES if total < bound), "n>100M")
    synthetic = bool(contents and contents["synthetic"])
    tags = ["synthaug"] + (["synthetic"] if synthetic else []) + (["anonymized"] if synthetic_only else
                                                                  ["class-imbalance"])
    tags += [f for f in (run.family or "").split(", ") if f and synthetic]
    source = run.source if run.source_repo is None else f"{run.source_repo}:{run.source}"
    header = {"license": license or UNKNOWN_LICENSE, "pretty_name": name,
              "task_categories": ["image-classification"], "size_categories": [size],
              "source_datasets": [str(source or "not recorded")], "tags": tags}
    return yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip("\n")


def _contents(manifest: Path) -> dict[str, Any] | None:
    """Images per class: real by split and synthetic (accepted rows of the dataset's manifest)."""
    if not manifest.is_file():
        return None
    from synthaug.tasks.core.io.manifest import read_manifest

    frame, _ = read_manifest(manifest)
    frame = frame[frame["accepted"]]
    if frame.empty:
        return None
    real, synthetic = frame[frame["source"] == "real"], frame[frame["source"] == "synthetic"]
    splits = [s for s in SPLITS if (real["split"] == s).any()]
    rows = []
    for label in sorted(set(frame["label"].astype(str)), key=natural_key):
        mine = real[real["label"].astype(str) == label]
        rows.append((label, [int((mine["split"] == s).sum()) for s in splits]
                     + [int((synthetic["label"].astype(str) == label).sum())]))
    classes = sorted({str(lbl) for lbl in synthetic["label"]}, key=natural_key)
    return {"splits": splits, "rows": rows, "total": len(frame), "real": len(real), "synthetic": len(synthetic),
            "test": int((real["split"] == "test").sum()), "classes": len(rows), "synthetic_classes": classes,
            "per_split": {s: int((real["split"] == s).sum()) for s in splits}}


def _acceptance(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    counts = metrics.get("counts")
    if not isinstance(counts, Mapping) or "synthetic_generated" not in counts:
        return None
    generated = sum(counts["synthetic_generated"].values())
    accepted = sum(counts["synthetic_accepted"].values())
    acceptance = metrics.get("acceptance") or {}
    shortfall = {k: v for k, v in (acceptance.get("shortfall") or {}).items() if v}
    reasons: dict[str, int] = {}
    for entry in (acceptance.get("per_class") or {}).values():
        for reason, n in (entry.get("reject_reasons") or {}).items():
            reasons[reason] = reasons.get(reason, 0) + int(n)
    return {"generated": generated, "accepted": accepted, "share": accepted / generated if generated else None,
            "shortfall": shortfall, "reasons": sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))}


def _summary(contents: dict[str, Any] | None, run: RunInfo, acceptance: dict[str, Any] | None) -> str:
    """What the dataset holds, in one paragraph of plain words (no claim the manifest does not back)."""
    if contents is None:
        return "The manifest lists no image."
    splits = ", ".join(f"{s} {n:,}" for s, n in contents["per_split"].items())
    real = f"{contents['real']:,} real images ({splits})"
    if contents["synthetic"]:
        made = f"made by a {run.family} generator trained on the real train split" if run.family else "generated"
        return (f"{contents['total']:,} images of {contents['classes']} classes: {real} and {contents['synthetic']:,} "
                f"synthetic images of the classes {', '.join(contents['synthetic_classes'])}, {made} and kept by a "
                "quality and memorization filter, to balance the classes.")
    none = (f"the filter accepted none of the {acceptance['generated']:,} generated" if acceptance and
            acceptance["generated"] else "no synthetic image was generated")
    return (f"{contents['total']:,} images of {contents['classes']} classes: {real}, and no synthetic image: {none}, "
            "so this version holds the real images only.")


def _gains(utility: Mapping[str, Any]) -> dict[str, Any]:
    """The card's headline table: per compared metric, a row each for the best real baseline, real + synthetic, the
    paired gain with its interval and the gap closed (only where measured), one column per classifier family."""
    rows = headline_gains(utility)
    families = list(dict.fromkeys(r["family"] for r in rows))
    table: list[dict[str, Any]] = []
    for label in dict.fromkeys(r["label"] for r in rows):
        cells = {r["family"]: r for r in rows if r["label"] == label}
        table.append({"label": f"{label}, best real baseline",
                      "cells": [_num(c["baseline_mean"], c["baseline"]) for c in cells.values()]})
        table.append({"label": f"{label}, real + synthetic", "cells": [_num(c["mean"]) for c in cells.values()]})
        table.append({"label": f"{label}: gain [95% CI]", "cells": [_gain(c) for c in cells.values()]})
        if any(c["gap_closed"] is not None for c in cells.values()):
            table.append({"label": f"{label}: share of the gap to the oracle closed",
                          "cells": [f"{c['gap_closed']:.0%}" if c["gap_closed"] is not None else "not measured"
                                    for c in cells.values()]})
    return {"families": families, "rows": table}


def _num(value: float | None, baseline: str | None = None) -> str:
    if value is None:
        return "not measured"
    return f"{value:.3f}" + (f" ({baseline})" if baseline else "")


def _gain(cell: Mapping[str, Any]) -> str:
    if cell["gain"] is None or cell["ci95"] is None:
        return "not measured"
    lo, hi = cell["ci95"]
    return f"{cell['gain']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
