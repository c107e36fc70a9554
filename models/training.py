"""The one training driver all families share, and checkpoints (state_dict + config.json, no pickled classes).

A checkpoint directory holds ``config.json`` (family, config, image shape, class names, step) and
``weights.pt`` (tensors and plain numbers only, loaded with ``weights_only=True``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from synthaug.models.base import GeneratorFamily
from synthaug.models.registry import get_family

StepCallback = Callable[[int, dict[str, float]], None]
CONFIG_FILE = "config.json"  # a checkpoint folder: this module owns its format (save, load, read, hash)
WEIGHTS_FILE = "weights.pt"
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE)
RANK_SEED_STRIDE = 1_000_003  # noise seed of process r: seed + start_step + r * stride (rank 0: as one process)


def save_checkpoint(model: GeneratorFamily, directory: Path, *, step: int, class_names: list[str],
                    rng_state: torch.Tensor | None = None) -> None:
    """Write ``weights.pt`` then ``config.json`` atomically (temp file + rename), so a kill leaves the old pair."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "step": step}
    if rng_state is not None:
        state["rng"] = rng_state
    tmp = directory / f"{WEIGHTS_FILE}.tmp"
    torch.save(state, tmp)
    tmp.replace(directory / WEIGHTS_FILE)
    meta = {
        "family": model.name,
        "config": dataclasses.asdict(model.config),
        "image_shape": list(model.image_shape),
        "class_names": class_names,
        "step": step,
    }
    tmp = directory / f"{CONFIG_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(directory / CONFIG_FILE)


def load_checkpoint(directory: Path, device: torch.device,
                    config_override: Any | None = None) -> tuple[GeneratorFamily, dict[str, Any], dict[str, Any]]:
    """Rebuild a model from a checkpoint directory: returns (model, meta, raw state).

    ``config_override`` (a config of the same family) replaces the stored config, e.g. a new step count
    when fine-tuning; the network shape must still match the stored weights.
    """
    cfg_file, weights_file = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: no checkpoint here (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
    meta = read_checkpoint_meta(directory)
    family = get_family(meta["family"])
    config = config_override if config_override is not None else family.Config(**meta["config"])
    model = family(config, image_shape=tuple(meta["image_shape"]), num_classes=len(meta["class_names"]),
                   device=device)
    state = torch.load(weights_file, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    return model, meta, state


def has_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a checkpoint (its ``config.json`` is written last, so it marks a complete pair)."""
    return (directory / CONFIG_FILE).is_file()


def read_checkpoint_meta(directory: Path) -> dict[str, Any]:
    """A checkpoint's ``config.json``: ``family``, ``config``, ``image_shape``, ``class_names`` and ``step``."""
    return json.loads((directory / CONFIG_FILE).read_text())


def load_extended(directory: Path, device: torch.device, class_names: list[str],
                  config_override: Any | None = None) -> tuple[GeneratorFamily, dict[str, Any]]:
    """Load a checkpoint and extend its class conditioning to ``class_names`` (its classes first, in their order).

    Rows of a class-indexed tensor (embeddings, a trailing "null" class row of guidance) keep their trained values
    for the checkpoint's classes; the rows of the new classes keep this model's fresh initialisation (drawn from the
    global RNG: seed it for a reproducible run). Optimizer states start afresh. Returns (model, the checkpoint's
    meta).
    """
    old, meta, state = load_checkpoint(directory, torch.device("cpu"), config_override)
    known = list(meta["class_names"])
    if class_names[:len(known)] != known:
        raise ValueError(f"class_names must start with the checkpoint's classes {known}, got {class_names}")
    model = type(old)(old.config, image_shape=tuple(meta["image_shape"]), num_classes=len(class_names),
                      device=device)
    merged = _extend_rows(state["model"], model.state_dict(), len(known), len(class_names), "")
    model.load_state_dict(merged)
    return model, meta


def _extend_rows(old: Any, fresh: Any, k_old: int, k_new: int, where: str) -> Any:
    """``old`` with every tensor whose first dimension counts classes (K, or K plus extra rows) grown to ``k_new``."""
    if isinstance(old, dict):
        if set(old) == {"state", "param_groups"}:  # an optimizer: moments of grown tensors mean nothing; restart
            return fresh
        if set(old) != set(fresh):
            raise ValueError(f"checkpoint state{where} has keys {sorted(map(str, old))}, the model "
                             f"{sorted(map(str, fresh))}")
        return {k: _extend_rows(v, fresh[k], k_old, k_new, f"{where}.{k}") for k, v in old.items()}
    if isinstance(old, list | tuple):
        return type(old)(_extend_rows(v, f, k_old, k_new, f"{where}[{i}]") for i, (v, f) in
                         enumerate(zip(old, fresh, strict=True)))
    if not isinstance(old, torch.Tensor) or old.shape == fresh.shape:
        return old
    extra = old.shape[0] - k_old if old.dim() else -1
    if old.shape[1:] != fresh.shape[1:] or extra < 0 or fresh.shape[0] != k_new + extra:
        raise ValueError(f"checkpoint state{where} has shape {tuple(old.shape)}, the model {tuple(fresh.shape)}: "
                         "only the class dimension may grow")
    grown = fresh.detach().clone().to(old.device, old.dtype)
    grown[:k_old] = old[:k_old]
    grown[k_new:] = old[k_old:]  # extra rows (e.g. the null class of guidance) stay last
    return grown


def checkpoint_hash(directory: Path) -> str:
    """sha256 of the weights file: the ``checkpoint`` column of the manifest."""
    digest = hashlib.sha256()
    with open(directory / WEIGHTS_FILE, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fit(model: GeneratorFamily, images: torch.Tensor, labels: torch.Tensor, *, seed: int,
        class_names: list[str], checkpoint_dir: Path | None = None, start_step: int = 0,
        rng_state: torch.Tensor | None = None, on_step: StepCallback | None = None,
        device: torch.device | None = None) -> int:
    """Train ``model`` for ``model.config.steps`` steps on a dataset held as one tensor.

    Batches are index draws from that tensor (no loader overhead). Held on the training ``device`` (the default:
    the images' own device), a batch never leaves it: the path for small images. Held elsewhere (host memory,
    pinned for CUDA), each batch is gathered there and copied over: the streamed path for datasets larger than
    the device should hold. ``images`` may be float in [-1, 1] or uint8 pixels (0..255, a quarter of the memory),
    turned into [-1, 1] floats batch by batch on the training device.
    Resumes at ``start_step`` with the saved batch-RNG state; checkpoints every ``config.checkpoint_every``
    steps, at the end, and at every step of a family's optional ``stage_ends`` (the last step of a training stage,
    e.g. latent diffusion's autoencoder, so a resumed run never trains a finished stage again). Returns the final
    step.

    Under an initialised ``torch.distributed`` process group of P processes (``torchrun``), every process draws
    the same global batch of ``batch_size`` indices from the same seed and trains on its own 1/P slice of it, the
    networks wrapped in ``DistributedDataParallel`` (gradients averaged over processes, so a step sees the global
    batch as one process would); the noise differs per process. Only rank 0 calls ``on_step`` (with the losses
    averaged over processes) and writes checkpoints.
    """
    device = images.device if device is None else torch.device(device)
    cfg = model.config
    rank, world = _process_group()
    batch = cfg.batch_size // world
    if batch * world != cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {world} training processes")
    if world > 1:
        model.distribute(lambda net: DistributedDataParallel(net, device_ids=[device] if device.type == "cuda"
                                                             else None))
    batch_rng = torch.Generator().manual_seed(seed)  # CPU: the same batches on every device and process
    if rng_state is not None:
        batch_rng.set_state(rng_state)
    noise_rng = torch.Generator(device=device).manual_seed(seed + start_step + rank * RANK_SEED_STRIDE)
    n = images.shape[0]
    stage_ends = set(getattr(model, "stage_ends", ()))
    step = start_step
    while step < cfg.steps:
        idx = torch.randint(0, n, (cfg.batch_size,), generator=batch_rng)[rank * batch:(rank + 1) * batch]
        idx = idx.to(images.device)
        losses = model.train_step(*_batch(images, labels, idx, device), noise_rng)
        step += 1
        if world > 1:
            losses = _mean_over_processes(losses, device)
        if on_step is not None and rank == 0:
            on_step(step, losses)
        done = step == cfg.steps
        if checkpoint_dir is not None and rank == 0 and (
                done or step in stage_ends or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
            save_checkpoint(model, checkpoint_dir, step=step, class_names=class_names,
                            rng_state=batch_rng.get_state())
    if world > 1:
        dist.barrier()  # every process returns once rank 0's final checkpoint is written
    return step


def _batch(images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``idx`` of the dataset on the training device, as float images in [-1, 1]."""
    x = images[idx].to(device, non_blocking=True)  # asynchronous from pinned host memory
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1.0
    return x, labels[idx.to(labels.device)].to(device, non_blocking=True)


def _process_group() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mean_over_processes(losses: dict[str, float], device: torch.device) -> dict[str, float]:
    values = torch.tensor(list(losses.values()), dtype=torch.float64, device=device)
    dist.all_reduce(values)  # SUM: the one reduction every backend (gloo, nccl) supports
    return dict(zip(losses, (values / dist.get_world_size()).tolist(), strict=True))
