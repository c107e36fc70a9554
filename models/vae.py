"""Class-conditional variational autoencoder (Kingma & Welling 2014; conditional: Sohn et al. 2015).

Read top to bottom: config, networks (encoder, decoder), objective, sampler, the family.

- Encoder q(z | x, y) and decoder p(x | z, y) are MONAI residual units (GroupNorm: per-image statistics, so no
  image depends on the rest of its batch). The class enters both as a learned embedding; the prior is N(0, I),
  so z carries the style (stroke, slant, texture) and y the content.
- Objective: negative ELBO, reconstruction (MSE or BCE in [-1, 1] image space) + beta * KL, with beta ramped
  linearly from 0 to ``kl_weight`` over ``kl_warmup`` steps (Bowman et al. 2016) so the decoder learns to use z
  before the KL term can shut it off (posterior collapse).
- Sampling decodes temperature-scaled prior draws (Kingma & Dhariwal 2018) with an EMA copy of the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

from synthaug.models.common import EMA, autocast, fixed_shape_batches, group_count, per_image_normal
from synthaug.models.config import TrainConfig, VAEConfig

# ------------------------------------------------------------------------------------------------ networks



def _block(in_channels: int, out_channels: int, *, strides: int = 1) -> ResidualUnit:
    norm, act = ("group", {"num_groups": group_count(out_channels)}), ("leakyrelu", {"negative_slope": 0.2})
    return ResidualUnit(2, in_channels, out_channels, strides=strides, norm=norm, act=act)


def _levels(height: int, width: int) -> int:
    """Halvings from the image size down to a small grid: while both sides are even and above 4."""
    levels = 0
    while height % 2 == 0 and width % 2 == 0 and min(height, width) > 4:
        height, width, levels = height // 2, width // 2, levels + 1
    return levels


class ConditionalVAE(nn.Module):
    """Encoder q(z | x, y) and decoder p(x | z, y) for (C, H, W) images.

    Args:
        image_shape: (C, H, W); both sides at least 4. The image is halved while both sides are even and
            above 4 (16x16 -> 4x4, 28x28 -> 7x7).
        num_classes: number of classes K.
        latent_dim: size of z.
        channels: width at the input resolution (doubled per halving, capped at 8x).
        embed_dim: size of the class embedding.
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int, *, latent_dim: int = 16, channels: int = 32,
                 embed_dim: int = 16) -> None:
        super().__init__()
        if len(image_shape) != 3 or min(image_shape) < 1 or min(image_shape[1:]) < 4:
            raise ValueError(f"image_shape must be (C, H, W) with C >= 1 and H, W >= 4, got {tuple(image_shape)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        c, h, w = (int(v) for v in image_shape)
        levels = _levels(h, w)
        widths = [channels * min(2**i, 8) for i in range(levels + 1)]
        self.grid = (widths[-1], h >> levels, w >> levels)  # smallest feature map (C', H', W')
        flat = widths[-1] * self.grid[1] * self.grid[2]

        self.embed = nn.Embedding(num_classes, embed_dim)
        # Encoder: the class embedding is broadcast as extra input planes, then strided residual units.
        self.encoder = nn.Sequential(
            Convolution(2, c + embed_dim, widths[0], conv_only=True),
            *(_block(widths[i], widths[i + 1], strides=2) for i in range(levels)),
            nn.Flatten(),
            nn.Linear(flat, 2 * latent_dim),  # mean and log-variance
        )
        # Decoder: mirror of the encoder; nearest upsampling + convolution avoids transposed-conv checkerboards.
        self.from_latent = nn.Linear(latent_dim + embed_dim, flat)
        self.decoder = nn.Sequential(
            *(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _block(widths[i], widths[i - 1]))
              for i in range(levels, 0, -1)),
            _block(widths[0], widths[0]),
            Convolution(2, widths[0], c, conv_only=True),
        )

    def encode(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        planes = self.embed(labels)[:, :, None, None].expand(-1, -1, *x.shape[2:])
        mean, logvar = self.encoder(torch.cat([x, planes.to(x.dtype)], dim=1)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # keeps exp(logvar) finite early in training

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits of the image, (N, C, H, W): the image is tanh(logits) (MSE) or tanh(logits / 2) (BCE)."""
        h = self.from_latent(torch.cat([z, self.embed(labels).to(z.dtype)], dim=1))
        return self.decoder(F.leaky_relu(h, 0.2).view(-1, *self.grid))

    def forward(self, x: torch.Tensor, labels: torch.Tensor,
                eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training pass: (decoder logits, mean, logvar) for z = mean + sigma * eps (reparameterisation)."""
        mean, logvar = self.encode(x, labels)
        mean, logvar = mean.float(), logvar.float()
        z = mean + (0.5 * logvar).exp() * eps.to(mean.device)
        return self.decode(z, labels).float(), mean, logvar


# ----------------------------------------------------------------------------------------------- objective


def kl_beta(step: int, warmup: int) -> float:
    """Linear KL warm-up: 0 at step 0, 1 from step ``warmup`` on (1 throughout when ``warmup`` is 0)."""
    return 1.0 if warmup == 0 else min(1.0, step / warmup)


def to_image(logits: torch.Tensor, reconstruction: str) -> torch.Tensor:
    """Decoder logits to an image in [-1, 1]; for BCE, 2 * sigmoid(l) - 1 = tanh(l / 2)."""
    return torch.tanh(logits / 2 if reconstruction == "bce" else logits)


def reconstruction_loss(logits: torch.Tensor, images: torch.Tensor, reconstruction: str) -> torch.Tensor:
    """Negative log-likelihood up to a constant, summed over pixels, averaged over images.

    MSE is a Gaussian with variance 1/2 in [-1, 1] space; BCE a Bernoulli on the [0, 1] intensity (digits, masks
    and other near-binary images get sharper samples from it).
    """
    if reconstruction == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(logits, (images + 1) / 2, reduction="none")
    else:
        per_pixel = (to_image(logits, "mse") - images) ** 2
    return per_pixel.flatten(1).sum(1).mean()


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over latent dimensions, averaged over images."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(1).mean()


# ------------------------------------------------------------------------------------------------- family


class VAE:
    """The ``vae`` generator family: conditional VAE with KL warm-up, temperature sampling and EMA weights.

    Args:
        config: training and network options.
        image_shape: (C, H, W) of the images; H, W >= 4.
        num_classes: number of classes K.
        device: where the network lives and trains.
    """

    name: ClassVar[str] = "vae"
    Config: ClassVar[type[TrainConfig]] = VAEConfig

    def __init__(self, config: VAEConfig, *, image_shape: tuple[int, int, int], num_classes: int,
                 device: torch.device) -> None:
        if not isinstance(config, VAEConfig):
            raise ValueError(f"VAE needs a VAEConfig, got {type(config).__name__}")
        self.config = config
        self.image_shape = tuple(int(v) for v in image_shape)
        self.num_classes = num_classes
        self.device = device
        # channels_last: faster convolutions on CUDA tensor cores; nothing to gain on the CPU.
        self._format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        self.net = ConditionalVAE(image_shape, num_classes, latent_dim=config.latent_dim, channels=config.channels,
                                  embed_dim=config.embed_dim).to(device, memory_format=self._format)
        self.ema = EMA(self.net, decay=config.ema_decay)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self._train_net: nn.Module = self.net  # the forward of train_step (DDP-wrapped under torchrun)
        self.step = 0

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """One ELBO step; returns the loss, its two terms and the current KL weight."""
        cfg = self.config
        images = images.to(self.device, memory_format=self._format)
        labels = labels.to(self.device)
        beta = cfg.kl_weight * kl_beta(self.step, cfg.kl_warmup)
        # eps of the reparameterisation comes from the training RNG (reproducible runs).
        eps = torch.randn((images.shape[0], cfg.latent_dim), generator=generator, device=generator.device)
        with autocast(self.device):
            logits, mean, logvar = self._train_net(images, labels, eps)
        recon = reconstruction_loss(logits, images, cfg.reconstruction)
        kl = kl_divergence(mean, logvar)
        loss = recon + beta * kl
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        # EMA warm-up: a short run would otherwise sample from weights still close to the random init.
        self.ema.decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))
        self.ema.update(self.net)
        return {"loss": loss.item(), "recon": recon.item(), "kl": kl.item(), "beta": beta}

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        self._train_net = wrap(self._train_net)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, seeds: Sequence[int], *, temperature: float | None = None) -> torch.Tensor:
        """Decode z = temperature * N(0, I) drawn from one RNG per image (seeded by ``seeds``) with EMA weights.

        ``temperature`` defaults to the config's.
        """
        temperature = self.config.temperature if temperature is None else temperature
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if labels.ndim != 1 or labels.shape[0] != len(seeds):
            raise ValueError(f"labels must be (N,) with N = len(seeds) = {len(seeds)}, got {tuple(labels.shape)}")
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
            raise ValueError(f"labels must be in [0, {self.num_classes}), got {labels.min()}..{labels.max()}")
        z = temperature * per_image_normal(seeds, (self.config.latent_dim,), self.device)
        labels = labels.to(self.device, torch.long)
        # Full precision here, unlike training: sampling is cheap, and bf16's 8-bit mantissa is about one uint8
        # level near +-1, so it would move written pixels.
        out = [to_image(self.ema.module.decode(z[rows], labels[rows])[:keep].float(), self.config.reconstruction)
               for rows, keep in fixed_shape_batches(len(seeds), self.config.sample_batch, self.device)]
        images = torch.cat(out) if out else torch.empty(0, *self.image_shape)
        return images.clamp(-1, 1).cpu().contiguous()

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "ema": self.ema.module.state_dict(),
            "opt": self.optimizer.state_dict(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["opt"])
        self.step = int(state["step"])
