"""The config of every generator family and of the judge classifier: frozen dataclasses that import no torch.

The params file validates them (``tasks/core/params/model.py``, ``filter.judge``, ``evaluate.classifier``) and the
CLI reads them without loading torch; each family's networks, objective and sampler live in its own file
(``models/<family>.py``), which takes its config from here. ``config.json`` beside a checkpoint stores
``dataclasses.asdict(config)``; ``Config(**stored) == config``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Self

# Upper bounds of every size field. A config is untrusted input (a params file, a checkpoint's or a published
# generator's config.json): each bound keeps what it describes far above any useful value and far below what would
# exhaust a machine (``channels: [200000]`` asked for terabytes).
MAX_STEPS = 100_000_000
MAX_BATCH = 65_536  # images per training step or per sampling call
MAX_WIDTH = 4096  # channels of one layer, and latent, embedding and noise sizes
MAX_LEVELS = 8  # resolution levels of a UNet or an autoencoder
MAX_BLOCKS = 16  # residual blocks per level
MAX_TIMESTEPS = 100_000  # length of a noise schedule
_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def config_from_dict(cls: type, raw: Any) -> Any:
    """``cls(**raw)`` for a config read from a file, with each value's type checked against the field first (an
    unknown or missing key, ``"8"`` or ``true`` for an int, a list of the wrong items), so a tampered
    ``config.json`` ends in one ValueError naming the field rather than a TypeError deep inside a network."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected a mapping of {cls.__name__} fields, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in raw if k not in fields)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown[:5]} for {cls.__name__}; its fields: {', '.join(fields)}")
    for name, value in raw.items():
        problem = _type_problem(str(fields[name].type), value)
        if problem:
            raise ValueError(f"{name}: {problem}")
    return cls(**raw)


def _type_problem(annotation: str, value: Any) -> str | None:
    """Why ``value`` (from JSON) does not fit the field type ``annotation`` (a string, as ``from __future__
    import annotations`` leaves it), or None."""
    if annotation.startswith("tuple[") and annotation.endswith(", ...]"):
        if not isinstance(value, list | tuple) or len(value) > MAX_LEVELS:
            return f"expected a list of at most {MAX_LEVELS} items, got {_shown(value)}"
        item = annotation[len("tuple["):-len(", ...]")]
        return next((f"item {i}: {p}" for i, v in enumerate(value) if (p := _type_problem(item, v))), None)
    kind = _SCALARS.get(annotation)
    if kind is None:
        return None  # no field of another type exists; a new one is checked by its __post_init__
    ok = (isinstance(value, bool) if kind is bool else isinstance(value, str) if kind is str
          else isinstance(value, int) and not isinstance(value, bool) if kind is int
          else isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value))
    return None if ok else f"expected {'a finite number' if kind is float else annotation}, got {_shown(value)}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _at_most(config: Any, limit: int, *names: str) -> None:
    """ValueError naming the first of ``names`` (an int, or a tuple of ints) above ``limit``."""
    for name in names:
        value = getattr(config, name)
        if max(value if isinstance(value, tuple) else (value,), default=0) > limit:
            raise ValueError(f"{name} must be at most {limit}, got {_shown(value)}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Options of the shared training driver (``models.training.fit``); every family config extends it.

    Args:
        steps: optimizer steps of one training run.
        batch_size: images per step.
        lr: learning rate of the (first) optimizer.
        ema_decay: decay of the exponential moving average of the weights used for sampling.
        checkpoint_every: steps between resumable checkpoints (0: only at the end).
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-4
    ema_decay: float = 0.999
    checkpoint_every: int = 500

    @classmethod
    def tiny(cls) -> Self:
        """A config for CPU tests: a few optimizer steps on 16x16 images in well under a second.

        Every family overrides it; the registry contract test (tests/models/test_families.py) builds each family
        from ``Config.tiny()`` plus generic overrides (steps, checkpoint_every) and nothing else.
        """
        raise NotImplementedError(f"{cls.__name__} must define tiny() for the family contract test")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        _at_most(self, MAX_STEPS, "steps", "checkpoint_every")
        _at_most(self, MAX_BATCH, "batch_size")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


SAMPLERS = ("ddim", "dpm", "ddpm")


SCHEDULES = ("linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine")


MAX_GUIDANCE = 50.0  # classifier-free guidance papers use 1 to ~10; 50 leaves room, 1e9 is a typo


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig(TrainConfig):
    """Options of the diffusion family. Defaults train the bundled 16x16 digits example in minutes on a 2-core CPU.

    Args:
        steps: optimizer steps of one training run.
        batch_size: images per step.
        lr: AdamW learning rate.
        ema_decay: upper bound of the EMA decay; early in training the decay is ``(1 + n) / (10 + n)`` after ``n``
            updates, so short runs are not dominated by their first, untrained weights.
        checkpoint_every: steps between resumable checkpoints (0: only at the end).
        channels: UNet feature channels per resolution level; the image side must be divisible by
            ``2 ** (len(channels) - 1)``.
        attention_levels: per level, whether the UNet adds self-attention; same length as ``channels``.
        num_res_blocks: residual blocks per level.
        norm_num_groups: GroupNorm groups; must divide every entry of ``channels``.
        num_head_channels: channels per attention head; must divide the channels of every attention level.
        timesteps: length of the training noise schedule.
        schedule: noise schedule of MONAI's ``DDPMScheduler`` (``linear_beta``, ``scaled_linear_beta``,
            ``sigmoid_beta`` or ``cosine``).
        label_dropout: probability of training on the null class instead of the image's label (needed for
            guidance).
        guidance_scale: classifier-free guidance weight w in eps_u + w * (eps_c - eps_u); 1 is plain conditional
            sampling (one network call per step), 0 unconditional, > 1 trades diversity for label fidelity; at most
            ``MAX_GUIDANCE``. 1 by default: chosen over 2 and 4 on the real val splits of three scarce scenarios
            (docs/BENCHMARKS.md, "Sampling guidance"); ``generate.guidance_scale`` overrides it without retraining.
        sampler: ``ddim`` (eta = 0), ``dpm`` (DPM-Solver++ 2M) or ``ddpm`` (ancestral, fresh noise every step).
        sample_steps: network evaluations per image (times two with guidance); at most ``timesteps``.
        sample_batch_size: images per network call when sampling; requests are split and padded to it.
        weight_decay: AdamW weight decay.
        grad_clip: maximum gradient norm (0: no clipping).
        compile: ``torch.compile`` the training forward on CUDA; ignored on the CPU, where compiling costs more
            than it saves for nets this small.
        gradient_checkpointing: recompute each UNet block's activations in the backward pass instead of keeping
            them: less training memory (large images, large batches) for about a third more compute.
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    channels: tuple[int, ...] = (32, 64)
    attention_levels: tuple[bool, ...] = (False, True)
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    num_head_channels: int = 32
    timesteps: int = 1000
    schedule: str = "cosine"
    label_dropout: float = 0.1
    guidance_scale: float = 1.0
    sampler: str = "dpm"
    sample_steps: int = 20
    sample_batch_size: int = 64
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    compile: bool = False
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        # config.json gives lists back; keep tuples so configs compare and hash the same after a round trip.
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "attention_levels", tuple(self.attention_levels))
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {self.channels}")
        if len(self.channels) > MAX_LEVELS:
            raise ValueError(f"channels may have at most {MAX_LEVELS} levels, got {len(self.channels)}")
        _at_most(self, MAX_WIDTH, "channels", "num_head_channels", "norm_num_groups")
        _at_most(self, MAX_BLOCKS, "num_res_blocks")
        _at_most(self, MAX_TIMESTEPS, "timesteps")
        _at_most(self, MAX_BATCH, "sample_batch_size")
        if len(self.attention_levels) != len(self.channels):
            raise ValueError(f"attention_levels {self.attention_levels} must have one entry per level of "
                             f"channels {self.channels}")
        for name in ("num_res_blocks", "norm_num_groups", "num_head_channels", "timesteps", "sample_steps",
                     "sample_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(f"norm_num_groups={self.norm_num_groups} must divide every entry of "
                             f"channels={self.channels}")
        for c, attn in zip(self.channels, self.attention_levels, strict=True):
            if attn and c % self.num_head_channels:
                raise ValueError(f"num_head_channels={self.num_head_channels} must divide the channels ({c}) of "
                                 f"every attention level")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {self.sampler!r}")
        if self.sample_steps > self.timesteps:
            raise ValueError(f"sample_steps={self.sample_steps} cannot exceed timesteps={self.timesteps}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if not 0.0 <= self.guidance_scale <= MAX_GUIDANCE:  # far above it, eps_c - eps_u is amplified into noise
            raise ValueError(f"guidance_scale must be in [0, {MAX_GUIDANCE}], got {self.guidance_scale} (useful "
                             "values are 1 to about 10)")
        if self.guidance_scale != 1.0 and self.label_dropout == 0.0:
            raise ValueError(f"guidance_scale={self.guidance_scale} needs the null class, which "
                             f"label_dropout={self.label_dropout} never trains; use label_dropout > 0 or "
                             f"guidance_scale=1")
        if self.lr <= 0.0 or self.weight_decay < 0.0 or self.grad_clip < 0.0:
            raise ValueError(f"need lr > 0, weight_decay >= 0 and grad_clip >= 0; got lr={self.lr}, "
                             f"weight_decay={self.weight_decay}, grad_clip={self.grad_clip}")

    @classmethod
    def tiny(cls) -> DiffusionConfig:
        """A config for CPU tests: a few steps of a 45k-parameter UNet, 4-step sampling."""
        return cls(steps=3, batch_size=8, checkpoint_every=2, channels=(8, 16), attention_levels=(False, True),
                   norm_num_groups=4, num_head_channels=8, sample_steps=4, sample_batch_size=4)


@dataclass(frozen=True, kw_only=True)
class LatentDiffusionConfig(DiffusionConfig):
    """Options of the latent diffusion family: every ``DiffusionConfig`` option (they configure the latent UNet and
    its sampler) plus the autoencoder's. Defaults aim at 64-256 px images.

    Args:
        steps: optimizer steps of both stages together.
        autoencoder_steps: the first steps, which train the autoencoder; the UNet trains for the rest. 0 keeps
            the autoencoder as it is (e.g. loaded from a pretrained folder).
        channels: latent UNet channels per level; the latent side (image side / 2 ** (len(ae_channels) - 1))
            must be divisible by ``2 ** (len(channels) - 1)``.
        ae_channels: autoencoder channels per level; each level after the first halves the image side.
        ae_num_res_blocks: residual blocks per autoencoder level.
        latent_channels: channels of the latent image.
        ae_lr: Adam learning rate of the autoencoder (and of the discriminator).
        kl_weight: weight of the KL term; small, so the latent keeps the image's detail (Rombach et al. use 1e-6).
        adv_weight: weight of the patch adversarial term (0: no discriminator is built).
        disc_channels: width of the patch discriminator's first layer.
        norm_num_groups: GroupNorm groups of the UNet and the autoencoder; must divide their channels.
        guidance_scale: as in ``DiffusionConfig``; 2 here (the pixel family's 1 was chosen on 16 px scenarios,
            not measured at these sizes).
    """

    steps: int = 1500
    guidance_scale: float = 2.0
    batch_size: int = 32
    checkpoint_every: int = 250
    autoencoder_steps: int = 500
    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, True)
    ae_channels: tuple[int, ...] = (32, 64, 64)
    ae_num_res_blocks: int = 1
    latent_channels: int = 3
    ae_lr: float = 5e-4
    kl_weight: float = 1e-6
    adv_weight: float = 0.0
    disc_channels: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "ae_channels", tuple(self.ae_channels))
        if not self.ae_channels or min(self.ae_channels) < 1:
            raise ValueError(f"ae_channels must be a non-empty sequence of positive ints, got {self.ae_channels}")
        if len(self.ae_channels) > MAX_LEVELS:
            raise ValueError(f"ae_channels may have at most {MAX_LEVELS} levels, got {len(self.ae_channels)}")
        _at_most(self, MAX_WIDTH, "ae_channels", "latent_channels", "disc_channels")
        _at_most(self, MAX_BLOCKS, "ae_num_res_blocks")
        _at_most(self, MAX_STEPS, "autoencoder_steps")
        if any(c % self.norm_num_groups for c in self.ae_channels):
            raise ValueError(f"norm_num_groups={self.norm_num_groups} must divide every entry of "
                             f"ae_channels={self.ae_channels}")
        for name in ("ae_num_res_blocks", "latent_channels", "disc_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.autoencoder_steps < 0:
            raise ValueError(f"autoencoder_steps must be >= 0, got {self.autoencoder_steps}")
        if self.ae_lr <= 0.0 or self.kl_weight < 0.0 or self.adv_weight < 0.0:
            raise ValueError(f"need ae_lr > 0, kl_weight >= 0 and adv_weight >= 0; got ae_lr={self.ae_lr}, "
                             f"kl_weight={self.kl_weight}, adv_weight={self.adv_weight}")

    @property
    def downsampling(self) -> int:
        """Image side / latent side."""
        return 2 ** (len(self.ae_channels) - 1)

    @classmethod
    def tiny(cls) -> LatentDiffusionConfig:
        """A config for CPU tests: 2 autoencoder steps then 2 UNet steps on 8x8 latents of 16x16 images."""
        return cls(steps=4, autoencoder_steps=2, batch_size=8, checkpoint_every=2, channels=(8, 16),
                   attention_levels=(False, True), norm_num_groups=4, num_head_channels=8, ae_channels=(8, 16),
                   latent_channels=2, sample_steps=4, sample_batch_size=4)


AUGMENTATIONS = ("color", "translation", "cutout")


def augment_policy(text: str) -> tuple[str, ...]:
    """Parse ``"color,translation"`` into names; an unknown name raises ValueError listing the valid ones."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown} in augment={text!r}; valid: {', '.join(AUGMENTATIONS)}")
    return names


@dataclass(frozen=True, kw_only=True)
class GANConfig(TrainConfig):
    """GAN options; defaults train the bundled 16x16 digits example on a 2-core CPU in a few minutes.

    Args:
        steps: training steps (one D and one G update each).
        batch_size: real (and generated) images per step.
        lr: generator learning rate.
        d_lr: discriminator learning rate (higher than ``lr``: one D step per G step must keep D ahead).
        beta1: Adam beta1 of both optimizers (0 is the usual GAN choice: momentum destabilises the game).
        beta2: Adam beta2 of both optimizers.
        ema_decay: decay of the generator EMA used by ``sample`` (warmed up over the first steps).
        z_dim: size of the latent vector z.
        g_channels: generator width at the output resolution; doubled per lower resolution, capped at 8x.
        d_channels: discriminator width at the first block; doubled per lower resolution, capped at 8x.
        embed_dim: size of the generator's class embedding.
        mode_seeking: weight of the mode-seeking term in the generator loss (0 disables it; ~1 swamps the
            adversarial loss and gives noise).
        augment: comma-separated DiffAugment policy, a subset of ``color,translation,cutout`` ("" disables).
        sample_batch: rows of every sampling forward pass (the last one padded), see ``fixed_shape_batches``.
    """

    steps: int = 2000
    batch_size: int = 32
    lr: float = 5e-5
    d_lr: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.99
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    z_dim: int = 64
    g_channels: int = 32
    d_channels: int = 32
    embed_dim: int = 32
    mode_seeking: float = 0.02
    augment: str = "color,translation,cutout"
    sample_batch: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("lr", "d_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("z_dim", "g_channels", "d_channels", "embed_dim", "sample_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        _at_most(self, MAX_WIDTH, "z_dim", "g_channels", "d_channels", "embed_dim")
        _at_most(self, MAX_BATCH, "sample_batch")
        if self.mode_seeking < 0:
            raise ValueError(f"mode_seeking must be >= 0, got {self.mode_seeking}")
        augment_policy(self.augment)  # raises on an unknown name

    @classmethod
    def tiny(cls) -> GANConfig:
        """A few-second CPU config for tests."""
        return cls(steps=2, batch_size=8, z_dim=8, g_channels=8, d_channels=8, embed_dim=8, checkpoint_every=0)


RECONSTRUCTIONS = ("mse", "bce")


@dataclass(frozen=True, kw_only=True)
class VAEConfig(TrainConfig):
    """VAE options; defaults train the bundled 16x16 digits example on a 2-core CPU in a few minutes.

    Args:
        steps: optimizer steps.
        batch_size: images per step.
        lr: Adam learning rate.
        ema_decay: decay of the weight EMA used by ``sample`` (warmed up over the first steps).
        latent_dim: size of z.
        channels: width at the input resolution; doubled per halving, capped at 8x.
        embed_dim: size of the class embedding fed to encoder and decoder.
        reconstruction: ``mse`` (Gaussian likelihood) or ``bce`` (Bernoulli likelihood on (x + 1) / 2).
        kl_weight: final weight of the KL term (1 is the ELBO; below 1 z keeps more of each image, which gave
            more varied samples on the digits example, at the risk of prior draws outside what the decoder saw).
        kl_warmup: steps over which the KL weight ramps linearly from 0 to ``kl_weight`` (0: no ramp).
        temperature: scale of the prior draws at sampling (< 1: cleaner, less diverse images).
        sample_batch: rows of every sampling forward pass (the last one padded), see ``fixed_shape_batches``.
    """

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    latent_dim: int = 16
    channels: int = 16
    embed_dim: int = 16
    reconstruction: str = "bce"
    kl_weight: float = 0.5
    kl_warmup: int = 500
    temperature: float = 1.0
    sample_batch: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("latent_dim", "channels", "embed_dim", "sample_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        _at_most(self, MAX_WIDTH, "latent_dim", "channels", "embed_dim")
        _at_most(self, MAX_BATCH, "sample_batch")
        _at_most(self, MAX_STEPS, "kl_warmup")
        if self.reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"reconstruction must be one of {RECONSTRUCTIONS}, got {self.reconstruction!r}")
        if self.kl_weight <= 0:
            raise ValueError(f"kl_weight must be > 0, got {self.kl_weight}")
        if self.kl_warmup < 0:
            raise ValueError(f"kl_warmup must be >= 0, got {self.kl_warmup}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @classmethod
    def tiny(cls) -> VAEConfig:
        """A few-second CPU config for tests."""
        return cls(steps=2, batch_size=8, latent_dim=4, channels=8, embed_dim=4, kl_warmup=2, checkpoint_every=0)


BACKBONES = ("auto", "vgg", "resnet")


@dataclass(frozen=True, kw_only=True)
class JudgeConfig:
    """Network size and training recipe of the judge classifier.

    Args:
        width: channels of the first conv stage; each later stage doubles it (up to 8x).
        feature_dim: size of the penultimate embedding returned by ``Judge.features``.
        dropout: dropout before the final linear layer (training only).
        steps: optimizer steps.
        batch_size: images per step (capped at the dataset size).
        lr: peak AdamW learning rate (linear warm-up over the first 5% of steps, then cosine decay to 0).
        weight_decay: AdamW decoupled weight decay.
        label_smoothing: cross-entropy label smoothing (0 keeps the probabilities honest for calibration).
        augment: random translations of up to ``max_shift`` pixels (edge padding) during training.
        max_shift: largest translation in pixels, per axis.
        hflip: also flip half of the images left-right (off by default: digits and laterality have a handedness).
        seed: seed of the weight initialisation, batch order, augmentation and dropout.
        backbone: ``vgg`` (full-resolution conv stages, see ``Judge``), ``resnet`` (MONAI's ResNet-10 with a
            stride-2 stem and max pooling: a quarter of the side before the first stage, so memory stays bounded
            at 128-256 px) or ``auto``: ``vgg`` up to 64 px (the smaller side), ``resnet`` above.
    """

    width: int = 32
    feature_dim: int = 128
    dropout: float = 0.1
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = True
    max_shift: int = 2
    hflip: bool = False
    seed: int = 0
    backbone: str = "auto"

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}; got {self.backbone!r}")
        for name in ("width", "feature_dim", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("dropout", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {self.max_shift}")
