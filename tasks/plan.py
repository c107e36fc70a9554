"""Class-balance planner: how many synthetic images each class gets.

The plan counts the real ``train`` images of each class (``heldback``, ``val`` and ``test`` rows are never counted)
and gives each class a ``target`` total of real + kept synthetic images:

- ``match_majority``: target = the largest real count;
- ``target``: target = max(``target``, real) (classes already above it get nothing);
- ``ratio``: synthetic = min(round(real * ``ratio``), ``cap``), rounded half up; target = real + synthetic;
- ``release`` (the plan of ``synthaug anonymize``, a full synthetic replacement): synthetic = ``release_per_class``,
  or the class's real count when null; target = real + synthetic, so ``target - real`` is what is released.

``to_generate = ceil((target - real) * overgenerate)`` is how many to sample, so that what the filter rejects is
covered. The arithmetic is exact on the decimal values as written in params.yaml (``1.1`` is 11/10, not the nearest
binary float), so ``50 * 1.1`` asks for 55 images, not 56.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.files import atomic_path
from synthaug.tasks.core.io.manifest import read_manifest
from synthaug.tasks.core.io.plan_csv import PLAN_FILE
from synthaug.tasks.core.labels import natural_key
from synthaug.tasks.core.params.plan import PlanParams

PLAN_COLUMNS = ("class", "real", "target", "to_generate")


def plan_counts(counts: Mapping[str, int], params: PlanParams) -> pd.DataFrame:
    """The plan for real train ``counts`` per class: columns class, real, target, to_generate (natural class order).

    Raises:
        ValueError: ``counts`` is empty, or a class has fewer than one real image (nothing to learn it from).
    """
    if not counts:
        raise ValueError("counts is empty: no class to plan for")
    bad = {label: n for label, n in counts.items() if int(n) < 1}
    if bad:
        raise ValueError(f"every class needs at least one real train image; got {bad}")
    labels = sorted((str(label) for label in counts), key=natural_key)
    real = {str(label): int(n) for label, n in counts.items()}
    overgenerate = _exact(params.overgenerate)
    largest = max(real.values())
    rows = []
    for label in labels:
        n = real[label]
        if params.strategy == "match_majority":
            target = largest
        elif params.strategy == "target":
            target = max(params.target, n)
        elif params.strategy == "ratio":
            target = n + min(math.floor(n * _exact(params.ratio) + Fraction(1, 2)), params.cap)
        elif params.strategy == "release":
            target = n + (n if params.release_per_class is None else params.release_per_class)
        else:  # PlanParams only admits the four above; a new strategy must be added here too
            raise ValueError(f"unknown plan strategy {params.strategy!r}")
        rows.append((label, n, target, math.ceil((target - n) * overgenerate)))
    return pd.DataFrame(rows, columns=list(PLAN_COLUMNS)).astype(
        {"class": str, "real": "int64", "target": "int64", "to_generate": "int64"})


def make_plan(manifest_path: Path, params: PlanParams, out_dir: Path, *,
              console: Console | None = None) -> pd.DataFrame:
    """Plan from the manifest's real train rows; writes ``out_dir/plan.csv`` (atomically) and prints the plan.

    Args:
        manifest_path: the ingest step's ``manifest.parquet``.
        params: the ``plan`` section.
        out_dir: folder for ``plan.csv`` (created when absent).
        console: where the plan table is printed; stderr by default, so stdout stays clean.

    Raises:
        UserError: the manifest is missing, has no real train images, or has a class with none.
    """
    frame, _ = read_manifest(manifest_path)
    real = frame[frame["source"] == "real"]
    train = real[real["split"] == "train"]
    if train.empty:
        raise UserError(f"{manifest_path}: no real images in the train split; nothing to plan from")
    untrained = sorted(set(real["label"]) - set(train["label"]), key=natural_key)
    if untrained:
        raise UserError(f"{manifest_path}: classes {untrained} have no real train images, so no generator can "
                        "learn them; give them train images or drop them from the source")
    plan = plan_counts(train["label"].astype(str).value_counts().to_dict(), params)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PLAN_FILE
    with atomic_path(path) as tmp:
        plan.to_csv(tmp, index=False)
    (console or Console(stderr=True)).print(plan_table(plan, title=f"plan ({params.strategy}): {path}"))
    return plan


def plan_table(plan: pd.DataFrame, title: str | None = None) -> Table:
    """The plan as a rich table, one row per class and a totals row."""
    table = Table(title=Text(title) if title else None, show_footer=True)  # Text: labels and paths are not markup
    table.add_column("class", footer="total")
    for column in PLAN_COLUMNS[1:]:
        table.add_column(column, justify="right", footer=str(int(plan[column].sum())))
    for row in plan.itertuples(index=False):
        table.add_row(Text(str(row[0])), *(str(int(v)) for v in row[1:]))
    return table


def _exact(value: float) -> Fraction:
    """The decimal a float was written as (its shortest repr), exactly: 1.1 -> 11/10."""
    return Fraction(repr(float(value)))
