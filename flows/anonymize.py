"""The ``anonymize`` flow: a release of synthetic images only, published only when the privacy gate passes.

It runs ``flows.dag.ANONYMIZE``: the ``augment`` steps up to the filter (the same cached tasks: a workdir the
``augment`` flow already filled is reused where the plan agrees), planned as a release (``release_params``: every
class at its real size, or ``privacy.release_per_class``, whatever the ``plan`` section says); then the privacy gate
(``tasks.privacy``), the evaluation and the release step, which assembles the accepted synthetic images with their
manifest, metrics, privacy report, card and report and publishes them as ``<privacy name>/v<N>``. A failed gate
raises ``PrivacyGateError`` naming each failed check with its measured value and threshold; nothing after it runs
and nothing is published.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from synthaug.flows.augment import run_steps
from synthaug.flows.dag import ANONYMIZE, Record, step
from synthaug.flows.params import Params
from synthaug.tasks.core.params.plan import PlanParams
from synthaug.tasks.core.privacy.record import ATTACKS, PRIVACY_FILE
from synthaug.tasks.core.privacy.tstr import utility_rows


@flow(name="anonymize", log_prints=True)
def anonymize(params: Params, workdir: str = "data/work") -> dict[str, Record]:
    """Run the anonymize steps in order; returns each step's record (a failed gate raises)."""
    records = run_steps([step(name) for name in ANONYMIZE], release_params(params), workdir)
    _summary_artifact(Path(workdir), records)
    return records


def release_params(params: Params) -> Params:
    """``params`` with the plan of a release: a full synthetic replacement, independent of the augmentation plan
    (which fills the deficit to the largest class, so a balanced source would release nothing). Over-generation is
    ``plan.overgenerate``; the filter tops up short classes as in ``augment``."""
    plan = PlanParams(strategy="release", release_per_class=params.privacy.release_per_class,
                      overgenerate=params.plan.overgenerate)
    return params.model_copy(update={"plan": plan})


def _summary_artifact(workdir: Path, records: dict[str, Record]) -> None:
    """The release at a glance in the Prefect UI: where it went, what the gate measured."""
    released = records["release"]
    report = json.loads((Path(released["dataset"]) / PRIVACY_FILE).read_text())  # the gate's, with TSTR
    attack, memorization = report["attack"], report["memorization"]
    lines = ["# synthaug anonymize", "",
             f"**Release:** `{released['registry']}` @ `{released['tag']}`"
             + ("" if released.get("new") else " (nothing new to publish)"), "",
             f"**Synthetic images released:** {report['release']['images']} (of {report['release']['generated']} "
             "generated); no real image.", "",
             "| check | measured | threshold |", "|---|---|---|",
             f"| memorization, pixel | {memorization['pixel']['within']} within | "
             f"{memorization['thresholds']['pixel_correlation']:.4f} |",
             f"| memorization, feature | {memorization['feature']['within']} within | "
             f"{memorization['thresholds']['feature_distance']:.4g} |",
             *(f"| {name} AUC, {s} | {report[key][s]['auc']:.3f} [{report[key][s]['ci'][0]:.3f}, "
               f"{report[key][s]['ci'][1]:.3f}] | CI lower bound <= {attack['max_auc']} (pooled and per class) |"
               for key, (name, _) in ATTACKS.items() for s in ("pixel", "feature")),
             "", "**Utility (TSTR vs TRTR):**", "", "| | TSTR | TRTR | TSTR - TRTR | TSTR / TRTR |",
             "|---|---|---|---|---|", *(f"| {' | '.join(row)} |" for row in utility_rows(report["utility"]))]
    create_markdown_artifact("\n".join(lines), key="anonymize-summary", description="privacy gate and release")
