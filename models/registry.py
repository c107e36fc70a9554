"""The explicit registry of generator families: adding one is one file and one line here."""

from __future__ import annotations

import importlib

from synthaug.models.base import GeneratorFamily

# name -> "module:Class"; imported on first use so `import models` stays light and nothing runs at import.
_FAMILIES: dict[str, str] = {
    "diffusion": "synthaug.models.diffusion:Diffusion",
    "gan": "synthaug.models.gan:GAN",
    "latent_diffusion": "synthaug.models.latent_diffusion:LatentDiffusion",
    "vae": "synthaug.models.vae:VAE",
}


def family_names() -> list[str]:
    return sorted(_FAMILIES)


def get_family(name: str) -> type[GeneratorFamily]:
    """The family class registered as ``name``; an unknown name raises with the valid names.

    Import errors of a family module propagate unchanged: a broken family must fail loudly.
    """
    if name not in _FAMILIES:
        raise ValueError(f"unknown generator family {name!r}; valid names: {', '.join(family_names())}")
    module_name, class_name = _FAMILIES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
