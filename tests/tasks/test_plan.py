"""The class-balance planner: the three strategies worked by hand, rounding, cap, and planning from a manifest."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError
from rich.console import Console

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.manifest import write_manifest
from synthaug.tasks.core.io.plan_csv import read_plan
from synthaug.tasks.core.labels import natural_key
from synthaug.tasks.core.params.plan import PlanParams
from synthaug.tasks.plan import make_plan, plan_counts

COUNTS = {"10": 4, "2": 30, "1": 13}  # natural order: 1, 2, 10


def rows(plan: pd.DataFrame) -> list[tuple[str, int, int, int]]:
    assert list(plan.columns) == ["class", "real", "target", "to_generate"]
    return [(str(c), int(r), int(t), int(g)) for c, r, t, g in plan.itertuples(index=False)]


def test_match_majority() -> None:
    # target 30 for all. 1: (30 - 13) * 1.5 = 25.5 -> 26; 2: 0; 10: 26 * 1.5 = 39.
    plan = plan_counts(COUNTS, PlanParams(strategy="match_majority", overgenerate=1.5))
    assert rows(plan) == [("1", 13, 30, 26), ("2", 30, 30, 0), ("10", 4, 30, 39)]


def test_target_never_lowers_a_class() -> None:
    # target 20. 1: 20 - 13 = 7; 2: already 30, stays 30, 0; 10: 20 - 4 = 16 (overgenerate 1: as is).
    plan = plan_counts(COUNTS, PlanParams(strategy="target", target=20, overgenerate=1.0))
    assert rows(plan) == [("1", 13, 20, 7), ("2", 30, 30, 0), ("10", 4, 20, 16)]


def test_ratio_rounds_half_up_and_caps() -> None:
    # ratio 0.5, cap 10, overgenerate 1.2.
    # 1: 13 * 0.5 = 6.5 -> 7 (half up), target 20, 7 * 1.2 = 8.4 -> 9
    # 2: 30 * 0.5 = 15 -> capped at 10, target 40, 10 * 1.2 = 12
    # 10: 4 * 0.5 = 2, target 6, 2 * 1.2 = 2.4 -> 3
    plan = plan_counts(COUNTS, PlanParams(strategy="ratio", ratio=0.5, cap=10, overgenerate=1.2))
    assert rows(plan) == [("1", 13, 20, 9), ("2", 30, 40, 12), ("10", 4, 6, 3)]


def test_ratio_above_one() -> None:
    # ratio 2.5, cap 1000: 3 -> 7.5 -> 8 synthetic (target 11); 40 -> 100 (target 140). overgenerate 1: as is.
    plan = plan_counts({"a": 3, "b": 40}, PlanParams(strategy="ratio", ratio=2.5, overgenerate=1.0))
    assert rows(plan) == [("a", 3, 11, 8), ("b", 40, 140, 100)]


def test_release_gives_every_class_its_real_size_or_release_per_class() -> None:
    # A full synthetic replacement: 1: 13 synthetic (target 26), 13 * 1.5 = 19.5 -> 20; 2: 30 -> 45; 10: 4 -> 6.
    plan = plan_counts(COUNTS, PlanParams(strategy="release", overgenerate=1.5))
    assert rows(plan) == [("1", 13, 26, 20), ("2", 30, 60, 45), ("10", 4, 8, 6)]
    # A balanced source releases every class too (match_majority would plan nothing).
    assert rows(plan_counts({"a": 5, "b": 5}, PlanParams(strategy="release", overgenerate=1.0))) == [
        ("a", 5, 10, 5), ("b", 5, 10, 5)]
    fixed = plan_counts(COUNTS, PlanParams(strategy="release", release_per_class=7, overgenerate=1.0))
    assert rows(fixed) == [("1", 13, 20, 7), ("2", 30, 37, 7), ("10", 4, 11, 7)]


@pytest.mark.parametrize(("overgenerate", "expected"), [
    (1.0, 50),
    (1.01, 51),   # 50.5 -> 51
    (1.1, 55),    # exactly 55: the float product 50 * 1.1 is 55.00000000000001, which would ask for 56
    (1.15, 58),   # 57.5 -> 58
    (2.0, 100),
])
def test_overgenerate_rounds_up_exactly(overgenerate: float, expected: int) -> None:
    plan = plan_counts({"a": 10, "b": 60}, PlanParams(strategy="match_majority", overgenerate=overgenerate))
    assert rows(plan) == [("a", 10, 60, expected), ("b", 60, 60, 0)]


def test_natural_class_order() -> None:
    labels = ["b10", "10", "a", "9", "b9", "01", "1"]
    assert sorted(labels, key=natural_key) == ["01", "1", "9", "10", "a", "b9", "b10"]
    plan = plan_counts(dict.fromkeys(labels, 1), PlanParams())
    assert list(plan["class"]) == ["01", "1", "9", "10", "a", "b9", "b10"]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        plan_counts({}, PlanParams())
    with pytest.raises(ValueError, match="at least one real train image"):
        plan_counts({"a": 3, "b": 0}, PlanParams())
    with pytest.raises(ValidationError):
        PlanParams(strategy="oversample")
    with pytest.raises(ValidationError):
        PlanParams(overgenerate=0.9)


def manifest_rows(spec: list[tuple[str, str, int]], source: str = "real") -> pd.DataFrame:
    """One row per image for (label, split, how many)."""
    records = []
    for label, split, n in spec:
        for i in range(n):
            synthetic = source == "synthetic"
            records.append({
                "image_id": f"{source}-{label}-{split}-{i}", "path": f"{label}/{source}-{split}-{i}.png",
                "label": label, "split": split, "source": source,
                "generator": "diffusion" if synthetic else None, "checkpoint": "0" * 64 if synthetic else None,
                "seed": i if synthetic else None, "accepted": True, "reject_reason": None,
                "height": 8, "width": 8, "channels": 1,
            })
    return pd.DataFrame.from_records(records)


def test_make_plan_counts_only_real_train(tmp_path: Path) -> None:
    real = manifest_rows([("0", "train", 5), ("0", "val", 2), ("0", "test", 3),
                          ("1", "train", 2), ("1", "heldback", 50), ("1", "val", 2), ("1", "test", 3),
                          ("12", "train", 4), ("12", "test", 3)])
    synthetic = manifest_rows([("1", "train", 9)], source="synthetic")
    manifest = write_manifest(pd.concat([real, synthetic], ignore_index=True), tmp_path / "manifest.parquet")
    out = io.StringIO()
    # Only real train rows count: 0 -> 5, 1 -> 2 (not 52, not 11), 12 -> 4; the majority is 5.
    # to_generate: 0 -> 0; 1 -> 3 * 1.5 = 4.5 -> 5; 12 -> 1 * 1.5 = 1.5 -> 2.
    plan = make_plan(manifest, PlanParams(strategy="match_majority", overgenerate=1.5), tmp_path / "plan",
                     console=Console(file=out, width=100))
    assert rows(plan) == [("0", 5, 5, 0), ("1", 2, 5, 5), ("12", 4, 5, 2)]
    saved = read_plan(tmp_path / "plan" / "plan.csv")
    pd.testing.assert_frame_equal(saved, plan)
    assert (tmp_path / "plan" / "plan.csv").read_text().splitlines()[0] == "class,real,target,to_generate"
    assert not list((tmp_path / "plan").glob("*.tmp"))
    printed = out.getvalue()
    assert "match_majority" in printed
    total_line = next(line for line in printed.splitlines() if "total" in line)
    assert total_line.split() == ["│", "total", "│", "11", "│", "15", "│", "7", "│"]  # real, target, to_generate


def test_make_plan_refuses_classes_without_train_images(tmp_path: Path) -> None:
    frame = manifest_rows([("0", "train", 3), ("7", "test", 2), ("7", "heldback", 4)])
    manifest = write_manifest(frame, tmp_path / "manifest.parquet")
    with pytest.raises(UserError, match=r"classes \['7'\] have no real train images"):
        make_plan(manifest, PlanParams(), tmp_path / "plan")
    assert not (tmp_path / "plan" / "plan.csv").exists()


def test_make_plan_needs_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="manifest not found"):
        make_plan(tmp_path / "missing.parquet", PlanParams(), tmp_path / "plan")
