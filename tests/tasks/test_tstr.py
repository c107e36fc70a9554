"""TSTR vs TRTR of a release: intervals worked by hand, the per-class table, and the ratio gate."""

from __future__ import annotations

import math

import pytest

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.privacy.tstr import (
    card_section,
    check_ratio,
    compare,
    mean_interval,
    release_utility,
    utility_rows,
)

T_975_2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (tables)


def condition(ba: list[float], recall: dict[str, list[float]]) -> dict:
    return {"balanced_accuracy": {"values": ba}, "macro_f1": {"values": [v - 0.01 for v in ba]},
            "per_class_recall": {c: {"values": v} for c, v in recall.items()}}


def utility(syn_ba: list[float], real_ba: list[float]) -> dict:
    return {"synthetic_only": condition(syn_ba, {"a": [0.5, 0.6, 0.7], "b": [0.9, 0.9, 0.9]}),
            "real_only": condition(real_ba, {"a": [1.0, 1.0, 1.0], "b": [0.9, 0.9, 0.9]}),
            "real_oversampled": condition(real_ba, {"a": [1.0] * 3, "b": [0.9] * 3})}


def test_mean_interval_is_the_t_interval_by_hand() -> None:
    out = mean_interval([0.8, 0.9, 1.0])
    half = T_975_2 * 0.1 / math.sqrt(3)  # sample sd 0.1
    assert out["mean"] == pytest.approx(0.9) and out["ci"] == pytest.approx([0.9 - half, 0.9 + half])
    assert mean_interval([0.5, 0.5, 0.5])["ci"] == [0.5, 0.5]
    assert mean_interval([0.5])["ci"] is None


def test_compare_pairs_by_seed() -> None:
    out = compare([0.4, 0.6, 0.8], [0.8, 0.8, 0.8])
    assert out["difference"]["mean"] == pytest.approx(-0.2) and out["ratio"]["mean"] == pytest.approx(0.75)
    assert out["tstr"]["ci"][0] < 0.6 < out["tstr"]["ci"][1] and out["trtr"]["ci"] == pytest.approx([0.8, 0.8])
    with pytest.raises(ValueError, match="same seeds"):
        compare([0.4, 0.6], [0.8, 0.8, 0.8])


def test_release_utility_overall_and_per_class_and_the_ratio_gate() -> None:
    out = release_utility(utility([0.6, 0.7, 0.8], [0.9, 0.9, 0.9]))
    assert out["seeds"] == 3 and set(out["per_class_recall"]) == {"a", "b"}
    assert out["balanced_accuracy"]["tstr"]["mean"] == pytest.approx(0.7)
    assert out["balanced_accuracy"]["ratio"]["mean"] == pytest.approx(0.7 / 0.9)
    assert out["per_class_recall"]["a"]["ratio"]["mean"] == pytest.approx(0.6)
    assert out["per_class_recall"]["b"]["difference"]["ci"] == pytest.approx([0.0, 0.0])
    rows = utility_rows(out)
    assert [r[0] for r in rows] == ["balanced accuracy", "macro f1", "recall, class a", "recall, class b"]
    assert rows[2][4].startswith("0.600 [")
    assert any(line.startswith("| recall, class a | 0.600") for line in card_section(out).splitlines())
    assert check_ratio(out, None) is None and check_ratio(out, 0.7) is None
    assert "below privacy.min_tstr_ratio=0.8" in check_ratio(out, 0.8)


def test_no_synthetic_runs_is_a_clear_error() -> None:
    u = utility([0.6] * 3, [0.9] * 3)
    del u["synthetic_only"]
    with pytest.raises(UserError, match="no synthetic_only runs"):
        release_utility(u)
