"""The augment flow end to end at toy size: publish v1, a cached re-run that publishes nothing, a changed
param that re-runs only what depends on it (`dvc repro` of dvc.yaml giving the flow's outputs: test_dvc_project.py)."""

from pathlib import Path

import pandas as pd
import pytest

from synthaug.flows.augment import augment
from synthaug.flows.dag import STEPS
from synthaug.flows.params import load_params
from synthaug.tasks.core.publishing.registry import fetch
from synthaug.tasks.core.render import read_run
from tests.markers import slow
from tests.toy import TINY, digits_folder, registry_tags

pytestmark = [slow]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("augment")
    source = digits_folder(root / "source")
    overrides = [*TINY, f"data.source={source}", f"publish.registry={root / 'registry'}",
                 f"publish.remote={root / 'remote'}", "publish.name=toy"]
    return root, overrides


SECRETS = {"AWS_ACCESS_KEY_ID": "AKIASYNTHAUGTEST7Q3Z", "AWS_SECRET_ACCESS_KEY": "synthaug-test-secret-9f2c41"}


def test_publishes_v1_then_a_cached_rerun_publishes_nothing(setup, monkeypatch):
    root, overrides = setup
    work = root / "work"
    for key, value in SECRETS.items():  # credentials as DVC reads them: only from the environment
        monkeypatch.setenv(key, value)
    first = augment(load_params(None, overrides), str(work))
    assert list(first) == [s.name for s in STEPS]
    assert first["publish"]["tag"] == "toy/v1" and first["publish"]["new"] is True
    assert first["publish"]["generator_tag"] == "toy-generator/v1" and first["publish"]["generator_new"] is True
    assert registry_tags(root / "registry") == ["toy-generator/v1", "toy/v1"]
    dataset = Path(first["publish"]["dataset"])
    for name in ("manifest.parquet", "metrics.json", "report.html", "card.md", "params.yaml"):
        assert (dataset / name).is_file()
    manifest = pd.read_parquet(dataset / "manifest.parquet")
    assert all((dataset / p).is_file() for p in manifest["path"])
    written = [f for f in root.rglob("*") if f.is_file()]  # work dir (logs, manifests), dataset, card, registry
    assert any(f.name == "card.md" for f in written) and any(f.name == "train_log.jsonl" for f in written)
    leaked = [f for f in written if any(v.encode() in f.read_bytes() for v in SECRETS.values())]
    assert not leaked, f"credentials from the environment were written to {leaked}"
    # The registry's copy names its run (tag, date, family, code), and so does the workdir's.
    published = fetch(str(root / "registry"), "toy", 1, root / "toy-v1")
    card, page = (published / "card.md").read_text(), (published / "report.html").read_text()
    run = read_run(published)
    assert run is not None and (run.dataset, run.tag, run.family) == ("toy", "toy/v1", "vae") and run.date
    assert card.startswith("---\n") and "\n# toy\n" in card and "| version | toy/v1 |" in card and "None" not in card
    assert f"| published | {run.date} |" in card and f"| pipeline code | {run.code_version} |" in card
    assert '<th class="l">version</th><td class="l">toy/v1</td>' in page and "None" not in page
    assert "| version | toy/v1 |" in (dataset / "card.md").read_text()  # the workdir's copy is stamped the same

    again = augment(load_params(None, overrides), str(work))
    assert all("reused" in again[s.name] for s in STEPS if not (s.always_changed or s.publishes)), {
        k: v.get("reused") for k, v in again.items()}
    assert again["publish"]["tag"] == "toy/v1" and again["publish"]["new"] is False
    assert again["publish"]["generator_new"] is False
    assert registry_tags(root / "registry") == ["toy-generator/v1", "toy/v1"]

    changed = augment(load_params(None, [*overrides, "generate.seed=7"]), str(work))
    assert "reused" in changed["train"] and "reused" not in changed["generate"]
    # A version means new content: v2 exactly when the accepted synthetic images differ from v1's (at this toy
    # size the filter may accept none with either seed; then the params-only change publishes nothing).
    def accepted(folder: Path) -> list[tuple[str, str]]:
        rows = pd.read_parquet(folder / "manifest.parquet")
        rows = rows[rows["source"] == "synthetic"]
        return sorted(zip(rows["path"], rows["image_id"], strict=True))

    differs = accepted(Path(changed["publish"]["dataset"])) != accepted(published)
    expected = ("toy/v2", True) if differs else ("toy/v1", False)
    assert (changed["publish"]["tag"], changed["publish"]["new"]) == expected
    # The same generator (same checkpoint): no new generator version, and the card says which one.
    assert changed["publish"]["generator_tag"] == "toy-generator/v1" and changed["publish"]["generator_new"] is False
    assert registry_tags(root / "registry") == ["toy-generator/v1", "toy/v1", *(["toy/v2"] if differs else [])]


def test_compare_runs_every_family_on_the_same_data(setup, tmp_path):
    from synthaug.flows.compare import compare
    from synthaug.models.families import family_names

    _, overrides = setup
    tiny = [f"model.{f}.{k}={v}" for f in family_names() for k, v in (("steps", 2), ("batch_size", 8))]
    # 16 px: every family's network takes it (the latent UNet does not take 8 px; the next test)
    table = pd.read_csv(compare(load_params(None, [*overrides, *tiny, "data.image_size=16"]),
                                str(tmp_path / "compare")))
    assert list(table["family"]) == family_names()
    for column in ("balanced_accuracy_real_synthetic", "minority_recall_real_synthetic", "train_seconds",
                   "sample_images_per_second", "acceptance"):
        assert table[column].notna().all(), column
    # toy data has too few synthetic images for set metrics: the columns exist, null rather than invented
    assert {"fid", "kid", "precision", "recall", "density", "coverage"} <= set(table.columns)
    assert (tmp_path / "compare" / "compare.md").read_text().count("\n") == len(family_names()) + 2
    manifests = [pd.read_parquet(tmp_path / "compare" / f / "ingest" / "manifest.parquet") for f in family_names()]
    assert all(m["image_id"].tolist() == manifests[0]["image_id"].tolist() for m in manifests)


def test_compare_skips_a_family_that_cannot_take_the_image_size_before_training(setup) -> None:
    from synthaug.flows.preflight import unfit

    _, overrides = setup
    at_8 = load_params(None, [*overrides, "data.image_size=8"])
    assert "latent_diffusion" in unfit(at_8, "latent_diffusion") and "divisible by 4" in unfit(at_8, "latent_diffusion")
    assert unfit(at_8, "diffusion") is None and unfit(at_8, "vae") is None and unfit(at_8, "gan") is None
    assert unfit(load_params(None, [*overrides, "data.image_size=16"]), "latent_diffusion") is None
