"""Pixel against latent diffusion at growing image sizes: seconds per training image, sampled images/s, peak memory.

For every side S in ``--size`` (e.g. 64, 128, 256) and random (C, S, S) images (C = ``--channels``, 3 by default):

- ``diffusion``: the UNet denoises the S x S image.
- ``latent_diffusion``: the UNet denoises the S/4 x S/4 latent of the family's default autoencoder; its two
  training stages are timed apart: ``autoencoder`` (stage 1) and ``unet`` (stage 2, the encoder runs without
  gradients on every batch). ``whole run`` weights them by the default config's split (``autoencoder_steps`` of
  ``steps``).

Both families use one UNet rule, so neither gets a network unsuited to its input: as many levels as take the input
side down to 8 (at least two), channels 32, 64, 64, 128, 128, 128 per level, self-attention only at the 8 x 8 level
(attention at larger maps costs memory quadratic in their pixel count). Every training arm of ``models.training``
is kept: the plain fp32 ``DataLoader`` loop (``baseline``), ``ours`` (the dataset held on the device; bf16 autocast
and channels_last on CUDA) and on CUDA ``ours + compile``; sampling is the default guided DPM-Solver++ 20 steps, on
CUDA also in plain fp32. Peak memory as in ``bench.speed``.

Imports only torch, ``models`` (torch + monai) and ``bench.speed``: runs on a GPU host with torch and monai.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from bench import speed
from synthaug.models.common import pick_device
from synthaug.models.config import MAX_STEPS
from synthaug.models.families import get_family

SIZE_FAMILIES = ("diffusion", "latent_diffusion")
CHANNEL_LADDER = (32, 64, 64, 128, 128, 128)
LOWEST_SIDE = 8


@dataclasses.dataclass(frozen=True)
class SizePlan:
    """How long each measurement runs; ``width`` scales every network's channels (1/4 in smoke runs)."""

    warmup_steps: int
    steps: int
    repeats: int
    batch_size: int
    num_images: int
    sample_images: int
    sample_repeats: int
    sample_steps: int
    width: float = 1.0
    baseline: bool = True  # also time the plain fp32 DataLoader loop

    @classmethod
    def for_device(cls, device: torch.device, *, quick: bool) -> SizePlan:
        if quick:
            return cls(warmup_steps=1, steps=1, repeats=1, batch_size=2, num_images=4, sample_images=2,
                       sample_repeats=1, sample_steps=2, width=0.25)
        if device.type == "cuda":
            return cls(warmup_steps=5, steps=20, repeats=3, batch_size=32, num_images=512, sample_images=64,
                       sample_repeats=3, sample_steps=20)
        # The CPU path is fp32 either way, so the fp32 loop is left out: the CPU time goes to pixel vs latent.
        return cls(warmup_steps=1, steps=1, repeats=2, batch_size=2, num_images=16, sample_images=2,
                   sample_repeats=1, sample_steps=20, baseline=False)


def unet_levels(side: int) -> int:
    """UNet levels that take ``side`` down to 8 (at least 2); the side must be a power-of-two multiple of 8."""
    levels = 1
    while side > LOWEST_SIDE and side % 2 == 0:
        side, levels = side // 2, levels + 1
    if side != LOWEST_SIDE:
        raise ValueError(f"a UNet input side must be 8 times a power of two, got one that ends at {side}")
    return max(levels, 2)


def size_config(name: str, side: int, plan: SizePlan) -> Any:
    """The family's default config with the UNet of the size rule, the plan's batch and sampler steps."""
    base = get_family(name).Config()
    groups = 8 if plan.width == 1.0 else 4

    def scale(c: int) -> int:
        return max(groups, int(c * plan.width))

    unet_side = side // base.downsampling if name == "latent_diffusion" else side
    levels = unet_levels(unet_side)
    changes: dict[str, Any] = {
        "channels": tuple(scale(c) for c in CHANNEL_LADDER[:levels]),
        "attention_levels": (False,) * (levels - 1) + (True,),
        "norm_num_groups": groups, "num_head_channels": scale(32), "batch_size": plan.batch_size,
        "sample_steps": plan.sample_steps, "sample_batch_size": plan.sample_images,
    }
    if name == "latent_diffusion":
        changes["ae_channels"] = tuple(scale(c) for c in base.ae_channels)
    return dataclasses.replace(base, **changes)


def run(kinds: list[str], families: list[str], sizes: list[int], device_name: str, *, channels: int,
        quick: bool) -> dict[str, Any]:
    """Train and/or sample rows of every (size, family), and the pixel-vs-latent summary of each size."""
    unknown = sorted(set(families) - set(SIZE_FAMILIES))
    if unknown:
        raise ValueError(f"--size compares {', '.join(SIZE_FAMILIES)}; drop --family {', '.join(unknown)}")
    device = pick_device(device_name)
    plan = SizePlan.for_device(device, quick=quick)
    train_rows: list[dict[str, Any]] = []
    sample_rows: list[dict[str, Any]] = []
    for side in sizes:
        shape = (channels, side, side)
        for name in families:
            config = size_config(name, side, plan)
            if "train" in kinds:
                train_rows += _train(name, config, shape, device, plan, side)
            if "sample" in kinds:
                label = f"{config.sampler} {config.sample_steps} steps, guidance {config.guidance_scale}"
                rows = speed.sample_rows(name, device, [(label, config, plan.sample_images, plan.sample_repeats)],
                                         shape)
                sample_rows += [{**row, "size": side, "unet_input": _unet_input(name, config, shape)} for row in rows]
            print(f"  {side} px {name} done", flush=True)
    return {"benchmark": "sizes", "machine": speed.machine_info(device), "plan": dataclasses.asdict(plan),
            "quick": quick, "channels": channels, "train_rows": train_rows, "sample_rows": sample_rows,
            "summary": summary(train_rows, sample_rows, sizes)}


def _unet_input(name: str, config: Any, shape: tuple[int, int, int]) -> str:
    if name == "latent_diffusion":
        f = config.downsampling
        return f"{config.latent_channels}x{shape[1] // f}x{shape[2] // f}"
    return "x".join(map(str, shape))


def _train(name: str, config: Any, shape: tuple[int, int, int], device: torch.device, plan: SizePlan,
           side: int) -> list[dict[str, Any]]:
    """Rows of every training arm; latent diffusion's two stages apart (a step count that keeps the stage fixed)."""
    stages = [("pixels", config)] if name != "latent_diffusion" else [
        ("unet", dataclasses.replace(config, autoencoder_steps=0)),
        ("autoencoder", dataclasses.replace(config, autoencoder_steps=MAX_STEPS))]
    rows = []
    for stage, cfg in stages:
        for row in speed.bench_train(name, device, plan, config=cfg, image_shape=shape, num_images=plan.num_images,
                                     compile_arm=stage != "autoencoder", baseline_arm=plan.baseline):
            rows.append({**row, "size": side, "stage": stage, "unet_input": _unet_input(name, config, shape)})
    return rows


def summary(train_rows: list[dict[str, Any]], sample_rows: list[dict[str, Any]],
            sizes: list[int]) -> list[dict[str, Any]]:
    """Per size, pixel against latent on the ``ours`` arm: cost per training image, sampling speed, peak memory."""
    def pick(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
        return next((r for r in rows if r["arm"] == "ours" and all(r.get(k) == v for k, v in match.items())), None)

    default = get_family("latent_diffusion").Config()
    ae_share = min(default.autoencoder_steps, default.steps) / default.steps
    out = []
    for side in sizes:
        pixel = pick(train_rows, size=side, family="diffusion")
        unet = pick(train_rows, size=side, family="latent_diffusion", stage="unet")
        ae = pick(train_rows, size=side, family="latent_diffusion", stage="autoencoder")
        row: dict[str, Any] = {"size": side}
        if pixel and unet and ae:
            whole = ae_share * ae["s_per_image"] + (1 - ae_share) * unet["s_per_image"]
            whole_cpu = ae_share * ae["cpu_s_per_image"] + (1 - ae_share) * unet["cpu_s_per_image"]
            row |= {"pixel_cpu_s_per_train_image": pixel["cpu_s_per_image"],
                    "latent_unet_cpu_s_per_train_image": unet["cpu_s_per_image"],
                    "latent_ae_cpu_s_per_train_image": ae["cpu_s_per_image"],
                    "unet_stage_cheaper_cpu_x": pixel["cpu_s_per_image"] / unet["cpu_s_per_image"],
                    "whole_run_cheaper_cpu_x": pixel["cpu_s_per_image"] / whole_cpu}
            row |= {"pixel_s_per_train_image": pixel["s_per_image"], "latent_unet_s_per_train_image":
                    unet["s_per_image"], "latent_ae_s_per_train_image": ae["s_per_image"],
                    "latent_whole_s_per_train_image": whole,
                    "unet_stage_cheaper_x": pixel["s_per_image"] / unet["s_per_image"],
                    "whole_run_cheaper_x": pixel["s_per_image"] / whole,
                    "pixel_train_peak_mib": pixel["peak_mib"],
                    "latent_train_peak_mib": max(unet["peak_mib"] or 0.0, ae["peak_mib"] or 0.0) or None,
                    "pixel_train_over_start_mib": pixel["peak_over_start_mib"],
                    "latent_train_over_start_mib": max(unet["peak_over_start_mib"] or 0.0,
                                                       ae["peak_over_start_mib"] or 0.0) or None}
        pixel_s = pick(sample_rows, size=side, family="diffusion")
        latent_s = pick(sample_rows, size=side, family="latent_diffusion")
        if pixel_s and latent_s:
            row |= {"pixel_sampled_images_per_s": pixel_s["images_per_s"],
                    "latent_sampled_images_per_s": latent_s["images_per_s"],
                    "sampling_faster_x": latent_s["images_per_s"] / pixel_s["images_per_s"],
                    "pixel_sample_peak_mib": pixel_s["peak_mib"], "latent_sample_peak_mib": latent_s["peak_mib"]}
        out.append(row)
    return out


TRAIN_COLUMNS = [("size", "size"), ("family", "family"), ("stage", "stage"), ("UNet input", "unet_input"),
                 ("arm", "arm"), ("precision", "precision"), ("batch", "batch_size"),
                 ("s / training image", "s_per_image"), ("CPU s / training image", "cpu_s_per_image"),
                 ("images/s", "images_per_s"), ("repeats", "repeats"),
                 ("× fp32 loop", "vs_baseline"), ("peak MiB", "peak_mib"), ("over start MiB", "peak_over_start_mib")]
SAMPLE_COLUMNS = [("size", "size"), ("family", "family"), ("UNet input", "unet_input"), ("sampler", "sampler"),
                  ("precision", "precision"), ("images timed", "images_per_repeat"), ("images/s", "images_per_s"),
                  ("repeats", "repeats"), ("× fp32", "vs_baseline"), ("peak MiB", "peak_mib"),
                  ("over start MiB", "peak_over_start_mib")]
SUMMARY_COLUMNS = [("size", "size"), ("pixel CPU s/img", "pixel_cpu_s_per_train_image"),
                   ("latent UNet CPU s/img", "latent_unet_cpu_s_per_train_image"),
                   ("latent AE CPU s/img", "latent_ae_cpu_s_per_train_image"),
                   ("UNet stage × cheaper (CPU s)", "unet_stage_cheaper_cpu_x"),
                   ("whole run × cheaper (CPU s)", "whole_run_cheaper_cpu_x"),
                   ("pixel s/img", "pixel_s_per_train_image"),
                   ("latent UNet s/img", "latent_unet_s_per_train_image"),
                   ("latent AE s/img", "latent_ae_s_per_train_image"),
                   ("latent whole-run s/img", "latent_whole_s_per_train_image"),
                   ("UNet stage × cheaper", "unet_stage_cheaper_x"), ("whole run × cheaper", "whole_run_cheaper_x"),
                   ("pixel sampled img/s", "pixel_sampled_images_per_s"),
                   ("latent sampled img/s", "latent_sampled_images_per_s"), ("sampling × faster", "sampling_faster_x"),
                   ("pixel train peak MiB", "pixel_train_peak_mib"), ("latent train peak MiB", "latent_train_peak_mib"),
                   ("pixel train over start MiB", "pixel_train_over_start_mib"),
                   ("latent train over start MiB", "latent_train_over_start_mib"),
                   ("pixel sample peak MiB", "pixel_sample_peak_mib"),
                   ("latent sample peak MiB", "latent_sample_peak_mib")]


def markdown(record: dict[str, Any]) -> str:
    """The summary, training and sampling tables of a record, with the machine."""
    parts = [f"machine: {record['machine']}", "", f"plan: {record['plan']}, image channels {record['channels']}", ""]
    for title, rows, columns in (("pixel vs latent", record["summary"], SUMMARY_COLUMNS),
                                 ("training", record["train_rows"], TRAIN_COLUMNS),
                                 ("sampling", record["sample_rows"], SAMPLE_COLUMNS)):
        if rows:
            parts += [f"### {title}", "", speed.markdown_table(rows, columns), ""]
    return "\n".join(parts)
