"""The interface every generator family implements, and the training options they share.

Conventions (all families):
- images are float32 tensors (N, C, H, W) scaled to [-1, 1]; labels are int64 class indices 0..K-1;
- ``sample(labels, seeds)`` is deterministic per image: image i depends only on the weights,
  ``labels[i]`` and ``seeds[i]`` (one RNG per image), never on batch size or position in the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from synthaug.models.config import TrainConfig


@runtime_checkable
class GeneratorFamily(Protocol):
    """A class-conditional image generator. One implementation per file in ``models/``.

    Constructed as ``Family(config, image_shape=(C, H, W), num_classes=K, device=...)``. Its ``Config``
    defines ``tiny()`` and survives the ``config.json`` round trip (``Config(**asdict(cfg)) == cfg``).
    """

    name: ClassVar[str]
    Config: ClassVar[type[TrainConfig]]
    config: TrainConfig
    image_shape: tuple[int, int, int]
    num_classes: int

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """One optimisation step on a batch already on the device; returns named losses.

        ``generator`` is the training RNG (on the device): use it for all noise so runs are reproducible.
        """
        ...

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Run the training forward passes of every trained network through ``wrap(network)``.

        The training driver passes ``DistributedDataParallel`` here under ``torchrun``, so gradients are averaged
        over processes during ``backward``. Only the forward calls of ``train_step`` go through the wrapper; the
        EMA, ``sample`` and ``state_dict`` keep using the bare networks (the wrapper shares their parameters).
        """
        ...

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """Images for ``labels`` (N,) with one RNG per image seeded by ``seeds``; (N, C, H, W) in [-1, 1] on the CPU."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume training: weights, EMA weights, optimizer states (tensors and numbers only)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
