"""The ``privacy`` section: the gate and the format of an anonymized release."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from synthaug.models.config import JudgeConfig
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
    confidence: the gate's family-wise level: a release that leaks nothing fails an attack check with probability
      at most ``1 - confidence`` (half to the pooled checks, half to the per-class ones, Bonferroni within each).
    bootstrap: bootstrap resamples of that interval.
    seed: seed of the bootstrap resampling.
    attack_features: the feature space of the membership attacks' feature-space half (the pixel half is always
      there): ``release`` (default), a network of ``attack_network`` trained on the released images alone, which
      has seen neither the members nor the non-members, so with no leak both are alike to it; ``judge``, the
      judge's features, as the filter uses them. The judge is trained on the members: in its space a scarce class's
      members sit closer to any release of the class than unseen images do, and releases of real unseen images
      failed the gate (docs/anonymize.md "Calibration"). A ``filter.extractor`` (not trained on the members) is
      used as it is under either.
    attack_network: size and recipe of that network (``models.judge.JudgeConfig``).
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
    attack_features: Literal["release", "judge"] = "release"
    attack_network: JudgeConfig = JudgeConfig(width=16, feature_dim=64, steps=300, batch_size=64)
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
