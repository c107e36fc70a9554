"""Values that used to be accepted silently: booleans and huge or non-finite numbers in params, split fractions that
leave no train share, a password echoed in an error, and ``model.init_from`` ignored when a checkpoint exists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from synthaug.flows.code_deps import REPO_ROOT
from synthaug.flows.params import ParamsError, load_params
from synthaug.tasks.core.params.data import DataParams
from synthaug.tasks.ingest import ingest
from synthaug.tasks.train.step import train
from tests.toy import TINY, digits_folder


@pytest.mark.parametrize(("override", "message"), [
    (["model.diffusion.guidance_scale=1e9"], r"guidance_scale must be in \[0, 50.0\], got 1000000000.0"),
    (["model.vae.steps=true"], "model.vae.steps: expected int, got true"),
    (["filter.judge.steps=true"], "filter.judge.steps: expected int, got true"),
    (["generate.seed=false"], "generate.seed: expected int, got false"),
    (["data.val_fraction=0.6", "data.test_fraction=0.5"], "leaves no share for train"),
    (["filter.min_confidence=.nan"], "filter.min_confidence: nan is not a finite number"),
])
def test_bad_values_are_refused_naming_the_key(override: list[str], message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        load_params(None, override)


def test_booleans_stay_allowed_where_a_boolean_is_meant() -> None:
    params = load_params(None, ["publish.push=false", "model.diffusion.compile=true",
                                "model.diffusion.attention_levels=[true, false]"])
    assert params.publish.push is False and params.model.diffusion.attention_levels == (True, False)


def test_a_password_in_the_registry_url_is_masked_in_every_message(tmp_path: Path) -> None:
    secret = "hunter2-xyz"
    with pytest.raises(ParamsError) as caught:
        load_params(None, [f"publish.registry=https://bob:{secret}@git.example.com/r.git"])
    assert secret not in str(caught.value) and "bob:***@" in str(caught.value)
    done = subprocess.run([sys.executable, "-m", "synthaug", "plan", "--workdir", str(tmp_path),
                           "-S", f"publish.registry=https://bob:{secret}@git.example.com/r.git"],
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert secret not in done.stdout + done.stderr and "***" in done.stderr


def test_init_from_is_used_even_when_the_workdir_holds_a_checkpoint(tmp_path: Path) -> None:
    source = digits_folder(tmp_path / "source", {"0": 8, "1": 8})
    manifest = ingest(DataParams(source=str(source), image_size=8), tmp_path / "ingest",
                      cache_dir=tmp_path / "cache").manifest_path
    model = load_params(None, TINY).model
    pretrained = train(manifest, model.model_copy(update={"seed": 1}), tmp_path / "pretrained")
    scratch = train(manifest, model, tmp_path / "work")
    assert scratch.checkpoint_hash != pretrained.checkpoint_hash

    again = train(manifest, model, tmp_path / "work")  # same start: the finished checkpoint is reused
    assert again.checkpoint_hash == scratch.checkpoint_hash and again.resumed_from == again.steps

    tuned = train(manifest, model.model_copy(update={"init_from": str(pretrained.checkpoint_dir)}),
                  tmp_path / "work")
    assert tuned.resumed_from == 0, "the checkpoint trained from scratch was resumed instead of init_from"
    start = json.loads((tmp_path / "work" / "run.json").read_text())
    assert start["init_from"] == pretrained.checkpoint_hash
