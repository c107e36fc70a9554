"""The judge: a small CNN classifier trained on real images, and the feature extractor behind every metric.

Its penultimate embedding (``features``) is the default space for FID, KID, precision/recall and
density/coverage; its temperature-calibrated probabilities (``predict_proba``) drive the label-consistency
filter. The same network and ``train_judge`` serve the downstream-utility runs (real-only, real + synthetic,
...), trained from scratch under each condition.

Conventions: images are float32 (N, C, H, W) in [-1, 1]; labels are int64 class indices 0..K-1.
Checkpoints are one ``torch.save`` file of plain data (shape, config dict, state_dict), loaded with
``weights_only=True``; nothing is pickled and nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import ResNet
from torch import nn

from synthaug.models.common import eval_mode, group_count
from synthaug.models.config import JudgeConfig

StepCallback = Callable[[int, dict[str, float]], None]

_FORMAT = "synthaug-judge/1"
VGG_MAX_SIDE = 64  # ``auto`` keeps the VGG stages up to this side (the bundled examples' numbers stay as they were)
PIXELS_PER_PASS = 2**22  # inference passes hold at most this many input pixels per channel (bounded memory)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: an image's features must not depend on the batch it is embedded with
    # (the determinism contract), and train/eval behave the same.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.GroupNorm(group_count(c_out), c_out),
        nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.GroupNorm(group_count(c_out), c_out),
        nn.SiLU(),
    )


def _resnet(channels_in: int, width: int) -> nn.Module:
    """MONAI's ResNet-10 (one basic block per stage, widths w, 2w, 4w, 8w) as a feature map extractor, with
    GroupNorm instead of BatchNorm (see ``_conv_block``); no pretrained weights."""
    return ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[width * 2**i for i in range(4)],
                  spatial_dims=2, n_input_channels=channels_in, conv1_t_size=7, conv1_t_stride=2,
                  feed_forward=False, norm=("group", {"num_groups": group_count(width)}))


class Judge(nn.Module):
    """A CNN sized to the images, as ``config.backbone`` says.

    VGG-style (up to 64 px with ``auto``): stages of two 3x3 convs then 2x2 average pooling, down to about 4x4 and
    at least two stages; 8 to 16 px -> 2 stages, 32 px -> 3, 64 px -> 4 (the smaller side decides). One stage at 8
    px was too weak a classifier: 0.83 balanced accuracy on the digits' real val split, against 0.93 with two
    (docs/BENCHMARKS.md). ResNet (above 64 px): MONAI's ResNet-10, whose stem brings the side to a quarter before
    any stage, then 4 stages down to 1/32. A global average pool and a linear layer give the embedding; one more
    linear layer gives the logits. ``temperature`` (a buffer, saved with the weights) is 1 until ``fit_temperature``
    sets it.

    Args:
        image_shape: (C, H, W) of the images; H and W at least 8.
        num_classes: number of classes K >= 2.
        config: network size (``width``, ``feature_dim``, ``dropout``) and the recipe it is trained with;
            None takes ``JudgeConfig()``.
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int, *, config: JudgeConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else JudgeConfig()
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
        c, h, w = (int(s) for s in image_shape)
        if c < 1 or min(h, w) < 8:
            raise ValueError(f"image_shape needs C >= 1 and H, W >= 8, got {(c, h, w)}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.image_shape = (c, h, w)
        self.num_classes = int(num_classes)
        self.config = config

        self.backbone = config.backbone
        if self.backbone == "auto":
            self.backbone = "vgg" if min(h, w) <= VGG_MAX_SIDE else "resnet"
        if self.backbone == "resnet":
            self.body = _resnet(c, config.width)
            c_in = config.width * 8
        else:
            n_stages = max(2, int(math.log2(min(h, w) / 4)))
            layers: list[nn.Module] = []
            c_in = c
            for i in range(n_stages):
                c_out = config.width * 2 ** min(i, 3)
                layers += [_conv_block(c_in, c_out), nn.AvgPool2d(2)]
                c_in = c_out
            self.body = nn.Sequential(*layers)
        self.embed_layer = nn.Sequential(nn.Linear(c_in, config.feature_dim), nn.SiLU())
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.feature_dim, num_classes))
        self.register_buffer("temperature", torch.ones(()))

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"expected images (N, {', '.join(map(str, self.image_shape))}), "
                             f"got shape {tuple(x.shape)}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding (N, feature_dim) of images (N, C, H, W)."""
        self._check(x)
        h = self.body(x)
        return self.embed_layer(h if h.ndim == 2 else h.mean(dim=(2, 3)))  # the ResNet pools already

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (uncalibrated) logits (N, K)."""
        return self.head(self.features(x))

    @torch.no_grad()
    def _batched(self, fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                 batch_size: int) -> torch.Tensor:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._check(images)
        device = self.temperature.device
        # Large images: fewer rows per pass, so a pass holds a bounded number of pixels (GroupNorm: same outputs).
        batch_size = max(1, min(batch_size, PIXELS_PER_PASS // (images.shape[2] * images.shape[3])))
        with eval_mode(self):
            out = [fn(images[i:i + batch_size].to(device, torch.float32)).float().cpu()
                   for i in range(0, images.shape[0], batch_size)]
        return torch.cat(out) if out else torch.empty(0)

    def embed(self, images: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
        """``features`` in eval mode without gradients, batch by batch; (N, feature_dim) float32 on the CPU.

        Args:
            images: (N, C, H, W) in [-1, 1], on any device.
            batch_size: images per forward pass.
        """
        return self._batched(self.features, images, batch_size)

    def predict_logits(self, images: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
        """Raw logits (N, K) in eval mode, batch by batch, float32 on the CPU (temperature not applied).

        Args:
            images: (N, C, H, W) in [-1, 1], on any device.
            batch_size: images per forward pass.
        """
        return self._batched(self.forward, images, batch_size)

    def predict_proba(self, images: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
        """Calibrated class probabilities softmax(logits / T) (N, K), float32 on the CPU.

        Args:
            images: (N, C, H, W) in [-1, 1], on any device.
            batch_size: images per forward pass.
        """
        logits = self.predict_logits(images, batch_size=batch_size)
        return torch.softmax(logits / self.temperature.cpu(), dim=1)


def _check_data(images: torch.Tensor, labels: torch.Tensor, num_classes: int, what: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{what} images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{what} labels must be ({images.shape[0]},) to match the images, "
                         f"got shape {tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} set is empty")
    if not images.dtype.is_floating_point or not bool(torch.isfinite(images).all()):
        raise ValueError(f"{what} images must be finite floats, got dtype {images.dtype} or non-finite values")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{what} labels must be integer class indices, got dtype {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{what} labels must be in [0, {num_classes - 1}], got values in [{lo}, {hi}]")


def balanced_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency loss weights n / (K * count_k) (mean 1 over the samples); 0 for an absent class.

    Args:
        labels: int64 class indices (N,).
        num_classes: K.
    """
    counts = torch.bincount(labels.detach().cpu().long(), minlength=num_classes).double()
    if counts.shape[0] != num_classes:
        raise ValueError(f"labels hold class indices >= num_classes={num_classes}")
    weights = torch.where(counts > 0, labels.shape[0] / (num_classes * counts.clamp_min(1)), 0.0)
    return weights.float()


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int) -> torch.Tensor:
    """Translate each image by its own (dy, dx) with edge padding, through one gather (no per-image loop)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    rows = torch.arange(h, device=x.device)[None, :] + pad - dy[:, None]  # (N, H)
    cols = torch.arange(w, device=x.device)[None, :] + pad - dx[:, None]  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices split by a slice put their dimensions first: (N, H, W, C).
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _augment(x: torch.Tensor, config: JudgeConfig, rng: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    if config.max_shift > 0:
        dy, dx = torch.randint(-config.max_shift, config.max_shift + 1, (2, n), generator=rng).to(x.device)
        x = translate(x, dy, dx, config.max_shift)
    if config.hflip:
        flip = (torch.rand(n, generator=rng) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _fit(model: Judge, x: torch.Tensor, y: torch.Tensor, config: JudgeConfig, weight: torch.Tensor | None,
         on_step: StepCallback | None, sample_weight: torch.Tensor | None = None) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, config.steps))
    rng = torch.Generator().manual_seed(config.seed)  # CPU: the same batches and shifts on every device
    n = x.shape[0]
    batch = min(config.batch_size, n)
    order, pos = torch.randperm(n, generator=rng), 0
    for step in range(config.steps):
        if pos + batch > n:  # reshuffle each epoch: every image is seen once per epoch
            order, pos = torch.randperm(n, generator=rng), 0
        idx = order[pos:pos + batch].to(x.device)
        pos += batch
        xb = _augment(x[idx], config, rng) if config.augment else x[idx]
        if sample_weight is None:
            loss = F.cross_entropy(model(xb), y[idx], weight=weight, label_smoothing=config.label_smoothing)
        else:  # a weighted mean: the same normalisation as the class-weighted mean above
            per_image = F.cross_entropy(model(xb), y[idx], weight=weight, label_smoothing=config.label_smoothing,
                                        reduction="none")
            w = sample_weight[idx] * (weight[y[idx]] if weight is not None else 1.0)
            loss = (per_image * sample_weight[idx]).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step + 1, {"loss": float(loss.detach()), "lr": sched.get_last_lr()[0]})


def train_judge(images: torch.Tensor, labels: torch.Tensor, *, num_classes: int, config: JudgeConfig,
                device: torch.device | str, val_images: torch.Tensor | None = None,
                val_labels: torch.Tensor | None = None, class_weights: torch.Tensor | None = None,
                sample_weights: torch.Tensor | None = None, on_step: StepCallback | None = None) -> Judge:
    """Train a judge from scratch on a dataset held on ``device`` as one tensor; calibrate it on val if given.

    Deterministic given ``config.seed`` on the CPU (initialisation, batch order, augmentation and dropout all
    come from seeded generators; the global RNG is left untouched). On CUDA, convolution kernels may add
    run-to-run noise at the last bits.

    Args:
        images: (N, C, H, W) float in [-1, 1].
        labels: (N,) int64 class indices in [0, num_classes).
        num_classes: K >= 2.
        config: network size and recipe.
        device: where the data and the model live during training.
        val_images: optional (M, C, H, W) held-out images; with ``val_labels`` they fit the temperature.
        val_labels: optional (M,) labels of ``val_images``.
        class_weights: optional (K,) cross-entropy weights, e.g. ``balanced_class_weights`` for imbalanced data.
        sample_weights: optional (N,) weights > 0 of the images in the loss (a batch's loss is their weighted
            mean), e.g. a smaller weight for synthetic images than for real ones.
        on_step: called as on_step(step, {"loss": ..., "lr": ...}) after every step.
    """
    device = torch.device(device)
    _check_data(images, labels, num_classes, "train")
    if (val_images is None) != (val_labels is None):
        raise ValueError("val_images and val_labels must be given together")
    if val_images is not None and val_labels is not None:
        _check_data(val_images, val_labels, num_classes, "val")
        if val_images.shape[1:] != images.shape[1:]:
            raise ValueError(f"val images are {tuple(val_images.shape[1:])}, train images {tuple(images.shape[1:])}")
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=torch.float32)
        if weight.shape != (num_classes,) or bool((weight < 0).any()):
            raise ValueError(f"class_weights must be ({num_classes},) and >= 0, got {weight.tolist()}")
        weight = weight.to(device)
    if sample_weights is not None:
        sample_weights = torch.as_tensor(sample_weights, dtype=torch.float32)
        if sample_weights.shape != labels.shape or bool((sample_weights <= 0).any()):
            raise ValueError(f"sample_weights must be ({labels.shape[0]},) and > 0")
        sample_weights = sample_weights.to(device)

    x = images.to(device, torch.float32)
    y = labels.to(device, torch.int64)
    # Initialisation and dropout draw from the global RNG: seed a forked copy, leaving the caller's untouched.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model = Judge(tuple(x.shape[1:]), num_classes, config=config).to(device).train()
        _fit(model, x, y, config, weight, on_step, sample_weights)
    model.eval()
    if val_images is not None and val_labels is not None:
        fit_temperature(model, val_images, val_labels)
    return model


def fit_temperature(judge: Judge, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 512,
                    max_iter: int = 100) -> float:
    """Temperature scaling (Guo et al. 2017): the scalar T > 0 minimizing the NLL of softmax(logits / T).

    One parameter leaves every argmax (and so the accuracy) unchanged; it only shrinks over-confident
    probabilities. T is optimised as log T (keeps it positive) with L-BFGS, stored in ``judge.temperature``
    and returned.

    Args:
        judge: a trained judge.
        images: held-out (M, C, H, W) images (not the training set: its logits are over-confident by design).
        labels: (M,) their labels.
        batch_size: images per forward pass.
        max_iter: L-BFGS iterations.
    """
    _check_data(images, labels, judge.num_classes, "calibration")
    logits = judge.predict_logits(images, batch_size=batch_size).double()
    y = labels.detach().cpu().long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t):
        raise ValueError(f"temperature fit diverged (T={t}); is the calibration set degenerate?")
    judge.temperature.fill_(t)
    return t


def save_judge(judge: Judge, path: Path | str) -> None:
    """Write the judge as plain data (format tag, image shape, class count, config dict, state_dict).

    Written to a temporary file then renamed, so a kill leaves either the old file or the new one.

    Args:
        judge: the judge to save.
        path: destination file (conventionally ``judge.pt``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": _FORMAT,
        "image_shape": list(judge.image_shape),
        "num_classes": judge.num_classes,
        "config": dataclasses.asdict(judge.config),
        "state_dict": {k: v.detach().cpu() for k, v in judge.state_dict().items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_judge(path: Path | str, *, device: torch.device | str = "cpu") -> Judge:
    """Rebuild a judge saved by ``save_judge`` (``weights_only=True``: tensors and plain data only), in eval mode.

    Args:
        path: the file written by ``save_judge``.
        device: where to put the weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no judge checkpoint here")
    payload: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a judge checkpoint (expected format {_FORMAT!r})")
    judge = Judge(tuple(payload["image_shape"]), payload["num_classes"], config=JudgeConfig(**payload["config"]))
    judge.load_state_dict(payload["state_dict"])
    return judge.to(device).eval()


class FeatureExtractor:
    """A user-supplied network used as images -> (N, F) features; built by ``load_feature_extractor``.

    Called like ``Judge.embed``: ``extractor(images, batch_size=...)`` -> float32 (N, F) on the CPU. Outputs with
    trailing singleton or spatial dimensions (e.g. (N, F, 1, 1) from a pooled CNN) are flattened to (N, F').
    """

    def __init__(self, module: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> None:
        self.module = module
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if images.ndim != 4:
            raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
        out = []
        for i in range(0, images.shape[0], batch_size):
            f = self.module(images[i:i + batch_size].to(self.device, torch.float32))
            if not isinstance(f, torch.Tensor) or f.ndim < 2:
                shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise ValueError(f"the feature extractor must return a tensor (N, F, ...), got {shape}")
            out.append(f.reshape(f.shape[0], -1).float().cpu())
        return torch.cat(out) if out else torch.empty(0)


def load_feature_extractor(path: Path | str, *, device: torch.device | str = "cpu") -> FeatureExtractor:
    """Load a local TorchScript network file as a feature extractor.

    TorchScript files come from ``torch.jit.save`` of a scripted or traced network (deprecated by recent torch
    but still loaded); torch reads them with its own restricted loader, which builds tensors and TorchScript code but
    never runs Python pickles. ``torch.export`` archives (``.pt2``) are refused: ``torch.export.load`` unpickles
    weights stored with ``use_pickle``, so a crafted file runs arbitrary code when loaded. The network takes the
    project's images (N, C, H, W) in [-1, 1] as they are: build any resizing, channel repetition or normalisation
    it needs into it before saving. Nothing is downloaded.

    Args:
        path: the TorchScript file (any suffix but ``.pt2``).
        device: where to run it.

    Raises:
        ValueError: a ``.pt2`` archive, or a file that is not TorchScript.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no feature extractor file here")
    device = torch.device(device)
    if path.suffix.lower() == ".pt2" or _is_export_archive(path):
        raise ValueError(f"{path} is a torch.export archive, which can hold pickled data that runs code when "
                         "loaded; refused. Save the network as TorchScript instead: "
                         "torch.jit.save(torch.jit.trace(net, example), 'extractor.ts')")
    try:
        with warnings.catch_warnings():  # the user's file format, not something they can act on here
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device)
    except RuntimeError as err:
        raise ValueError(f"{path} is not a TorchScript file; save the network with torch.jit.save "
                         f"(TorchScript) ({err})") from err
    return FeatureExtractor(module.eval(), device)


def _is_export_archive(path: Path) -> bool:
    """A ``torch.export.save`` zip under another suffix: its top folder holds ``archive_format``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/archive_format") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
