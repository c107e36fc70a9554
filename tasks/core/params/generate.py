"""The ``generate`` section and the sampling knobs it may set on a generator at sampling time."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from synthaug.models.families import get_config
from synthaug.tasks.core.params.base import Section

SAMPLING_KNOBS = ("guidance_scale", "sample_steps")  # generator config fields `generate` may set at sampling time


SAMPLING_FIELDS = (*SAMPLING_KNOBS, "sampler", "sample_batch_size")  # config fields that act at sampling time only


class GenerateParams(Section):
    """``generate`` section: the seeds, batch and device of sampling, and the sampling knobs.

    seed: base of the per-image seeds (image i of class k gets seed + k*1e6 + i).
    batch_size: images sampled per forward pass (does not change the pixels).
    device: where the generator samples: ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu`` or ``cuda``.
    guidance_scale: classifier-free guidance weight to sample with (diffusion families); null: the one the
      generator was trained with (``model.<family>.guidance_scale``). A sampling knob: another value needs no
      retraining, so it can be chosen on validation (README "Choosing the sampling guidance").
    sample_steps: sampler steps per image (diffusion families); null: the generator's own.
    """

    seed: int = Field(0, ge=0)
    batch_size: int = Field(64, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    guidance_scale: float | None = Field(None, ge=0.0)
    sample_steps: int | None = Field(None, ge=1)

    def sampling_knobs(self) -> dict[str, Any]:
        """The sampling knobs set here (not null): they replace the checkpoint's own values when sampling."""
        return {k: getattr(self, k) for k in SAMPLING_KNOBS if getattr(self, k) is not None}


def sampling_config(family: str, config: dict[str, Any], knobs: dict[str, Any]) -> Any:
    """The ``family`` generator config ``config`` (a dict, as checkpoints store it) with ``knobs`` applied;
    ValueError naming the knob when the family has no such field or the family's own checks refuse the value."""
    missing = [k for k in knobs if k not in config]
    if missing:
        raise ValueError(f"{missing[0]} is a sampling knob of the diffusion families; the {family} generator has "
                         "none")
    return get_config(family)(**{**config, **knobs})
