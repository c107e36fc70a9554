"""``synthaug assess``: a verdict before the GPU hours. From the ingest step's real images alone, learning curves of
each scarce class (``tasks.core.evaluation.curves``) estimate how much more real images of it would help the
evaluation's classifiers, and so whether synthetic images are worth trying (``assess.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synthaug.models.common import pick_device
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.evaluation.curves import (
    CONDITION,
    FRACTIONS,
    MIN_IMAGES,
    UNCLEAR,
    WORTH,
    learning_curves,
)
from synthaug.tasks.core.evaluation.downstream import EvalData
from synthaug.tasks.core.evaluation.inputs import default_minority, read_real
from synthaug.tasks.core.evaluation.recipe import MIN_VAL_PER_CLASS
from synthaug.tasks.core.io.files import write_atomic
from synthaug.tasks.core.labels import natural_key
from synthaug.tasks.core.params.assess import AssessParams
from synthaug.tasks.core.params.evaluate import EvaluateParams

NOTE = ("an estimate from learning curves of the real images (val split), not a measurement of synthetic images: "
        "more real images of a class would help about this much; synthetic images usually help less")


def scarce_classes(data: EvalData, evaluate: EvaluateParams) -> list[str]:
    """The classes to assess: ``evaluate.minority_classes``, else those below half the largest class's train count;
    each with enough train images for a curve and enough val images to score it.

    Raises:
        UserError: no scarce class, an unknown class, or a class with too few train or val images.
    """
    count = {name: int((data.train_y == k).sum()) for k, name in enumerate(data.class_names)}
    chosen = evaluate.minority_classes or default_minority(count)
    unknown = [c for c in chosen if c not in count]
    if unknown:
        raise UserError(f"evaluate.minority_classes: {unknown} are not classes of this dataset ({data.class_names})")
    if not chosen:
        listed = ", ".join(f"{name} {n}" for name, n in count.items())
        raise UserError(f"no scarce class to assess: every class has at least half the train images of the largest "
                        f"({listed}); name the classes with -S evaluate.minority_classes=[...]")
    few = [f"{c} ({count[c]})" for c in chosen if count[c] < MIN_IMAGES]
    if few:
        raise UserError(f"too few train images for a learning curve in class {', '.join(few)}: 1/4, 1/2 and all of a "
                        f"class's images must be three different counts, which needs at least {MIN_IMAGES}")
    val = {c: int((data.val_y == data.class_names.index(c)).sum()) for c in chosen}
    thin = [f"{c} ({n})" for c, n in val.items() if n < MIN_VAL_PER_CLASS]
    if thin:
        raise UserError(f"too few val images to score a learning curve in class {', '.join(thin)}: the curves are "
                        f"scored on the val split only and need at least {MIN_VAL_PER_CLASS} per class; raise "
                        "data.val_fraction or give the source a val split")
    return sorted(chosen, key=natural_key)


def assess_step(ingest_dir: Path, evaluate: EvaluateParams, assess: AssessParams, out: Path, *,
                processes: int | None = None) -> dict[str, Any]:
    """Fit the learning curves of the scarce classes of ``ingest_dir``'s real images and write the record to the JSON
    file ``out`` (atomically); returns the record. Classifier runs go to ``processes`` CPU processes of one thread
    each (``runner.cpu_processes``; None: one per core when the runs are long enough to gain)."""
    data = read_real(ingest_dir)
    scarce = scarce_classes(data, evaluate)
    curves = learning_curves(data, scarce, evaluate, assess, pick_device(evaluate.device), processes=processes)
    record = {"note": NOTE, "scored_on": "the real val split (the test split is not read)",
              "condition": f"{CONDITION}: every class balanced by repetition",
              "fractions": list(FRACTIONS), "params": assess.model_dump(), "independent": evaluate.independent,
              **curves}
    record["lines"] = verdict_lines(record)
    write_atomic(json.dumps(record, indent=2), out)
    return record


def _gain(estimate: dict[str, Any]) -> str:
    low, high = estimate["gain_ci95"]
    return f"{estimate['gain']:+.3f} [95% CI {low:+.3f}, {high:+.3f}]"


def verdict_lines(record: dict[str, Any]) -> list[str]:
    """One line per scarce class: the verdict, then per family the val recall with all its images and the estimated
    gain per doubling of them."""
    lines = []
    for name, c in record["classes"].items():
        families = "; ".join(f"{f} recall {v['recall'][-1]['mean']:.3f} with {v['sizes'][-1]}, "
                             f"{_gain(v['estimate'])} per doubling ({v['verdict']})"
                             for f, v in c["families"].items())
        why = {WORTH: "more real images of it raise its val recall",
               UNCLEAR: f"the curves are too noisy to tell at {record['params']['seeds']} seeds (more: "
                        "-S assess.seeds=10)"}.get(c["verdict"], "its curves are flat")
        lines.append(f"class {name}: {c['verdict']}: {why}: {families}")
    return lines
