"""The ``compare`` flow: every registered generator family trained and evaluated on the same data.

One table (quality, utility, training and sampling time) per family: the GAN vs VAE vs diffusion survey,
for the user's own data. Each family runs the augment steps up to the report in ``<workdir>/<family>``;
nothing is published. A family whose network cannot take the images' size (e.g. the latent UNet at 8 px) is
skipped before anything trains, with its reason in the output.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow
from prefect.artifacts import create_table_artifact

from synthaug.flows.augment import step_task
from synthaug.flows.catalog import GENERATE_TIMING, METRICS, TRAIN_LOG
from synthaug.flows.dag import STEPS
from synthaug.flows.params import Params
from synthaug.flows.preflight import unfit
from synthaug.models.families import family_names
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.locks import workdir_lock
from synthaug.tasks.core.render import render


@flow(name="compare", log_prints=True)
def compare(params: Params, workdir: str = "data/work/compare") -> Path:
    """Run every family on ``params``' data; writes and returns ``<workdir>/compare.csv`` (+ ``compare.md``)."""
    skipped = {f: why for f in family_names() if (why := unfit(params, f)) is not None}
    if len(skipped) == len(family_names()):
        raise UserError(f"no generator family can take data.image_size={params.data.image_size}: "
                        + "; ".join(skipped.values()))
    for family, why in skipped.items():
        print(f"compare: {family} skipped: {why}")
    rows = []
    for family in (f for f in family_names() if f not in skipped):
        family_dir = Path(workdir) / family
        with workdir_lock(family_dir):
            for step in STEPS:
                if step.name != "publish":
                    step_task(step, family_dir)(params_for(params, family), str(family_dir))
        rows.append(family_row(family, family_dir))
    table = pd.DataFrame(rows)
    out = Path(workdir) / "compare.csv"
    table.to_csv(out, index=False)
    cells = table.map(lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))
    (Path(workdir) / "compare.md").write_text(render("compare.md.j2", columns=list(table.columns),
                                                     rows=list(cells.itertuples(index=False)),
                                                     skipped=list(skipped.items())))
    create_table_artifact(json.loads(table.to_json(orient="records")), key="compare-families",
                          description="generator families on the same data")
    print(table.to_string(index=False))
    return out


def params_for(params: Params, family: str) -> Params:
    """``params`` for one family of the comparison: from scratch (a warm start from a published generator would not
    be like-for-like), and ``generate.guidance_scale`` / ``sample_steps`` only for the families that have them (the
    others sample as they do)."""
    model = params.model.model_copy(update={"family": family, "warm_start": "never"})
    own = dataclasses.asdict(model.family_config())
    absent = {k: None for k in params.generate.sampling_knobs() if k not in own}
    return params.model_copy(update={"model": model, "generate": params.generate.model_copy(update=absent)})


def family_row(family: str, workdir: Path) -> dict[str, Any]:
    """One family's line of the comparison, read from the files its steps wrote."""
    metrics = METRICS.read(workdir)
    overall = metrics["quality"]["overall"]
    utility = metrics["utility"]
    log = TRAIN_LOG.path(workdir).read_text().splitlines()
    timing = GENERATE_TIMING.read(workdir)
    accepted = sum(c["accepted"] for c in metrics["acceptance"]["per_class"].values())
    generated = sum(c["generated"] for c in metrics["acceptance"]["per_class"].values())
    return {
        "family": family,
        "fid": overall["fid"]["value"],
        "kid": overall["kid"]["mean"],
        "precision": overall["precision"]["value"],
        "recall": overall["recall"]["value"],
        "density": overall["density"]["value"],
        "coverage": overall["coverage"]["value"],
        "acceptance": accepted / generated if generated else None,
        "balanced_accuracy_real_synthetic": utility["real_synthetic"]["balanced_accuracy"]["mean"],
        "minority_recall_real_synthetic": utility["real_synthetic"]["minority_recall"]["mean"],
        "minority_recall_gain_vs_best_real": utility["paired_difference"]["real_synthetic"]["minority_recall"]["mean"],
        "gap_closed_minority_recall": utility["gap_closed"]["real_synthetic"]["minority_recall"]["value"],
        "train_seconds": json.loads(log[-1])["time_s"] if log else None,
        "sample_images_per_second": timing["images"] / timing["seconds"] if timing["seconds"] else None,
    }
