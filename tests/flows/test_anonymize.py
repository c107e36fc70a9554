"""The anonymize flow end to end at toy size, with a real generator checkpoint (a VAE trained a few steps).

The generate step's output is written from real images before the flow runs (the generate step keeps files that
exist and lists them in its manifest with the checkpoint's hash and the seeds): a generator that returns copies of
its training images, and an honest one whose samples are real digits of the same distribution that no step ever
saw. The copying one is blocked and publishes nothing; the honest one passes and publishes synthetic images only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from prefect import flow
from pydicom.pixels import apply_modality_lut
from sklearn.datasets import load_digits

from synthaug.flows.anonymize import anonymize, release_params
from synthaug.flows.augment import run_steps
from synthaug.flows.dag import ANONYMIZE, STEPS, step
from synthaug.flows.params import Params, load_params
from synthaug.tasks.core.io.manifest import read_manifest
from synthaug.tasks.core.io.plan_csv import read_plan
from synthaug.tasks.core.privacy.record import PrivacyGateError
from synthaug.tasks.core.sampling import image_path
from synthaug.tasks.generate import requests_from_plan
from synthaug.tasks.ingest import normalize, png
from tests.markers import dicom, integration, slow
from tests.medical import dciodvfy_errors, dicom_digits_folder, identifying, leaked
from tests.toy import COUNTS, TINY, digits_folder, registry_tags

pytestmark = [slow]

REPO = Path(__file__).resolve().parents[2]
# 16 px, as these tests were built: at the digits' own 8 px the filter rejected 3 of the 14 unseen real digits
# of one class that stand in for an honest generator here, so the release was not at the real size.
ANON = [*TINY, "data.image_size=16", "plan.overgenerate=2.0", "filter.judge.steps=60", "filter.min_confidence=0.0",
        "privacy.bootstrap=200"]
BALANCED = {"4": 20, "5": 20, "6": 20}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("anonymize") / "source")


def overrides(source: Path, root: Path) -> list[str]:
    return [*ANON, f"data.source={source}", f"publish.registry={root / 'registry'}",
            f"publish.remote={root / 'remote'}", "publish.name=toy"]


def prepare(params: Params, work: Path, sampler) -> None:
    """Run ingest, plan and train, then write the generate step's output: ``sampler(params, work)(label, k)`` (PNG
    bytes) for the k-th planned image of each class, at the path of its seed (planned as the flow plans)."""
    params = release_params(params)
    for name in ("ingest", "plan", "train"):
        step(name).run(params, work)
    sample = sampler(params, work)
    class_names = json.loads((work / "model" / "checkpoint" / "config.json").read_text())["class_names"]
    for request in requests_from_plan(read_plan(work / "plan" / "plan.csv"), class_names, params.generate.seed):
        for k, seed in enumerate(request.seeds):
            path = work / "generate" / image_path(request.label, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(sample(request.label, k))


def copies_of_training_images(params: Params, work: Path):
    real, _ = read_manifest(work / "ingest" / "manifest.parquet")
    train = real[real["split"] == "train"]

    def sample(label: str, k: int) -> bytes:
        paths = list(train["path"][train["label"] == label])
        return (work / "ingest" / paths[k % len(paths)]).read_bytes()

    return sample


def unseen_digits(params: Params, work: Path):
    """Real digits of the same collection that the source does not hold, normalized as ingest normalizes."""
    digits = load_digits()
    held = {**BALANCED, **COUNTS}  # the sources take the first images of each class

    def sample(label: str, k: int) -> bytes:
        pixels = digits.images[digits.target == int(label)][held[label] + k]
        return png(normalize(Image.fromarray((pixels * 255 / 16).astype(np.uint8)), params.data))

    return sample


def real_hashes(work: Path) -> set[str]:
    real, _ = read_manifest(work / "ingest" / "manifest.parquet")
    return set(real["image_id"])


def test_balanced_source_releases_every_class_at_its_real_size(tmp_path) -> None:
    source = digits_folder(tmp_path / "balanced", BALANCED)
    params = load_params(None, overrides(source, tmp_path))
    work = tmp_path / "work"
    prepare(params, work, unseen_digits)
    records = anonymize(params, str(work))

    real, _ = read_manifest(work / "ingest" / "manifest.parquet")
    train = real[real["split"] == "train"]["label"].value_counts().to_dict()
    manifest, _ = read_manifest(Path(records["release"]["dataset"]) / "manifest.parquet")
    assert manifest["label"].value_counts().to_dict() == train and set(train) == set(BALANCED)
    assert read_plan(work / "plan" / "plan.csv")["to_generate"].tolist() == [
        train[c] * 2 for c in sorted(train)]


def test_honest_generator_passes_and_publishes_synthetic_images_only(source, tmp_path) -> None:
    params = load_params(None, overrides(source, tmp_path))
    work = tmp_path / "work"
    prepare(params, work, unseen_digits)
    records = anonymize(params, str(work))

    assert list(records) == list(ANONYMIZE)
    assert records["privacy"]["passed"] is True
    assert records["release"]["tag"] == "toy-anonymized/v1"
    assert registry_tags(tmp_path / "registry") == ["toy-anonymized/v1"]

    release = Path(records["release"]["dataset"])
    manifest, metadata = read_manifest(release / "manifest.parquet")
    filtered, _ = read_manifest(work / "filter" / "manifest.parquet")
    assert len(manifest) == int(filtered["accepted"].sum()) > 0
    # a full synthetic replacement: every class at its real train size, the scarce one included
    real, _ = read_manifest(work / "ingest" / "manifest.parquet")
    train = real[real["split"] == "train"]["label"].value_counts().to_dict()
    assert manifest["label"].value_counts().to_dict() == train
    assert (manifest["source"] == "synthetic").all() and manifest["accepted"].all()
    assert not [c for c in manifest.columns if c in ("score_nn_feature", "score_nn_pixel_corr", "score_realism")]
    files = {p.relative_to(release).as_posix() for p in (release / "images").rglob("*") if p.is_file()}
    assert files == set(manifest["path"])
    released = {hashlib.sha256((release / p).read_bytes()).hexdigest() for p in files}
    assert not released & real_hashes(work)

    privacy = json.loads((release / "privacy.json").read_text())
    assert privacy["passed"] and privacy["release"]["images"] == len(manifest)
    assert privacy["dp"] == {"claimed": False, "reason": "the generator was not trained with differential privacy "
                                                        "(model.dp.epsilon is null)"}
    tstr = privacy["utility"]  # train on the release, test on real, against train on real: overall and per class
    assert set(tstr["per_class_recall"]) == set(train) and tstr["seeds"] == 3
    assert tstr["balanced_accuracy"]["ratio"]["mean"] == pytest.approx(
        tstr["balanced_accuracy"]["tstr"]["mean"] / tstr["balanced_accuracy"]["trtr"]["mean"], rel=0.5)
    assert json.loads((release / "metrics.json").read_text())["release_utility"] == tstr
    assert records["release"]["tstr_trtr_balanced_accuracy"] == tstr["balanced_accuracy"]["ratio"]["mean"]
    card = (release / "card.md").read_text()
    assert card.startswith("---\n") and "\n# toy-anonymized\n\n**Synthetic images only**" in card  # the release's name
    assert "None" not in card and "| source | withheld (anonymized release) |" in card
    assert "## Privacy" in card and "membership inference, pixel" in card and "released -> train" in card
    assert "## Utility of the release (TSTR vs TRTR)" in card and "| recall, class 3 |" in card
    page = (release / "report.html").read_text()
    assert 'id="tstr"' in page and "recall, class 3" in page
    assert 'id="privacy"' in page and "Attack AUC per class" in page and 'id="memorization"' not in page
    embedded = {hashlib.sha256(base64.b64decode(uri)).hexdigest()
                for uri in re.findall(r'src="data:image/png;base64,([^"]+)"', page)}
    assert embedded & released and not embedded & real_hashes(work)
    # no trace of where the real images came from, nor of the local folders that made the release
    for text in [card, page, (release / "params.yaml").read_text(), json.dumps(metadata),
                 (release / "privacy.json").read_text(), (release / "metrics.json").read_text()]:
        assert str(source) not in text and str(tmp_path) not in text


def test_dp_trained_release_records_epsilon_in_privacy_json_and_card(source, tmp_path) -> None:
    params = load_params(None, [*overrides(source, tmp_path), "model.dp.epsilon=10", "model.dp.delta=1e-4",
                                "model.vae.batch_size=16"])
    work = tmp_path / "work"
    prepare(params, work, unseen_digits)
    records = anonymize(params, str(work))

    release = Path(records["release"]["dataset"])
    dp = json.loads((release / "privacy.json").read_text())["dp"]
    assert dp["claimed"] and 0 < dp["epsilon"] <= 10 and dp["delta"] == 1e-4 and dp["steps"] == 2
    assert dp["sampling"].startswith("Poisson") and records["privacy"]["dp_epsilon"] == dp["epsilon"]
    assert dp == json.loads((work / "model" / "checkpoint" / "dp.json").read_text()) | {
        "claimed": True, "covers": dp["covers"], "does_not_cover": dp["does_not_cover"]}
    card = (release / "card.md").read_text()
    assert "## Differential privacy" in card and f"(ε, δ) = ({dp['epsilon']:.3g}, 0.0001)" in card
    assert "**What it does not cover:**" in card
    assert 'id="dp"' in (release / "report.html").read_text()


@integration
def test_copying_generator_is_blocked_and_publishes_nothing(source, tmp_path) -> None:
    params = load_params(None, overrides(source, tmp_path))
    work = tmp_path / "work"
    prepare(params, work, copies_of_training_images)
    with pytest.raises(PrivacyGateError, match=r"(?s)nothing was published.*the filter accepted none of the \d+ "
                                               r"generated \(memorized_pixel: \d+\)"):
        anonymize(params, str(work))
    assert registry_tags(tmp_path / "registry") == []
    assert not (work / "release").exists() and not (work / "evaluate").exists()
    privacy = json.loads((work / "privacy" / "privacy.json").read_text())
    generated, _ = read_manifest(work / "generate" / "manifest.parquet")
    assert not privacy["passed"] and set(generated["image_id"]) <= real_hashes(work)

    # the command line says the same in one message, and exits 1
    cli = subprocess.run([sys.executable, "-m", "synthaug", "anonymize", "-w", str(work),
                          *(a for o in overrides(source, tmp_path) for a in ("-S", o))],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 1
    assert "error: privacy gate failed, nothing was published" in cli.stderr
    assert "memorized_pixel" in cli.stderr and registry_tags(tmp_path / "registry") == []


def test_a_plan_the_other_flow_wrote_is_planned_again_not_taken_from_the_cache(source, tmp_path) -> None:
    """augment and anonymize share a workdir but plan differently: each re-plans when the other overwrote
    plan/plan.csv, and a run with nothing changed still takes its plan from the cache."""
    work = tmp_path / "work"

    @flow
    def ingest_and_plan(p: Params) -> dict:
        return run_steps([step("ingest"), step("plan")], p, str(work))

    augment_params = load_params(None, overrides(source, tmp_path))
    ingest_and_plan(augment_params)
    augmented = read_plan(work / "plan" / "plan.csv")
    ingest_and_plan(release_params(augment_params))
    released = read_plan(work / "plan" / "plan.csv")
    assert (released["target"] - released["real"]).tolist() == released["real"].tolist() != (
        augmented["target"] - augmented["real"]).tolist()
    again = ingest_and_plan(augment_params)
    assert "reused" in again["ingest"] and "reused" not in again["plan"]
    assert read_plan(work / "plan" / "plan.csv").equals(augmented)
    assert "reused" in ingest_and_plan(augment_params)["plan"]


def test_anonymize_steps_are_the_dag_steps_up_to_the_filter_then_gate_evaluate_release() -> None:
    names = [s.name for s in STEPS]
    upto = names.index("filter") + 1
    assert list(ANONYMIZE[:upto]) == names[:upto]
    assert list(ANONYMIZE[upto:]) == ["privacy", "evaluate", "release"]
    produced: set[str] = set()
    for name in ANONYMIZE:
        for dep in step(name).deps:
            assert any(dep == p or dep.startswith(p + "/") for p in produced), f"{name} reads {dep} too early"
        produced.update(step(name).outputs)
    assert {"privacy", "release"}.isdisjoint(names)  # the augment DAG (and dvc.yaml) stays as it is


@dicom
def test_dicom_folder_in_anonymized_dicom_release_out(tmp_path) -> None:
    """README's medical walkthrough: CT files carrying a patient's name, IDs and dates in, synthetic DICOM out."""
    source = dicom_digits_folder(tmp_path / "scans", COUNTS)
    secrets = identifying(source / "0" / "0.dcm")
    window = ["data.window_center=-200", "data.window_width=1600"]  # -1000 .. 600 HU: the digits' range
    params = load_params(None, [*overrides(source, tmp_path), *window, "privacy.release_format=dicom"])
    work = tmp_path / "work"
    prepare(params, work, unseen_digits)
    records = anonymize(params, str(work))

    release = Path(records["release"]["dataset"])
    manifest, metadata = read_manifest(release / "manifest.parquet")
    assert metadata["format"] == "dicom" and metadata["intensity"]["unit"] == "HU"
    assert len(manifest) > 0 and all(p.endswith(".dcm") for p in manifest["path"])
    for rel, label, seed in manifest[["path", "label", "seed"]].itertuples(index=False):
        written = pydicom.dcmread(release / rel)
        assert leaked(written, secrets) == set()
        assert dciodvfy_errors(release / rel) == []
        assert written.PatientIdentityRemoved == "YES" and "SYNTHETIC" in written.SeriesDescription
        assert f"{label}" in written.ImageComments and f"{seed}" in written.ImageComments
        hu = apply_modality_lut(written.pixel_array, written)
        assert hu.min() >= -1000 - 1e-6 and hu.max() <= 600 + 1e-6  # stored values map back into the window
    assert not {p.suffix for p in (release / "images").rglob("*") if p.is_file()} - {".dcm"}
    assert registry_tags(tmp_path / "registry") == ["toy-anonymized/v1"]
