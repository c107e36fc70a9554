"""The ``privacy`` section: the gate and the format of an anonymized release."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from synthaug.tasks.core.params.base import Section
from synthaug.tasks.core.params.publish import check_name

ReleaseFormat = Literal["png", "png16", "nifti", "dicom"]


class PrivacyParams(Section):
    """``privacy`` section: the gate of ``synthaug anonymize`` and what its release looks like.

    name: registry name of the anonymized release (versions tagged ``<name>/v<N>``); null: ``<publish.name>-
      anonymized``, so a release never lands among the versions of the augmented dataset (which hold real images).
    memorization_quantile: the memorization thresholds flag this share of real unseen (val) images, as the filter's
      do; no released image may lie within them. Keep it <= ``filter.memorization_quantile``, or the filter keeps
      images the gate then blocks.
    max_attack_auc: the release fails when the membership attack's AUC interval lies wholly above this (0.5:
      clearly better than chance).
    confidence: confidence level of the attack's bootstrap interval.
    bootstrap: bootstrap resamples of that interval.
    seed: seed of the bootstrap resampling.
    release_format: file format of the released images: ``png`` (as generated), or ``png16``, ``nifti``, ``dicom``
      (converted by ``tasks.release.export``; see README "Medical images (DICOM, NIfTI)").
    release_per_class: synthetic images released per class; null: every class at its real train size (a full
      synthetic replacement). The anonymize flow plans with it (``plan.strategy=release``), not with ``plan``.
    min_tstr_ratio: null, or the release is refused when a classifier trained on it scores below this share of
      one trained on the real train split (balanced accuracy on the real test split, mean over seeds;
      ``tasks.core.privacy.tstr``).
    """

    name: str | None = None
    memorization_quantile: float = Field(0.01, ge=0.0, le=0.5)
    max_attack_auc: float = Field(0.5, ge=0.5, le=1.0)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    bootstrap: int = Field(1000, ge=100)
    seed: int = Field(0, ge=0)
    release_format: ReleaseFormat = "png"
    release_per_class: int | None = Field(None, ge=1)
    min_tstr_ratio: float | None = Field(None, gt=0.0)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None:
            check_name(value)
        return value

    def release_name(self, dataset_name: str) -> str:
        """The registry name of the release: ``name``, or ``<dataset_name>-anonymized``."""
        return self.name or f"{dataset_name}-anonymized"
