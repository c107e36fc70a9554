"""Class-conditional GAN built for little data.

Read top to bottom: config, differentiable augmentation, generator, projection discriminator, objective,
sampler, the family (training step, sampling, state).

- Generator: (z, class) -> 4x4 features -> residual upsampling blocks -> tanh image. (z, class embedding) enters
  at the input and through a conditional GroupNorm in every block (conditional BatchNorm of Miyato & Koyama 2018
  with per-image statistics, so no sample depends on the rest of its batch; z in every block as in BigGAN).
- Discriminator: residual downsampling blocks with spectral norm (Miyato et al. 2018) and a projection head
  (Miyato & Koyama 2018): D(x, y) = psi(h) + <embed(y), h>.
- Objective: hinge loss (Lim & Ye 2017; Miyato et al. 2018), plus a small mode-seeking term (Mao et al. 2019).
- Little data: DiffAugment (Zhao et al. 2020) applies the same kind of random, differentiable augmentation to
  real and generated batches in both the D and the G step, so D cannot memorise ten images of a class and G is
  not pushed to reproduce the augmentations. Class-conditional GANs on little data also tend to collapse to one
  image per class (Shahbazi et al. 2022): a D learning rate 8x G's (two time-scale rule, Heusel et al. 2017)
  and the mode-seeking term counter that (on the digits example, equal rates gave one image per class).
- Sampling uses an exponential moving average of the generator weights (Karras et al. 2018; Yazici et al. 2019).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from synthaug.models.common import EMA, autocast, fixed_shape_batches, group_count, per_image_normal
from synthaug.models.config import GANConfig, TrainConfig, augment_policy

SUPPORTED_SIZES = (8, 16, 32, 64)


# ---------------------------------------------------------------------------------------- DiffAugment


def _uniform(shape: Sequence[int], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    # Draw on the generator's device (the training RNG), then move: reproducible whatever the image device.
    return torch.rand(tuple(shape), generator=generator, device=generator.device).to(like.device, like.dtype)


def _randint(high: int, shape: Sequence[int], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(0, high, tuple(shape), generator=generator, device=generator.device).to(device)


def _color(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    x = x + (_uniform((n, 1, 1, 1), generator, x) - 0.5)  # brightness: shift by U(-0.5, 0.5)
    if x.shape[1] > 1:  # saturation: scale the distance to the gray value by U(0, 2)
        gray = x.mean(dim=1, keepdim=True)
        x = (x - gray) * (_uniform((n, 1, 1, 1), generator, x) * 2) + gray
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # contrast: scale the distance to the image mean by U(0.5, 1.5)
    return (x - mean) * (_uniform((n, 1, 1, 1), generator, x) + 0.5) + mean


def _translate(x: torch.Tensor, generator: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size in whole pixels; uncovered pixels become 0."""
    n, c, h, w = x.shape
    max_dy, max_dx = max(1, round(h * ratio)), max(1, round(w * ratio))
    dy = _randint(2 * max_dy + 1, (n, 1, 1), generator, x.device) - max_dy
    dx = _randint(2 * max_dx + 1, (n, 1, 1), generator, x.device) - max_dx
    rows = torch.arange(h, device=x.device).view(1, h, 1) - dy  # source row of every output pixel, (n, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) - dx  # (n, 1, w)
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1)  # (n, 1, h, w)
    source = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    # A gather is differentiable w.r.t. x, so G gets gradients through the shift.
    return x.flatten(2).gather(2, source).view(n, c, h, w) * inside


def _cutout(x: torch.Tensor, generator: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of ``ratio`` of the image size at a random centre per image (DeVries & Taylor 2017)."""
    n, _, h, w = x.shape
    size_h, size_w = max(1, round(h * ratio)), max(1, round(w * ratio))
    cy = _randint(h, (n, 1, 1), generator, x.device)
    cx = _randint(w, (n, 1, 1), generator, x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    hole = ((rows - cy).abs() <= size_h // 2) & ((cols - cx).abs() <= size_w // 2)  # (n, h, w)
    return x * (~hole).unsqueeze(1).to(x.dtype)


_AUGMENT_FNS = {"color": _color, "translation": _translate, "cutout": _cutout}


def diff_augment(x: torch.Tensor, policy: Sequence[str], generator: torch.Generator) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020): random augmentations that gradients flow through, fresh per image.

    Args:
        x: images (N, C, H, W) in [-1, 1] (the output may leave that range; only D sees it).
        policy: names from ``AUGMENTATIONS``, applied in that order.
        generator: RNG of every random draw (the training RNG of ``train_step``).
    """
    for name in policy:
        x = _AUGMENT_FNS[name](x, generator)
    return x


# ------------------------------------------------------------------------------------------------ networks



def _check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    c, h, w = (int(v) for v in image_shape)
    if c < 1 or h != w or h not in SUPPORTED_SIZES:
        raise ValueError(f"GAN supports square images of side {SUPPORTED_SIZES} with >= 1 channel, "
                         f"got image_shape={(c, h, w)}")
    return c, h, w


def _widths(base: int, levels: int) -> list[int]:
    """Width at each of ``levels`` resolutions, from the finest: base, 2*base, 4*base, ... capped at 8*base."""
    return [base * min(2**i, 8) for i in range(levels)]


class ConditionalGroupNorm(nn.Module):
    """GroupNorm whose scale and shift come from the conditioning vector (conditional normalisation, de Vries et
    al. 2017; Miyato & Koyama 2018). Group statistics are per image, so a sample never depends on its batch."""

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(group_count(channels), channels, affine=False)
        self.scale = nn.Linear(cond_dim, channels)
        self.shift = nn.Linear(cond_dim, channels)
        nn.init.zeros_(self.scale.weight)  # start as plain GroupNorm (scale 1, shift 0)
        nn.init.zeros_(self.scale.bias)
        nn.init.zeros_(self.shift.weight)
        nn.init.zeros_(self.shift.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * (1 + self.scale(cond)[:, :, None, None]) + self.shift(cond)[:, :, None, None]


class UpBlock(nn.Module):
    """Residual block doubling the resolution (BigGAN / SNGAN generator block): norm-act-up-conv-norm-act-conv."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int) -> None:
        super().__init__()
        self.norm1 = ConditionalGroupNorm(in_channels, cond_dim)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = ConditionalGroupNorm(out_channels, cond_dim)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.norm1(x, cond)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h), cond)))
        return h + self.skip(F.interpolate(x, scale_factor=2, mode="nearest"))


class Generator(nn.Module):
    """Class-conditional generator: (z, label) -> image in [-1, 1].

    Args:
        image_shape: (C, H, W) of the output; square, side one of 8, 16, 32, 64.
        num_classes: number of classes K.
        z_dim: size of the latent vector.
        channels: width at the output resolution (doubled per halving, capped at 8x).
        embed_dim: size of the class embedding.
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int, *, z_dim: int = 64, channels: int = 32,
                 embed_dim: int = 32) -> None:
        super().__init__()
        c, h, _ = _check_image_shape(image_shape)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        levels = int(math.log2(h // 4))  # upsampling blocks from 4x4 to h x h
        widths = _widths(channels, levels + 1)[::-1]  # coarsest first
        cond_dim = z_dim + embed_dim
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.stem = nn.Linear(cond_dim, widths[0] * 4 * 4)
        self.blocks = nn.ModuleList(UpBlock(widths[i], widths[i + 1], cond_dim) for i in range(levels))
        self.out_norm = ConditionalGroupNorm(widths[-1], cond_dim)
        self.out = nn.Conv2d(widths[-1], c, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # z goes to every block's normalisation too ("skip-z", BigGAN, Brock et al. 2019), not only to the
        # input: a class-conditioned generator that sees z once tends to ignore it and collapse per class.
        cond = torch.cat([z, self.embed(labels)], dim=1)
        x = self.stem(cond).view(z.shape[0], -1, 4, 4)
        for block in self.blocks:
            x = block(x, cond)
        return torch.tanh(self.out(F.relu(self.out_norm(x, cond))))


class DownBlock(nn.Module):
    """Spectrally normalised residual block halving the resolution (SNGAN discriminator block).

    The first block skips the leading activation: its input is the image itself, not features.
    """

    def __init__(self, in_channels: int, out_channels: int, *, first: bool) -> None:
        super().__init__()
        self.first = first
        self.conv1 = spectral_norm(nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        # First block: pool then 1x1 conv (cheaper, same result); later: conv then pool, as in SNGAN.
        skip = self.skip(F.avg_pool2d(x, 2)) if self.first else F.avg_pool2d(self.skip(x), 2)
        return h + skip


class ProjectionDiscriminator(nn.Module):
    """D(x, y) = psi(h(x)) + <embed(y), h(x)> (Miyato & Koyama 2018), every weight spectrally normalised.

    Args:
        image_shape: (C, H, W) of the input; square, side one of 8, 16, 32, 64.
        num_classes: number of classes K.
        channels: width of the first block (doubled per halving, capped at 8x).
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int, *, channels: int = 32) -> None:
        super().__init__()
        c, h, _ = _check_image_shape(image_shape)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        levels = int(math.log2(h // 4))  # downsampling blocks from h x h to 4x4
        widths = _widths(channels, levels)
        ins = [c, *widths[:-1]]
        self.blocks = nn.Sequential(*(DownBlock(ins[k], widths[k], first=k == 0) for k in range(levels)))
        self.final = spectral_norm(nn.Conv2d(widths[-1], widths[-1], 3, padding=1))  # one more layer at 4x4
        self.psi = spectral_norm(nn.Linear(widths[-1], 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, widths[-1]))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.final(F.relu(self.blocks(x)))).sum(dim=(2, 3))  # global sum pooling, (N, F)
        return self.psi(h).squeeze(1) + (self.embed(labels) * h).sum(dim=1)


# ----------------------------------------------------------------------------------------------- objective


def d_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: push real scores above +1 and fake scores below -1."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def g_hinge_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: raise D's score of generated images."""
    return -fake_logits.mean()


def mode_seeking_loss(fake: torch.Tensor, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mode-seeking term (Mao et al. 2019): 1 / (image distance / latent distance) over same-class pairs.

    Class-conditional GANs on little data tend to give one image per class whatever z (Shahbazi et al. 2022);
    this penalises exactly that. Zero when the batch holds no two images of one class.
    """
    same = (labels[:, None] == labels[None, :]).triu(diagonal=1)
    if not same.any():
        return fake.new_zeros(())
    flat = fake.float().flatten(1)
    image_dist = (flat[:, None] - flat[None]).abs().mean(dim=2)[same]
    latent_dist = (z[:, None] - z[None]).abs().mean(dim=2)[same]
    return 1.0 / ((image_dist / latent_dist).mean() + 1e-5)


# ------------------------------------------------------------------------------------------------- family


class GAN:
    """The ``gan`` generator family: projection-discriminator GAN with DiffAugment and an EMA generator.

    Args:
        config: training and network options.
        image_shape: (C, H, W) of the images; square, side one of 8, 16, 32, 64.
        num_classes: number of classes K.
        device: where the networks live and train.
    """

    name: ClassVar[str] = "gan"
    Config: ClassVar[type[TrainConfig]] = GANConfig

    def __init__(self, config: GANConfig, *, image_shape: tuple[int, int, int], num_classes: int,
                 device: torch.device) -> None:
        if not isinstance(config, GANConfig):
            raise ValueError(f"GAN needs a GANConfig, got {type(config).__name__}")
        self.config = config
        self.image_shape = _check_image_shape(image_shape)
        self.num_classes = num_classes
        self.device = device
        self.policy = augment_policy(config.augment)
        # channels_last: faster convolutions on CUDA tensor cores; a no-op difference on the CPU.
        fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        self.generator = Generator(image_shape, num_classes, z_dim=config.z_dim, channels=config.g_channels,
                                   embed_dim=config.embed_dim).to(device, memory_format=fmt)
        self.discriminator = ProjectionDiscriminator(image_shape, num_classes,
                                                     channels=config.d_channels).to(device, memory_format=fmt)
        self.ema = EMA(self.generator, decay=config.ema_decay)
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.d_lr, betas=betas)
        self.step = 0
        self._format = fmt
        # The forwards of train_step (DDP-wrapped under torchrun); EMA, sampling and state use the bare networks.
        self._g_train: nn.Module = self.generator
        self._d_train: nn.Module = self.discriminator

    def _fake(self, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn((labels.shape[0], self.config.z_dim), generator=generator, device=generator.device)
        z = z.to(self.device)
        return self._g_train(z, labels), z

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """One discriminator update, then one generator update, both on augmented real and generated batches."""
        images = images.to(self.device, memory_format=self._format)
        labels = labels.to(self.device)

        # Discriminator: real vs. (detached) generated, augmented by independent random draws, scored in one
        # pass (D has no batch statistics, so this equals two passes).
        with autocast(self.device):
            fake, z = self._fake(labels, generator)
            both = torch.cat([diff_augment(images, self.policy, generator),
                              diff_augment(fake.detach(), self.policy, generator)])
            d_real, d_fake = self._d_train(both, torch.cat([labels, labels])).float().chunk(2)
            d_loss = d_hinge_loss(d_real, d_fake)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()

        # Generator: the same fake batch (one G forward per step) scored by the updated D, freshly augmented;
        # the gradient flows back through the augmentation into G.
        with autocast(self.device):
            g_logits = self._d_train(diff_augment(fake, self.policy, generator), labels)
            g_loss = g_hinge_loss(g_logits.float())
            if self.config.mode_seeking:
                g_loss = g_loss + self.config.mode_seeking * mode_seeking_loss(fake, z, labels)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()

        # EMA warm-up: a short run would otherwise sample from weights still close to the random init.
        self.step += 1
        self.ema.decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        self.ema.update(self.generator)
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        # One G forward and two D forward/backward pairs per step: each wrapper sees a backward before its next
        # forward, as DistributedDataParallel requires.
        self._g_train, self._d_train = wrap(self._g_train), wrap(self._d_train)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """EMA-generator images for ``labels``; z of image i drawn from its own RNG seeded by ``seeds[i]``."""
        if labels.ndim != 1 or labels.shape[0] != len(seeds):
            raise ValueError(f"labels must be (N,) with N = len(seeds) = {len(seeds)}, got {tuple(labels.shape)}")
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
            raise ValueError(f"labels must be in [0, {self.num_classes}), got {labels.min()}..{labels.max()}")
        z = per_image_normal(seeds, (self.config.z_dim,), self.device)
        labels = labels.to(self.device, torch.long)
        # Full precision here, unlike training: sampling is cheap, and bf16's 8-bit mantissa is about one uint8
        # level near +-1, so it would move written pixels.
        out = [self.ema.module(z[rows], labels[rows])[:keep].float()
               for rows, keep in fixed_shape_batches(len(seeds), self.config.sample_batch, self.device)]
        images = torch.cat(out) if out else torch.empty(0, *self.image_shape)
        return images.clamp(-1, 1).cpu().contiguous()

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "ema": self.ema.module.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.ema.module.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])
