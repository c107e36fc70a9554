"""`synthaug assess` on tiny data: the learning curves' verdicts where the answer is known by construction, the
record's shape, and the one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits

from synthaug.flows.params import load_params
from synthaug.tasks.assess import assess_step, scarce_classes
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.evaluation.curves import UNLIKELY, WORTH, curve_sizes, estimates, learning_curves
from synthaug.tasks.core.evaluation.downstream import EvalData
from synthaug.tasks.ingest import ingest
from tests.toy import TINY, digits_folder

FAST = [*TINY, "evaluate.trees=200", "assess.steps=20", "assess.seeds=2"]  # two seeds: the fewest an interval needs;
# the default forest: with the toy's 20 trees the rising class below read "cannot tell"
CLASSES = ("3", "5", "8", "9")  # digits a classifier confuses: a scarce one gains from every new image of it


def digits_data(scarce_train: int, *, copies: bool, others: int = 30, val: int = 10) -> EvalData:
    """Digits 3, 5, 8, 9 at 8x8: ``others`` train images each of 5, 8, 9 and ``scarce_train`` of 3 (all copies of
    one image when ``copies``); ``val`` val images per class, all distinct."""
    digits = load_digits()
    x = {c: torch.from_numpy(digits.images[digits.target == int(c)]).float()[:, None] / 8.0 - 1.0 for c in CLASSES}
    train = {c: x[c][val:val + (scarce_train if c == "3" else others)] for c in CLASSES}
    if copies:
        train["3"] = train["3"][:1].repeat(scarce_train, 1, 1, 1)

    def stack(parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.cat(list(parts.values())),
                torch.cat([torch.full((len(v),), i, dtype=torch.int64) for i, v in enumerate(parts.values())]))

    empty = torch.empty(0, 1, 8, 8), torch.empty(0, dtype=torch.int64)
    val_x, val_y = stack({c: x[c][:val] for c in CLASSES})
    return EvalData(list(CLASSES), *stack(train), val_x, val_y, *empty, *empty, *empty, pd.DataFrame())


def curves(data: EvalData, seeds: int = 2) -> dict:
    params = load_params(None, [*FAST, f"assess.seeds={seeds}"])
    return learning_curves(data, ["3"], params.evaluate, params.assess, torch.device("cpu"), processes=1)


def test_a_class_whose_images_are_copies_of_one_cannot_gain_from_more_of_them() -> None:
    found = curves(digits_data(12, copies=True))["classes"]["3"]
    for family in found["families"].values():  # the same classifier at every point: exactly flat
        assert family["slope_per_doubling"]["recall"]["values"] == [0.0, 0.0]
        assert family["verdict"] == "flat"
    assert found["verdict"] == UNLIKELY


def test_a_class_whose_new_images_teach_something_rises() -> None:
    found = curves(digits_data(8, copies=False), seeds=3)["classes"]["3"]  # 2, 4 and 8 distinct images of it
    assert found["verdict"] == WORTH
    rising = [f for f in found["families"].values() if f["verdict"] == "rises"]
    assert rising and all(f["estimate"]["gain_ci95"][0] > 0 for f in rising)
    assert all(np.mean(f["recall"][-1]["values"]) > np.mean(f["recall"][0]["values"]) for f in rising)


def test_the_curve_sizes_are_a_quarter_a_half_and_all() -> None:
    assert curve_sizes(6) == (2, 3, 6) and curve_sizes(3) == (1, 2, 3) and curve_sizes(12) == (3, 6, 12)


@pytest.mark.parametrize(("scarce_train", "val", "message"), [
    (30, 10, "no scarce class to assess: every class has at least half"),
    (2, 10, r"too few train images for a learning curve in class 3 \(2\).*at least 3"),
    (6, 4, r"too few val images to score a learning curve in class 3 \(4\).*data.val_fraction"),
])
def test_what_cannot_be_assessed_is_refused_in_one_line(scarce_train: int, val: int, message: str) -> None:
    data = digits_data(scarce_train, copies=False, val=val)
    with pytest.raises(UserError, match=message) as refused:
        scarce_classes(data, load_params(None, []).evaluate)
    assert "\n" not in str(refused.value)


def test_assess_json_holds_per_class_and_family_the_curve_the_estimate_and_the_verdict(tmp_path: Path) -> None:
    source = digits_folder(tmp_path / "digits", {"0": 60, "1": 60, "2": 60, "3": 20})
    params = load_params(None, [*FAST, f"data.source={source}", "data.val_fraction=0.3", "data.test_fraction=0.1"])
    ingested = ingest(params.data, tmp_path / "ingest", cache_dir=tmp_path / "cache")
    out = tmp_path / "assess" / "assess.json"
    record = assess_step(ingested.manifest_path.parent, params.evaluate, params.assess, out, processes=1)
    assert json.loads(out.read_text()) == record
    assert "estimate" in record["note"] and "test split is not read" in record["scored_on"]
    assert list(record["classes"]) == ["3"]  # the one scarce class
    found = record["classes"]["3"]
    assert found["val_images"] >= 5 and found["verdict"] in record["lines"][0]
    # every family of the evaluation: the CNN, the extra trees and (evaluate.linear) logistic regression
    families = {"cnn", "extra_trees", *(["logistic_regression"] * params.evaluate.linear)}
    assert set(found["families"]) == families
    for family in found["families"].values():
        assert family["sizes"] == list(curve_sizes(found["train_images"]))
        for metric in ("recall", "balanced_accuracy"):
            assert len(family[metric]) == 3
            assert all(len(point["values"]) == 2 and len(point["ci"]) == 2 for point in family[metric])
            assert len(family["slope_per_doubling"][metric]["values"]) == 2
        assert family["estimate"]["images"] == 2 * found["train_images"]
        assert family["verdict"] in ("rises", "flat", "uncertain")
    shown = estimates(record)["3"]
    assert shown["verdict"] == found["verdict"] and set(shown["families"]) == families
