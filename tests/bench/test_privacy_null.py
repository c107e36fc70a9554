"""``python -m bench.privacy_null`` on the tiny workdir: releases of real held-out images (they cannot leak) pass
the gate; a release of the members themselves is refused every time; the draw keeps members out of the release and
enough non-members beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.privacy_null import calibrate, draw_release, failure_kind, real_sets
from synthaug.models.config import JudgeConfig
from synthaug.tasks.core.params.privacy import PrivacyParams
from tests.markers import slow

PARAMS = PrivacyParams(bootstrap=200, attack_network=JudgeConfig(width=8, feature_dim=16, steps=30, batch_size=32))


def test_a_release_is_drawn_from_held_out_images_leaving_half_as_non_members(tiny_workdir: dict[str, Path]) -> None:
    sets = real_sets(tiny_workdir["judge"].parent)
    train, holdout = sets["train"], sets["holdout"]
    released, kept = draw_release(train, holdout, np.random.default_rng(0))
    assert np.intersect1d(released, kept).size == 0
    for c in np.unique(train.labels):
        n_release, n_kept = (int((holdout.labels[rows] == c).sum()) for rows in (released, kept))
        assert n_release == min(int((train.labels == c).sum()), (n_release + n_kept) // 2) and n_kept >= n_release
    assert sets["holdout_is_val"].sum() == 16  # the tiny workdir's 4 val images per class


@slow
def test_null_releases_pass_and_the_members_themselves_are_refused(tiny_workdir: dict[str, Path]) -> None:
    result = calibrate(real_sets(tiny_workdir["judge"].parent), PARAMS, 0.01, releases=6)
    assert result["false_refusal"]["runs"] == 6 and result["false_refusal"]["refused"] <= 1, result["by_check"]
    assert result["members_released_refused"] == {**result["members_released_refused"], "refused": 3, "runs": 3}
    assert {r["seed"] for r in result["runs"]} == set(range(6))
    assert failure_kind("membership inference (feature), class 3: AUC 0.9") == "membership inference (feature) "\
                                                                              "per class"
    assert failure_kind("membership inference, density ratio (pixel): AUC 0.7") == \
        "membership inference, density ratio (pixel) pooled"
    assert failure_kind("memorization (pixel): 2 of 9") == "memorization"
