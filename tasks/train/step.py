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

import torch
import torch.distributed as dist
from rich.console import Console

from synthaug.models.common import peak_memory_mib, pick_device, reset_peak_memory
from synthaug.models.config import TrainConfig
from synthaug.models.training import (
    CONFIG_FILE,
    CheckpointError,
    build_family,
    checkpoint_hash,
    fit,
    has_checkpoint,
    load_checkpoint,
    load_extended,
    read_checkpoint_meta,
)
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.images import load_images, save_grid
from synthaug.tasks.core.io.manifest import read_manifest
from synthaug.tasks.core.labels import natural_key
from synthaug.tasks.core.logs import get_logger, progress
from synthaug.tasks.core.params.model import ModelParams
from synthaug.tasks.core.privacy.dp import DP_FILE
from synthaug.tasks.core.untrusted import load_checked
from synthaug.tasks.train.pretrained import apply_pretrained, read_pretrained, write_bundle
from synthaug.tasks.train.private import fit_private

GRID_PER_CLASS = 8
RUN_FILE = "run.json"  # <out>/run.json: the data and start of the checkpoint being trained (see _run_key)


@dataclass(frozen=True)
class TrainResult:
    """Where the model went and what the run cost; ``summary`` is what ``<out>/train.json`` holds."""

    checkpoint_dir: Path
    checkpoint_hash: str
    steps: int
    resumed_from: int
    summary: dict | None = None


def train_split(manifest_path: Path, split: str = "train") -> tuple[torch.Tensor, list[str], list[str]]:
    """Real images of one split of a manifest as one tensor, their labels, and the sorted class names."""
    frame, _ = read_manifest(manifest_path)
    rows = frame[(frame["split"] == split) & (frame["source"] == "real")]
    if rows.empty:
        raise UserError(f"{manifest_path}: no real {split} images" + (" to train on" if split == "train" else ""))
    channels = int(rows["channels"].iloc[0])
    images = load_images(manifest_path.parent, list(rows["path"]), channels)
    return images, list(rows["label"]), sorted(set(rows["label"]), key=natural_key)


def train(manifest_path: Path, params: ModelParams, out_dir: Path) -> TrainResult:
    """Train ``params.family`` on the manifest's real train split into ``out_dir/checkpoint``.

    An interrupted run resumes from its last checkpoint when the family, config, classes and starting point
    (the same train split, ``init_from`` weights and ``pretrained`` folder, ``run.json``) match;
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
    model, start, rng_state, notes = None, 0, None, []
    if params.init_from and params.pretrained:
        raise UserError("model.init_from and model.pretrained both set: fine-tune a checkpoint (init_from) or start "
                        "from a pretrained folder (pretrained), not both")
    private = params.dp.epsilon is not None
    if private or (ckpt_dir / DP_FILE).exists():  # DP runs start over; a DP checkpoint never resumes without DP
        (ckpt_dir / DP_FILE).unlink(missing_ok=True)
        (ckpt_dir / CONFIG_FILE).unlink(missing_ok=True)
    run_key = _run_key(images, labels, params)
    resume = _resumable(ckpt_dir, params.family, config, class_names, tuple(images.shape[1:])) and _same_run(
        out_dir, run_key)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every process has decided before rank 0 changes the folder
    if resume:
        try:
            model, _, state = load_checkpoint(ckpt_dir, device)
            start, rng_state = state["step"], state.get("rng")
        except CheckpointError as exc:  # the run's own checkpoint, damaged: train it again rather than stop
            get_logger("train").warning(f"train: not resuming ({exc}); training from the start")
            model, resume = None, False
            if rank == 0:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
                (out_dir / RUN_FILE).write_text(json.dumps(run_key) + "\n")
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
            try:  # params are untrusted too: the network is sized before it is built
                model = build_family(params.family, config, image_shape=tuple(images.shape[1:]),
                                     num_classes=len(class_names), device=device)
            except ValueError as exc:
                raise UserError(f"model.{params.family}: {exc}") from None
        if params.pretrained:
            notes = apply_pretrained(model, read_pretrained(Path(params.pretrained)), class_names)
            if rank == 0:
                for note in notes:
                    Console(stderr=True).print(f"train: {note}", highlight=False, markup=False)
    index = {name: i for i, name in enumerate(class_names)}
    targets = torch.tensor([index[label] for label in labels], device=device)
    data, held = _training_data(images, device, params.device_dataset_mb)
    del images
    reset_peak_memory(device)
    if rank > 0:  # logs, progress and grids come from rank 0 only
        fit(model, data, targets, seed=params.seed, class_names=class_names, checkpoint_dir=ckpt_dir, device=device,
            start_step=start, rng_state=rng_state)
        return TrainResult(ckpt_dir, checkpoint_hash(ckpt_dir), config.steps, start)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "train_log.jsonl"
    if start == 0:
        log_path.unlink(missing_ok=True)
    else:  # a killed attempt logged steps past its last checkpoint: they are trained (and logged) again
        keep_logged_steps(log_path, start)
    # A bar on a terminal; in a log or on a Prefect worker, a progress line every ~30 s and every tenth of the steps.
    with progress(get_logger("train"), f"train {params.family}", config.steps, unit="steps") as bar, \
            open(log_path, "a", buffering=1) as log:  # line-buffered: tail -f works
        bar(start)
        t0 = time.perf_counter()

        def on_step(step: int, losses: dict[str, float]) -> None:
            peak = peak_memory_mib(device)
            log.write(json.dumps({"step": step, "time_s": round(time.perf_counter() - t0, 3), **losses,
                                  "peak_mib": None if peak is None else round(peak, 1)}) + "\n")
            bar(step, " ".join(f"{k}={v:.4f}" for k, v in losses.items()))
            if step == config.steps or (params.grid_every and step % params.grid_every == 0):
                _write_grid(model, len(class_names), out_dir / "samples" / f"step_{step:06d}.png")

        if private:  # DP-SGD samples its own Poisson batches from the whole set: float on the device
            pixels = data.to(device)
            fit_private(model, pixels if pixels.is_floating_point() else pixels.float() / 127.5 - 1.0, targets,
                        params.dp, seed=params.seed, class_names=class_names, checkpoint_dir=ckpt_dir, on_step=on_step)
        else:
            fit(model, data, targets, seed=params.seed, class_names=class_names, checkpoint_dir=ckpt_dir,
                device=device, start_step=start, rng_state=rng_state, on_step=on_step)
        seconds = time.perf_counter() - t0
    summary = {"family": params.family, "device": str(device), "dataset": held, "steps": config.steps,
               "resumed_from": start,
               "seconds": round(seconds, 3), "peak_mib": _round(peak_memory_mib(device)),
               "checkpoint_sha256": checkpoint_hash(ckpt_dir)}
    if notes:
        summary["pretrained"] = notes
    if hasattr(model, "reconstruction_quality"):
        summary["autoencoder"] = _autoencoder_outputs(model, manifest_path, out_dir / "autoencoder")
    (out_dir / "train.json").write_text(json.dumps(summary, indent=2))
    return TrainResult(ckpt_dir, summary["checkpoint_sha256"], config.steps, start, summary)


def keep_logged_steps(log_path: Path, last: int) -> None:
    """Keep the lines of ``train_log.jsonl`` up to step ``last`` (the checkpoint a run resumes from); a line that
    does not parse (cut by a kill) goes too."""
    if not log_path.is_file():
        return
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue
        if isinstance(step, int) and step <= last:
            kept.append(line + "\n")
    tmp = log_path.with_name(log_path.name + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(log_path)


def _training_data(images: torch.Tensor, device: torch.device, limit_mb: float) -> tuple[torch.Tensor, str]:
    """The training images as ``fit`` takes them: float32 on the device up to ``limit_mb``, else 8-bit in host memory
    (pinned for CUDA); and where they are held, for train.json."""
    mib = images.numel() * 4 / 2**20
    if mib <= limit_mb:
        return images.to(device), f"on {device.type} as float32 ({mib:.1f} MiB)"
    # The stored PNGs are 8-bit: (x + 1) * 127.5 gives back their integer levels exactly.
    pixels = ((images + 1.0) * 127.5).round().to(torch.uint8)
    if device.type == "cuda":
        pixels = pixels.pin_memory()
    return pixels, f"streamed from host memory as uint8 ({mib / 4:.1f} MiB; over model.device_dataset_mb={limit_mb:g})"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _autoencoder_outputs(model, manifest_path: Path, folder: Path) -> dict:
    """The trained autoencoder as its own checkpoint (a MONAI bundle folder, usable as ``model.pretrained``) and
    its reconstruction quality on the real val images (the train images when there is no val split)."""
    try:
        images, _, _ = train_split(manifest_path, "val")
        split = "val"
    except UserError:
        images, _, _ = train_split(manifest_path, "train")
        split = "train"
    quality = model.reconstruction_quality(images)
    digest = write_bundle(folder, {"autoencoder": model.autoencoder.state_dict()},
                          {"family": model.name, "image_shape": list(model.image_shape),
                           "latent_scale": model.latent_scale, "autoencoder_steps": model.ae_steps_done,
                           "config": dataclasses.asdict(model.config)})
    return {"path": folder.name, "sha256": digest, "steps": model.ae_steps_done, "latent_scale": model.latent_scale,
            "reconstruction": {"split": split, "images": int(images.shape[0]),
                               **{k: round(v, 6) for k, v in quality.items()}}}


def _resumable(ckpt_dir: Path, family: str, config: TrainConfig, class_names: list[str],
               image_shape: tuple[int, ...]) -> bool:
    if not has_checkpoint(ckpt_dir):
        return False
    try:
        meta = read_checkpoint_meta(ckpt_dir)
    except CheckpointError:  # damaged: not resumed, trained again
        return False
    return (meta["family"] == family and meta["config"] == json.loads(json.dumps(dataclasses.asdict(config)))
            and meta["class_names"] == class_names and tuple(meta["image_shape"]) == image_shape)


def _run_key(images: torch.Tensor, labels: list[str], params: ModelParams) -> dict[str, str | None]:
    """What a resumable checkpoint must have been trained on: the train split's bytes and labels, and the start."""
    digest = hashlib.sha256(images.numpy().tobytes())
    digest.update("\n".join(labels).encode())
    start = Path(params.init_from) if params.init_from else None
    return {"data": digest.hexdigest(), "init_from": checkpoint_hash(start) if start else None,
            "pretrained": str(Path(params.pretrained).resolve()) if params.pretrained else None}


def _same_run(out_dir: Path, run_key: dict[str, str | None]) -> bool:
    try:
        return json.loads((out_dir / RUN_FILE).read_text()) == run_key
    except (OSError, ValueError):
        return False


def _finetune_start(init_from: Path, device: torch.device, config: TrainConfig, class_names: list[str], seed: int):
    """Load the checkpoint to fine-tune; classes of the new data it does not know extend its class conditioning.

    ``init_from`` is untrusted input (``tasks.core.untrusted.load_checked``): its class names become the model's,
    and later folder names."""
    fix = "set model.init_from to a checkpoint folder synthaug wrote (config.json + weights.pt)"
    model, meta, _ = load_checked(init_from, device, fix, config_override=config)
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
