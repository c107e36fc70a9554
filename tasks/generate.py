"""Generate the planned synthetic images: one PNG per (class, seed), plus a manifest of what was made.

The (class, seed) list is cut into shards (``tasks.core.io.shards``) that run wherever ``run_shards`` sends them (a
Prefect task runner from ``flows.runners``, or this process); each writes its images and then its manifest atomically,
and a re-run skips the shards already finished.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd

from synthaug.models.training import read_checkpoint_meta
from synthaug.tasks.core.io.manifest import SCHEMA
from synthaug.tasks.core.io.plan_csv import read_plan
from synthaug.tasks.core.io.shards import (
    SHARDS_DIR,
    RunShards,
    concat_tables,
    remove_stale,
    remove_temporaries,
    run_in_process,
)
from synthaug.tasks.core.logs import get_logger, progress
from synthaug.tasks.core.params.generate import GenerateParams
from synthaug.tasks.core.params.runner import DEFAULT_SHARD_SIZE
from synthaug.tasks.core.sampling import SAMPLER_FILE, Progress, Request, generate_sharded, sampler_key, seeds_for

CHECKPOINT_FILE = SAMPLER_FILE  # sampler_key (checkpoint sha256 + the config it samples with) of the images


def requests_from_plan(plan: pd.DataFrame, class_names: list[str], base_seed: int) -> list[Request]:
    """The plan's ``to_generate`` per class as seed requests (the first seeds of each class's block)."""
    index = {name: i for i, name in enumerate(class_names)}
    return [Request(str(row["class"]), seeds_for(index[str(row["class"])], 0, int(row["to_generate"]), base_seed))
            for _, row in plan.iterrows() if int(row["to_generate"]) > 0]


def generate_from_plan(plan_csv: Path, checkpoint_dir: Path, params: GenerateParams, out_dir: Path, *,
                       shard_size: int = DEFAULT_SHARD_SIZE, run_shards: RunShards = run_in_process,
                       on_progress: Progress | None = None) -> Path:
    """The ``generate`` step: read the plan, sample in shards, write ``out_dir/manifest.parquet``.

    The step manifest is the shard manifests concatenated in shard order (classes in plan order, seeds
    ascending), whatever order the shards finished in. Images sampled with another checkpoint than this one, or
    with other sampling knobs (``generate.guidance_scale``, ``sample_steps``), are deleted first, so a resumed run
    never mixes models or samplers.
    """
    plan = read_plan(plan_csv)
    class_names = read_checkpoint_meta(checkpoint_dir)["class_names"]
    jobs = [(r.label, s) for r in requests_from_plan(plan, class_names, params.seed) for s in r.seeds]
    sampler = sampler_key(checkpoint_dir, params)
    _drop_other_checkpoint(out_dir, sampler)
    remove_temporaries(out_dir)
    start = time.perf_counter()
    with progress(get_logger("generate"), "generate", len(jobs), unit="images") as bar:

        def report(done: int, total: int) -> None:  # the bar or log lines, and the caller's own report
            bar(done)
            if on_progress is not None:
                on_progress(done, total)

        tables = generate_sharded(checkpoint_dir, jobs, params, out_dir, sampler=sampler, prefix="generate",
                                  shard_size=shard_size, run_shards=run_shards, on_progress=report)
    remove_stale(out_dir / SHARDS_DIR, "generate", tables)
    # Sampling cost, for comparing families (`synthaug compare`); a resumed run times only what it sampled.
    (out_dir / "timing.json").write_text(json.dumps({"images": len(jobs),
                                                     "seconds": round(time.perf_counter() - start, 3)}))
    return concat_tables(tables, out_dir / "manifest.parquet", SCHEMA)


def _drop_other_checkpoint(out_dir: Path, digest: str) -> None:
    """Delete images and shards of another sampler than ``digest`` (``sampler_key``); record it as the folder's."""
    state = out_dir / CHECKPOINT_FILE
    if state.is_file() and state.read_text().strip() != digest:
        for folder in ("images", SHARDS_DIR):
            shutil.rmtree(out_dir / folder, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    state.write_text(digest + "\n")
