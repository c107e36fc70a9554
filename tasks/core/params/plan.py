"""The ``plan`` section: how many synthetic images each class gets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from synthaug.tasks.core.params.base import Section


class PlanParams(Section):
    """``plan`` section: how many synthetic images each class gets.

    strategy: ``match_majority`` raises every class to the largest; ``target`` raises every class to
      ``target``; ``ratio`` adds ``ratio`` synthetic images per real one, at most ``cap`` per class; ``release``
      (set by ``synthaug anonymize``, whatever this section says) gives every class ``release_per_class`` synthetic
      images, or as many as its real train images when null.
    target: per-class total of ``target`` (a class already larger keeps its size, with no synthetic images).
    ratio: synthetic images per real train image of ``ratio`` (rounded half up per class).
    cap: at most this many synthetic images per class under ``ratio``.
    release_per_class: synthetic images per class of ``release``; the anonymize flow copies
      ``privacy.release_per_class`` here.
    overgenerate: factor on the number to generate, to cover what the filter rejects.
    """

    strategy: Literal["match_majority", "target", "ratio", "release"] = "match_majority"
    target: int = Field(100, ge=1)
    ratio: float = Field(1.0, gt=0.0)
    cap: int = Field(1000, ge=1)
    release_per_class: int | None = Field(None, ge=1)
    overgenerate: float = Field(1.5, ge=1.0)
