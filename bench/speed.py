"""Training and sampling throughput (images/s) of every generator family, each against a plain baseline.

Training, per family (``models.families.family_names()``, default config, batch size from the config):

- ``ours``: ``models.training.fit`` on a dataset held on the device as one tensor. On CUDA the families train
  under bf16 autocast with channels_last weights (both set inside the family code); ``ours + compile`` adds
  ``torch.compile`` where the family config has a ``compile`` flag.
- ``baseline``: a plain fp32 loop, a torch ``DataLoader`` (``TensorDataset``, shuffle, the config's batch size,
  ``num_workers=0``) whose batches are moved to the device and passed to the same family's ``train_step``. On CUDA
  the baseline runs without autocast and without TF32, so the ratio measures the data path and the precision.

Sampling, per family: ``sample`` on the family's default sampler; configs with ``sampler`` and ``sample_steps``
fields (diffusion) are also measured with DDIM 50 steps and ancestral DDPM 1000 steps (on the CPU on a few images,
see ``sampler_variants``). On CUDA every sampler is measured twice, as the family runs it (bf16) and in plain fp32.

The arms of one family alternate repeat by repeat, so a load change on a shared machine hits them alike; warm-up
steps are excluded and the median repeat is reported. The data are random images of the bundled example's shape
until 2026-12-07 (856 images, 1x16x16, 10 classes): throughput does not depend on pixel values or on how well a
model is trained.

Every row also has the arm's peak memory in MiB over its timed repeats: on CUDA the allocator's peak of tensors
(weights, optimizer state, the dataset on the device and activations), on the CPU the process's peak resident set
(VmHWM, reset before each repeat through ``/proc/self/clear_refs``; it includes the interpreter, torch and the
dataset, about the same for every arm); ``peak_over_start_mib`` is that peak less what was held when the repeat
started (on CUDA: activations, gradients and workspace; on the CPU it misses memory the allocator kept from before).

Imports only torch and ``models``: runs on a bare GPU host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch.utils.data import DataLoader, TensorDataset

from synthaug.models.common import peak_memory_mib, pick_device, reset_peak_memory
from synthaug.models.families import get_family
from synthaug.models.training import fit

IMAGE_SHAPE = (1, 16, 16)
NUM_CLASSES = 10
NUM_IMAGES = 856  # the example's train split


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long each measurement runs; ``for_device`` picks CPU, CUDA or smoke-test sizes."""

    warmup_steps: int
    steps: int  # training steps per timed repeat
    repeats: int  # timed training repeats
    sample_images: int  # images per timed sampling call
    sample_repeats: int
    slow_sample_images: int  # images of the one timed call of the DDPM 1000-step sampler
    max_sample_steps: int | None = None  # smoke runs cap every sampler's steps

    @classmethod
    def for_device(cls, device: torch.device, *, quick: bool) -> Plan:
        if quick:
            return cls(warmup_steps=1, steps=2, repeats=1, sample_images=8, sample_repeats=1, slow_sample_images=4,
                       max_sample_steps=4)
        if device.type == "cuda":
            return cls(warmup_steps=20, steps=100, repeats=5, sample_images=1024, sample_repeats=5,
                       slow_sample_images=256)
        return cls(warmup_steps=2, steps=8, repeats=5, sample_images=128, sample_repeats=3, slow_sample_images=8)


# ------------------------------------------------------------------------------------------------ machine


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on; stored with every result."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        models = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")]
        cpu = models[0] if models else cpu
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "commit": git("rev-parse", "--short", "HEAD"),
        "models_changed_since_commit": git("status", "--porcelain", "--", "models"),
    }


def git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None  # a copy without git history (e.g. on a GPU host)
    return out.stdout.strip()


# ------------------------------------------------------------------------------------------------ helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _no_autocast(*args: Any, **kwargs: Any) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


@contextlib.contextmanager
def plain_fp32(device: torch.device) -> Iterator[None]:
    """The baseline's precision: on CUDA no autocast (the families' bf16) and no TF32; the CPU already runs fp32."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with mock.patch.object(torch, "autocast", _no_autocast):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def build(name: str, config: Any, device: torch.device, image_shape: tuple[int, int, int] = IMAGE_SHAPE) -> Any:
    """A family model with initial weights seeded by 0 (every arm starts from the same weights)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        return get_family(name)(config, image_shape=image_shape, num_classes=NUM_CLASSES, device=device)


def fake_dataset(image_shape: tuple[int, int, int] = IMAGE_SHAPE,
                 num_images: int = NUM_IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand((num_images, *image_shape), generator=g) * 2 - 1
    return images, torch.randint(0, NUM_CLASSES, (num_images,), generator=g)


def measure(arms: dict[str, Callable[[], object]], *, repeats: int,
            device: torch.device) -> tuple[dict[str, list[float]], dict[str, tuple[float, float] | None]]:
    """Seconds per repeat of each arm (the arms alternating within every repeat) and each arm's highest peak memory
    with the memory held when that repeat started (MiB). CPU seconds of the process per repeat are kept under the
    key ``(arm, "cpu")``: on a loaded shared machine they measure the work where wall time measures the queue."""
    seconds: dict[Any, list[float]] = {arm: [] for arm in arms}
    peaks: dict[str, tuple[float, float] | None] = dict.fromkeys(arms)
    for _ in range(repeats):
        for arm, fn in arms.items():
            start = reset_peak_memory(device)
            cpu = time.process_time()
            seconds[arm].append(timed(fn, device))
            seconds.setdefault((arm, "cpu"), []).append(time.process_time() - cpu)
            peak = peak_memory_mib(device)
            if peak is not None and start is not None and (peaks[arm] is None or peak > peaks[arm][0]):
                peaks[arm] = (peak, start)
    return seconds, peaks


def _rows(family: str, measured: tuple[dict[str, list[float]], dict[str, tuple[float, float] | None]],
          images: dict[str, int], baseline: str, extra: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One result row per arm: median images/s, spread over the repeats, the ratio to the baseline arm, peak memory."""
    seconds, peaks = measured
    rates = {arm: [images[arm] / s for s in times] for arm, times in seconds.items() if isinstance(arm, str)}
    cpu = {arm: statistics.median(seconds[(arm, "cpu")]) / images[arm] for arm in rates if (arm, "cpu") in seconds}
    base = statistics.median(rates[baseline])
    return [{"family": family, "arm": arm, **extra.get(arm, {}), "images_per_repeat": images[arm],
             "repeats": len(r), "images_per_s": statistics.median(r), "min_images_per_s": min(r),
             "max_images_per_s": max(r), "s_per_image": 1.0 / statistics.median(r), "cpu_s_per_image": cpu.get(arm),
             "vs_baseline": statistics.median(r) / base,
             "peak_mib": peaks[arm][0] if peaks[arm] else None,
             "peak_over_start_mib": peaks[arm][0] - peaks[arm][1] if peaks[arm] else None} for arm, r in rates.items()]


# ------------------------------------------------------------------------------------------------ training


def bench_train(name: str, device: torch.device, plan: Plan, *, config: Any = None,
                image_shape: tuple[int, int, int] = IMAGE_SHAPE, num_images: int = NUM_IMAGES,
                compile_arm: bool = True, baseline_arm: bool = True) -> list[dict[str, Any]]:
    """Training throughput of ``name``: fit on a device-resident tensor vs. the fp32 DataLoader baseline.

    ``config`` defaults to the family's default config; ``compile_arm`` adds ``ours + compile`` on CUDA;
    without ``baseline_arm`` only ``ours`` (and compile) run, and ``vs_baseline`` is None.
    """
    config = get_family(name).Config() if config is None else config
    images, labels = fake_dataset(image_shape, num_images)
    x, y = images.to(device), labels.to(device)
    class_names = [str(c) for c in range(NUM_CLASSES)]

    def ours(model: Any) -> Callable[[int], object]:
        def run(steps: int) -> None:
            # fit trains for config.steps: only the step count of the model's config changes between calls.
            model.config = dataclasses.replace(model.config, steps=steps)
            fit(model, x, y, seed=0, class_names=class_names)
        return run

    baseline_model = build(name, config, device, image_shape)
    loader = DataLoader(TensorDataset(images, labels), batch_size=config.batch_size, shuffle=True, num_workers=0,
                        drop_last=True)
    batches = _endless(loader)
    noise = torch.Generator(device=device).manual_seed(0)

    def baseline(steps: int) -> None:
        with plain_fp32(device):
            for _ in range(steps):
                xb, yb = next(batches)
                baseline_model.train_step(xb.to(device), yb.to(device), noise)

    arms: dict[str, Callable[[int], object]] = {"baseline": baseline} if baseline_arm else {}
    arms["ours"] = ours(build(name, config, device, image_shape))
    if compile_arm and device.type == "cuda" and "compile" in {f.name for f in dataclasses.fields(config)}:
        arms["ours + compile"] = ours(build(name, dataclasses.replace(config, compile=True), device, image_shape))
    for run in arms.values():
        run(plan.warmup_steps)  # includes torch.compile's compilation
    measured = measure({arm: lambda run=run: run(plan.steps) for arm, run in arms.items()},
                       repeats=plan.repeats, device=device)
    precision = "fp32" if device.type == "cpu" else "bf16 autocast"
    extra = {"baseline": {"data": "DataLoader", "precision": "fp32"},
             "ours": {"data": "device tensor (fit)", "precision": precision},
             "ours + compile": {"data": "device tensor (fit)", "precision": precision + " + compile"}}
    rows = _rows(name, measured, dict.fromkeys(arms, plan.steps * config.batch_size),
                 "baseline" if baseline_arm else "ours", extra)
    for row in rows:
        row["batch_size"] = config.batch_size
        if not baseline_arm:
            row["vs_baseline"] = None
    return rows


def _endless(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:  # a fresh shuffle every epoch, as a training loop over epochs would do
        yield from loader


# ------------------------------------------------------------------------------------------------ sampling


def sampler_variants(config: Any, plan: Plan) -> list[tuple[str, Any, int, int]]:
    """(label, config, images, repeats) per sampler: the default, plus DDIM 50 / DDPM 1000 for step-based samplers.

    The slow DDPM sampler is timed once, on ``plan.slow_sample_images`` images. Sampling pads every network call to
    ``sample_batch_size`` images, so when that is fewer images the micro-batch shrinks to match, and the default
    sampler is timed again at the same micro-batch: the like-for-like reference of DDPM.
    """
    fields = {f.name for f in dataclasses.fields(config)}
    if not {"sampler", "sample_steps", "sample_batch_size"} <= fields:
        return [("default", config, plan.sample_images, plan.sample_repeats)]
    variants = [(config, plan.sample_images, plan.sample_repeats),
                (dataclasses.replace(config, sampler="ddim", sample_steps=50), plan.sample_images, plan.sample_repeats)]
    slow = dataclasses.replace(config, sampler="ddpm", sample_steps=1000)
    if plan.slow_sample_images < config.sample_batch_size:
        slow = dataclasses.replace(slow, sample_batch_size=plan.slow_sample_images)
        small = dataclasses.replace(config, sample_batch_size=plan.slow_sample_images)
        variants.append((small, plan.slow_sample_images, plan.sample_repeats))
    variants.append((slow, plan.slow_sample_images, 1))
    if plan.max_sample_steps is not None:
        variants = [(dataclasses.replace(c, sample_steps=min(c.sample_steps, plan.max_sample_steps)), n, r)
                    for c, n, r in variants]
    return [(f"{c.sampler} {c.sample_steps} steps, micro-batch {c.sample_batch_size}", c, n, r)
            for c, n, r in variants]


def _sample_arms(model: Any, labels: torch.Tensor, seeds: list[int],
                 device: torch.device) -> dict[str, Callable[[], object]]:
    def ours() -> object:
        return model.sample(labels, seeds)

    def fp32() -> object:
        with plain_fp32(device):
            return model.sample(labels, seeds)

    return {"fp32": fp32, "ours": ours} if device.type == "cuda" else {"ours": ours}


def bench_sample(name: str, device: torch.device, plan: Plan) -> list[dict[str, Any]]:
    """Sampling throughput of ``name`` per sampler; on CUDA also in plain fp32 (the baseline there)."""
    return sample_rows(name, device, sampler_variants(get_family(name).Config(), plan), IMAGE_SHAPE)


def sample_rows(name: str, device: torch.device, variants: list[tuple[str, Any, int, int]],
                image_shape: tuple[int, int, int]) -> list[dict[str, Any]]:
    """Sampling throughput of ``name`` for each (label, config, images, repeats) variant; on CUDA also in fp32."""
    precision = "fp32" if device.type == "cpu" else "bf16 autocast"
    rows = []
    for i, (label, config, n, repeats) in enumerate(variants):
        model = build(name, config, device, image_shape)
        labels, seeds = torch.arange(n) % NUM_CLASSES, list(range(n))
        if i == 0:
            model.sample(labels[:8], seeds[:8])  # warm-up: kernels, caches, CUDA context
        arms = _sample_arms(model, labels, seeds, device)
        measured = measure(arms, repeats=repeats, device=device)
        extra = {"ours": {"sampler": label, "precision": precision}, "fp32": {"sampler": label, "precision": "fp32"}}
        rows += _rows(name, measured, dict.fromkeys(arms, n), "fp32" if "fp32" in arms else "ours", extra)
    for row in rows:
        # Reference: the default sampler (the first variant) as the family runs it, on as many images.
        ref = next(r for r in rows if r["arm"] == "ours" and r["images_per_repeat"] == row["images_per_repeat"])
        row["vs_default_sampler"] = row["images_per_s"] / ref["images_per_s"]
        if device.type == "cpu":
            row["vs_baseline"] = None  # no fp32 arm to compare with: the CPU path is fp32 already
    return rows


# ------------------------------------------------------------------------------------------------ tables


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A markdown table of ``rows`` with (header, key) columns; floats to 3 significant digits."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.2f}" if abs(value) < 10 else f"{value:.0f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k)) for _, k in columns) + " |" for r in rows]
    return "\n".join(lines)


TRAIN_COLUMNS = [("family", "family"), ("arm", "arm"), ("data", "data"), ("precision", "precision"),
                 ("batch", "batch_size"), ("images/s (median)", "images_per_s"), ("min", "min_images_per_s"),
                 ("max", "max_images_per_s"), ("repeats", "repeats"), ("× baseline", "vs_baseline"),
                 ("peak MiB", "peak_mib")]
SAMPLE_COLUMNS = [("family", "family"), ("sampler", "sampler"), ("precision", "precision"),
                  ("images timed", "images_per_repeat"), ("images/s (median)", "images_per_s"),
                  ("min", "min_images_per_s"), ("max", "max_images_per_s"), ("repeats", "repeats"),
                  ("× fp32", "vs_baseline"), ("× default sampler, same images", "vs_default_sampler"),
                  ("peak MiB", "peak_mib")]


def run(kind: str, families: list[str], device_name: str, *, quick: bool) -> dict[str, Any]:
    """Run the ``train`` or ``sample`` benchmark for ``families``; returns the result record."""
    device = pick_device(device_name)
    plan = Plan.for_device(device, quick=quick)
    bench = bench_train if kind == "train" else bench_sample
    rows = []
    for name in families:
        rows += bench(name, device, plan)
        print(f"  {kind} {name} done", flush=True)
    return {"benchmark": kind, "machine": machine_info(device), "plan": dataclasses.asdict(plan), "quick": quick,
            "rows": rows}
