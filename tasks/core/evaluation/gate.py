"""The utility gate: whether the synthetic images measurably help, hurt or neither, whether each rule of
``publish.utility_gate`` publishes them, and the lines that say why."""

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


# What the verdict says happened: nothing to judge, measurable harm, a measurable gain, or neither.
NOTHING_ACCEPTED, HARM, GAIN, NO_GAIN = "nothing_accepted", "harm", "gain", "no_gain"
# The evidence in the words the report and the console use.
EVIDENCE = {NOTHING_ACCEPTED: "nothing to judge", HARM: "hurts", GAIN: "helps", NO_GAIN: "no measurable effect"}


def gate_verdict(utility: Mapping[str, Any], margin: float, *, accepted: int | None = None,
                 generated: int | None = None) -> dict[str, Any]:
    """The utility gate: what the evidence shows, and whether each rule of ``publish.utility_gate`` publishes.

    Evidence: for each classifier family and each compared metric (balanced accuracy, minority recall), the
    seed-paired difference ``real_synthetic - best real baseline`` and its 95% t-interval. The synthetic images
    **hurt** when any of these intervals lies wholly below ``-margin``; else they **help** when any lies wholly above
    0; else they have **no measurable effect** (an interval that straddles zero: the seed noise could not tell). With
    no accepted synthetic image (``accepted == 0``) there is nothing to judge: ``real_synthetic`` is then the
    oversampled real set, and whatever it measures says nothing about synthetic images.

    Rules (``passes``): ``harm`` publishes unless they hurt (nothing to judge passes); ``gain`` publishes only when
    they help (and so hurt for no family and metric).

    Returns ``{"passed", "passes", "situation", "evidence", "rule", "margin", "condition", "checks", "verdict"}``;
    ``passed`` is the ``harm`` rule's outcome (the default); ``situation`` is ``nothing_accepted``, ``harm``,
    ``gain`` or ``no_gain``; ``evidence`` says it in words (``EVIDENCE``); ``verdict`` is one line that leads with
    the evidence, names the numbers and ends with what each rule does.
    """
    checks = []
    for family, results in families(utility).items():
        for metric in COMPARED:
            d = results["paired_difference"].get(GATED, {}).get(metric, {})
            if d.get("mean") is None:
                continue
            checks.append({"family": family, "metric": metric, "baseline": d["baseline"], "mean": d["mean"],
                           "ci95": d["ci95"], "hurts": d["ci95"][1] < -margin, "helps": d["ci95"][0] > 0})

    def lines(chosen: list[Mapping[str, Any]]) -> str:
        return "; ".join(f"{c['family']} {_LABELS[c['metric']]} {c['mean']:+.3f} [95% CI {c['ci95'][0]:+.3f}, "
                         f"{c['ci95'][1]:+.3f}] vs {c['baseline']}" for c in chosen)

    failed = [c for c in checks if c["hurts"]]
    gains = [c for c in checks if c["helps"]]
    if accepted == 0:
        situation = NOTHING_ACCEPTED
        of = f" of the {generated} generated" if generated else ""
        detail = (f"the filter accepted none{of} synthetic images, so the dataset holds real images only ({GATED} is "
                  "the oversampled real set; its numbers say nothing about synthetic images)")
    elif failed:
        situation = HARM
        detail = (f"{GATED} measurably hurts against the best real baseline (whole 95% CI below -{margin:g}): "
                  + lines(failed))
    elif gains:
        situation = GAIN
        others = [c for c in checks if not c["helps"]]
        detail = (f"{GATED} measurably helps against the best real baseline (whole 95% CI above 0): " + lines(gains)
                  + (f"; no measured harm elsewhere (margin {margin:g}): " + lines(others) if others else ""))
    else:
        situation = NO_GAIN
        detail = (f"every 95% CI of {GATED} minus the best real baseline includes 0, and none lies below "
                  f"-{margin:g}: " + (lines(checks) if checks else "no comparison was defined"))
    passes = {"harm": situation != HARM, "gain": situation == GAIN}
    outcome = ", ".join(f"{rule} {'publishes' if ok else 'refuses'}" for rule, ok in passes.items())
    return {"passed": passes["harm"], "passes": passes, "situation": situation, "evidence": EVIDENCE[situation],
            "margin": margin, "condition": GATED, "checks": checks,
            "verdict": f"utility evidence: {EVIDENCE[situation]} — {detail} (publish.utility_gate: {outcome})",
            "rule": f"hurts: for any classifier family and either of balanced accuracy / minority recall, the 95% "
                    f"t-interval (paired over seeds) of {GATED} minus the best real baseline lies wholly below "
                    f"-{margin:g}; helps: none does, and one lies wholly above 0. publish.utility_gate harm (the "
                    "default) refuses what hurts; gain publishes only what helps"}


def log_verdict(gate: Mapping[str, Any]) -> None:
    """The verdict in the log (on stderr, and in the Prefect run's log in a flow): a WARNING when the images hurt or
    there was nothing to judge, INFO otherwise."""
    quiet = gate["passed"] and gate.get("situation") != NOTHING_ACCEPTED
    log.log(logging.INFO if quiet else logging.WARNING, "%s", gate["verdict"])


class UtilityGateRefused(UserError):
    """The utility evidence does not meet ``publish.utility_gate``'s rule: nothing is published."""


def enforce_gate(evaluate_dir: Path, rule: str | bool) -> dict[str, Any]:
    """The utility gate's verdict from ``evaluate_dir/metrics.json``; raises when ``rule`` (``publish.utility_gate``:
    ``harm``, ``gain``, or False for off) refuses it.

    Raises:
        UtilityGateRefused: one line with the rule, the verdict's numbers, where the report is, and how to publish
            anyway.
    """
    gate = read_metrics(evaluate_dir)["utility"]["gate"]
    if rule is not False and not gate["passes"][rule]:
        raise UtilityGateRefused(f"utility gate refused (publish.utility_gate: {rule}): {gate['verdict']}. Nothing "
                                 "published; the report says why. To publish anyway: -S publish.utility_gate=false")
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

