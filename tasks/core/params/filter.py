"""The ``filter`` section: the judge, the per-image tests and the top-up budget."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from synthaug.models.config import JudgeConfig
from synthaug.tasks.core.params.base import Section


class FilterParams(Section):
    """``filter`` section: the judge, the per-image tests and the top-up budget.

    judge: network and recipe of the judge classifier (trained by the ``judge`` step); the default trains in about
      15 s on ~900 16x16 images on one CPU core.
    extractor: a local TorchScript feature-extractor file replacing the judge's features for every distance
      (nothing is downloaded; ``torch.export`` ``.pt2`` archives are refused, since loading one can run pickled
      code); null: the judge's penultimate features.
    device: where the judge trains and runs.
    min_confidence: least calibrated judge probability of the intended class (label consistency).
    realism_k: neighbour rank of the real k-NN balls of the realism test.
    memorization_quantile: share of real unseen (val) images that would count as copies under the thresholds;
      lower is more lenient.
    duplicate_fraction: near-duplicate distance as a fraction of the median real nearest-neighbour distance (on
      the digits example the closest two real train images are 0.26 x that median apart).
    topup_rounds: extra generation rounds for classes left short (0: none, only reported).
    topup_budget: extra images per class at most, as a factor of the plan's ``to_generate``.
    """

    judge: JudgeConfig = JudgeConfig(width=32, feature_dim=128, steps=500, batch_size=64, lr=2e-3)
    extractor: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    min_confidence: float = Field(0.5, ge=0.0, le=1.0)
    realism_k: int = Field(3, ge=1)
    memorization_quantile: float = Field(0.01, ge=0.0, le=0.5)
    duplicate_fraction: float = Field(0.2, ge=0.0, le=1.0)
    topup_rounds: int = Field(3, ge=0)
    topup_budget: float = Field(2.0, ge=0.0)
