"""Differentially private training of a generator (DP-SGD, Abadi et al. 2016) with Opacus.

``model.dp.epsilon`` set: the train step trains a family of ``DP_FAMILIES`` (``tasks.core.params.model``) with DP-SGD
instead of the shared driver (``models.training.fit``). The family's own ``train_step`` runs unchanged; this module
only swaps what it calls, the same for every such family (one network ``net``, one ``optimizer``):

- its training network goes through ``distribute`` into an Opacus ``GradSampleModule`` (per-sample gradients; for
  diffusion its hooks also cover MONAI's ``DiffusionModelUNet``: Conv2d, GroupNorm, Linear, including attention,
  and the class ``Embedding``; ``torch.compile`` is bypassed, as the plain ``net`` is wrapped);
- its optimizer is wrapped in an Opacus ``DPOptimizer``: each per-sample gradient is clipped to
  ``max_grad_norm`` and Gaussian noise of ``noise_multiplier * max_grad_norm`` is added to their sum;
- batches are drawn by Poisson sampling (Opacus ``UniformWithReplacementSampler``: every training image joins each
  batch independently with probability ``batch_size / N``), the sampling the accountant's amplification assumes
  (the shared driver's fixed-size draws with replacement would not match it).

The noise multiplier is the smallest that keeps (epsilon, delta) within ``model.dp`` after ``steps`` steps under
the RDP accountant (Opacus ``get_noise_multiplier``); the accountant then reports the epsilon actually spent.
``dp.json`` beside the checkpoint records it with the weights' sha256.

What the epsilon covers, and what a release may claim: ``tasks/core/privacy/dp.py``.

Opacus stays out of ``models/`` (which must run with torch and MONAI alone): it is imported here, when DP is on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from synthaug.models.base import GeneratorFamily
from synthaug.models.training import checkpoint_hash, save_checkpoint
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.params.model import DPParams
from synthaug.tasks.core.privacy.dp import DP_FILE

MIN_EXPECTED_BATCH = 16  # P(empty Poisson batch) ~ exp(-batch) per step: 1e-7 at 16


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
    sigma = get_noise_multiplier(target_epsilon=params.epsilon, target_delta=params.delta, sample_rate=sample_rate,
                                 steps=cfg.steps, accountant="rdp")
    module = GradSampleModule(model.net)  # the family's network, hooked for per-sample gradients
    model.distribute(lambda _: module)
    noise = torch.Generator(device=images.device).manual_seed(seed + 1)
    model.optimizer = DPOptimizer(model.optimizer, noise_multiplier=sigma, max_grad_norm=params.max_grad_norm,
                            expected_batch_size=cfg.batch_size, loss_reduction="mean", generator=noise)
    accountant = RDPAccountant()
    model.optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=sample_rate, steps=cfg.steps,
                                            generator=torch.Generator().manual_seed(seed))
    train_rng = torch.Generator(device=images.device).manual_seed(seed)
    step = 0
    for batch in sampler:
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
    (checkpoint_dir / DP_FILE).write_text(json.dumps(record, indent=2))
    return record
