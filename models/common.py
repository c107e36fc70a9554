"""The few pieces every family shares: per-image noise, EMA weights, device and precision setup."""

from __future__ import annotations

import contextlib
import copy
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn


def pick_device(preference: str = "auto", rank: int = 0) -> torch.device:
    """``auto`` takes CUDA when present, else the CPU; ``cpu``/``cuda`` force one (``cuda`` fails without a GPU).

    ``rank`` (a worker's or a process's index) picks the GPU ``rank % device count``, so workers sharing a host
    each get their own; a worker that sees one GPU (its scheduler set ``CUDA_VISIBLE_DEVICES``) always gets it.
    """
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be one of auto, cpu, cuda; got {preference!r}")
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device("cuda", rank % torch.cuda.device_count()) if preference == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        # TF32 matmuls/convolutions: ~2x on Ampere+ at no visible cost for image generators.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); full fp32 on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def reset_peak_memory(device: torch.device) -> float | None:
    """Start a new peak-memory window; returns the memory held at its start in MiB (None where unknown).

    CUDA: the caching allocator's peak of allocated tensors. CPU: the process's peak resident set (``VmHWM``),
    reset through Linux's ``/proc/self/clear_refs``; it includes the interpreter, torch and any data in memory.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return _proc_status_mib("VmRSS")
    return None


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak memory in MiB since the last ``reset_peak_memory`` (or the process start); None where unknown."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        return _proc_status_mib("VmHWM")
    return None


def _proc_status_mib(field: str) -> float | None:
    found = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(found.group(1)) / 1024 if found else None


def per_image_normal(seeds: Sequence[int], shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """Standard normal noise of ``shape`` for each seed, stacked to (N, *shape).

    Each image gets its own CPU generator, so its noise is the same whatever batch it lands in
    and whatever the device: the determinism contract (README "Generators",
    **Determinism**).
    """
    noise = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device)


def per_image_streams(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, for samplers that draw fresh noise at every step (ancestral / DDPM)."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def stream_normal(streams: Sequence[torch.Generator], shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """The next normal draw of ``shape`` from each per-image stream, stacked to (N, *shape)."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in streams]).to(device)


class EMA(nn.Module):
    """Exponential moving average of a module's weights (Polyak averaging); sample from ``ema.module``."""

    def __init__(self, module: nn.Module, *, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for ema_p, p in zip(self.module.parameters(), module.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.module.buffers(), module.buffers(), strict=True):
            ema_b.copy_(b)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` in eval mode and restore its previous mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def fixed_shape_batches(n: int, size: int, device: torch.device) -> list[tuple[torch.Tensor, int]]:
    """Row indices of forward passes of exactly ``size`` rows covering 0..n-1, the last padded with row 0 copies.

    Matmul and convolution kernels are picked by tensor shape (measured on the CPU: a batch of 1 to 3 rows takes
    another kernel than 64 and moves pixels by ~1e-6). With one fixed shape, an image's pixels do not depend on
    how many images were asked for at once.
    """
    passes = []
    for start in range(0, n, size):
        keep = min(size, n - start)
        rows = torch.arange(start, start + keep, device=device)
        passes.append((torch.cat([rows, rows.new_full((size - keep,), start)]), keep))
    return passes


def group_count(channels: int) -> int:
    """GroupNorm groups for a layer of ``channels``: the largest of 8, 4, 2, 1 that divides it (the small nets here
    have 8 to 128 channels; 8 groups keep at least one channel per group and normalize over several)."""
    return math.gcd(8, channels)
