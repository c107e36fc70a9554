"""The plan (``plan.csv``, written by the plan step) as the steps after it read it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from synthaug.tasks.core.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

PLAN_FILE = "plan.csv"


def read_plan(path: Path) -> pd.DataFrame:
    """A ``plan.csv`` written by ``make_plan``, with ``class`` kept as strings (``"01"`` stays ``"01"``)."""
    if not path.is_file():
        raise UserError(f"{path}: plan not found; run `synthaug plan` first")
    import pandas as pd  # here: the catalog imports this module's names on every command

    return pd.read_csv(path, dtype={"class": str})
