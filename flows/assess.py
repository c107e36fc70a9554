"""The ``assess`` flow (``synthaug assess``): a verdict on whether synthetic images are worth trying, from the real
images alone. The augment steps up to ingest run as in ``synthaug run`` (cached: a finished run's are reused); then
the learning curves of the scarce classes (``tasks/assess.py``) are fitted and written to
``<workdir>/assess/assess.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from synthaug.flows.augment import run_steps
from synthaug.flows.catalog import ASSESS_JSON, INGEST
from synthaug.flows.dag import STEPS, steps_through
from synthaug.flows.params import Params
from synthaug.tasks.assess import assess_step
from synthaug.tasks.core.io.locks import workdir_lock

UPSTREAM = steps_through("ingest")


@flow(name="assess", log_prints=True)
def assess(params: Params, workdir: str = "data/work") -> dict[str, Any]:
    """Ingest (cached), then the learning curves; returns the path of ``assess.json`` and the verdict's lines."""
    root = Path(workdir)
    run_steps([s for s in STEPS if s.name in UPSTREAM], params, workdir)
    with workdir_lock(root):  # the ingest folder must not change while it is read
        record = assess_step(INGEST.path(root), params.evaluate, params.assess, ASSESS_JSON.path(root),
                             processes=params.runner.cpu_processes)
    return {"assess": str(ASSESS_JSON.path(root)), "lines": record["lines"]}
