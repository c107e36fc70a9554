"""The utility benchmark's scenarios: real images that ship offline, scarce classes starved to the stated counts,
held-back real images as the oracle, and (textures) train and test patches from disjoint regions."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.utility import (
    DIGITS_SCARCE,
    HOLDOUT,
    HOLDOUT_SCARCE,
    PATCH,
    TEST_PER_CLASS,
    TEST_ROWS,
    TEXTURES,
    TEXTURES_SCARCE,
    TRAIN_ROWS,
    VAL_PER_CLASS,
    bar,
    markdown,
    scenario_params,
    source,
    write_digits,
    write_textures,
)
from tests.markers import slow


def _table(root: Path) -> pd.DataFrame:
    splits = pd.read_csv(root / "splits.csv", dtype=str)
    splits["label"] = splits["path"].str.split("/").str[0]
    return splits


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return _table(write_digits(tmp_path_factory.mktemp("digits")))


@pytest.fixture(scope="module")
def textures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = write_textures(tmp_path_factory.mktemp("textures"))
    return root, _table(root)


def test_digits_scarce_counts_and_oracle(digits: pd.DataFrame) -> None:
    counts = digits.groupby(["label", "split"]).size().unstack(fill_value=0)
    assert DIGITS_SCARCE == {"2": 3, "7": 6, "9": 3}  # other classes and counts than the bundled example's 3, 5, 8
    for label, n in DIGITS_SCARCE.items():
        assert counts.loc[label, "train"] == n and counts.loc[label, "heldback"] > 100
    common = [c for c in counts.index if c not in DIGITS_SCARCE]
    assert (counts.loc[common, "heldback"] == 0).all() and (counts.loc[common, "train"] > 100).all()
    assert (counts["test"] == 50).all() and (counts["val"] == 10).all()


@slow
def test_texture_patches_come_from_disjoint_regions(textures: tuple[Path, pd.DataFrame]) -> None:
    """Every test patch is found in its photograph only in the test rows; train and heldback only in the train
    rows (searched over every position of the photograph, so a patch copied across the border would be caught)."""
    from numpy.lib.stride_tricks import sliding_window_view
    from skimage import data

    root, table = textures
    counts = table.groupby(["label", "split"]).size().unstack(fill_value=0)
    for name in TEXTURES:
        assert counts.loc[name, "test"] == TEST_PER_CLASS and counts.loc[name, "val"] == VAL_PER_CLASS
        assert counts.loc[name, "train"] == TEXTURES_SCARCE.get(name, 96)
        assert counts.loc[name, "train"] + counts.loc[name, "heldback"] == 96
    for name in ("grass",):
        photo = getattr(data, name)()
        windows = sliding_window_view(photo, (PATCH, PATCH))
        for _, row in table[table["label"] == name].iloc[::13].iterrows():
            patch = np.asarray(Image.open(root / row["path"]))
            rows = np.flatnonzero((windows == patch).all(axis=(2, 3)).any(axis=1))
            assert rows.size, row["path"]
            band = TEST_ROWS if row["split"] == "test" else TRAIN_ROWS if row["split"] != "val" else (192, 256)
            assert all(band[0] <= r and r + PATCH <= band[1] for r in rows), (row["path"], rows)


def test_source_names_the_scenario(tmp_path: Path) -> None:
    assert source("digits-example", tmp_path) == "example:digits"
    held_out = _table(Path(source(HOLDOUT, tmp_path / "holdout")))
    counts = held_out.groupby(["label", "split"]).size().unstack(fill_value=0)
    assert set(HOLDOUT_SCARCE).isdisjoint({*DIGITS_SCARCE, "3", "5", "8"})  # no scarce class of the other two
    assert all(counts.loc[label, "train"] == n for label, n in HOLDOUT_SCARCE.items())
    with pytest.raises(ValueError, match="scenarios"):
        source("nope", tmp_path)



def test_each_scenario_runs_at_its_own_image_size(tmp_path: Path) -> None:
    assert scenario_params("digits-example", tmp_path / "d").data.image_size == 8  # the default: the digits' own
    assert scenario_params("textures", tmp_path / "t").data.image_size == 16
    assert scenario_params("textures", tmp_path / "t", ["data.image_size=32"]).data.image_size == 32


def _utility(minority_ci: tuple[float, float], gap: float) -> dict:
    paired = {"real_synthetic": {"minority_recall": {"mean": sum(minority_ci) / 2, "ci95": list(minority_ci),
                                                     "baseline": "real_oversampled"},
                                 "balanced_accuracy": {"mean": None, "ci95": None, "baseline": "real_oversampled"}}}
    gaps = {"real_synthetic": {"minority_recall": {"value": gap}, "balanced_accuracy": {"value": None}}}
    row = {m: {"mean": 0.5, "std": 0.1} for m in ("balanced_accuracy", "minority_recall")}
    block = {"paired_difference": paired, "gap_closed": gaps, "real_synthetic": row}
    return {**block, "independent": {"extra_trees": block},
            "setup": {"conditions": ["real_synthetic"]}, "gate": {"verdict": "utility gate passed: ..."}}


def test_bar_needs_an_interval_above_zero_and_thirty_percent() -> None:
    assert bar(_utility((0.01, 0.09), 0.35)) == {"cnn": ["real_synthetic"], "extra_trees": ["real_synthetic"]}
    assert bar(_utility((-0.01, 0.09), 0.35)) == {"cnn": [], "extra_trees": []}
    assert bar(_utility((0.01, 0.09), 0.29)) == {"cnn": [], "extra_trees": []}
    text = markdown({"utility": _utility((0.01, 0.09), 0.35)})
    assert "| cnn | real_synthetic | minority recall | real_oversampled | +0.050 [+0.010, +0.090] | 0.35 |" in text


def test_markdown_adds_the_tuned_recipe_and_its_test_tables() -> None:
    default = {"number": 0, "recipe": {"share": 1.0, "selection": "random", "weight": 1.0}, "objective": 0.01}
    winner = {"number": 3, "recipe": {"share": 0.5, "selection": "informative", "weight": 2.0}, "objective": 0.03}
    tuned = _utility((0.02, 0.10), 0.40)
    tuned["setup"]["recipe"] = {**winner["recipe"], "chosen_on": "synthaug tune on validation"}
    text = markdown({"utility": _utility((-0.01, 0.09), 0.35),
                     "tuned": {"trials": {"winner": winner, "trials": [default, winner], "validated_on": "val"},
                               "utility": tuned}})
    head, tail = text.split("**`synthaug tune`**")
    assert "cnn: none" in head and "cnn: real_synthetic" in tail  # the bar, before and after tuning
    assert "winner share 0.50, order informative, weight 2.00, validation objective +0.0300 (default recipe +0.0100)" \
        in tail
    assert "+0.060 [+0.020, +0.100] | 0.40 |" in tail and "chosen on: synthaug tune on validation" in tail


def test_markdown_names_the_winning_guidance_when_it_was_searched() -> None:
    default = {"number": 0, "recipe": {"share": 1.0, "selection": "random", "weight": 1.0, "guidance": 2.0},
               "objective": 0.01}
    winner = {"number": 2, "recipe": {"share": 0.8, "selection": "random", "weight": 1.5, "guidance": 1.0},
              "objective": 0.04}
    tuned = _utility((0.02, 0.10), 0.40)
    tuned["setup"]["recipe"] = {**{k: v for k, v in winner["recipe"].items() if k != "guidance"}, "chosen_on": "tune"}
    text = markdown({"utility": _utility((-0.01, 0.09), 0.35),
                     "tuned": {"trials": {"winner": winner, "trials": [default, winner], "validated_on": "val"},
                               "utility": tuned}})
    assert "weight 1.50, guidance 1, validation objective +0.0400 (default recipe +0.0100)" in text


def test_a_suite_scenario_runs_with_its_own_data_params_and_folder(tmp_path):
    from bench import suite

    name = next(n for n in suite.BY_NAME if suite.BY_NAME[n].size >= 32 and suite.BY_NAME[n].channels == 3)
    params = scenario_params(name, tmp_path, ["evaluate.seeds=3"])
    s = suite.BY_NAME[name]
    assert (params.data.image_size, params.data.channels) == (s.size, s.channels)
    folder = Path(params.data.source)
    assert (folder / "splits.csv").is_file() and {p.name for p in folder.iterdir() if p.is_dir()} == set(s.classes)
    before = (folder / "splits.csv").read_bytes()
    assert scenario_params(name, tmp_path).data.source == str(folder)  # a rerun keeps the folder it wrote
    assert (folder / "splits.csv").read_bytes() == before


def test_a_report_half_read_is_logged_with_its_commit_before_it_runs(tmp_path):
    import json
    import subprocess

    from bench import suite
    from bench.utility import log_report_read

    report = [n for n in suite.BY_NAME if suite.HALF[n] == "report"][:2]
    development = next(n for n in suite.BY_NAME if suite.HALF[n] == "development")
    log = tmp_path / "reads.jsonl"
    with pytest.raises(ValueError, match="report half only"):
        log_report_read([*report, development], [], 5, log)
    assert not log.exists()
    log_report_read(report, ["model.family=vae"], 5, log)
    log_report_read(report[:1], [], 20, log)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    assert [e["scenarios"] for e in entries] == [report, report[:1]] and {e["commit"] for e in entries} == {head}
    assert entries[0]["overrides"] == ["model.family=vae"] and entries[1]["seeds"] == 20
