"""Per-class novelty (tasks/evaluate/set_metrics.py, ``novelty``) on hand-checkable cases: synthetic images that
copy the training images have novelty 0; synthetic images that are the distinct real images themselves have ratio
exactly 1."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from synthaug.tasks.core.evaluation.downstream import EvalData
from synthaug.tasks.evaluate.set_metrics import NOVELTY_REFERENCE, class_novelty, novelty


def _digits(label: int, n: int, skip: int = 0) -> torch.Tensor:
    """``n`` real 8x8 digits of ``label`` (after the first ``skip``) as (n, 1, 8, 8) in [-1, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images[digits.target == label][skip:skip + n]
    return torch.from_numpy(images / 8.0 - 1.0).float()[:, None]


def _feats(x: torch.Tensor) -> np.ndarray:
    """A stand-in feature space: a fixed random projection of the pixels."""
    return x.reshape(x.shape[0], -1).double().numpy() @ np.random.default_rng(0).normal(size=(64, 16))


TRAIN, VAL = _digits(3, 6), _digits(3, 10, skip=6)


def test_copies_of_the_training_images_have_novelty_zero() -> None:
    syn = TRAIN[[0, 1, 2, 3, 4, 5, 0, 1]]
    out = class_novelty(syn, _feats(syn), TRAIN, _feats(TRAIN), VAL, _feats(VAL))
    assert out["pixel"]["synthetic_correlation"] == pytest.approx(1.0)
    assert out["pixel"]["ratio"] == pytest.approx(0.0, abs=1e-9)
    assert out["feature"]["synthetic_distance"] == pytest.approx(0.0, abs=1e-9)
    assert out["feature"]["ratio"] == pytest.approx(0.0, abs=1e-9)
    assert out["pixel"]["real_correlation"] < 0.99  # new real 3s are no copies: the scale the ratio is measured on
    assert (out["n_synthetic"], out["n_train"], out["n_real"]) == (8, 6, 10) and out["reason"] is None


def test_the_distinct_real_images_as_synthetic_have_ratio_one() -> None:
    out = class_novelty(VAL, _feats(VAL), TRAIN, _feats(TRAIN), VAL, _feats(VAL))
    assert out["pixel"]["ratio"] == pytest.approx(1.0) and out["feature"]["ratio"] == pytest.approx(1.0)
    assert out["pixel"]["synthetic_correlation"] == out["pixel"]["real_correlation"]


def test_slightly_perturbed_copies_sit_between() -> None:
    syn = (TRAIN + 0.05 * torch.randn(TRAIN.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    out = class_novelty(syn, _feats(syn), TRAIN, _feats(TRAIN), VAL, _feats(VAL))
    assert 0.0 < out["pixel"]["ratio"] < 0.5 and 0.0 < out["feature"]["ratio"] < 0.5


def _data(syn_x: torch.Tensor, syn_y: torch.Tensor) -> EvalData:
    """Class "3" (index 1): 6 train, 10 val images; class "1" (index 0): 20 train, no val image."""
    ones = _digits(1, 20)
    empty = torch.empty(0, 1, 8, 8)
    return EvalData(["1", "3"], torch.cat([ones, TRAIN]), torch.tensor([0] * 20 + [1] * 6), VAL,
                    torch.ones(10, dtype=torch.int64), empty, torch.empty(0, dtype=torch.int64), empty,
                    torch.empty(0, dtype=torch.int64), syn_x, syn_y, pd.DataFrame())


def test_novelty_covers_the_classes_with_synthetic_images_and_names_the_reference() -> None:
    syn_x = torch.cat([TRAIN[:3], _digits(1, 2, skip=20)])
    data = _data(syn_x, torch.tensor([1, 1, 1, 0, 0]))
    real_f = _feats(torch.cat([data.train_x, data.val_x]))
    out = novelty(data, ["3"], real_f, _feats(syn_x))
    assert out["reference"] == NOVELTY_REFERENCE and "val" in NOVELTY_REFERENCE
    assert set(out["per_class"]) == {"1", "3"}
    scarce = out["per_class"]["3"]
    assert scarce["minority"] and scarce["pixel"]["ratio"] == pytest.approx(0.0, abs=1e-9)
    assert scarce["feature"]["ratio"] == pytest.approx(0.0, abs=1e-9)
    other = out["per_class"]["1"]
    assert not other["minority"] and other["pixel"] is None and other["reason"] == "no val images in this class"
    only_scarce = novelty(_data(TRAIN[:2], torch.tensor([1, 1])), ["3"], real_f, _feats(TRAIN[:2]))
    assert set(only_scarce["per_class"]) == {"3"}  # a class without accepted synthetic images has no row
