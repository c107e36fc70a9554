"""The evaluate step's headline numbers: ``summary.json``, the small metrics file ``dvc metrics show`` prints and
``dvc exp show`` compares across experiments. ``metrics.json`` keeps everything (over a thousand values).

Every number is read from ``metrics.json`` as it is; one that was not measured (too few images for FID, no held-back
images for the gap closed) stays null rather than being replaced by a guess.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from synthaug.tasks.core.io.files import write_atomic

SUMMARY_FILE = "summary.json"
CONDITION = "real_synthetic"  # real + accepted synthetic: the condition the utility gate judges
HEADLINE_METRICS = ("balanced_accuracy", "minority_recall")


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """About eighteen numbers from a ``metrics.json`` document: the best real baseline and real + synthetic on
    balanced accuracy and minority recall, the paired gain and the gap closed (the project's classifier), the
    independent families' minority-recall gains, the minority classes' median novelty ratios (pixels, features), the
    acceptance rate, overall set quality, and the utility gate's harm rule (1 passed, 0 refused). A condition the run
    skipped gives nulls."""
    utility = metrics["utility"]
    totals = metrics["acceptance"].get("totals", {})
    overall = metrics["quality"]["overall"]
    generated = totals.get("generated")
    return {
        "best_real_baseline": {m: _at(utility, _at(utility, "best_real_baseline", m), m, "mean")
                               for m in HEADLINE_METRICS},
        CONDITION: {m: _at(utility, CONDITION, m, "mean") for m in HEADLINE_METRICS},
        "gain": {m: _at(utility, "paired_difference", CONDITION, m, "mean") for m in HEADLINE_METRICS},
        "gap_closed": {m: _at(utility, "gap_closed", CONDITION, m, "value") for m in HEADLINE_METRICS},
        # The other classifier families: their minority-recall gain, the number a scarce-class user asks about.
        "independent_minority_recall_gain": {
            family: _at(results, "paired_difference", CONDITION, "minority_recall", "mean")
            for family, results in utility["independent"].items()},
        "novelty_ratio": {space: _median_ratio(metrics["novelty"], space) for space in ("pixel", "feature")},
        "acceptance_rate": totals["accepted"] / generated if generated else None,
        "quality": {"fid": _at(overall, "fid", "value"), "kid": _at(overall, "kid", "mean"),
                    "precision": _at(overall, "precision", "value"), "recall": _at(overall, "recall", "value")},
        "utility_gate_passed": int(bool(utility["gate"]["passed"])),
    }


def _median_ratio(novelty: Mapping[str, Any], space: str) -> float | None:
    """The median over the minority classes of their novelty ratio in ``space`` (None where none was measured)."""
    ratios = [c[space]["ratio"] for c in novelty["per_class"].values()
              if c["minority"] and c[space] and c[space]["ratio"] is not None]
    return float(statistics.median(ratios)) if ratios else None


def _at(tree: Mapping[str, Any], *keys: str | None) -> Any:
    """``tree[k1][k2]...``, or None where a key is absent (or is itself None: no best baseline was found)."""
    for key in keys:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def write_headline(metrics: Mapping[str, Any], path: Path) -> Path:
    """Write ``headline(metrics)`` to ``path`` atomically (a half-written file would read as other numbers)."""
    write_atomic((json.dumps(headline(metrics), indent=2, allow_nan=False) + "\n").encode(), path)
    return path
