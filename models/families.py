"""The generator families by name: adding one is its file, its config class in ``models/config.py`` and
one line here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from synthaug.models.config import DiffusionConfig, GANConfig, LatentDiffusionConfig, TrainConfig, VAEConfig

if TYPE_CHECKING:
    from synthaug.models.base import GeneratorFamily

# name -> ("module:Class", its config). The family's module is imported on first use: reading or validating a
# config (the CLI, params files) never loads torch, and nothing runs at import.
_FAMILIES: dict[str, tuple[str, type[TrainConfig]]] = {
    "diffusion": ("synthaug.models.diffusion:Diffusion", DiffusionConfig),
    "gan": ("synthaug.models.gan:GAN", GANConfig),
    "latent_diffusion": ("synthaug.models.latent_diffusion:LatentDiffusion", LatentDiffusionConfig),
    "vae": ("synthaug.models.vae:VAE", VAEConfig),
}


def family_names() -> list[str]:
    return sorted(_FAMILIES)


def _entry(name: str) -> tuple[str, type[TrainConfig]]:
    if name not in _FAMILIES:
        raise ValueError(f"unknown generator family {name!r}; valid names: {', '.join(family_names())}")
    return _FAMILIES[name]


def get_config(name: str) -> type[TrainConfig]:
    """The config class of the family registered as ``name`` (torch is not imported); an unknown name raises with
    the valid names."""
    return _entry(name)[1]


def get_family(name: str) -> type[GeneratorFamily]:
    """The family class registered as ``name``; an unknown name raises with the valid names.

    Import errors of a family module propagate unchanged: a broken family must fail loudly.
    """
    module_name, class_name = _entry(name)[0].split(":")
    return getattr(importlib.import_module(module_name), class_name)
