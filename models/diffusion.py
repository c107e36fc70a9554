"""Class-conditional diffusion: a MONAI UNet trained on the DDPM epsilon objective, sampled with guidance.

Read top to bottom: config → network → objective → samplers → the ``Diffusion`` family that ties them together.

- Network: MONAI ``DiffusionModelUNet`` with ``num_classes + 1`` class embeddings; the extra index is the "null"
  class used for classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598).
- Objective: predict the noise added at a random timestep (Ho et al. 2020, arXiv:2006.11239, eq. 14), with the
  label replaced by the null class with probability ``label_dropout``.
- Samplers, all on one timestep grid over the training schedule's ``alphas_cumprod``:
  ``ddim`` (Song et al. 2021, arXiv:2010.02502, eta = 0: deterministic from the initial noise),
  ``dpm`` (DPM-Solver++ 2M, Lu et al. 2022, arXiv:2211.01095: second order, same cost per step as DDIM) and
  ``ddpm`` (ancestral sampling of Ho et al.; with ``sample_steps == timesteps`` it is the original slow sampler).

Determinism: image i depends only on (weights, ``labels[i]``, ``seeds[i]``). Initial and per-step noise come from
one CPU generator per image (``models.common``), and the network always runs on micro-batches of exactly
``sample_batch_size`` images (the last one padded with zeros), so every image goes through kernels of the same
shapes whatever the request size, its position or the shard split. Why the padding: on the CPU the convolutions
(oneDNN) and GroupNorm are batch-invariant bitwise, but MKL's sgemm takes another kernel (another summation
order) for matrices of at most 3 rows, so the time-embedding MLP of a 1-image request differs in the last bits
from the same image in a batch of 64; after 20 guided steps that was up to 5e-5 in the output, enough to flip a
uint8 pixel now and then. On CUDA, cuDNN and cuBLAS also choose kernels by shape (keep ``cudnn.benchmark`` off).
Changing ``sample_batch_size`` may change the last bits of the images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler
from torch import nn
from torch.utils.checkpoint import checkpoint

from synthaug.models.common import EMA, autocast, per_image_normal, per_image_streams, stream_normal
from synthaug.models.config import DiffusionConfig

# ----------------------------------------------------------------------------------------------------------------
# Network


def build_unet(config: DiffusionConfig, *, channels_in: int, num_classes: int) -> DiffusionModelUNet:
    """The noise predictor eps(x_t, t, y); class index ``num_classes`` is the null class of guidance."""
    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=channels_in,
        out_channels=channels_in,
        channels=config.channels,
        attention_levels=config.attention_levels,
        num_res_blocks=config.num_res_blocks,
        norm_num_groups=config.norm_num_groups,
        num_head_channels=config.num_head_channels,
        num_class_embeds=num_classes + 1,
    )


def checkpoint_blocks(net: DiffusionModelUNet) -> None:
    """Activation checkpointing per down, middle and up block of ``net`` while it trains with gradients.

    The blocks keep their parameters and state-dict keys: only their ``forward`` is routed through
    ``torch.utils.checkpoint``. Apply it after any deep copy (the EMA): a copy would share the patched closures.
    """
    for block in [*net.down_blocks, net.middle_block, *net.up_blocks]:
        plain = block.forward

        def forward(*args: Any, plain: Callable[..., Any] = plain, block: nn.Module = block, **kwargs: Any) -> Any:
            if block.training and torch.is_grad_enabled():
                return checkpoint(plain, *args, use_reentrant=False, **kwargs)
            return plain(*args, **kwargs)

        block.forward = forward


# ----------------------------------------------------------------------------------------------------------------
# Objective


def epsilon_loss(net: Callable[..., torch.Tensor], x0: torch.Tensor, labels: torch.Tensor,
                 alphas_cumprod: torch.Tensor, *, null_class: int, label_dropout: float,
                 generator: torch.Generator) -> torch.Tensor:
    """DDPM "simple" loss ||eps - eps_theta(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t, y)||^2 (Ho et al. 2020, eq. 14).

    Labels are swapped for the null class with probability ``label_dropout`` so that one network also learns the
    unconditional score needed by classifier-free guidance (Ho & Salimans 2022, Alg. 1).
    """
    n, device = x0.shape[0], x0.device
    t = torch.randint(0, alphas_cumprod.shape[0], (n,), generator=generator, device=device)
    noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
    drop = torch.rand(n, generator=generator, device=device) < label_dropout
    labels = torch.where(drop, torch.full_like(labels, null_class), labels)
    a = alphas_cumprod[t].view(n, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
    with autocast(device):
        eps = net(x_t, t, class_labels=labels)
    return F.mse_loss(eps.float(), noise)


# ----------------------------------------------------------------------------------------------------------------
# Samplers. Each takes x0_fn(x, t) -> clipped x0 prediction at integer timestep t, the initial noise x_T, the
# training schedule and a descending timestep grid; the last step always lands on the clean image (a = 1).

X0Fn = Callable[[torch.Tensor, int], torch.Tensor]


def timestep_grid(timesteps: int, steps: int) -> list[int]:
    """``steps`` descending timesteps, "trailing" spacing: the first is always the noisiest, ``timesteps - 1``.

    Starting at the last training timestep matters with few steps: a grid that starts lower begins from a signal
    level the network never saw at pure noise (Lin et al. 2024, arXiv:2305.08891, sec. 3.3).
    With ``steps == timesteps`` the grid is every timestep.
    """
    return [round(timesteps - i * timesteps / steps) - 1 for i in range(steps)]


def _alpha_sigma(alphas_cumprod: Sequence[float], t: int) -> tuple[float, float]:
    """Signal and noise scales at timestep t; t = -1 is the clean image."""
    a = 1.0 if t < 0 else alphas_cumprod[t]
    return math.sqrt(a), math.sqrt(1.0 - a)


def dpm_solver_pp(x0_fn: X0Fn, x: torch.Tensor, alphas_cumprod: Sequence[float], grid: Sequence[int], *,
                  order: int) -> torch.Tensor:
    """Multistep DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095, Alg. 2) in data prediction.

    ``order=1`` is exactly DDIM with eta = 0 (x_t = a_t x0 + s_t eps with eps re-derived from the clipped x0);
    ``order=2`` is the 2M solver: it reuses the previous x0 prediction as a linear extrapolation in
    lambda = log(a/s), second order at no extra network call. The final step to the clean image is first order
    (lambda is infinite there; "lower_order_final").
    """
    prev_x0, prev_h = None, None
    for i, t in enumerate(grid):
        t_next = grid[i + 1] if i + 1 < len(grid) else -1
        a_s, s_s = _alpha_sigma(alphas_cumprod, t)
        a_t, s_t = _alpha_sigma(alphas_cumprod, t_next)
        x0 = x0_fn(x, t)
        if s_t == 0.0:
            return x0
        h = math.log(a_t / s_t) - math.log(a_s / s_s)
        d = x0
        if order == 2 and prev_x0 is not None:
            r = prev_h / h
            d = x0 + (x0 - prev_x0) / (2.0 * r)
        # eq. (9) of the paper: x_t = (s_t / s_s) x_s - a_t (e^{-h} - 1) D
        x = (s_t / s_s) * x - (a_t * math.expm1(-h)) * d
        prev_x0, prev_h = x0, h
    raise AssertionError("unreachable: the grid always ends on the clean image")


def ddpm_ancestral(x0_fn: X0Fn, x: torch.Tensor, alphas_cumprod: Sequence[float], grid: Sequence[int], *,
                   noise_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Ancestral sampling from the posterior q(x_t' | x_t, x0) (Ho et al. 2020, eqs. 6-7, "fixed small" variance).

    Works on any descending grid (the step's beta is 1 - a_s / a_t); with every timestep it is the original
    1000-step DDPM sampler. ``noise_fn`` draws the fresh per-image noise of each step.
    """
    for i, t in enumerate(grid):
        t_next = grid[i + 1] if i + 1 < len(grid) else -1
        a_s = alphas_cumprod[t]
        a_t = 1.0 if t_next < 0 else alphas_cumprod[t_next]
        beta = 1.0 - a_s / a_t
        x0 = x0_fn(x, t)
        x = (math.sqrt(a_t) * beta / (1.0 - a_s)) * x0 + (math.sqrt(1.0 - beta) * (1.0 - a_t) / (1.0 - a_s)) * x
        if t_next >= 0:
            x = x + math.sqrt(beta * (1.0 - a_t) / (1.0 - a_s)) * noise_fn()
    return x


# ----------------------------------------------------------------------------------------------------------------
# The family


class Diffusion:
    """Class-conditional DDPM with classifier-free guidance; implements ``models.base.GeneratorFamily``.

    Args:
        config: a ``DiffusionConfig``.
        image_shape: (C, H, W) of the training images; H and W divisible by ``2 ** (len(config.channels) - 1)``.
        num_classes: number of real classes K (labels 0..K-1); index K is the null class.
        device: where the networks live and train.
    """

    name: ClassVar[str] = "diffusion"
    Config: ClassVar[type[DiffusionConfig]] = DiffusionConfig
    # x0 predictions are clipped to the data range (Ho et al. 2020); a latent space has no fixed range (None).
    x0_clip: ClassVar[float | None] = 1.0

    def __init__(self, config: DiffusionConfig, *, image_shape: tuple[int, int, int], num_classes: int,
                 device: torch.device) -> None:
        if not isinstance(config, DiffusionConfig):
            raise ValueError(f"config must be a DiffusionConfig, got {type(config).__name__}")
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.config = config
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.steps_done = 0
        self.space_shape = self.diffusion_space(self.image_shape)  # (C, H, W) the UNet denoises
        factor = 2 ** (len(config.channels) - 1)
        if self.space_shape[1] % factor or self.space_shape[2] % factor:
            raise ValueError(f"{self.name}: the UNet input {self.space_shape} (image {self.image_shape}) needs "
                             f"height and width divisible by {factor} for a UNet with {len(config.channels)} "
                             f"levels (channels={config.channels})")

        self.net = build_unet(config, channels_in=self.space_shape[0], num_classes=num_classes).to(self.device)
        if self.device.type == "cuda":
            # channels_last lets cuDNN use its NHWC tensor-core kernels for the convolutions.
            self.net = self.net.to(memory_format=torch.channels_last)
        self.ema = EMA(self.net, decay=config.ema_decay)
        if config.gradient_checkpointing:
            checkpoint_blocks(self.net)  # after the EMA copy, which must keep the plain forwards
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        use_compile = config.compile and self.device.type == "cuda"
        self._train_net = torch.compile(self.net) if use_compile else self.net
        with torch.device("cpu"):  # a few thousand numbers, on the host even while the networks are built elsewhere
            schedule = DDPMScheduler(num_train_timesteps=config.timesteps, schedule=config.schedule)
        # float64 on the host for the sampler's scalar coefficients; float32 on the device for training.
        self._alphas_cumprod = schedule.alphas_cumprod.double().tolist()
        self._alphas_cumprod_dev = schedule.alphas_cumprod.float().to(self.device)

    def diffusion_space(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """Shape of what the UNet denoises: the image itself here (a latent family overrides it)."""
        return image_shape

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from the sampler's output (identity here: the sampler works on pixels)."""
        return x.clamp(-1.0, 1.0)

    # -- training ------------------------------------------------------------------------------------------------

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """One AdamW step on the epsilon loss; timesteps, noise and label dropout all come from ``generator``."""
        cfg = self.config
        self.net.train()
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        loss = epsilon_loss(self._train_net, images, labels, self._alphas_cumprod_dev, null_class=self.num_classes,
                            label_dropout=cfg.label_dropout, generator=generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        self.optimizer.step()
        # EMA warm-up (as TensorFlow's ExponentialMovingAverage with num_updates): short runs average recent weights.
        self.steps_done += 1
        self.ema.decay = min(cfg.ema_decay, (1.0 + self.steps_done) / (10.0 + self.steps_done))
        self.ema.update(self.net)
        return {"loss": loss.item()}

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        self._train_net = wrap(self._train_net)

    # -- sampling ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """Guided samples of the EMA net for ``labels`` (N,), one RNG per image; (N, C, H, W) float32 on the CPU."""
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be a 1-D integer tensor, got shape {tuple(labels.shape)} {labels.dtype}")
        if len(seeds) != labels.shape[0]:
            raise ValueError(f"need one seed per label: {len(seeds)} seeds for {labels.shape[0]} labels")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes - 1}], got min {labels.min().item()} "
                             f"max {labels.max().item()}")
        labels = labels.long().cpu()
        seeds = [int(s) for s in seeds]
        chunk = self.config.sample_batch_size
        parts = [self._sample_chunk(labels[i:i + chunk], seeds[i:i + chunk]) for i in range(0, len(seeds), chunk)]
        if not parts:
            return torch.empty((0, *self.image_shape), dtype=torch.float32)
        return torch.cat(parts)

    def _sample_chunk(self, labels: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """Sample at most ``sample_batch_size`` images, padded to exactly that many rows (see module docstring)."""
        cfg, n, pad = self.config, len(seeds), self.config.sample_batch_size - len(seeds)

        def padded(x: torch.Tensor) -> torch.Tensor:
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
            return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 and x.is_cuda else x

        y = padded(labels).to(self.device)
        x0_fn = self._guided_x0_fn(y)
        grid = timestep_grid(cfg.timesteps, cfg.sample_steps)
        if cfg.sampler == "ddpm":
            streams = per_image_streams(seeds)  # the first draw equals per_image_normal(seeds): same x_T as DDIM
            x = padded(stream_normal(streams, self.space_shape, self.device))
            x = ddpm_ancestral(x0_fn, x, self._alphas_cumprod, grid,
                               noise_fn=lambda: padded(stream_normal(streams, self.space_shape, self.device)))
        else:
            x = padded(per_image_normal(seeds, self.space_shape, self.device))
            x = dpm_solver_pp(x0_fn, x, self._alphas_cumprod, grid, order=2 if cfg.sampler == "dpm" else 1)
        return self.decode(x)[:n].float().cpu().contiguous()  # decoded at the padded, fixed shape

    def _guided_x0_fn(self, labels: torch.Tensor) -> X0Fn:
        """x0 prediction from the guided noise eps_u + w (eps_c - eps_u) (Ho & Salimans 2022, eq. 6) of the EMA net.

        The prediction is clipped to the data range [-1, 1] (``x0_clip``), as in Ho et al. 2020.
        """
        net, w, clip = self.ema.module, self.config.guidance_scale, self.x0_clip
        n = labels.shape[0]
        both = torch.cat([labels, torch.full_like(labels, self.num_classes)])

        def x0_fn(x: torch.Tensor, t: int) -> torch.Tensor:
            a, s = _alpha_sigma(self._alphas_cumprod, t)
            with autocast(self.device):
                if w == 1.0:
                    eps = net(x, torch.full((n,), t, device=self.device), class_labels=labels).float()
                else:  # one call on [cond; uncond] rows: half the kernel launches of two calls
                    out = net(torch.cat([x, x]), torch.full((2 * n,), t, device=self.device), class_labels=both)
                    eps_c, eps_u = out.float().chunk(2)
                    eps = eps_u + w * (eps_c - eps_u)
            x0 = (x - s * eps) / a
            return x0 if clip is None else x0.clamp(-clip, clip)

        return x0_fn

    # -- pretrained starting points ------------------------------------------------------------------------------

    def pretrained_networks(self) -> dict[str, nn.Module]:
        """The networks a pretrained folder can fill, by the names its parts carry (``unet``: the EMA weights)."""
        return {"unet": self.ema.module}

    def load_pretrained(self, parts: dict[str, dict[str, torch.Tensor]], *, source_classes: list[str] | None,
                        classes: list[str], metadata: dict[str, Any]) -> list[str]:
        """Start training from pretrained weights; returns one line per decision, for the log.

        ``parts`` maps names of ``pretrained_networks`` to state dicts whose keys and shapes must match, except the
        UNet's class embedding (``class_embedding.weight``, one row per class plus the null class last): its rows
        are mapped by class name when ``source_classes`` names them, kept as they are when the class count matches
        and no names are given, and re-initialised otherwise. ``metadata`` is the folder's description
        (a latent family reads its latent scale from it).
        """
        targets = self.pretrained_networks()
        unknown = sorted(set(parts) - set(targets))
        if unknown:
            raise ValueError(f"networks {unknown} do not fit the {self.name} family, which has {sorted(targets)}")
        notes = []
        for name, state in parts.items():
            state = dict(state)
            if name == "unet":
                notes.append(_map_class_rows(state, self.ema.module.state_dict()["class_embedding.weight"],
                                             source_classes, classes))
            _check_state(name, state, targets[name].state_dict())
            targets[name].load_state_dict(state)
            notes.append(f"{name}: {len(state)} tensors loaded")
        # Training and sampling both start from the loaded weights: copy the (EMA) UNet into the trained one.
        self.net.load_state_dict(self.ema.module.state_dict())
        return notes

    # -- state ---------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "ema": self.ema.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "steps_done": self.steps_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore weights, EMA and optimizer; the learning rate and weight decay of the current config win
        (fine-tuning may change them)."""
        missing = {"net", "ema", "optimizer", "steps_done"} - set(state)
        if missing:
            raise ValueError(f"diffusion state is missing {sorted(missing)}; keys present: {sorted(state)}")
        self.net.load_state_dict(state["net"])
        self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr
            group["weight_decay"] = self.config.weight_decay
        self.steps_done = int(state["steps_done"])


def _check_state(name: str, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    """Same keys and shapes as the network's own state, or a ValueError naming the first differences."""
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{name}: the pretrained weights do not fit this network's architecture (missing "
                         f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                         f"{'...' if len(unexpected) > 3 else ''}); set the model config to the pretrained one")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(f"{name}: {key} has shape {tuple(value.shape)} in the pretrained weights but "
                             f"{tuple(own[key].shape)} here; set the model config to the pretrained one")
        if own[key].is_floating_point() and not value.is_floating_point():
            raise ValueError(f"{name}: {key} holds {value.dtype} values in the pretrained weights, {own[key].dtype} "
                             "here; pretrained weights must be floating point")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name}: {key} holds NaN or infinite values in the pretrained weights; they are broken")


def _map_class_rows(state: dict[str, torch.Tensor], own: torch.Tensor, source_classes: list[str] | None,
                    classes: list[str]) -> str:
    """Fill ``state['class_embedding.weight']`` for ``classes`` (+ null row) from the pretrained rows; says how."""
    key = "class_embedding.weight"
    source = state.get(key)
    if source is None or source.shape[1:] != own.shape[1:]:
        state[key] = own.clone()
        return "class-conditioning head re-initialised: the pretrained UNet has no class embedding of this width"
    if source_classes is not None:
        if len(source_classes) + 1 != source.shape[0]:
            raise ValueError(f"the pretrained folder names {len(source_classes)} classes but its class embedding "
                             f"has {source.shape[0]} rows (classes + the null class)")
        rows = own.clone()
        mapped = [c for c in classes if c in source_classes]
        for i, c in enumerate(classes):
            if c in source_classes:
                rows[i] = source[source_classes.index(c)]
        rows[-1] = source[-1]  # the null class of guidance
        state[key] = rows
        new = [c for c in classes if c not in source_classes]
        return (f"classes mapped by name: {len(mapped)} of {len(classes)} ({', '.join(mapped) or 'none'}); "
                f"re-initialised: {', '.join(new) or 'none'}; the null class kept")
    if source.shape == own.shape:
        return "classes taken by index: the pretrained folder names no classes and has as many as the data"
    state[key] = own.clone()
    return (f"class-conditioning head re-initialised: the pretrained UNet has {source.shape[0] - 1} classes, the "
            f"data {len(classes)}, and the folder names none")
