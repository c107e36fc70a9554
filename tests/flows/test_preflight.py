"""Preflight: what later steps need is checked right after ingest, before any training."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from synthaug.flows.augment import augment
from synthaug.flows.params import load_params
from synthaug.flows.preflight import preflight
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.ingest import ingest
from tests.markers import integration
from tests.toy import TINY, digits_folder


def with_splits(root: Path, split_of) -> Path:
    """A digits folder whose splits.csv gives each image ``split_of(label, index)`` (None: no row)."""
    rows = [(p.relative_to(root).as_posix(), split_of(p.parent.name, int(p.stem)))
            for p in sorted(root.rglob("*.png"))]
    pd.DataFrame([r for r in rows if r[1]], columns=["path", "split"]).to_csv(root / "splits.csv", index=False)
    return root


@integration  # the augment flow on Prefect's temporary server
def test_a_source_with_train_and_test_but_no_val_stops_before_training(tmp_path: Path) -> None:
    source = with_splits(digits_folder(tmp_path / "source"), lambda label, i: "test" if i % 4 == 0 else "train")
    params = load_params(None, [*TINY, f"data.source={source}", f"publish.registry={tmp_path / 'registry'}",
                                f"publish.remote={tmp_path / 'remote'}"])
    work = tmp_path / "work"
    with pytest.raises(UserError, match=r"no real val images.*Give the source a val split"):
        augment(params, str(work))
    assert not (work / "model").exists() and not (work / "judge").exists(), "a step after ingest ran"
    assert (work / "ingest" / "manifest.parquet").is_file()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("preflight")
    # Class "3" has val images only by the source's word: none here, so a note names it.
    source = with_splits(digits_folder(root / "source", {"0": 10, "1": 10, "3": 4}),
                         lambda label, i: "train" if label == "3" or i < 6 else ("val" if i < 8 else "test"))
    return ingest(load_params(None, [f"data.source={source}"]).data, root / "ingest",
                  cache_dir=root / "cache").manifest_path


@pytest.mark.parametrize(("override", "message"), [
    (["filter.realism_k=100"], "needs more than that"),
    (["evaluate.minority_classes=['7']"], r"evaluate.minority_classes: \['7'\] are not classes"),
    (["filter.extractor=/nowhere/net.ts"], "filter.extractor=/nowhere/net.ts: .*no feature extractor file"),
    (["model.family=latent_diffusion", "data.image_size=8"], "model.family=latent_diffusion at data.image_size=8: "
     ".*divisible by 4.*set data.image_size"),
])
def test_params_that_later_steps_would_refuse_stop_now(manifest: Path, override: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        preflight(load_params(None, override), manifest)


def test_a_class_without_val_images_is_named_in_a_note(manifest: Path) -> None:
    assert preflight(load_params(None, []), manifest) == [
        "classes without real val images: 3 (the thresholds are calibrated on the others)"]


def test_no_test_split_and_a_single_class_stop(tmp_path: Path) -> None:
    source = with_splits(digits_folder(tmp_path / "a", {"0": 6, "1": 6}), lambda label, i: "val" if i == 0 else "train")
    data = load_params(None, [f"data.source={source}"]).data
    path = ingest(data, tmp_path / "ingest-a", cache_dir=tmp_path / "cache").manifest_path
    with pytest.raises(UserError, match="no real test images"):
        preflight(load_params(None, []), path)
    one = digits_folder(tmp_path / "b", {"0": 6})
    path = ingest(data.model_copy(update={"source": str(one)}), tmp_path / "ingest-b",
                  cache_dir=tmp_path / "cache").manifest_path
    with pytest.raises(UserError, match="at least two classes"):
        preflight(load_params(None, []), path)
