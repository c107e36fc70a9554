"""Class-conditional latent diffusion: a MONAI ``AutoencoderKL``, then the guided diffusion UNet in its latent space.

Read top to bottom: config → autoencoder (network, objective) → the ``LatentDiffusion`` family.

- Stage 1, the first ``autoencoder_steps`` optimizer steps: MONAI ``AutoencoderKL`` (Rombach et al. 2022,
  arXiv:2112.10752) trained on L1 reconstruction + ``kl_weight`` * KL to N(0, I), plus, with ``adv_weight`` > 0,
  a least-squares patch adversarial term (MONAI ``PatchDiscriminator`` + ``PatchAdversarialLoss``). No perceptual
  term: MONAI's ``PerceptualLoss`` needs downloaded weights. The autoencoder is unconditional.
- Stage 2, the remaining ``steps - autoencoder_steps`` steps: the class-conditional ``DiffusionModelUNet`` of
  ``models.diffusion`` (null class, classifier-free guidance, the same fast samplers) on latents
  z = scale * (mu + sigma * eps). ``scale`` is 1 / std of the first stage-2 batch's latents (Rombach et al.,
  sec. 4.3.2), so the UNet sees unit-variance inputs whatever the autoencoder learned; it is then fixed.
- Sampling: the diffusion sampler runs in latent space (no clipping of the latent x0 prediction), then the
  decoder maps z / scale to pixels, on the same fixed-size padded micro-batches (per-image determinism, see
  ``models.diffusion``); decoding runs in fp32.

Both stages run inside one ``models.training.fit`` call: ``train_step`` trains whichever stage the step counters
say, and the state holds both networks, so a run interrupted in either stage resumes where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from monai.losses.adversarial_loss import PatchAdversarialLoss
from monai.networks.nets import AutoencoderKL, PatchDiscriminator
from torch import nn

from synthaug.models.common import autocast
from synthaug.models.config import LatentDiffusionConfig
from synthaug.models.diffusion import Diffusion

# The latent scale is 1 / std of the latents: about 0.01 to 100 in practice (Stable Diffusion's is 0.18215).
LATENT_SCALE_RANGE = (1e-6, 1e6)


def latent_scale_value(value: Any) -> float | None:
    """``value`` as a latent scale (None: not set yet); ValueError unless a finite number in ``LATENT_SCALE_RANGE``
    (a checkpoint's or a pretrained folder's value is untrusted input: NaN, 0, -1, 1e308 or ``true`` would make
    every sample noise)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        value = value.item()
    low, high = LATENT_SCALE_RANGE
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ValueError(f"latent_scale must be a finite number from {low:g} to {high:g}, got {str(value)[:40]}")
    return float(value)


# ----------------------------------------------------------------------------------------------------------------
# Autoencoder


def build_autoencoder(config: LatentDiffusionConfig, *, channels_in: int) -> AutoencoderKL:
    """MONAI's KL autoencoder without attention (its non-local blocks cost quadratic memory at large latents)."""
    levels = len(config.ae_channels)
    return AutoencoderKL(
        spatial_dims=2,
        in_channels=channels_in,
        out_channels=channels_in,
        channels=config.ae_channels,
        attention_levels=(False,) * levels,
        num_res_blocks=(config.ae_num_res_blocks,) * levels,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
        use_checkpoint=config.gradient_checkpointing,
    )


class AutoencoderPass(nn.Module):
    """The training forward of the autoencoder as one module call, so ``DistributedDataParallel`` can wrap it.

    ``forward(x, eps)`` -> (reconstruction, mu, sigma) with z = mu + sigma * eps: the noise comes from the caller
    (the training RNG), unlike ``AutoencoderKL.forward``, which draws it from the global RNG.
    """

    def __init__(self, autoencoder: AutoencoderKL) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, sigma = self.autoencoder.encode(x)
        return self.autoencoder.decode(mu + sigma * eps.to(mu.dtype)), mu, sigma


def kl_to_standard_normal(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) summed over the latent's elements, averaged over images."""
    mu, var = mu.float(), sigma.float().pow(2)
    return 0.5 * (mu.pow(2) + var - var.clamp_min(1e-12).log() - 1.0).flatten(1).sum(1).mean()


# ----------------------------------------------------------------------------------------------------------------
# The family


class LatentDiffusion(Diffusion):
    """Autoencoder + class-conditional latent DDPM with guidance; implements ``models.base.GeneratorFamily``.

    Args:
        config: a ``LatentDiffusionConfig``.
        image_shape: (C, H, W) of the training images; H and W divisible by the autoencoder's downsampling
            times the UNet's.
        num_classes: number of real classes K (labels 0..K-1); index K is the null class.
        device: where the networks live and train.
    """

    name: ClassVar[str] = "latent_diffusion"
    Config: ClassVar[type[LatentDiffusionConfig]] = LatentDiffusionConfig
    x0_clip: ClassVar[float | None] = None
    config: LatentDiffusionConfig

    def __init__(self, config: LatentDiffusionConfig, *, image_shape: tuple[int, int, int], num_classes: int,
                 device: torch.device) -> None:
        if not isinstance(config, LatentDiffusionConfig):
            raise ValueError(f"config must be a LatentDiffusionConfig, got {type(config).__name__}")
        super().__init__(config, image_shape=image_shape, num_classes=num_classes, device=device)
        self._format = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        self.autoencoder = build_autoencoder(config, channels_in=self.image_shape[0]).to(
            self.device, memory_format=self._format)
        self.ae_optimizer = torch.optim.Adam(self.autoencoder.parameters(), lr=config.ae_lr)
        self._train_ae: nn.Module = AutoencoderPass(self.autoencoder)
        self.discriminator: nn.Module | None = None
        if config.adv_weight > 0:
            # Up to 3 stride-2 layers, fewer on small images: instance norm needs maps larger than 1x1.
            layers = max(1, min(3, int(math.log2(min(self.image_shape[1:]))) - 3))
            self.discriminator = PatchDiscriminator(spatial_dims=2, channels=config.disc_channels,
                                                    in_channels=self.image_shape[0], out_channels=1,
                                                    num_layers_d=layers, norm="INSTANCE").to(
                self.device, memory_format=self._format)
            self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=config.ae_lr,
                                                   betas=(0.5, 0.999))
            self._train_disc: nn.Module = self.discriminator
            self._adv_loss = PatchAdversarialLoss(criterion="least_squares")
        self.ae_steps_done = 0
        self.latent_scale: float | None = None  # set by the first UNet step

    @property
    def stage_ends(self) -> tuple[int, ...]:
        """Training steps that end a stage (``models.training.fit`` checkpoints there): the autoencoder's last."""
        return (self.config.autoencoder_steps,)

    def diffusion_space(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        _, h, w = image_shape
        f = self.config.downsampling
        if h % f or w % f:
            raise ValueError(f"latent_diffusion: image {tuple(image_shape)} needs height and width divisible by "
                             f"{f}, the downsampling of ae_channels={self.config.ae_channels}")
        return self.config.latent_channels, h // f, w // f

    # -- training ------------------------------------------------------------------------------------------------

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """One step of the autoencoder while ``autoencoder_steps`` are not done, else one step of the latent UNet."""
        images = images.to(self.device, memory_format=self._format)
        if self.ae_steps_done < self.config.autoencoder_steps:
            return self._autoencoder_step(images, generator)
        with torch.no_grad():
            z = self.encode(images, generator)
            if self.latent_scale is None:
                self.latent_scale = _inverse_std(z)
        return super().train_step(z * self.latent_scale, labels, generator)

    def _autoencoder_step(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        cfg = self.config
        self.autoencoder.train()
        eps = torch.randn((images.shape[0], *self.space_shape), generator=generator, device=self.device)
        with autocast(self.device):
            recon, mu, sigma = self._train_ae(images, eps)
        recon_loss = F.l1_loss(recon.float(), images)
        kl = kl_to_standard_normal(mu, sigma)
        loss = recon_loss + cfg.kl_weight * kl
        losses = {"ae_recon_l1": recon_loss.item(), "ae_kl": kl.item()}
        if self.discriminator is not None:
            with autocast(self.device):
                fake_logits = self._train_disc(recon.float().contiguous(memory_format=self._format))[-1]
            adv = self._adv_loss(fake_logits.float(), target_is_real=True, for_discriminator=False)
            loss = loss + cfg.adv_weight * adv
            losses["ae_adv"] = adv.item()
        self.ae_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.autoencoder.parameters(), cfg.grad_clip)
        self.ae_optimizer.step()
        if self.discriminator is not None:
            losses["disc"] = self._discriminator_step(images, recon.detach())
        self.ae_steps_done += 1
        return {"ae_loss": loss.item(), **losses}

    def _discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        """Least-squares patch GAN update: real patches to 1, reconstructed ones to 0."""
        with autocast(self.device):
            fake_logits = self._train_disc(fake.float().contiguous(memory_format=self._format))[-1]
            real_logits = self._train_disc(real)[-1]
        loss = 0.5 * (self._adv_loss(fake_logits.float(), target_is_real=False, for_discriminator=True)
                      + self._adv_loss(real_logits.float(), target_is_real=True, for_discriminator=True))
        self.disc_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.disc_optimizer.step()
        return loss.item()

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        super().distribute(wrap)
        self._train_ae = wrap(self._train_ae)
        if self.discriminator is not None:
            self._train_disc = wrap(self._train_disc)

    # -- latent space --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Unscaled latents of images in [-1, 1]: a posterior draw with ``generator``, else the posterior mean."""
        with autocast(self.device):
            mu, sigma = self.autoencoder.encode(images.to(self.device, memory_format=self._format))
        mu, sigma = mu.float(), sigma.float()
        if generator is None:
            return mu
        return mu + sigma * torch.randn(mu.shape, generator=generator, device=mu.device)

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from scaled latents, decoded in fp32 (bf16 would move written pixels)."""
        scale = 1.0 if self.latent_scale is None else self.latent_scale
        return self.autoencoder.decode((x / scale).float()).float().clamp(-1.0, 1.0)

    @torch.no_grad()
    def reconstruction_quality(self, images: torch.Tensor) -> dict[str, float]:
        """How well the autoencoder reproduces ``images`` (N, C, H, W) in [-1, 1] through the posterior mean.

        Returns the mean absolute and squared errors in [-1, 1] units and the PSNR in dB over the [-1, 1] range
        (peak-to-peak 2), computed on the pooled squared error of all images.
        """
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape or images.shape[0] == 0:
            raise ValueError(f"need a non-empty (N, {', '.join(map(str, self.image_shape))}) batch, got "
                             f"{tuple(images.shape)}")
        self.autoencoder.eval()
        abs_err, sq_err, chunk = 0.0, 0.0, self.config.sample_batch_size
        for i in range(0, images.shape[0], chunk):
            x = images[i:i + chunk].to(self.device)
            recon = self.autoencoder.decode(self.encode(x)).float().clamp(-1.0, 1.0)
            abs_err += (recon - x).abs().sum().item()
            sq_err += (recon - x).pow(2).sum().item()
        n = images.numel()
        mse = sq_err / n
        return {"l1": abs_err / n, "mse": mse, "psnr_db": 10.0 * math.log10(4.0 / max(mse, 1e-12))}

    # -- pretrained starting points ------------------------------------------------------------------------------

    def pretrained_networks(self) -> dict[str, nn.Module]:
        return {**super().pretrained_networks(), "autoencoder": self.autoencoder}

    def load_pretrained(self, parts: dict[str, dict[str, torch.Tensor]], *, source_classes: list[str] | None,
                        classes: list[str], metadata: dict[str, Any]) -> list[str]:
        """As ``Diffusion.load_pretrained``; with a pretrained autoencoder the folder's ``latent_scale`` is kept."""
        notes = super().load_pretrained(parts, source_classes=source_classes, classes=classes, metadata=metadata)
        if "autoencoder" in parts:
            if metadata.get("latent_scale") is not None:
                self.latent_scale = latent_scale_value(metadata["latent_scale"])
                notes.append(f"latent scale {self.latent_scale:.6g} from the pretrained folder")
            steps = self.config.autoencoder_steps
            notes.append(f"the autoencoder trains {steps} more steps first (model.latent_diffusion.autoencoder_steps"
                         f"; 0 keeps it as loaded)" if steps else "the autoencoder is kept as loaded")
        elif "unet" in parts:
            notes.append("warning: a UNet without its autoencoder: it was trained in another latent space unless "
                         "this autoencoder is the one it was trained with")
        return notes

    # -- state ---------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "autoencoder": self.autoencoder.state_dict(),
                 "ae_optimizer": self.ae_optimizer.state_dict(), "ae_steps_done": self.ae_steps_done,
                 "latent_scale": self.latent_scale}
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["disc_optimizer"] = self.disc_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"autoencoder", "ae_optimizer", "ae_steps_done", "latent_scale"} - set(state)
        if missing:
            raise ValueError(f"latent_diffusion state is missing {sorted(missing)}; keys present: {sorted(state)}")
        super().load_state_dict(state)
        self.autoencoder.load_state_dict(state["autoencoder"])
        self.ae_optimizer.load_state_dict(state["ae_optimizer"])
        for group in self.ae_optimizer.param_groups:
            group["lr"] = self.config.ae_lr
        self.ae_steps_done = int(state["ae_steps_done"])
        self.latent_scale = latent_scale_value(state["latent_scale"])
        if self.discriminator is not None and "discriminator" in state:
            self.discriminator.load_state_dict(state["discriminator"])
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])


def _inverse_std(z: torch.Tensor) -> float:
    """1 / std of the latents, pooled over every process of a distributed run (all ranks get the same scale)."""
    stats = torch.stack([z.sum(), z.pow(2).sum(), torch.tensor(float(z.numel()), device=z.device)]).double()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats)
    total, total_sq, n = stats.tolist()
    var = max(total_sq / n - (total / n) ** 2, 1e-12)
    return float(var ** -0.5)
