"""The ``model`` section: which generator family, where it trains, and each family's own config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from synthaug.models.config import DiffusionConfig, GANConfig, LatentDiffusionConfig, TrainConfig, VAEConfig
from synthaug.models.families import family_names
from synthaug.tasks.core.params.base import Section

# An epsilon below 0.01 needs noise that drowns every gradient (and Opacus' search for it does not end); above
# 100 the guarantee says nothing. Useful budgets are about 1 to 10.
MIN_EPSILON, MAX_EPSILON = 0.01, 100.0
# Families whose networks Opacus gives per-sample gradients for (docs/anonymize.md "Differential privacy"). Not the
# GAN: its discriminator reads the real images in every step and leaks them to the generator through its gradients.
DP_FAMILIES = ("diffusion", "latent_diffusion", "vae")


class DPParams(Section):
    """``model.dp`` section: DP-SGD training of the generator (Opacus); ``epsilon: null`` trains without it.

    epsilon: the privacy budget of the generator's weights, from ``MIN_EPSILON`` to ``MAX_EPSILON``; null: no
      differential privacy.
    delta: the (epsilon, delta) guarantee's delta; keep it well below 1 / (training images).
    max_grad_norm: per-sample gradient clipping norm.
    """

    epsilon: float | None = Field(None, ge=MIN_EPSILON, le=MAX_EPSILON)
    delta: float = Field(1e-5, ge=1e-30, lt=1.0)
    max_grad_norm: float = Field(1.0, gt=0.0, le=1e6)


class ModelParams(Section):
    """``model`` section: which family, where it runs, and each family's own config (one sub-section each).

    family: the generator family trained and sampled (``models.families``): ``diffusion``, ``gan``,
      ``latent_diffusion`` or ``vae``.
    device: where the generator trains: ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu`` or ``cuda``
      (fails without a GPU).
    seed: seed of training (initial weights, batch order, noise): a run is a function of it.
    init_from: a checkpoint folder (``config.json`` + ``weights.pt``) to fine-tune from instead of
      training from scratch, e.g. the model of the last published version when new source data lands. Classes the
      checkpoint does not know are added to its class conditioning (``models.training.load_extended``).
    warm_start: ``auto``: when ``init_from`` is unset, fine-tune from the last generator published with this dataset
      (``<publish.name>-generator/v<N>`` in ``publish.registry``) if the family, image size and network config
      match and no class was removed; from scratch otherwise, the reason in the log
      (``tasks.core.publishing.generators``). ``never``: always from scratch (or ``init_from``).
    warm_start_fraction: a warm start trains ``ceil(fraction * steps)`` of the family's ``steps``.
    pretrained: a local pretrained folder to start from (a MONAI bundle: ``configs/`` + ``models/model.pt``; or a
      diffusers-format folder: ``config.json`` + ``*.safetensors``) holding weights of this family's networks
      (``tasks.train.pretrained``); classes are mapped by name or the conditioning head is re-initialised, as the log
      and ``train.json`` say. Loaded as tensors only (``weights_only``, safetensors), never unpickled.
    grid_every: steps between per-class sample grids written to ``<out>/samples`` (0: only at the end).
    device_dataset_mb: training images up to this many MiB (as float32) are held on the training device as one
      tensor; a larger set stays in host memory as 8-bit pixels (a quarter of the size; pinned on CUDA) and each
      batch is copied over and converted there (``models.training.fit``).
    processes: training processes (torch DDP launched through ``torchrun``; one GPU each on CUDA, gloo on the
      CPU). The family's ``batch_size`` is the global batch, split evenly over the processes.
    dp: differentially private training (DP-SGD with Opacus, ``tasks.core.privacy.dp``); ``dp.epsilon: null`` (the
      default) trains without it. Offered for the families in ``DP_FAMILIES`` (diffusion, latent_diffusion, vae), one
      process, from scratch, without ``gradient_checkpointing`` (and for latent_diffusion without the discriminator,
      ``adv_weight: 0``).
    diffusion, gan, vae, latent_diffusion: each family's own config (``models/config.py``); only the one
      ``family`` names is used.
    """

    family: str = "diffusion"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    init_from: str | None = None
    pretrained: str | None = None
    warm_start: Literal["auto", "never"] = "auto"
    warm_start_fraction: float = Field(0.3, gt=0, le=1)
    grid_every: int = Field(0, ge=0)
    device_dataset_mb: float = Field(2048, ge=0)
    processes: int = Field(1, ge=1)
    diffusion: DiffusionConfig = DiffusionConfig()
    gan: GANConfig = GANConfig()
    vae: VAEConfig = VAEConfig()
    latent_diffusion: LatentDiffusionConfig = LatentDiffusionConfig()
    dp: DPParams = DPParams()

    @model_validator(mode="after")
    def _dp_supported(self) -> ModelParams:
        if self.dp.epsilon is None:
            return self
        if self.family not in DP_FAMILIES:
            raise ValueError(f"model.dp.epsilon is set but DP-SGD is offered for {', '.join(DP_FAMILIES)} only, not "
                             f"{self.family!r} (README \"Differential privacy\")")
        if self.processes > 1 or self.init_from or self.pretrained:
            raise ValueError("model.dp trains from scratch in one process: set model.processes=1, "
                             "model.init_from=null and model.pretrained=null (a start from weights trained on the "
                             "same images would escape the accounting)")
        if getattr(self.family_config(), "gradient_checkpointing", False):  # hooks miss the recomputed blocks
            raise ValueError(f"model.dp needs model.{self.family}.gradient_checkpointing=false: Opacus gets no "
                             "per-sample gradients for blocks recomputed in the backward pass")
        if getattr(self.family_config(), "adv_weight", 0.0) > 0:  # a discriminator: the GAN's leak, see DP_FAMILIES
            raise ValueError("model.dp needs model.latent_diffusion.adv_weight=0: the patch discriminator reads the "
                             "real images and passes them on to the autoencoder outside the accounting")
        return self

    @field_validator("family")
    @classmethod
    def _known_family(cls, name: str) -> str:
        if name not in family_names():
            raise ValueError(f"unknown family {name!r}; allowed: {', '.join(family_names())}")
        return name

    def family_config(self) -> TrainConfig:
        return getattr(self, self.family)
