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
from synthaug.tasks.core.render import render


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
    summary = render("artifact_anonymize.md.j2", released=released, report=report, memorization=report["memorization"],
                     attacks=[(name, key) for key, (name, _) in ATTACKS.items()],
                     utility=utility_rows(report["utility"]))
    create_markdown_artifact(summary, key="anonymize-summary", description="privacy gate and release")
