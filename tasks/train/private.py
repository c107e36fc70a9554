"""Differentially private training of a generator (DP-SGD, Abadi et al. 2016) with Opacus.

``model.dp.epsilon`` set: the train step trains a family of ``DP_FAMILIES`` (``tasks.core.params.model``) with DP-SGD
instead of the shared driver (``models.training.fit``). The family's own ``train_step`` runs unchanged; this module
only swaps what it calls, the same for every such family (one network ``net``, one ``optimizer``):

- each training network goes through ``distribute`` into its own Opacus ``GradSampleModule`` (per-sample
  gradients; for diffusion its hooks also cover MONAI's ``DiffusionModelUNet``: Conv2d, GroupNorm, Linear, including
  attention, and the class ``Embedding``; for latent diffusion also MONAI's ``AutoencoderKL``; ``torch.compile`` is
  bypassed, as the plain network is wrapped);
- each optimizer (``OPTIMIZERS``: latent diffusion has one per stage) is wrapped in an Opacus ``DPOptimizer``: each
  per-sample gradient is clipped to ``max_grad_norm`` and Gaussian noise of ``noise_multiplier * max_grad_norm`` is
  added to their sum. A step trains one stage, so it is one mechanism whichever optimizer takes it;
- batches are drawn by Poisson sampling (Opacus ``UniformWithReplacementSampler``: every training image joins each
  batch independently with probability ``batch_size / N``), the sampling the accountant's amplification assumes
  (the shared driver's fixed-size draws with replacement would not match it).

Latent diffusion also learns one number from the images outside gradient descent: the latent scale (1 / RMS of the
training latents, ``models.latent_diffusion``). Here it is a Gaussian mechanism of its own (``private_latent_scale``:
each image's log mean-square latent clipped to +-``LOG_MOMENT_BOUND``, summed, noised at ``SCALE_NOISE``), composed
with the steps in the same accountant.

The noise multiplier is the smallest that keeps (epsilon, delta) within ``model.dp`` after ``steps`` steps (and the
scale's mechanism) under the RDP accountant (Opacus ``get_noise_multiplier``, or a bisection over Opacus's
accountant when there is the extra mechanism); the accountant then reports the epsilon actually spent. ``dp.json``
beside the checkpoint records it with the weights' sha256.

What the epsilon covers, and what a release may claim: ``tasks/core/privacy/dp.py``.

Opacus stays out of ``models/`` (which must run with torch and MONAI alone): it is imported here, when DP is on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from synthaug.models.base import GeneratorFamily
from synthaug.models.latent_diffusion import LatentDiffusion, latent_scale_value
from synthaug.models.training import checkpoint_hash, save_checkpoint
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.params.model import DPParams
from synthaug.tasks.core.privacy.dp import DP_FILE

MIN_EXPECTED_BATCH = 16  # P(empty Poisson batch) ~ exp(-batch) per step: 1e-7 at 16
OPTIMIZERS = {"latent_diffusion": ("ae_optimizer", "optimizer")}  # attributes; every other family: ("optimizer",)
# The latent scale's mechanism: a per-image log mean-square latent within +-8 covers scales e^-4 to e^4 (Stable
# Diffusion's 0.18 is e^-1.7); noise 8 x that bound costs alpha / 128 in RDP, little beside the steps at useful
# budgets, and leaves the mean's noise at 64 / N in log variance (a scale within 1.3x at N = 120).
LOG_MOMENT_BOUND, SCALE_NOISE = 8.0, 8.0


def fit_private(model: GeneratorFamily, images: torch.Tensor, labels: torch.Tensor, params: DPParams, *, seed: int,
                class_names: list[str], checkpoint_dir: Path,
                on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train ``model`` for ``model.config.steps`` DP-SGD steps from its current weights; write the checkpoint and
    ``dp.json``. Returns the accounting (the body of ``dp.json``).

    Raises:
        UserError: ``epsilon`` is null, delta is not below 1 / N, or the expected batch is too small.
    """
    try:
        from opacus import GradSampleModule
        from opacus.accountants import RDPAccountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.optimizers import DPOptimizer
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler
    except ImportError:
        raise UserError("model.dp.epsilon is set but Opacus is not installed: pip install 'synthaug[dp]'") from None

    if params.epsilon is None:
        raise UserError("model.dp.epsilon is null: nothing to train privately")
    n, cfg = images.shape[0], model.config
    if params.delta >= 1.0 / n:
        raise UserError(f"model.dp.delta={params.delta} is not below 1 / {n} training images; a delta that large "
                        "allows releasing a record outright (set -S model.dp.delta=1e-5 or smaller)")
    sample_rate = cfg.batch_size / n
    if sample_rate >= 1.0 or cfg.batch_size < MIN_EXPECTED_BATCH:
        raise UserError(f"model.{model.name}.batch_size={cfg.batch_size} must be between {MIN_EXPECTED_BATCH} and the "
                        f"{n} training images for DP-SGD's Poisson batches")
    scale_at = cfg.autoencoder_steps if isinstance(model, LatentDiffusion) and cfg.autoencoder_steps < cfg.steps \
        else None  # the step before which the latent scale is estimated, if the UNet trains
    extra = [(SCALE_NOISE, 1.0, 1)] if scale_at is not None else []
    sigma = (noise_multiplier(params.epsilon, params.delta, sample_rate, cfg.steps, extra) if extra else
             get_noise_multiplier(target_epsilon=params.epsilon, target_delta=params.delta, sample_rate=sample_rate,
                                  steps=cfg.steps, accountant="rdp"))
    # Each network hooked for per-sample gradients (a compiled one through its plain module).
    model.distribute(lambda net: GradSampleModule(getattr(net, "_orig_mod", net)))
    noise = torch.Generator(device=images.device).manual_seed(seed + 1)
    accountant = RDPAccountant()
    for name in OPTIMIZERS.get(model.name, ("optimizer",)):
        optimizer = DPOptimizer(getattr(model, name), noise_multiplier=sigma, max_grad_norm=params.max_grad_norm,
                                expected_batch_size=cfg.batch_size, loss_reduction="mean", generator=noise)
        optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
        setattr(model, name, optimizer)
    sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=sample_rate, steps=cfg.steps,
                                            generator=torch.Generator().manual_seed(seed))
    train_rng = torch.Generator(device=images.device).manual_seed(seed)
    step = 0
    for batch in sampler:
        if step == scale_at:
            model.latent_scale = private_latent_scale(model, images, noise)
            accountant.history.extend(extra)
        idx = torch.as_tensor(batch, dtype=torch.long, device=images.device)
        if idx.numel() == 0:  # P = (1 - q)^N: negligible above MIN_EXPECTED_BATCH, but never a NaN loss
            raise UserError(f"DP-SGD drew an empty Poisson batch at step {step + 1}; raise model.{model.name}."
                            "batch_size")
        losses = model.train_step(images[idx], labels[idx], train_rng)
        step += 1
        if on_step is not None:
            on_step(step, losses)
    save_checkpoint(model, checkpoint_dir, step=step, class_names=class_names)
    record = {"mechanism": "DP-SGD (Opacus DPOptimizer): per-sample clipping and Gaussian noise",
              "accountant": "rdp (Opacus RDPAccountant)",
              "sampling": "Poisson (Opacus UniformWithReplacementSampler), rate batch_size / N",
              "epsilon": float(accountant.get_epsilon(delta=params.delta)), "delta": params.delta,
              "target_epsilon": params.epsilon, "noise_multiplier": float(sigma),
              "max_grad_norm": params.max_grad_norm, "sample_rate": sample_rate, "steps": step,
              "training_images": n, "family": model.name, "weights_sha256": checkpoint_hash(checkpoint_dir)}
    if extra:
        record["latent_scale"] = {"mechanism": f"Gaussian, noise multiplier {SCALE_NOISE}, on the sum of each image's "
                                               f"log mean-square latent clipped to +-{LOG_MOMENT_BOUND}",
                                  "value": model.latent_scale}
    (checkpoint_dir / DP_FILE).write_text(json.dumps(record, indent=2))
    return record


def noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int,
                     extra: list[tuple[float, float, int]]) -> float:
    """The smallest noise multiplier (to 1%) whose ``steps`` at ``sample_rate``, composed with the ``extra``
    mechanisms ((noise multiplier, sample rate, steps) each) under Opacus's RDP accountant, spends at most
    ``epsilon`` at ``delta``.

    Raises:
        UserError: the extra mechanisms alone spend more than ``epsilon``.
    """
    from opacus.accountants import RDPAccountant

    def spent(sigma: float) -> float:
        accountant = RDPAccountant()
        accountant.history = [(sigma, sample_rate, steps), *extra]
        return accountant.get_epsilon(delta=delta)

    low, high = 0.0, 1.0
    while spent(high) > epsilon:
        low, high = high, 2 * high
        if high > 1e4:
            raise UserError(f"model.dp.epsilon={epsilon} is too small: the latent scale's estimate alone spends more")
    while high - low > 0.01 * high:
        mid = (low + high) / 2
        low, high = (mid, high) if spent(mid) > epsilon else (low, mid)
    return high


@torch.no_grad()
def private_latent_scale(model: LatentDiffusion, images: torch.Tensor, generator: torch.Generator) -> float:
    """1 / RMS of the training latents (posterior means) by the Gaussian mechanism: each image's log mean-square
    latent, clipped to +-``LOG_MOMENT_BOUND`` (so one image moves the sum by at most that much, added or removed),
    summed, plus N(0, (``SCALE_NOISE`` * bound)^2) noise; divided by the number of images (public, as in Opacus's
    sample rate)."""
    logs = torch.cat([model.encode(images[i:i + 256]).pow(2).flatten(1).mean(1).clamp_min(1e-30).log()
                      for i in range(0, images.shape[0], 256)]).clamp(-LOG_MOMENT_BOUND, LOG_MOMENT_BOUND)
    total = float(logs.double().sum()) + float(torch.randn((), generator=generator, device=generator.device)) \
        * SCALE_NOISE * LOG_MOMENT_BOUND
    return latent_scale_value(math.exp(-0.5 * total / images.shape[0]))
