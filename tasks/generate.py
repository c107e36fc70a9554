"""Generate the planned synthetic images: one PNG per (class, seed), plus a manifest of what was made.

The (class, seed) list is cut into shards (``tasks.shards``) that run wherever ``run_shards`` sends them (a Prefect
task runner from ``flows.runners``, or this process); each writes its images and then its manifest atomically, and
a re-run skips the shards already finished.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import torch
from pydantic import Field

from models.common import pick_device
from models.training import checkpoint_hash, load_checkpoint
from tasks.errors import UserError
from tasks.images import file_sha256, to_uint8, write_png
from tasks.logs import get_logger, progress
from tasks.manifest import COLUMNS, SCHEMA, check_rows
from tasks.params_base import Section
from tasks.plan import read_plan
from tasks.shards import (
    DEFAULT_SHARD_SIZE,
    SHARDS_DIR,
    RunShards,
    concat_tables,
    cut,
    finished,
    remove_stale,
    remove_temporaries,
    run_in_process,
    write_table,
)

SEED_BLOCK = 1_000_000  # seeds of class k are base + k*SEED_BLOCK + i: unique, and top-ups continue the block
CHECKPOINT_FILE = ".checkpoint"  # sha256 of the checkpoint the images in the folder were sampled with


class GenerateParams(Section):
    """``generate`` section.

    seed: base of the per-image seeds (image i of class k gets seed + k*1e6 + i).
    batch_size: images sampled per forward pass (does not change the pixels).
    """

    seed: int = Field(0, ge=0)
    batch_size: int = Field(64, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class Request:
    label: str
    seeds: list[int]


def seeds_for(class_index: int, start: int, count: int, base: int) -> list[int]:
    """Seeds ``start..start+count`` of a class's block: a top-up asks for the ones after what exists."""
    first = base + class_index * SEED_BLOCK
    return list(range(first + start, first + start + count))


def image_path(label: str, seed: int) -> str:
    """Relative path of a synthetic image; the seed is in the file name (DESIGN.md)."""
    return f"images/{label}/{label}_s{seed}.png"


Progress = Callable[[int, int], None]  # (images done, images to do), called as shards finish
Job = tuple[str, int]  # (label, seed): one image


def generate(checkpoint_dir: Path, requests: list[Request], params: GenerateParams, out_dir: Path, *,
             rank: int = 0) -> pd.DataFrame:
    """Sample every (label, seed) asked for into ``out_dir``; returns the manifest rows (not yet filtered).

    An image whose file already exists is not sampled again, so an interrupted run resumes where it stopped.
    ``rank`` (the worker's index) picks the GPU when there are several.
    """
    model, meta, _ = load_checkpoint(checkpoint_dir, pick_device(params.device, rank))
    digest = checkpoint_hash(checkpoint_dir)
    index = {name: i for i, name in enumerate(meta["class_names"])}
    unknown = sorted({r.label for r in requests} - set(index))
    if unknown:
        raise UserError(f"{checkpoint_dir}: the model was not trained on classes {unknown}; retrain it")
    jobs = [(r.label, s) for r in requests for s in r.seeds]
    todo = [(label, s) for label, s in jobs if not (out_dir / image_path(label, s)).exists()]
    for i in range(0, len(todo), params.batch_size):
        batch = todo[i: i + params.batch_size]
        labels = torch.tensor([index[label] for label, _ in batch])
        pixels = to_uint8(model.sample(labels, [s for _, s in batch]))
        for (label, s), img in zip(batch, pixels, strict=True):
            write_png(img, out_dir / image_path(label, s))
    c, h, w = meta["image_shape"]
    rows = [{
        "image_id": file_sha256(out_dir / image_path(label, s)), "path": image_path(label, s), "label": label,
        "split": "train", "source": "synthetic", "generator": meta["family"], "checkpoint": digest, "seed": s,
        "accepted": True, "reject_reason": None, "height": h, "width": w, "channels": c,
    } for label, s in jobs]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def requests_from_plan(plan: pd.DataFrame, class_names: list[str], base_seed: int) -> list[Request]:
    """The plan's ``to_generate`` per class as seed requests (the first seeds of each class's block)."""
    index = {name: i for i, name in enumerate(class_names)}
    return [Request(str(row["class"]), seeds_for(index[str(row["class"])], 0, int(row["to_generate"]), base_seed))
            for _, row in plan.iterrows() if int(row["to_generate"]) > 0]


def _requests(jobs: list[Job]) -> list[Request]:
    """Jobs back to per-label requests, in job order (consecutive jobs of a label share a request)."""
    requests: list[Request] = []
    for label, seed in jobs:
        if requests and requests[-1].label == label:
            requests[-1].seeds.append(seed)
        else:
            requests.append(Request(label, [seed]))
    return requests


def generate_shard(checkpoint_dir: Path, jobs: list[Job], params: GenerateParams, out_dir: Path, table: Path,
                   key: str, rank: int = 0) -> int:
    """One shard: sample its images into ``out_dir`` (each file atomic; existing files are kept), then write its
    manifest ``table`` atomically, last, with its key: the table on disk means the shard is complete."""
    frame = generate(checkpoint_dir, _requests(jobs), params, out_dir, rank=rank)
    check_rows(frame)
    write_table(pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False), table, key)
    return len(frame)


def generate_sharded(checkpoint_dir: Path, jobs: list[Job], params: GenerateParams, out_dir: Path, *,
                     prefix: str, shard_size: int, run_shards: RunShards = run_in_process,
                     on_progress: Progress | None = None) -> list[Path]:
    """Sample ``jobs`` into ``out_dir`` in shards of ``shard_size`` images; returns the shard tables in job order.

    Shard tables go to ``out_dir/shards/<prefix>-<index>-<key>.parquet``; a shard's key covers the checkpoint's
    hash, the sampling params and its jobs, so a finished shard is skipped only when it would be made again the
    same way. The images of a (class, seed) are identical whichever shard or worker samples them (DESIGN.md).
    """
    shard_dir = out_dir / SHARDS_DIR
    context = {"checkpoint": checkpoint_hash(checkpoint_dir), "params": params.model_dump(mode="json")}
    shards = cut(jobs, shard_size, shard_dir, prefix, context)
    # A shard counts as done only while its images are there too: a deleted image is sampled again (same pixels).
    todo = [s for s in shards if not finished(s)
            or not all((out_dir / image_path(label, seed)).exists() for label, seed in jobs[s.start:s.stop])]
    done = len(jobs) - sum(s.stop - s.start for s in todo)
    if on_progress is not None:
        on_progress(done, len(jobs))

    def shard_done(i: int) -> None:
        nonlocal done
        done += todo[i].stop - todo[i].start
        if on_progress is not None:
            on_progress(done, len(jobs))

    calls = [{"checkpoint_dir": checkpoint_dir, "jobs": list(jobs[s.start:s.stop]), "params": params,
              "out_dir": out_dir, "table": s.path, "key": s.key} for s in todo]
    run_shards(generate_shard, calls, on_done=shard_done)
    return [s.path for s in shards]


def generate_from_plan(plan_csv: Path, checkpoint_dir: Path, params: GenerateParams, out_dir: Path, *,
                       shard_size: int = DEFAULT_SHARD_SIZE, run_shards: RunShards = run_in_process,
                       on_progress: Progress | None = None) -> Path:
    """The ``generate`` step: read the plan, sample in shards, write ``out_dir/manifest.parquet``.

    The step manifest is the shard manifests concatenated in shard order (classes in plan order, seeds
    ascending), whatever order the shards finished in. Images sampled with another checkpoint than this one
    are deleted first, so a resumed run never mixes models.
    """
    plan = read_plan(plan_csv)
    class_names = json.loads((checkpoint_dir / "config.json").read_text())["class_names"]
    jobs = [(r.label, s) for r in requests_from_plan(plan, class_names, params.seed) for s in r.seeds]
    _drop_other_checkpoint(out_dir, checkpoint_hash(checkpoint_dir))
    remove_temporaries(out_dir)
    start = time.perf_counter()
    with progress(get_logger("generate"), "generate", len(jobs), unit="images") as bar:

        def report(done: int, total: int) -> None:  # the bar or log lines, and the caller's own report
            bar(done)
            if on_progress is not None:
                on_progress(done, total)

        tables = generate_sharded(checkpoint_dir, jobs, params, out_dir, prefix="generate", shard_size=shard_size,
                                  run_shards=run_shards, on_progress=report)
    remove_stale(out_dir / SHARDS_DIR, "generate", tables)
    # Sampling cost, for comparing families (`synthaug compare`); a resumed run times only what it sampled.
    (out_dir / "timing.json").write_text(json.dumps({"images": len(jobs),
                                                     "seconds": round(time.perf_counter() - start, 3)}))
    return concat_tables(tables, out_dir / "manifest.parquet", SCHEMA)


def _drop_other_checkpoint(out_dir: Path, digest: str) -> None:
    """Delete images and shards of another checkpoint than ``digest``; record ``digest`` as the folder's."""
    state = out_dir / CHECKPOINT_FILE
    if state.is_file() and state.read_text().strip() != digest:
        for folder in ("images", SHARDS_DIR):
            shutil.rmtree(out_dir / folder, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    state.write_text(digest + "\n")
