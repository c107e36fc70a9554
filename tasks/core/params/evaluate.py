"""The ``evaluate`` section: set metrics, downstream utility and the synthetic recipe."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator

from synthaug.models.config import JudgeConfig
from synthaug.tasks.core.params.base import Section

# A CPU-friendly network trained to where the best real baseline stops improving on validation: 300 steps left it
# short (balanced accuracy 0.025 and 0.043 below 1000 steps on two of three scenarios' val splits; 2000 added
# <= 0.005), which flattered every synthetic gain (docs/BENCHMARKS.md, "The evaluation classifier trained to its
# plateau").
DEFAULT_CLASSIFIER = JudgeConfig(width=16, feature_dim=64, steps=1000, batch_size=64)


Selection = Literal["random", "k_center", "informative"]  # orders a share of a class's synthetic images is taken in


SELECTIONS: tuple[str, ...] = get_args(Selection)

Independent = Literal["extra_trees", "logistic_regression"]  # scikit-learn families on the raw pixels


class SyntheticRecipe(Section):
    """``evaluate.recipe``: how much of the accepted synthetic images the synthetic conditions use, in what order,
    and how strongly. The defaults (every image, weight 1) are the recipe of ``real_synthetic`` as it was fixed;
    ``synthaug tune`` chooses these three on validation data and writes them to a params file.

    share: fraction of each class's accepted synthetic images used (the first ``round(share * n)`` in
      ``selection`` order).
    selection: ``random`` (a seeded permutation), ``k_center`` (diversity: each next image the farthest from the
      class's real images and the images already taken, in the judge's feature space) or ``informative`` (first
      the images a real-only classifier on those features gives the lowest probability of their label: what the
      real images did not already teach; the filter has already made sure the judge labels them confidently).
    weight: loss weight of a synthetic image relative to a real one, for every classifier family.
    chosen_on: what these values were chosen on; the report lists it among the choices (``synthaug tune`` fills
      it in).
    """

    share: float = Field(1.0, gt=0.0, le=1.0)
    selection: Selection = "random"
    weight: float = Field(1.0, gt=0.0, le=10.0)
    chosen_on: str = "the defaults: fixed in code before any result of this dataset"


class EvaluateParams(Section):
    """``evaluate`` section: set metrics, downstream utility over seeds and classifier families, and the utility gate.

    seeds: training runs per condition (>= 3: the paired t-interval needs at least two degrees of freedom).
    classifier: the downstream classifier recipe (the judge's network, ``models.judge.JudgeConfig``), trained from
      scratch for every condition and seed; its ``seed`` is the base of the per-run seeds.
    kid_subsets: random subsets KID averages over.
    kid_subset_size: images drawn from each set per KID subset; capped at the smaller set.
    fid_min_samples: FID is reported only when both sets have at least this many images (null with a reason
      otherwise): below that its small-sample bias swamps the value.
    minority_classes: the classes minority recall averages over; null: the classes whose real train count is
      below half the largest.
    device: where the classifiers train and the features are computed.
    independent: the second, independent classifier family trained on every condition and seed (scikit-learn, on
      the raw pixels): ``extra_trees`` (extremely randomized trees, 200 trees) or ``logistic_regression``
      (standardized pixels, L2 with C=0.1; its fit is deterministic, so each seed fits a class-stratified bootstrap
      of the training set: its interval says how much the result depends on the draw of training images).
    trees: trees of the ``extra_trees`` family (200 by default; fewer train faster and vary more between seeds).
    linear: also train ``logistic_regression`` as a third family: the simplest learner has to benefit too. Adds no
      family when ``independent`` is ``logistic_regression`` already (``independent_families``).
    gate_margin: the synthetic images measurably hurt when, for any classifier family and either compared metric
      (balanced accuracy, minority recall), the whole 95% interval of the seed-paired difference real_synthetic -
      best real baseline lies below ``-gate_margin`` (``gate_verdict``); ``publish.utility_gate`` says what the
      publish step does with that.
    choose_on_validation: add ``real_synthetic_chosen``: the selection order (k-center or random) and a per-class
      share of the accepted synthetic images chosen on validation only (``choose_recipe``), then scored on test.
    validation_seeds: classifier runs per candidate and fold in that search.
    equal_passes: the project's classifier trains a real + synthetic set (about twice the balanced real set)
      ``classifier.steps`` times its size over the balanced real set's: as many passes over its images as the
      baselines make over theirs (``classifier_config``). False: every condition trains ``classifier.steps``.
    recipe: share, order and loss weight of the synthetic images in ``real_synthetic`` and
      ``real_classical_aug_synthetic`` (``SyntheticRecipe``).
    """

    seeds: int = Field(3, ge=3)
    classifier: JudgeConfig = DEFAULT_CLASSIFIER
    independent: Independent = "extra_trees"
    trees: int = Field(200, ge=1, le=10_000)
    linear: bool = True
    gate_margin: float = Field(0.01, ge=0.0, le=1.0)
    choose_on_validation: bool = False  # measured and did not help (docs/BENCHMARKS.md): off by default
    validation_seeds: int = Field(2, ge=1)
    equal_passes: bool = True
    recipe: SyntheticRecipe = SyntheticRecipe()
    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(1000, ge=2)
    fid_min_samples: int = Field(50, ge=2)
    minority_classes: list[str] | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @property
    def independent_families(self) -> tuple[str, ...]:
        """The scikit-learn families trained beside the project's network: ``independent``, then logistic
        regression when ``linear`` asks for it and ``independent`` is not it."""
        return tuple(dict.fromkeys([self.independent, *(["logistic_regression"] if self.linear else [])]))

    @field_validator("minority_classes")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"minority_classes has repeated names: {value}")
        return value
