"""The utility gate end to end on tiny real digits: a helpful generator publishes; a harmful one (its images of the
scarce class are other digits) is refused with a one-line verdict naming the numbers, the report says why, and
nothing is published; ``publish.utility_gate=false`` publishes it anyway and the record says so. The ``gain`` rule
refuses both (neither measurably helps on this tiny data); each rule on each kind of evidence, from a metrics.json
written here."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from synthaug.flows.dag import step
from synthaug.flows.params import load_params
from synthaug.models.config import JudgeConfig
from synthaug.tasks.core.evaluation.downstream import summarize
from synthaug.tasks.core.evaluation.gate import UtilityGateRefused, enforce_gate, gate_verdict
from synthaug.tasks.core.io.images import load_images, write_png
from synthaug.tasks.core.io.manifest import read_manifest, write_manifest
from synthaug.tasks.evaluate.step import evaluate_step
from synthaug.tasks.report import report_step
from tests.markers import integration, slow
from tests.toy import registry_tags
from tests.workdirs import copy_workdir, tiny_params, upscale

CLASSIFIER = JudgeConfig(width=8, feature_dim=16, steps=60, batch_size=32)  # steadier than the evaluate tests' 40


def _synthetic(images: list[np.ndarray], label: str, filter_dir: Path) -> None:
    """Replace the filter step's synthetic rows by ``images``, all accepted as ``label``."""
    rows = []
    for seed, pixels in enumerate(images):
        path = f"images/{label}/{label}_s{seed}.png"
        rows.append({"image_id": write_png(pixels, filter_dir / path), "path": path, "label": label, "split": "train",
                     "source": "synthetic", "generator": "vae", "checkpoint": "cd" * 32, "seed": seed,
                     "accepted": True, "reject_reason": None, "height": 16, "width": 16, "channels": 1,
                     "score_nn_pixel_corr": 0.5})
    frame = pd.DataFrame(rows)
    frame["seed"] = frame["seed"].astype("Int64")
    write_manifest(frame, filter_dir / "manifest.parquet")


def _real(ingest_dir: Path, split: str, labels: tuple[str, ...], per_class: int) -> list[np.ndarray]:
    frame, _ = read_manifest(ingest_dir / "manifest.parquet")
    out = []
    for label in labels:
        rows = frame[(frame["split"] == split) & (frame["label"] == label)].head(per_class)
        x = load_images(ingest_dir, list(rows["path"]), 1)
        out += [np.round((img.numpy().transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8) for img in x]
    return out


def _other_digits(per_class: int) -> list[np.ndarray]:
    """Real 0s, 1s and 2s that are in no split of the workdir (the last of each class in scikit-learn's digits)."""
    from sklearn.datasets import load_digits

    digits = load_digits(n_class=3)
    return [upscale(digits.images[i]) for k in range(3)
            for i in np.flatnonzero(digits.target == k)[-per_class:]]


def _workdir(tiny: dict[str, Path], root: Path, kind: str) -> Path:
    """A workdir up to the report: ``helpful`` synthetic 3s are real 3s the train split never saw (heldback);
    ``harmful`` ones are unseen real 0s, 1s and 2s labelled 3 (a generator whose samples carry the wrong class)."""
    dirs = copy_workdir(tiny, root)
    images = _real(dirs["ingest"], "heldback", ("3",), 20) if kind == "helpful" else _other_digits(20)
    _synthetic(images, "3", dirs["filter"])
    params = tiny_params(classifier=CLASSIFIER, choose_on_validation=False)  # the gate judges real_synthetic
    evaluate_step(dirs["ingest"], dirs["filter"], dirs["judge"], params, dirs["evaluate"],
                  console=Console(file=io.StringIO()))
    report_step(dirs["ingest"], dirs["filter"], dirs["evaluate"], dirs["report"], thumbs=2, pairs=1)
    return root


def _publish(root: Path, *extra: str):
    """Assemble the dataset folder, then publish it (the two steps `synthaug run` ends with)."""
    params = _params(root, *extra)
    step("assemble").run(params, root)
    return step("publish").run(params, root)


def _params(root: Path, *extra: str):
    return load_params(None, [f"publish.registry={root / 'registry'}", f"publish.remote={root / 'remote'}",
                              "publish.name=gate", *extra])


@slow
def test_a_helpful_generator_publishes_under_harm_but_not_under_gain(tiny_workdir: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    """Unseen real 3s as the synthetic 3s: nothing measurably hurts, so the harm rule publishes; on this tiny data
    (3 seeds) no interval clears zero either, so the gain rule refuses, naming itself and the evidence."""
    root = _workdir(tiny_workdir, tmp_path, "helpful")
    gate = json.loads((root / "evaluate" / "metrics.json").read_text())["utility"]["gate"]
    assert gate["evidence"] == "no measurable effect" and gate["passes"] == {"harm": True, "gain": False}, gate
    with pytest.raises(UtilityGateRefused, match=r"^utility gate refused \(publish.utility_gate: gain\): utility "
                                                 r"evidence: no measurable effect — every 95% CI"):
        _publish(root, "publish.utility_gate=gain")
    assert registry_tags(root / "registry") == []
    record = _publish(root)
    assert record["tag"] == "gate/v1" and record["utility_gate"] == "passed (harm rule)"
    assert registry_tags(root / "registry") == ["gate/v1"]


@integration
@slow
def test_a_harmful_generator_is_refused_and_nothing_is_published(tiny_workdir: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    root = _workdir(tiny_workdir, tmp_path, "harmful")
    gate = json.loads((root / "evaluate" / "metrics.json").read_text())["utility"]["gate"]
    assert not gate["passed"] and any(c["hurts"] for c in gate["checks"])
    with pytest.raises(UtilityGateRefused, match=r"utility gate refused \(publish.utility_gate: harm\): utility "
                                                 r"evidence: hurts — real_synthetic measurably hurts") as info:
        _publish(root)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "95% CI" in message and "publish.utility_gate=false" in message
    assert registry_tags(root / "registry") == []  # the dataset folder was assembled, nothing was published
    page = (root / "report" / "report.html").read_text()
    assert "utility evidence: hurts" in page and "Gate rule:" in page and "Hurts: the synthetic images" in page
    with pytest.raises(UtilityGateRefused, match=r"\(publish.utility_gate: gain\): utility evidence: hurts"):
        _publish(root, "publish.utility_gate=gain")

    # The CLI: exit 1 and one line naming the numbers (as `synthaug run` ends when the publish step refuses).
    cli = subprocess.run([sys.executable, "-m", "synthaug", "publish", "--workdir", str(root),
                          "-S", f"publish.registry={root / 'registry'}", "-S", f"publish.remote={root / 'remote'}",
                          "-S", "publish.name=gate"], capture_output=True, text=True, cwd=Path(__file__).parents[2],
                         env={**os.environ, "COLUMNS": "1000"})  # a wide terminal: rich wraps at its width
    assert cli.returncode == 1, cli.stderr + cli.stdout
    lines = [line for line in (cli.stdout + cli.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: utility gate refused"), lines

    # Turned off explicitly: published, and the record says the gate refused.
    record = _publish(root, "publish.utility_gate=false")
    assert record["tag"] == "gate/v1"
    assert record["utility_gate"] == "off (publish.utility_gate=false): published; the harm rule refused"


def _utility(diff: float) -> dict:
    """A utility block of both families where real_synthetic = real_oversampled + diff, with a little seed noise."""
    base = [0.80, 0.82, 0.84]
    values = {"real_oversampled": base, "real_classical_aug": [v - 0.05 for v in base],
              "real_synthetic": [v + diff + s for v, s in zip(base, (-0.005, 0.0, 0.005), strict=True)]}
    runs = {c: [{"balanced_accuracy": v, "macro_f1": v, "minority_recall": v, "per_class_recall": {}} for v in vals]
            for c, vals in values.items()}
    return {**summarize(runs, [], 3), "independent": {"logistic_regression": summarize(runs, [], 3)}}


@pytest.mark.parametrize(("diff", "accepted", "evidence", "publishes"), [
    (0.05, 10, "helps", {"harm": True, "gain": True}),
    (0.0, 10, "no measurable effect", {"harm": True, "gain": False}),
    (-0.05, 10, "hurts", {"harm": False, "gain": False}),
    (0.05, 0, "nothing to judge", {"harm": True, "gain": False}),
])
def test_each_rule_publishes_what_the_evidence_allows(tmp_path: Path, diff: float, accepted: int, evidence: str,
                                                      publishes: dict[str, bool]) -> None:
    gate = gate_verdict(_utility(diff), 0.01, accepted=accepted, generated=10)
    assert gate["evidence"] == evidence and gate["verdict"].startswith(f"utility evidence: {evidence} — ")
    (tmp_path / "metrics.json").write_text(json.dumps({"utility": {"gate": gate}}))
    for rule, allowed in publishes.items():
        if allowed:
            assert enforce_gate(tmp_path, rule) == gate
        else:
            with pytest.raises(UtilityGateRefused, match=rf"^utility gate refused \(publish.utility_gate: {rule}\): "
                                                         rf"utility evidence: {evidence} — .* To publish anyway: "
                                                         r"-S publish.utility_gate=false$"):
                enforce_gate(tmp_path, rule)
    assert enforce_gate(tmp_path, False) == gate  # off: whatever the evidence


def test_a_refused_gate_is_not_retried_but_a_network_error_is() -> None:
    """The publish step retries (remote storage); a refusal, or any error the user must fix, would fail again."""
    from prefect.states import Failed

    from synthaug.flows.augment import transient

    assert not transient(None, None, Failed(data=UtilityGateRefused("utility gate refused: ...")))
    assert transient(None, None, Failed(data=OSError("connection reset")))
