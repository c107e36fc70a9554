"""Sampling synthetic images from a checkpoint: one RNG per (class, seed), in shards that run anywhere."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import torch

from synthaug.models.common import pick_device
from synthaug.models.training import checkpoint_hash, read_checkpoint_meta
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.files import file_sha256
from synthaug.tasks.core.io.images import to_uint8, write_png
from synthaug.tasks.core.io.manifest import COLUMNS, SCHEMA, check_rows
from synthaug.tasks.core.io.shards import SHARDS_DIR, RunShards, cut, finished, run_in_process, write_table
from synthaug.tasks.core.params.generate import GenerateParams, sampling_config
from synthaug.tasks.core.untrusted import load_checked

SEED_BLOCK = 1_000_000  # seeds of class k are base + k*SEED_BLOCK + i: unique, and top-ups continue the block
SAMPLER_FILE = ".checkpoint"  # in a folder of sampled images: the sampler_key they were sampled with


def sampler_key(checkpoint_dir: Path, params: GenerateParams) -> str:
    """What decides the pixels of a (class, seed): the checkpoint's weights (their sha256, first) and the config it
    samples with — its own, with the sampling knobs of ``generate`` applied (a checkpoint re-saved with another
    guidance has the same weights). A folder of images made under another key must not be resumed into."""
    config = {**read_checkpoint_meta(checkpoint_dir)["config"], **params.sampling_knobs()}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    return f"{checkpoint_hash(checkpoint_dir)} {digest}"


def _load_for_sampling(checkpoint_dir: Path, params: GenerateParams, device: torch.device) -> tuple[Any, dict]:
    knobs = params.sampling_knobs()
    override = None
    if knobs:
        meta = read_checkpoint_meta(checkpoint_dir)
        try:
            override = sampling_config(meta["family"], meta["config"], knobs)
        except ValueError as exc:
            raise UserError(f"{checkpoint_dir}: generate: {exc} (set generate.{', '.join(knobs)} to null, or give "
                            "values this checkpoint accepts)") from None
    model, meta, _ = load_checked(checkpoint_dir, device, "re-train it, or sample from an intact generator version",
                                  override)
    return model, meta


@dataclass(frozen=True)
class Request:
    label: str
    seeds: list[int]


def seeds_for(class_index: int, start: int, count: int, base: int) -> list[int]:
    """Seeds ``start..start+count`` of a class's block: a top-up asks for the ones after what exists."""
    first = base + class_index * SEED_BLOCK
    return list(range(first + start, first + start + count))


def image_path(label: str, seed: int) -> str:
    """Relative path of a synthetic image; the seed is in the file name (README "Generators", **Determinism**)."""
    return f"images/{label}/{label}_s{seed}.png"


Progress = Callable[[int, int], None]  # (images done, images to do), called as shards finish
Job = tuple[str, int]  # (label, seed): one image


def generate(checkpoint_dir: Path, requests: list[Request], params: GenerateParams, out_dir: Path, *,
             rank: int = 0) -> pd.DataFrame:
    """Sample every (label, seed) asked for into ``out_dir``; returns the manifest rows (not yet filtered).

    An image whose file already exists is not sampled again, so an interrupted run resumes where it stopped.
    ``rank`` (the worker's index) picks the GPU when there are several.
    """
    model, meta = _load_for_sampling(checkpoint_dir, params, pick_device(params.device, rank))
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


def generate_sharded(checkpoint_dir: Path, jobs: list[Job], params: GenerateParams, out_dir: Path, *, sampler: str,
                     prefix: str, shard_size: int, run_shards: RunShards = run_in_process,
                     on_progress: Progress | None = None) -> list[Path]:
    """Sample ``jobs`` into ``out_dir`` in shards of ``shard_size`` images; returns the shard tables in job order.
    ``sampler``: ``sampler_key(checkpoint_dir, params)``, which the caller has already computed to check the folder
    (it hashes the weights file).

    Shard tables go to ``out_dir/shards/<prefix>-<index>-<key>.parquet``; a shard's key covers the checkpoint's
    hash, the sampling params and its jobs, so a finished shard is skipped only when it would be made again the
    same way. The images of a (class, seed) are identical whichever shard or worker samples them (README
    "Generators", **Determinism**).
    """
    shard_dir = out_dir / SHARDS_DIR
    context = {"checkpoint": sampler, "params": params.model_dump(mode="json")}
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
