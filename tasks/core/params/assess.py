"""The ``assess`` section: the learning curves of ``synthaug assess``."""

from __future__ import annotations

from pydantic import Field

from synthaug.tasks.core.params.base import Section


class AssessParams(Section):
    """``assess`` section: the learning curves ``synthaug assess`` fits before any generator is trained.

    seeds: classifier runs per curve point and family (>= 2: the slope's interval needs two per-seed slopes). Few
      seeds keep the command short and its intervals wide: a curve the default 3 cannot call rising or flat may be
      called at 10.
    steps: training steps of the project's classifier (``evaluate.classifier`` otherwise) at every curve point: a
      tenth of the evaluation's 1000, so ``synthaug assess`` on the bundled example takes about a minute on two
      cores. A network trained that short is noisier and may recall a scarce class less than the evaluation's.
    min_gain: a class's curve counts as flat for a classifier family when the whole 95% interval of its recall gain
      per doubling of the class's images lies below this.
    """

    seeds: int = Field(3, ge=2, le=100)
    steps: int = Field(100, ge=1, le=100_000)
    min_gain: float = Field(0.02, gt=0.0, le=1.0)
