"""The one training driver all families share, and checkpoints (state_dict + config.json, no pickled classes).

A checkpoint directory holds ``config.json`` (family, config, image shape, class names, step) and
``weights.pt`` (tensors and plain numbers only, loaded with ``weights_only=True``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from synthaug.models.base import GeneratorFamily
from synthaug.models.config import config_from_dict
from synthaug.models.families import get_config, get_family

StepCallback = Callable[[int, dict[str, float]], None]
# A checkpoint is untrusted input (init_from, a published generator): what its config.json may ask for.
MAX_CLASSES = 10_000
MAX_IMAGE_SIDE = 1024  # data.image_size's bound
IMAGE_CHANNELS = (1, 3)
MAX_STATE_NUMEL = 250_000_000  # numbers in a family's state (weights, EMA): 1 GB as float32
MAX_CONFIG_BYTES = 1 << 20  # config.json; a real one is about 1 KB
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


class CheckpointError(ValueError):
    """A checkpoint folder cannot be used; the message is one line naming the file, the field and the fix."""


def load_checkpoint(directory: Path, device: torch.device,
                    config_override: Any | None = None) -> tuple[GeneratorFamily, dict[str, Any], dict[str, Any]]:
    """Rebuild a model from a checkpoint directory: returns (model, meta, raw state).

    ``config_override`` (a config of the same family) replaces the stored config, e.g. a new step count
    when fine-tuning; the network shape must still match the stored weights.

    The folder is untrusted input: its ``config.json`` is checked (``read_checkpoint_meta``), the network it
    describes is sized before it is built (``build_family``), and ``weights.pt`` is read tensors-only and memory-
    mapped, every tensor's shape and dtype checked against the network and every float checked finite before any
    is copied in (``check_state``). Any problem raises ``CheckpointError`` naming the file and the field.
    """
    cfg_file, weights_file = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise CheckpointError(f"{f}: no checkpoint here (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
    meta = read_checkpoint_meta(directory)
    config = config_override if config_override is not None else meta_config(meta, cfg_file)
    try:
        model = build_family(meta["family"], config, image_shape=tuple(meta["image_shape"]),
                             num_classes=len(meta["class_names"]), device=device)
    except ValueError as exc:
        raise CheckpointError(f"{cfg_file}: {exc}") from None
    state = read_weights(weights_file, device)
    check_state(state, model, weights_file)
    try:
        model.load_state_dict(state["model"])
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{weights_file}: does not fit the network {cfg_file.name} describes "
                              f"({_first_line(exc)})") from None
    return model, meta, state


def build_family(name: str, config: Any, *, image_shape: tuple[int, ...], num_classes: int,
                 device: torch.device) -> GeneratorFamily:
    """The family ``name`` built with ``config`` on ``device``, once it is known to fit: it is first built on torch's
    meta device (no memory), and a ValueError says so when its state would hold more than ``MAX_STATE_NUMEL``
    numbers. The family's own ValueErrors (an image shape its network cannot take) propagate."""
    family = get_family(name)
    with torch.device("meta"):
        ghost = family(config, image_shape=image_shape, num_classes=num_classes, device=torch.device("meta"))
    numel = _numel(ghost.state_dict())
    if numel > MAX_STATE_NUMEL:
        raise ValueError(f"the {name} network this config describes would hold {numel:,} numbers, more than the "
                         f"limit of {MAX_STATE_NUMEL:,} (image shape {list(image_shape)}, {num_classes} classes); "
                         "use smaller channels or images")
    if torch.device(device).type == "meta":
        return ghost
    del ghost
    return family(config, image_shape=image_shape, num_classes=num_classes, device=device)


def read_weights(weights_file: Path, device: torch.device) -> dict[str, Any]:
    """``weights.pt`` read tensors-only (``weights_only=True``) and memory-mapped (nothing is read into memory yet);
    CheckpointError when it is not such a file or not a checkpoint's ``{"model": ..., "step": ...}``."""
    try:
        state = torch.load(weights_file, map_location=device, weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, IndexError,
            KeyError, TypeError, AttributeError) as exc:  # what torch's reader raises on a file that is not its own
        refused = "holds more than tensors and numbers" if isinstance(exc, pickle.UnpicklingError) else "unreadable"
        raise CheckpointError(f"{weights_file}: not a tensors-only checkpoint ({refused}: {type(exc).__name__}); "
                              "it is never unpickled: re-save it with torch.save of a state dict") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{weights_file}: expected a checkpoint ({{'model': <state>, 'step': N}}), got "
                              f"{type(state).__name__}{' without model' if isinstance(state, dict) else ''}")
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= 10**9:
        raise CheckpointError(f"{weights_file}: step must be a whole number >= 0, got {str(step)[:40]}")
    rng = state.get("rng")
    if rng is not None and not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.dim() == 1
                                and rng.numel() <= 1 << 16):
        raise CheckpointError(f"{weights_file}: rng must be a generator state (a 1-D uint8 tensor)")
    return state


def check_state(state: dict[str, Any], model: GeneratorFamily, weights_file: Path) -> None:
    """CheckpointError unless every tensor of ``state["model"]`` that the network has is of its shape and dtype,
    every floating-point tensor is finite, and the whole state is not far larger than the network's (optimizer
    moments: about twice the weights)."""
    own = model.state_dict()
    total = _numel(state["model"])
    if total > 3 * _numel(own) + 1_000_000:
        raise CheckpointError(f"{weights_file}: holds {total:,} numbers for a network of {_numel(own):,}; not a "
                              "checkpoint of this network")
    for where, theirs, mine in _tensor_pairs(state["model"], own, "model"):
        if mine is not None and (tuple(theirs.shape) != tuple(mine.shape) or theirs.dtype != mine.dtype):
            raise CheckpointError(f"{weights_file}: {where} is {_describe(theirs)} but the network's is "
                                  f"{_describe(mine)}; the weights do not match {CONFIG_FILE} (image shape, "
                                  "classes or config)")
        if theirs.is_floating_point() and not bool(torch.isfinite(theirs).all()):
            raise CheckpointError(f"{weights_file}: {where} holds NaN or infinite values; the weights are broken")
        if not (theirs.is_floating_point() or theirs.dtype in (torch.int64, torch.int32, torch.bool, torch.uint8)):
            raise CheckpointError(f"{weights_file}: {where} has dtype {theirs.dtype}")


def _tensor_pairs(theirs: Any, mine: Any, where: str):
    """(path, their tensor, the network's tensor at the same path or None) for every tensor in ``theirs``."""
    if isinstance(theirs, torch.Tensor):
        yield where, theirs, mine if isinstance(mine, torch.Tensor) else None
    elif isinstance(theirs, dict):
        for key, value in theirs.items():
            yield from _tensor_pairs(value, mine.get(key) if isinstance(mine, dict) else None, f"{where}.{key}")
    elif isinstance(theirs, list | tuple):
        for i, value in enumerate(theirs):
            other = mine[i] if isinstance(mine, list | tuple) and i < len(mine) else None
            yield from _tensor_pairs(value, other, f"{where}[{i}]")


def _numel(state: Any) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel()
    if isinstance(state, dict):
        return sum(_numel(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(_numel(v) for v in state)
    return 0


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def has_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a checkpoint (its ``config.json`` is written last, so it marks a complete pair)."""
    return (directory / CONFIG_FILE).is_file()


def read_checkpoint_meta(directory: Path) -> dict[str, Any]:
    """A checkpoint's ``config.json``: ``family``, ``config``, ``image_shape``, ``class_names`` and ``step``,
    checked (CheckpointError naming the file and the field): a registered family, a config its class accepts
    (``meta_config``), a (C, H, W) image shape with C in ``IMAGE_CHANNELS`` and sides up to ``MAX_IMAGE_SIDE``, one
    to ``MAX_CLASSES`` distinct non-empty class names, a whole step >= 0. Class names are not checked as folder
    names here (``models/`` knows no folders): callers that write by class name check them."""
    path = directory / CONFIG_FILE
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes; a checkpoint config has about 1 KB")
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path}: not readable JSON ({type(exc).__name__}: {_first_line(exc)[:120]})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    problem = _meta_problem(meta)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    meta_config(meta, path)
    return meta


def _meta_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint's meta fields (the config aside), or None."""
    family = meta.get("family")
    try:
        get_config(family if isinstance(family, str) else repr(family))
    except ValueError as exc:
        return f"family: {exc}"
    shape = meta.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3
            and all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
        return f"image_shape must be [channels, height, width] of whole numbers, got {str(shape)[:60]}"
    if shape[0] not in IMAGE_CHANNELS or not all(1 <= s <= MAX_IMAGE_SIDE for s in shape[1:]):
        return (f"image_shape {shape} is out of bounds: channels {' or '.join(map(str, IMAGE_CHANNELS))}, "
                f"height and width 1 to {MAX_IMAGE_SIDE}")
    names = meta.get("class_names")
    if not (isinstance(names, list) and all(isinstance(c, str) and c for c in names)):
        return "class_names must be a list of non-empty strings"
    if not 1 <= len(names) <= MAX_CLASSES or len(set(names)) != len(names):
        return f"class_names must hold 1 to {MAX_CLASSES} distinct names, got {len(names)} ({len(set(names))} distinct)"
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"step must be a whole number >= 0, got {str(step)[:40]}"
    return None


def meta_config(meta: dict[str, Any], path: Path) -> Any:
    """The family config a checkpoint's meta stores, built with every field checked (``config_from_dict``)."""
    try:
        return config_from_dict(get_config(meta["family"]), meta.get("config"))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: config: {_first_line(exc)}") from None


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
