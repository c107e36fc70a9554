"""The workdir catalog: every artifact the steps write, named once, with its reader.

An artifact is a file or folder under ``<workdir>/<step>/``. The DAG's deps and outs (``flows/dag.py``), its
adapters, the flows, the CLI and ``dvc.yaml`` take paths from here; a step function itself takes plain paths.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthaug.tasks.core.io.plan_csv import PLAN_FILE, read_plan
from synthaug.tasks.core.io.results import (
    FILTER_SUMMARY,
    METRICS_FILE,
    PLOT_COUNTS,
    PLOT_RECALL,
    PLOT_UTILITY,
    TABLE_PER_CLASS,
    TABLE_UTILITY,
    read_metrics,
)
from synthaug.tasks.core.privacy.record import DCR_PLOT, PRIVACY_FILE
from synthaug.tasks.evaluate.headline import SUMMARY_FILE

# The readers below import what they need when called: naming the artifacts (every CLI command, the DAG) loads no
# torch, pandas or pyarrow.


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_csv(path: Path) -> Any:
    import pandas as pd

    return pd.read_csv(path)


def read_classes_csv(path: Path) -> Any:
    """A per-class table (a DataFrame), with ``class`` kept as strings (``"01"`` stays ``"01"``)."""
    import pandas as pd

    return pd.read_csv(path, dtype={"class": str})


def read_manifest(path: Path) -> Any:
    """(rows, lineage) of a ``manifest.parquet`` (``tasks/core/io/manifest.py``)."""
    from synthaug.tasks.core.io.manifest import read_manifest as read

    return read(path)


def read_checkpoint_meta(path: Path) -> Any:
    from synthaug.models.training import read_checkpoint_meta as read

    return read(path)


def load_judge_step(path: Path) -> Any:
    """(judge, class names) of the judge step's folder (``tasks/core/scoring/features.py``)."""
    from synthaug.tasks.core.scoring.features import load_judge_step as load

    return load(path)


@dataclass(frozen=True)
class Artifact:
    """``rel``: the POSIX path under the workdir (``<step>`` or ``<step>/<file>``); ``reader``: what reads it."""

    rel: str
    reader: Callable[[Path], Any] | None = None

    def path(self, workdir: Path | str) -> Path:
        return Path(workdir) / self.rel

    def read(self, workdir: Path | str) -> Any:
        if self.reader is None:
            raise TypeError(f"{self.rel} is read by the step that uses it, not through the catalog")
        return self.reader(self.path(workdir))

    def __truediv__(self, name: str) -> Artifact:
        """A file inside this folder artifact."""
        return Artifact(f"{self.rel}/{name}")


SOURCES = Artifact("sources")  # the source cache (fetched DVC revisions, file hashes); no step's output
FINGERPRINT = Artifact("fingerprint")
SOURCE_JSON = Artifact("fingerprint/source.json", read_json)
INGEST = Artifact("ingest")
INGEST_MANIFEST = Artifact("ingest/manifest.parquet", read_manifest)
PLAN = Artifact("plan")
PLAN_CSV = Artifact(f"plan/{PLAN_FILE}", read_plan)
MODEL = Artifact("model")
CHECKPOINT = Artifact("model/checkpoint", read_checkpoint_meta)
TRAIN_SUMMARY = Artifact("model/train.json", read_json)
TRAIN_LOG = Artifact("model/train_log.jsonl")
WARM_START = Artifact("model/warm_start")
GENERATE = Artifact("generate")
GENERATE_TIMING = Artifact("generate/timing.json", read_json)
JUDGE = Artifact("judge", load_judge_step)
FILTER = Artifact("filter")
FILTER_MANIFEST = Artifact("filter/manifest.parquet", read_manifest)
FILTER_SUMMARY_JSON = Artifact(f"filter/{FILTER_SUMMARY}", read_json)
EVALUATE = Artifact("evaluate")
METRICS = Artifact(f"evaluate/{METRICS_FILE}", lambda path: read_metrics(path.parent))
CHARTS = tuple(Artifact(f"evaluate/{name}") for name in (PLOT_UTILITY, PLOT_COUNTS, PLOT_RECALL))
UTILITY_TABLE = Artifact(f"evaluate/{TABLE_UTILITY}", read_csv)
PER_CLASS_TABLE = Artifact(f"evaluate/{TABLE_PER_CLASS}", read_classes_csv)
SUMMARY = Artifact(f"evaluate/{SUMMARY_FILE}", read_json)  # the headline numbers `dvc metrics show` prints
REPORT = Artifact("report")
DATASET = Artifact("dataset")
GENERATOR = Artifact("generator")
PRIVACY = Artifact("privacy")
PRIVACY_JSON = Artifact(f"privacy/{PRIVACY_FILE}", read_json)
DCR = Artifact(f"privacy/{DCR_PLOT}")
RELEASE = Artifact("release")
TUNE = Artifact("tune")  # `synthaug tune`: the study (study.db) and trials.json; not a DAG step's output
TUNE_TRIALS = Artifact("tune/trials.json", read_json)
# `synthaug assess`: the learning curves of the scarce classes and the verdict; not a DAG step's output
ASSESS_JSON = Artifact("assess/assess.json", read_json)
