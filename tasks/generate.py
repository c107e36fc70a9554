"""Generate the planned synthetic images: one PNG per (class, seed), plus a manifest of what was made."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from pydantic import Field
from rich.progress import track

from models.common import pick_device
from models.training import checkpoint_hash, load_checkpoint
from tasks.errors import UserError
from tasks.images import file_sha256, to_uint8, write_png
from tasks.manifest import COLUMNS, write_manifest
from tasks.params_base import Section
from tasks.plan import read_plan

SEED_BLOCK = 1_000_000  # seeds of class k are base + k*SEED_BLOCK + i: unique, and top-ups continue the block


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


Progress = Callable[[int, int], None]  # (images done, images to do)


def generate(checkpoint_dir: Path, requests: list[Request], params: GenerateParams, out_dir: Path, *,
             on_progress: Progress | None = None) -> pd.DataFrame:
    """Sample every (label, seed) asked for into ``out_dir``; returns the manifest rows (not yet filtered).

    An image whose file already exists is not sampled again, so an interrupted run resumes where it stopped.
    """
    device = pick_device(params.device)
    model, meta, _ = load_checkpoint(checkpoint_dir, device)
    digest = checkpoint_hash(checkpoint_dir)
    index = {name: i for i, name in enumerate(meta["class_names"])}
    unknown = sorted({r.label for r in requests} - set(index))
    if unknown:
        raise UserError(f"{checkpoint_dir}: the model was not trained on classes {unknown}; retrain it")
    jobs = [(r.label, s) for r in requests for s in r.seeds]
    todo = [(label, s) for label, s in jobs if not (out_dir / image_path(label, s)).exists()]
    batches = [todo[i: i + params.batch_size] for i in range(0, len(todo), params.batch_size)]
    for done, batch in enumerate(track(batches, description=f"generate {len(todo)} images", transient=True)):
        labels = torch.tensor([index[label] for label, _ in batch])
        pixels = to_uint8(model.sample(labels, [s for _, s in batch]))
        for (label, s), img in zip(batch, pixels, strict=True):
            write_png(img, out_dir / image_path(label, s))
        if on_progress is not None:
            on_progress(min((done + 1) * params.batch_size, len(todo)), len(todo))
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


def generate_from_plan(plan_csv: Path, checkpoint_dir: Path, params: GenerateParams, out_dir: Path, *,
                       on_progress: Progress | None = None) -> Path:
    """The ``generate`` step: read the plan, sample, write ``out_dir/manifest.parquet``."""
    plan = read_plan(plan_csv)
    class_names = json.loads((checkpoint_dir / "config.json").read_text())["class_names"]
    start = time.perf_counter()
    frame = generate(checkpoint_dir, requests_from_plan(plan, class_names, params.seed), params, out_dir,
                     on_progress=on_progress)
    # Sampling cost, for comparing families (`synthaug compare`); a resumed run times only what it sampled.
    (out_dir / "timing.json").write_text(json.dumps({"images": len(frame),
                                                     "seconds": round(time.perf_counter() - start, 3)}))
    return write_manifest(frame, out_dir / "manifest.parquet")
