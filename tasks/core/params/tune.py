"""The ``tune`` section: the recipe search of ``synthaug tune``."""

from __future__ import annotations

from pydantic import Field

from synthaug.tasks.core.params.base import Section


class TuneParams(Section):
    """``tune`` section: the recipe search of ``synthaug tune``.

    trials: recipes scored, the default recipe (every image, weight 1) first; a resumed study counts the trials
      already scored.
    seeds: classifier runs per recipe and validation fold (every family).
    seed: the Optuna sampler's seed (TPE).
    min_gain: the winner replaces the default recipe only when its validation objective is more than this above the
      default's; otherwise the default is kept (a tie or a gain within noise changes nothing).
    guidance: sampling guidance scales (``generate.guidance_scale``, diffusion families) searched together with the
      recipe: each is sampled and filtered once into ``<workdir>/tune/guidance-<w>/``, and a trial draws its
      synthetic images from one of them. The params' own guidance is always a candidate (the default trial's);
      empty: only the params' own sampling is tuned over.
    """

    trials: int = Field(16, ge=1)
    seeds: int = Field(2, ge=1)
    seed: int = 0
    min_gain: float = Field(0.005, ge=0.0)
    guidance: list[float] = Field(default_factory=list)
