"""Generator versions in a real data registry (git + DVC, a local-folder remote, a bare origin), the warm-start
decision, and the class conditioning a warm start extends."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.params.model import ModelParams
from synthaug.tasks.core.params.publish import PublishParams
from synthaug.tasks.core.publishing.generators import WarmStart, parse_spec, warm_start_mismatch
from synthaug.tasks.core.publishing.registry import fetch, fetch_generator, latest_generator
from synthaug.tasks.core.publishing.vcs import PublishError
from synthaug.tasks.publish.step import publish
from tests.markers import integration
from tests.tasks.test_publish import bare_origin, break_remote, git, hermetic, make_dataset, mend_remote, snapshot

NAME = "digits"
GEN = f"{NAME}-generator"
__all__ = ["hermetic"]  # the autouse fixture: no user or system git/DVC config leaks in


def make_generator(folder: Path, weights: bytes, log: str = "step 1\n") -> Path:
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "weights.pt").write_bytes(weights)
    (folder / "checkpoint" / "config.json").write_text('{"family": "vae"}\n')
    (folder / "train_log.jsonl").write_text(log)
    (folder / "generator.json").write_text(json.dumps({"weights": weights.hex()[:16]}) + "\n")
    (folder / "card.md").write_text("# Generator card\n")
    return folder


def with_card(folder: Path) -> Path:
    """A dataset whose card has the lineage row the generator version is named after."""
    (folder / "card.md").write_text("# Dataset card\n\n| | |\n|---|---|\n| generator checkpoint (sha256) | abc |\n"
                                    "| pipeline code | x |\n")
    return folder


def all_tags(repo: Path) -> list[str]:
    """The version tags <name>/v<N> (the DVC artifact tags <artifact>@v<N>.0.0 beside them are left out)."""
    return [t for t in git("tag", "--list", cwd=repo).split() if "@" not in t]


def card_of(registry: Path, version: int, out: Path) -> str:
    return (fetch(str(registry), NAME, version, out) / "card.md").read_text()


@integration
def test_generator_versions_publish_with_the_dataset_whole_or_not_at_all(tmp_path: Path) -> None:
    origin, remote, work, params = bare_origin(tmp_path)
    gen_a = make_generator(tmp_path / "gen-a", b"weights A" * 100)
    assert latest_generator(str(origin), NAME) is None
    assert latest_generator(str(tmp_path / "no-registry"), NAME) is None

    r1 = publish(with_card(make_dataset(tmp_path / "ds1", "one")), params, workdir=work, generator=gen_a)
    assert (r1.tag, r1.generator_tag, r1.generator_new) == (f"{NAME}/v1", f"{GEN}/v1", True)
    assert all_tags(origin) == [f"{GEN}/v1", f"{NAME}/v1"]
    assert git("rev-parse", f"{GEN}/v1^{{commit}}", cwd=origin) == r1.commit  # one commit, two tags
    assert git("tag", "--list", "*@*", cwd=origin).split() == [f"{GEN}@v1.0.0", f"{NAME}@v1.0.0"]  # and their artifacts
    assert latest_generator(str(origin), NAME) == f"{GEN}/v1"
    assert snapshot(fetch_generator(str(origin), f"{GEN}/v1", tmp_path / "get-gen-v1")) == snapshot(gen_a)
    card = card_of(origin, 1, tmp_path / "get-v1")
    lines = card.splitlines()
    at = lines.index("| generator checkpoint (sha256) | abc |")
    assert lines[at + 1] == f"| generator version | {GEN}/v1 (`models/{NAME}` in this registry) |"

    # Same checkpoint (another train log): no new generator version; the new dataset version names v1.
    same_weights = make_generator(tmp_path / "gen-a2", b"weights A" * 100, log="another run\n")
    r2 = publish(with_card(make_dataset(tmp_path / "ds2", "two")), params, workdir=work, generator=same_weights)
    assert (r2.tag, r2.generator_tag, r2.generator_new) == (f"{NAME}/v2", f"{GEN}/v1", False)
    assert all_tags(origin) == [f"{GEN}/v1", f"{NAME}/v1", f"{NAME}/v2"]
    assert f"| generator version | {GEN}/v1 " in card_of(origin, 2, tmp_path / "get-v2")

    # A new checkpoint whose publish fails (DVC remote, then the git push): neither version exists.
    gen_b = make_generator(tmp_path / "gen-b", b"weights B" * 100)
    ds3 = with_card(make_dataset(tmp_path / "ds3", "three"))
    aside = break_remote(remote)
    with pytest.raises(PublishError, match="dvc push"):
        publish(ds3, params, workdir=work, generator=gen_b)
    mend_remote(remote, aside)
    hook = origin / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho refused by test >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(PublishError, match="push"):
        publish(ds3, params, workdir=work, generator=gen_b)
    hook.unlink()
    assert all_tags(origin) == [f"{GEN}/v1", f"{NAME}/v1", f"{NAME}/v2"]

    r3 = publish(ds3, params, workdir=work, generator=gen_b)
    assert (r3.tag, r3.generator_tag, r3.generator_new) == (f"{NAME}/v3", f"{GEN}/v2", True)
    assert all_tags(origin) == [f"{GEN}/v1", f"{GEN}/v2", f"{NAME}/v1", f"{NAME}/v2", f"{NAME}/v3"]
    assert snapshot(fetch_generator(str(origin), f"{GEN}/latest", tmp_path / "get-gen-v2")) == snapshot(gen_b)
    again = publish(ds3, params, workdir=work, generator=gen_b)  # nothing changed: nothing published
    assert (again.tag, again.new, again.generator_tag, again.generator_new) == (r3.tag, False, f"{GEN}/v2", False)
    assert len(all_tags(origin)) == 5


@integration
def test_local_registry_rolls_back_the_generator_too(tmp_path: Path) -> None:
    registry, remote = tmp_path / "registry" / "repo", tmp_path / "registry" / "remote"
    params = PublishParams(name=NAME, registry=str(registry), remote=str(remote))
    r1 = publish(with_card(make_dataset(tmp_path / "ds1", "one")), params, workdir=tmp_path / "work",
                 generator=make_generator(tmp_path / "gen-a", b"A" * 64))
    assert r1.generator_tag == f"{GEN}/v1"
    aside = break_remote(remote)
    with pytest.raises(PublishError, match="dvc push"):
        publish(with_card(make_dataset(tmp_path / "ds2", "two")), params, workdir=tmp_path / "work",
                generator=make_generator(tmp_path / "gen-b", b"B" * 64))
    assert all_tags(registry) == [f"{GEN}/v1", f"{NAME}/v1"]
    assert git("rev-parse", "HEAD", cwd=registry) == r1.commit
    assert git("status", "--porcelain", "--ignored", "--", "models", cwd=registry) == ""  # no leftover copy
    mend_remote(remote, aside)


def test_fetch_generator_and_spec_refuse_bad_names(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="expected <dataset>-generator/v<N>"):
        fetch_generator(str(tmp_path), f"{NAME}/v1", tmp_path / "out")
    with pytest.raises(UserError, match="expected <registry>@<dataset>-generator/v<N>"):
        parse_spec("registry/repo")
    assert parse_spec(f"git@host:org/reg.git@{GEN}/v3") == ("git@host:org/reg.git", f"{GEN}/v3")


def _frame(classes: list[str], shape: tuple[int, int, int] = (1, 16, 16)) -> pd.DataFrame:
    return pd.DataFrame({"split": "train", "source": "real", "label": classes, "channels": shape[0],
                         "height": shape[1], "width": shape[2]})


def test_warm_start_needs_the_same_family_shape_config_and_no_removed_class() -> None:
    model = ModelParams(family="vae")
    config = json.loads(json.dumps(model.vae.__dict__))
    meta = {"family": "vae", "image_shape": [1, 16, 16], "class_names": ["0", "1"], "config": config}
    assert warm_start_mismatch(meta, _frame(["0", "1", "2"]), model) is None  # a superset: conditioning extended
    assert warm_start_mismatch({**meta, "config": {**config, "steps": 5}}, _frame(["0", "1"]), model) is None
    assert "model.family is vae" in warm_start_mismatch({**meta, "family": "gan"}, _frame(["0", "1"]), model)
    assert "image shape is [1, 16, 16]" in warm_start_mismatch(meta, _frame(["0", "1"], (1, 32, 32)), model)
    assert "classes ['1'] are no longer in the source" in warm_start_mismatch(meta, _frame(["0", "2"]), model)
    assert "differs in ['latent_dim']" in warm_start_mismatch({**meta, "config": {**config, "latent_dim": 99}},
                                                     _frame(["0", "1"]), model)


def test_warm_start_ignores_what_acts_at_sampling_time_only() -> None:
    model = ModelParams(family="diffusion")
    config = json.loads(json.dumps(dataclasses.asdict(model.diffusion)))
    meta = {"family": "diffusion", "image_shape": [1, 16, 16], "class_names": ["0", "1"], "config": config}
    sampled = {**config, "guidance_scale": 2.0, "sample_steps": 50, "sampler": "ddim", "sample_batch_size": 8}
    # e.g. the old default guidance
    assert warm_start_mismatch({**meta, "config": sampled}, _frame(["0", "1"]), model) is None
    assert "differs in ['label_dropout']" in warm_start_mismatch({**meta, "config": {**config, "label_dropout": 0.2}},
                                                        _frame(["0", "1"]), model)


def test_warm_start_applies_the_fewer_steps_to_the_family(tmp_path: Path) -> None:
    model = ModelParams(family="vae")
    warm = WarmStart("x-generator/v1", tmp_path / "ckpt", "fine-tuning", 7)
    applied = warm.apply(model)
    assert (applied.init_from, applied.vae.steps, applied.vae.latent_dim) == (str(tmp_path / "ckpt"), 7,
                                                                             model.vae.latent_dim)
    assert WarmStart(None, None, "scratch", 9).apply(model) == model


# --- warm start on a real registry: a tiny generator trained, published, then found again -------------------------

TINY_VAE = {"steps": 2, "batch_size": 8, "latent_dim": 4, "channels": 8, "embed_dim": 4, "kl_warmup": 2,
            "checkpoint_every": 0}


def _ingested(root: Path, counts: dict[str, int]) -> Path:
    from synthaug.tasks.core.params.data import DataParams
    from synthaug.tasks.ingest import ingest
    from tests.toy import digits_folder

    source = digits_folder(root / "source", counts)
    return ingest(DataParams(source=str(source)), root / "ingest", cache_dir=root / "cache").manifest_path


def _model(**changes) -> ModelParams:
    return ModelParams.model_validate({"family": "vae", "device": "cpu", "vae": TINY_VAE, **changes})


@integration
def test_warm_start_from_the_published_generator_extends_classes_and_replays_its_start(tmp_path: Path) -> None:
    from synthaug.models.training import checkpoint_hash
    from synthaug.tasks.core.publishing.generators import assemble_generator, resolve_warm_start, write_origin
    from synthaug.tasks.train.step import train

    params = PublishParams(name=NAME, registry=str(tmp_path / "registry"), remote=str(tmp_path / "remote"))
    rev1 = _ingested(tmp_path / "rev1", {"0": 12, "1": 12, "2": 12})
    assert "no generator of digits published" in resolve_warm_start(rev1, _model(), params, tmp_path / "ws").reason

    # Generator v1: trained from scratch on revision 1 and published with a dataset.
    first = resolve_warm_start(rev1, _model(), params, tmp_path / "ws")
    write_origin(tmp_path / "m1", first)
    train(rev1, first.apply(_model()), tmp_path / "m1")
    gen1 = assemble_generator(tmp_path / "m1", rev1, "model: {}\n", tmp_path / "gen1")
    card = (gen1 / "card.md").read_text()
    assert "| family | vae |" in card and "None" not in card  # a local folder has no source repo: no row for it
    published = publish(with_card(make_dataset(tmp_path / "ds1", "one")), params, workdir=tmp_path / "w",
                        generator=gen1)
    assert published.generator_tag == f"{GEN}/v1"

    # A superset of classes: fine-tunes from v1 for ceil(0.3 * 2) = 1 step, the conditioning extended.
    rev2 = _ingested(tmp_path / "rev2", {"0": 12, "1": 12, "2": 12, "3": 12})
    warm = resolve_warm_start(rev2, _model(), params, tmp_path / "ws")
    assert (warm.tag, warm.steps) == (f"{GEN}/v1", 1)
    assert warm.reason == (f"fine-tuning from generator {GEN}/v1 for 1 of 2 steps (model.warm_start_fraction=0.3); "
                           "class conditioning extended with ['3']")
    assert checkpoint_hash(warm.checkpoint) == checkpoint_hash(gen1 / "checkpoint")
    result = train(rev2, warm.apply(_model()), tmp_path / "m2")
    meta = json.loads((result.checkpoint_dir / "config.json").read_text())
    assert meta["class_names"] == ["0", "1", "2", "3"] and meta["step"] == 1

    # Classes removed, another family, never: from scratch, saying why.
    rev3 = _ingested(tmp_path / "rev3", {"0": 12, "1": 12})
    assert resolve_warm_start(rev3, _model(), params, tmp_path / "ws").reason == (
        f"training from scratch, not from {GEN}/v1: classes ['2'] are no longer in the source")
    gan = ModelParams.model_validate({"family": "gan", "device": "cpu"})
    assert "it is a vae generator and model.family is gan" in resolve_warm_start(rev2, gan, params,
                                                                                 tmp_path / "ws").reason
    never = resolve_warm_start(rev2, _model(warm_start="never"), params, tmp_path / "ws")
    assert (never.tag, never.checkpoint, never.steps) == (None, None, 2)

    # The source v1 was trained on: start where v1 started (from scratch), which remakes v1's checkpoint.
    again = resolve_warm_start(rev1, _model(), params, tmp_path / "ws")
    assert again.checkpoint is None and "the source is the one" in again.reason
    remade = train(rev1, again.apply(_model()), tmp_path / "m1-again")
    assert remade.checkpoint_hash == checkpoint_hash(gen1 / "checkpoint")


def test_a_checkpoint_of_other_data_is_trained_again_not_resumed(tmp_path: Path) -> None:
    from synthaug.tasks.train.step import train

    rev1 = _ingested(tmp_path / "rev1", {"0": 12, "1": 12})
    rev2 = _ingested(tmp_path / "rev2", {"0": 20, "1": 20})
    first = train(rev1, _model(), tmp_path / "model")
    second = train(rev2, _model(), tmp_path / "model")  # same config and classes, other images
    fresh = train(rev2, _model(), tmp_path / "fresh")
    assert second.checkpoint_hash != first.checkpoint_hash and second.checkpoint_hash == fresh.checkpoint_hash
    assert train(rev2, _model(), tmp_path / "model").resumed_from == 2  # the same data: resumed (already done)


KILLED_AT_A_STEP_PAST_ITS_CHECKPOINT = """
import json, os, signal, sys, threading, time
from pathlib import Path
from synthaug.tasks.core.params.model import ModelParams
from synthaug.tasks.train.step import train

manifest, params, out = Path(sys.argv[1]), ModelParams.model_validate_json(sys.argv[2]), Path(sys.argv[3])

def kill_once_the_log_passes_the_checkpoint():
    while True:
        try:
            saved = json.loads((out / "checkpoint" / "config.json").read_text())["step"]
            logged = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
        except (OSError, ValueError, KeyError):
            logged, saved = [], None
        if saved is not None and logged and logged[-1] > saved:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.0005)

threading.Thread(target=kill_once_the_log_passes_the_checkpoint, daemon=True).start()
train(manifest, params, out)
"""


@integration
def test_a_training_killed_past_its_checkpoint_logs_each_step_once_when_resumed(tmp_path: Path) -> None:
    """Issue 29, finding 8: a resumed training kept the killed attempt's steps past its checkpoint in
    train_log.jsonl, and logged them again (the published log held them twice)."""
    from synthaug.tasks.train.step import train

    manifest = _ingested(tmp_path, {"0": 12, "1": 12})
    params = _model(vae={**TINY_VAE, "steps": 60, "checkpoint_every": 10})
    out = tmp_path / "model"
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_A_STEP_PAST_ITS_CHECKPOINT, str(manifest),
                             params.model_dump_json(), str(out)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    saved = json.loads((out / "checkpoint" / "config.json").read_text())["step"]
    lines = (out / "train_log.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] > saved  # the killed attempt logged steps its checkpoint does not hold

    resumed = train(manifest, params, out)

    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert resumed.resumed_from == saved and steps == list(range(1, 61))


@integration
def test_generate_with_a_bad_generator_says_so_in_one_line(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "COLUMNS": "250"}  # wide: the message on one line

    def generate(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "synthaug", "generate", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)

    bad_spec = generate("--generator", "registry/repo")
    assert bad_spec.returncode == 1 and "Traceback" not in bad_spec.stderr
    assert "expected <registry>@<dataset>-generator/v<N>" in bad_spec.stderr
    missing = generate("--generator", f"{tmp_path / 'nowhere'}@{GEN}/v1", "--out", "out")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "nowhere" in missing.stderr and not (tmp_path / "out" / "manifest.parquet").exists()
