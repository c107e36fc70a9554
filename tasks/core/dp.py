"""Differentially private training of a generator (DP-SGD, Abadi et al. 2016) with Opacus, and what it may claim.

``model.dp.epsilon`` set: the train step trains the ``vae`` family with DP-SGD instead of the shared driver
(``models.training.fit``). The family's own ``train_step`` runs unchanged; this module only swaps what it calls:

- its training network goes through ``distribute`` into an Opacus ``GradSampleModule`` (per-sample gradients);
- its optimizer is wrapped in an Opacus ``DPOptimizer``: each per-sample gradient is clipped to
  ``max_grad_norm`` and Gaussian noise of ``noise_multiplier * max_grad_norm`` is added to their sum;
- batches are drawn by Poisson sampling (Opacus ``UniformWithReplacementSampler``: every training image joins each
  batch independently with probability ``batch_size / N``), the sampling the accountant's amplification assumes
  (the shared driver's fixed-size draws with replacement would not match it).

The noise multiplier is the smallest that keeps (epsilon, delta) within ``model.dp`` after ``steps`` steps under
the RDP accountant (Opacus ``get_noise_multiplier``); the accountant then reports the epsilon actually spent.
``dp.json`` beside the checkpoint records it with the weights' sha256.

What the epsilon covers: the generator's weights, hence every image sampled from them (post-processing). What it
does not cover: the pipeline's later steps read the real training images again (the judge, the filter's
memorization and realism scores and the privacy gate decide which samples are released by comparing them with the
training images), and the released metrics and report are computed on real images. ``dp_claim`` says so, and a
release claims DP only when every released image came from the DP-trained checkpoint.

Opacus stays out of ``models/`` (which must run with torch and MONAI alone): it is imported here, when DP is on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import Field

from synthaug.models.base import GeneratorFamily
from synthaug.models.training import checkpoint_hash, save_checkpoint
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.params_base import Section

DP_FILE = "dp.json"
DP_FAMILIES = ("vae",)  # families whose networks Opacus gives per-sample gradients for (README "Differential privacy")
MIN_EXPECTED_BATCH = 16  # P(empty Poisson batch) ~ exp(-batch) per step: 1e-7 at 16
COVERS = "the generator's weights and every image sampled from them (post-processing)"
NOT_COVERED = ("the selection of released images: the judge, the filter (memorization, realism) and the privacy gate "
               "compare samples with the real training images after generation; and the metrics, report and attack "
               "results, which are computed on real images")


class DPParams(Section):
    """``model.dp`` section: DP-SGD training of the generator (Opacus); ``epsilon: null`` trains without it.

    epsilon: the privacy budget of the generator's weights; null: no differential privacy.
    delta: the (epsilon, delta) guarantee's delta; keep it well below 1 / (training images).
    max_grad_norm: per-sample gradient clipping norm.
    """

    epsilon: float | None = Field(None, gt=0.0)
    delta: float = Field(1e-5, gt=0.0, lt=1.0)
    max_grad_norm: float = Field(1.0, gt=0.0)


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
    model.opt = DPOptimizer(model.opt, noise_multiplier=sigma, max_grad_norm=params.max_grad_norm,
                            expected_batch_size=cfg.batch_size, loss_reduction="mean", generator=noise)
    accountant = RDPAccountant()
    model.opt.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
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


def dp_claim(checkpoint_dir: Path, released: pd.DataFrame) -> dict[str, Any]:
    """What a release may say about differential privacy: ``claimed`` only when the checkpoint was DP-trained
    (``dp.json`` for exactly its weights) and every released image came from it."""
    path = checkpoint_dir / DP_FILE
    if not path.is_file():
        return {"claimed": False, "reason": "the generator was not trained with differential privacy "
                                            "(model.dp.epsilon is null)"}
    record = json.loads(path.read_text())
    hashes = set(released["checkpoint"].dropna().astype(str))
    if record["weights_sha256"] != checkpoint_hash(checkpoint_dir) or hashes != {record["weights_sha256"]}:
        return {"claimed": False, "reason": f"released images come from {len(hashes)} checkpoint(s), not all from "
                                            f"the DP-trained one (sha256 {record['weights_sha256'][:12]})"}
    return {"claimed": True, **record, "covers": COVERS, "does_not_cover": NOT_COVERED}


def card_lines(claim: Mapping[str, Any]) -> list[str]:
    """The card's differential-privacy section (markdown lines)."""
    if not claim["claimed"]:
        return [f"No differential-privacy guarantee: {claim['reason']}."]
    return [f"The generator was trained with differential privacy: (ε, δ) = ({claim['epsilon']:.3g}, "
            f"{claim['delta']:.3g}), {claim['mechanism']}; {claim['sampling']}; noise multiplier "
            f"{claim['noise_multiplier']:.4g}, clipping norm {claim['max_grad_norm']}, {claim['steps']} steps over "
            f"{claim['training_images']} training images; accountant: {claim['accountant']}.", "",
            f"**What ε covers:** {claim['covers']}.", "",
            f"**What it does not cover:** {claim['does_not_cover']}. The guarantee of the released set is therefore "
            "not (ε, δ): it holds for the generator, not for the choice of which of its samples were released."]
