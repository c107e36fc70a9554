"""The utility gate: publish only when the synthetic images measurably help, and the lines that say why."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.evaluation.downstream import COMPARED, GATED, families
from synthaug.tasks.core.io.results import read_metrics

_LABELS = {"balanced_accuracy": "balanced accuracy", "minority_recall": "minority recall"}


def gate_verdict(utility: Mapping[str, Any], margin: float) -> dict[str, Any]:
    """The utility gate: may the synthetic images be published?

    Rule: for each classifier family and each compared metric (balanced accuracy, minority recall), take the
    seed-paired difference ``real_synthetic - best real baseline`` and its 95% t-interval. The gate **refuses**
    when any of these intervals lies wholly below ``-margin`` (the synthetic images measurably hurt); otherwise it
    passes. An interval that straddles zero passes: the seed noise could not tell. With no accepted synthetic image
    there is nothing to measure and the gate passes (``real_synthetic`` then equals ``real_oversampled``).

    Returns ``{"passed", "rule", "margin", "condition", "checks": [...], "verdict"}``; ``verdict`` is one line
    naming the numbers.
    """
    checks = []
    for family, results in families(utility).items():
        for metric in COMPARED:
            d = results["paired_difference"].get(GATED, {}).get(metric, {})
            if d.get("mean") is None:
                continue
            checks.append({"family": family, "metric": metric, "baseline": d["baseline"], "mean": d["mean"],
                           "ci95": d["ci95"], "hurts": d["ci95"][1] < -margin})

    def line(c: Mapping[str, Any]) -> str:
        return (f"{c['family']} {_LABELS[c['metric']]} {c['mean']:+.3f} [95% CI {c['ci95'][0]:+.3f}, "
                f"{c['ci95'][1]:+.3f}] vs {c['baseline']}")

    failed = [c for c in checks if c["hurts"]]
    if failed:
        verdict = (f"utility gate refused: {GATED} measurably hurts against the best real baseline "
                   f"(whole 95% CI below -{margin:g}): " + "; ".join(line(c) for c in failed))
    else:
        gains = [c for c in checks if c["ci95"][0] > 0]
        verdict = (f"utility gate passed: no measured harm against the best real baseline (margin {margin:g}); "
                   + ("; ".join(line(c) for c in checks) if checks else "no comparison was defined"))
        if checks and not gains:
            verdict += "; no measured gain either"
    return {"passed": not failed, "margin": margin, "condition": GATED, "checks": checks, "verdict": verdict,
            "rule": f"refuse when, for either classifier family and either of balanced accuracy / minority recall, "
                    f"the 95% t-interval (paired over seeds) of {GATED} minus the best real baseline lies wholly "
                    f"below -{margin:g}"}


class UtilityGateRefused(UserError):
    """The synthetic images measurably hurt against the best real baseline: nothing is published."""


def enforce_gate(evaluate_dir: Path, enabled: bool) -> dict[str, Any]:
    """The utility gate's verdict from ``evaluate_dir/metrics.json``; raises when it refused and ``enabled``.

    Raises:
        UtilityGateRefused: one line with the verdict's numbers, where the report is, and how to publish anyway.
    """
    gate = read_metrics(evaluate_dir)["utility"]["gate"]
    if enabled and not gate["passed"]:
        raise UtilityGateRefused(f"{gate['verdict']}. Nothing published; the report says why. To publish anyway: "
                                 "-S publish.utility_gate=false")
    return gate


def gain_lines(utility: Mapping[str, Any]) -> list[str]:
    """One plain-text line per classifier family, treated condition and compared metric: the seed-paired gain over
    the best real baseline with its 95% interval, and the share of the baseline -> oracle gap closed."""
    lines = []
    for family, results in families(utility).items():
        for condition, paired in results["paired_difference"].items():
            for metric in COMPARED:
                d, g = paired[metric], results["gap_closed"][condition][metric]
                if d.get("mean") is None:
                    lines.append(f"{family} {condition} {_LABELS[metric]}: undefined ({d.get('reason')})")
                    continue
                gap = (f"{g['value']:.0%} of the {d['baseline']} -> real_oracle gap closed" if g["value"] is not None
                       else f"gap closed undefined ({g['reason']})")
                lines.append(f"{family} {condition} {_LABELS[metric]}: {d['mean']:+.3f} [95% CI {d['ci95'][0]:+.3f}, "
                             f"{d['ci95'][1]:+.3f}] vs {d['baseline']}; {gap}")
    return lines
