"""The utility gate: publish only when the synthetic images measurably help, and the lines that say why."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.evaluation.downstream import COMPARED, GATED, families
from synthaug.tasks.core.io.results import read_metrics

_LABELS = {"balanced_accuracy": "balanced accuracy", "minority_recall": "minority recall"}
log = logging.getLogger("synthaug.evaluate")  # tasks/core/logs.py: reaches the Prefect run log


# What the verdict says happened: nothing to judge, measurable harm (refused), a measurable gain, or neither.
NOTHING_ACCEPTED, HARM, GAIN, NO_GAIN = "nothing_accepted", "harm", "gain", "no_gain"


def gate_verdict(utility: Mapping[str, Any], margin: float, *, accepted: int | None = None,
                 generated: int | None = None) -> dict[str, Any]:
    """The utility gate: may the synthetic images be published?

    Rule: for each classifier family and each compared metric (balanced accuracy, minority recall), take the
    seed-paired difference ``real_synthetic - best real baseline`` and its 95% t-interval. The gate **refuses**
    when any of these intervals lies wholly below ``-margin`` (the synthetic images measurably hurt); otherwise it
    passes. An interval that straddles zero passes: the seed noise could not tell. With no accepted synthetic image
    (``accepted == 0``) there is nothing to judge and the gate passes: ``real_synthetic`` is then the oversampled real
    set, and whatever it measures says nothing about synthetic images.

    Returns ``{"passed", "situation", "rule", "margin", "condition", "checks": [...], "verdict"}``; ``situation`` is
    ``nothing_accepted``, ``harm`` (refused), ``gain`` (a whole interval above zero) or ``no_gain``; ``verdict`` is
    one line that leads with it and names the numbers.
    """
    checks = []
    for family, results in families(utility).items():
        for metric in COMPARED:
            d = results["paired_difference"].get(GATED, {}).get(metric, {})
            if d.get("mean") is None:
                continue
            checks.append({"family": family, "metric": metric, "baseline": d["baseline"], "mean": d["mean"],
                           "ci95": d["ci95"], "hurts": d["ci95"][1] < -margin, "helps": d["ci95"][0] > 0})

    def line(c: Mapping[str, Any]) -> str:
        return (f"{c['family']} {_LABELS[c['metric']]} {c['mean']:+.3f} [95% CI {c['ci95'][0]:+.3f}, "
                f"{c['ci95'][1]:+.3f}] vs {c['baseline']}")

    failed = [c for c in checks if c["hurts"]]
    gains = [c for c in checks if c["helps"]]
    if accepted == 0:
        situation, passed = NOTHING_ACCEPTED, True
        of = f" of the {generated} generated" if generated else ""
        verdict = (f"utility gate: nothing to judge: the filter accepted none{of} synthetic images, so the dataset "
                   f"holds real images only ({GATED} is the oversampled real set; its numbers say nothing about "
                   "synthetic images)")
    elif failed:
        situation, passed = HARM, False
        verdict = (f"utility gate refused: {GATED} measurably hurts against the best real baseline "
                   f"(whole 95% CI below -{margin:g}): " + "; ".join(line(c) for c in failed))
    elif gains:
        situation, passed = GAIN, True
        others = [c for c in checks if not c["helps"]]
        verdict = (f"utility gate passed: {GATED} measurably helps against the best real baseline (whole 95% CI "
                   "above 0): " + "; ".join(line(c) for c in gains)
                   + ("; no measured harm elsewhere (margin " + f"{margin:g}): " + "; ".join(line(c) for c in others)
                      if others else ""))
    else:
        situation, passed = NO_GAIN, True
        verdict = (f"utility gate passed, but no measurable gain: every 95% CI of {GATED} minus the best real "
                   f"baseline includes 0, and none lies below -{margin:g}: "
                   + ("; ".join(line(c) for c in checks) if checks else "no comparison was defined"))
    return {"passed": passed, "situation": situation, "margin": margin, "condition": GATED, "checks": checks,
            "verdict": verdict,
            "rule": f"refuse when, for either classifier family and either of balanced accuracy / minority recall, "
                    f"the 95% t-interval (paired over seeds) of {GATED} minus the best real baseline lies wholly "
                    f"below -{margin:g}; nothing accepted: nothing to judge (passes)"}


def log_verdict(gate: Mapping[str, Any]) -> None:
    """The verdict in the log (on stderr, and in the Prefect run's log in a flow): a WARNING when the gate refused or
    there was nothing to judge, INFO otherwise."""
    quiet = gate["passed"] and gate.get("situation") != NOTHING_ACCEPTED
    log.log(logging.INFO if quiet else logging.WARNING, "%s", gate["verdict"])


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


def headline_gains(utility: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The headline numbers of ``real_synthetic`` (the published set) per classifier family and compared metric: the
    best real baseline (name and mean), real_synthetic's mean, the seed-paired gain with its 95% interval, and the
    share of the baseline -> oracle gap closed; None where a value was not measured (``reason`` says why)."""
    rows = []
    for family, results in families(utility).items():
        for metric in COMPARED:
            d = results["paired_difference"].get(GATED, {}).get(metric, {})
            g = results.get("gap_closed", {}).get(GATED, {}).get(metric, {})
            baseline = d.get("baseline") or results.get("best_real_baseline", {}).get(metric)
            rows.append({"family": family, "metric": metric, "label": _LABELS[metric], "baseline": baseline,
                         "baseline_mean": results[baseline][metric]["mean"] if baseline in results else None,
                         "mean": results.get(GATED, {}).get(metric, {}).get("mean"),
                         "gain": d.get("mean"), "ci95": d.get("ci95"), "reason": d.get("reason"),
                         "gap_closed": g.get("value"), "gap_reason": g.get("reason")})
    return rows

