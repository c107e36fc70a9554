"""Train (or fine-tune) the chosen generator family on the real train split of a manifest."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from pydantic import Field, field_validator
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from models.base import TrainConfig
from models.common import pick_device
from models.diffusion import DiffusionConfig
from models.gan import GANConfig
from models.registry import family_names, get_family
from models.training import checkpoint_hash, fit, load_checkpoint, load_extended
from models.vae import VAEConfig
from tasks.errors import UserError
from tasks.images import load_images, save_grid
from tasks.manifest import read_manifest
from tasks.params_base import Section
from tasks.plan import natural_key

GRID_PER_CLASS = 8
RUN_FILE = "run.json"  # <out>/run.json: the data and start of the checkpoint being trained (see _run_key)


class ModelParams(Section):
    """``model`` section: which family, where it runs, and each family's own config (one sub-section each).

    init_from: a checkpoint folder (``config.json`` + ``weights.pt``) to fine-tune from instead of
      training from scratch, e.g. the model of the last published version when new source data lands. Classes the
      checkpoint does not know are added to its class conditioning (``models.training.load_extended``).
    warm_start: ``auto``: when ``init_from`` is unset, fine-tune from the last generator published with this dataset
      (``<publish.name>-generator/v<N>`` in ``publish.registry``) if the family, image size and network config
      match and no class was removed; from scratch otherwise, the reason in the log (``tasks.generators``).
      ``never``: always from scratch (or ``init_from``).
    warm_start_fraction: a warm start trains ``ceil(fraction * steps)`` of the family's ``steps``.
    grid_every: steps between per-class sample grids written to ``<out>/samples`` (0: only at the end).
    processes: training processes (torch DDP launched through ``torchrun``; one GPU each on CUDA, gloo on the
      CPU). The family's ``batch_size`` is the global batch, split evenly over the processes.
    """

    family: str = "diffusion"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    init_from: str | None = None
    warm_start: Literal["auto", "never"] = "auto"
    warm_start_fraction: float = Field(0.3, gt=0, le=1)
    grid_every: int = Field(0, ge=0)
    processes: int = Field(1, ge=1)
    diffusion: DiffusionConfig = DiffusionConfig()
    gan: GANConfig = GANConfig()
    vae: VAEConfig = VAEConfig()

    @field_validator("family")
    @classmethod
    def _known_family(cls, name: str) -> str:
        if name not in family_names():
            raise ValueError(f"unknown family {name!r}; allowed: {', '.join(family_names())}")
        return name

    def family_config(self) -> TrainConfig:
        return getattr(self, self.family)


@dataclass(frozen=True)
class TrainResult:
    checkpoint_dir: Path
    checkpoint_hash: str
    steps: int
    resumed_from: int


def train_split(manifest_path: Path) -> tuple[torch.Tensor, list[str], list[str]]:
    """Real ``train`` images of a manifest as one tensor, their labels, and the sorted class names."""
    frame, _ = read_manifest(manifest_path)
    rows = frame[(frame["split"] == "train") & (frame["source"] == "real")]
    if rows.empty:
        raise UserError(f"{manifest_path}: no real train images to train on")
    channels = int(rows["channels"].iloc[0])
    images = load_images(manifest_path.parent, list(rows["path"]), channels)
    return images, list(rows["label"]), sorted(set(rows["label"]), key=natural_key)


def train(manifest_path: Path, params: ModelParams, out_dir: Path) -> TrainResult:
    """Train ``params.family`` on the manifest's real train split into ``out_dir/checkpoint``.

    An interrupted run resumes from its last checkpoint when the family, config and classes match;
    with ``init_from`` the model starts from that checkpoint (fine-tuning) instead of from scratch.
    Started by ``torchrun`` (``WORLD_SIZE`` > 1), each process joins the process group and trains its share of
    every batch (``models.training.fit``); rank 0 alone writes the checkpoint, the log and the sample grids.
    """
    with _process_group(params) as (device, rank):
        return _train(manifest_path, params, out_dir, device, rank)


@contextlib.contextmanager
def _process_group(params: ModelParams) -> Iterator[tuple[torch.device, int]]:
    """(device, rank) of this process: a DDP process group under torchrun (nccl on CUDA, gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield pick_device(params.device), 0
        return
    device = pick_device(params.device, rank=int(os.environ.get("LOCAL_RANK", "0")))
    config = params.family_config()
    if config.batch_size % world:
        raise UserError(f"model.{params.family}.batch_size={config.batch_size} is the global batch; it must be "
                        f"divisible by the {world} training processes")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        if local > torch.cuda.device_count():  # NCCL cannot put two ranks on one GPU
            raise UserError(f"model.processes={local} on this host but it has {torch.cuda.device_count()} GPUs; "
                            "start at most one process per GPU")
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield device, dist.get_rank()
    finally:
        dist.destroy_process_group()


def _train(manifest_path: Path, params: ModelParams, out_dir: Path, device: torch.device, rank: int) -> TrainResult:
    images, labels, class_names = train_split(manifest_path)
    config = params.family_config()
    ckpt_dir = out_dir / "checkpoint"
    model, start, rng_state = None, 0, None
    run_key = _run_key(images, labels, params)
    resume = _resumable(ckpt_dir, params.family, config, class_names, tuple(images.shape[1:])) and _same_run(
        out_dir, run_key)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every process has decided before rank 0 changes the folder
    if resume:
        model, _, state = load_checkpoint(ckpt_dir, device)
        start, rng_state = state["step"], state.get("rng")
    elif rank == 0:  # a checkpoint of other data or another start is never resumed: remove it, then say what runs
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / RUN_FILE).write_text(json.dumps(run_key) + "\n")
    if model is None and params.init_from:
        model, class_names = _finetune_start(Path(params.init_from), device, config, class_names, params.seed)
    if model is None:
        # Initial weights come from the global RNG: seed a forked copy so a run is a function of model.seed.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(params.seed)
            model = get_family(params.family)(config, image_shape=tuple(images.shape[1:]),
                                              num_classes=len(class_names), device=device)
    index = {name: i for i, name in enumerate(class_names)}
    targets = torch.tensor([index[label] for label in labels], device=device)
    if rank > 0:  # logs, progress and grids come from rank 0 only
        fit(model, images.to(device), targets, seed=params.seed, class_names=class_names, checkpoint_dir=ckpt_dir,
            start_step=start, rng_state=rng_state)
        return TrainResult(ckpt_dir, checkpoint_hash(ckpt_dir), config.steps, start)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "train_log.jsonl"
    if start == 0:
        log_path.unlink(missing_ok=True)
    columns = (TextColumn("[bold]train {task.fields[family]}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[loss]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar, open(log_path, "a", buffering=1) as log:  # line-buffered: tail -f works
        task = bar.add_task("train", total=config.steps, completed=start, family=params.family, loss="")
        t0 = time.perf_counter()

        def on_step(step: int, losses: dict[str, float]) -> None:
            log.write(json.dumps({"step": step, "time_s": round(time.perf_counter() - t0, 3), **losses}) + "\n")
            bar.update(task, completed=step, loss=" ".join(f"{k}={v:.4f}" for k, v in losses.items()))
            if step == config.steps or (params.grid_every and step % params.grid_every == 0):
                _write_grid(model, len(class_names), out_dir / "samples" / f"step_{step:06d}.png")

        fit(model, images.to(device), targets, seed=params.seed, class_names=class_names, checkpoint_dir=ckpt_dir,
            start_step=start, rng_state=rng_state, on_step=on_step)
    return TrainResult(ckpt_dir, checkpoint_hash(ckpt_dir), config.steps, start)


def _resumable(ckpt_dir: Path, family: str, config: TrainConfig, class_names: list[str],
               image_shape: tuple[int, ...]) -> bool:
    cfg_file = ckpt_dir / "config.json"
    if not cfg_file.is_file():
        return False
    meta = json.loads(cfg_file.read_text())
    return (meta["family"] == family and meta["config"] == json.loads(json.dumps(dataclasses.asdict(config)))
            and meta["class_names"] == class_names and tuple(meta["image_shape"]) == image_shape)


def _run_key(images: torch.Tensor, labels: list[str], params: ModelParams) -> dict[str, str | None]:
    """What a resumable checkpoint must have been trained on: the train split's bytes and labels, and the start."""
    digest = hashlib.sha256(images.numpy().tobytes())
    digest.update("\n".join(labels).encode())
    start = Path(params.init_from) if params.init_from else None
    return {"data": digest.hexdigest(), "init_from": checkpoint_hash(start) if start else None}


def _same_run(out_dir: Path, run_key: dict[str, str | None]) -> bool:
    try:
        return json.loads((out_dir / RUN_FILE).read_text()) == run_key
    except (OSError, ValueError):
        return False


def _finetune_start(init_from: Path, device: torch.device, config: TrainConfig, class_names: list[str], seed: int):
    """Load the checkpoint to fine-tune; classes of the new data it does not know extend its class conditioning."""
    model, meta, _ = load_checkpoint(init_from, device, config_override=config)
    known = list(meta["class_names"])
    new = [c for c in class_names if c not in known]
    if not new:
        return model, known
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # the new classes' embedding rows: a function of model.seed
        model, _ = load_extended(init_from, device, known + new, config_override=config)
    return model, known + new


def _write_grid(model, num_classes: int, path: Path) -> None:
    labels = torch.arange(num_classes).repeat_interleave(GRID_PER_CLASS)
    save_grid(model.sample(labels, list(range(len(labels)))), GRID_PER_CLASS, path)
