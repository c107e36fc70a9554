"""Values that used to be accepted silently: booleans and huge or non-finite numbers in params, split fractions that
leave no train share, a password echoed in an error, and ``model.init_from`` ignored when a checkpoint exists."""

from __future__ import annotations

import json
import re
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


# ---------------------------------------------------------------------------------------------------------------------
# credentials (issue 29, finding 2): refused in every URL field, masked everywhere a URL may be printed or logged

SECRET = "S3CRET-marker-29"
CREDENTIAL_URLS = {
    f"https://bob:{SECRET}@git.example.com/r.git": "embeds a password",
    f"https://{SECRET}@git.example.com/r.git": "embeds a token",  # a GitHub token as the user part
    f"https://oauth2:{SECRET}@gitlab.example.com/r.git": "embeds a password",
    f"https://git.example.com/r.git?private_token={SECRET}": "secret in its query",
    f"s3://bucket/prefix?X-Amz-Signature={SECRET}&X-Amz-Credential={SECRET}": "secret in its query",
}


@pytest.mark.parametrize("field", ["data.repo", "publish.registry", "publish.remote", "runner.address"])
@pytest.mark.parametrize("url", list(CREDENTIAL_URLS))
def test_credentials_are_refused_in_every_url_field_naming_where_they_go(field: str, url: str) -> None:
    overrides = [f"{field}={url}", *(["runner.kind=dask"] if field == "runner.address" else [])]
    with pytest.raises(ParamsError) as caught:
        load_params(None, overrides)
    message = str(caught.value)
    assert SECRET not in message and field in message and CREDENTIAL_URLS[url] in message
    assert "credential helper" in message and "dvc remote modify" in message


def test_urls_without_credentials_stay_allowed() -> None:
    params = load_params(None, ["data.repo=git@github.com:org/data.git", "publish.registry=ssh://git@host/reg.git",
                                "publish.remote=s3://bucket/prefix", "data.source=data/x"])
    assert params.data.repo == "git@github.com:org/data.git"


def test_mask_secrets_masks_passwords_tokens_and_query_secrets_but_not_ssh_users() -> None:
    from synthaug.tasks.core.errors import UserError, mask_secrets

    for url in CREDENTIAL_URLS:
        assert SECRET not in mask_secrets(f"cloning {url} failed") and "***" in mask_secrets(url)
    assert mask_secrets("ssh://git@host/r.git and git@host:org/r.git") == "ssh://git@host/r.git and git@host:org/r.git"
    assert mask_secrets("https://u:p@ss@h/r") == "https://u:***@h/r"  # the password ends at the last '@'
    assert SECRET not in str(UserError(f"cannot reach https://{SECRET}@h/r"))  # a UserError is masked when made


def test_generator_spec_with_a_credential_is_refused() -> None:
    from synthaug.tasks.core.errors import UserError
    from synthaug.tasks.core.publishing.generators import parse_spec

    with pytest.raises(UserError) as caught:
        parse_spec(f"https://{SECRET}@git.example.com/reg.git@digits-generator/v1")
    assert SECRET not in str(caught.value) and "credential helper" in str(caught.value)


def test_every_log_record_and_traceback_is_masked_whoever_logs_it() -> None:
    """Prefect logged a failed run's URL in clear in six lines (its task-run logger and the traceback)."""
    import io
    import logging

    from synthaug.tasks.core.logs import enable

    enable()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    logger = logging.getLogger("prefect.task_runs.trust-test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise RuntimeError(f"git clone https://{SECRET}@host/r.git failed")
    except RuntimeError:
        logger.error("Task run failed: fetching %s", f"https://u:{SECRET}@h/x", exc_info=True)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "Traceback" in text and "RuntimeError" in text and "https://***@host" in text
    assert SECRET not in text


def test_a_failing_step_task_ends_with_a_masked_state_message(tmp_path: Path) -> None:
    """What a Prefect task raises becomes its state message (the UI, the API): the credential is masked."""
    from synthaug.flows.augment import step_task
    from synthaug.flows.dag import Step

    def fail(params, workdir):
        raise RuntimeError(f"SCM error: cannot fetch https://bob:{SECRET}@git.example.com/r.git")

    task = step_task(Step("trust-test", "", fail, params=(), deps=(), outs=(), always_changed=True), tmp_path)
    with pytest.raises(RuntimeError) as caught:
        task.fn(load_params(None), str(tmp_path))
    assert SECRET not in str(caught.value) and "bob:***@" in str(caught.value)


# ---------------------------------------------------------------------------------------------------------------------
# bounded parsing (issue 29, finding 4): each bomb is refused within 5 s of CPU and 300 MB (tests/bounds.py)

ALIAS_BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"]  # 9 ** 9 = 387 million values once expanded
                       + [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]"
                          for a, b in zip("abcdefgh", "bcdefghi", strict=True)]) + "\n"


def test_a_yaml_alias_bomb_is_refused_quickly_in_bounded_memory(tmp_path: Path) -> None:
    """343 bytes of aliases took 439 s and 4.4 GB and built a 2-billion-character error message."""
    from tests.bounds import run_bounded

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 400
    done = run_bounded("from synthaug.flows.params import ParamsError, load_params", f"""
        try:
            load_params({str(bomb)!r})
        except ParamsError as exc:
            print("refused:", exc)
        """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "YAML alias *a is not allowed" in done.stdout and len(done.stdout) < 1000


def test_a_10_mb_value_is_refused_quickly_in_bounded_memory(tmp_path: Path) -> None:
    """A 10 MB ``publish.name`` did not finish in 150 s (in a params file, or as an override from Python)."""
    from tests.bounds import run_bounded

    big = tmp_path / "big.yaml"
    big.write_text("publish:\n  name: " + "a" * 10_000_000 + "\n")
    done = run_bounded("from synthaug.flows.params import ParamsError, load_params", f"""
        for path, overrides in (({str(big)!r}, []), (None, ["publish.name=" + "b" * 10_000_000])):
            try:
                load_params(path, overrides)
            except ParamsError as exc:
                print("refused:", exc)
        """)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(len(line) < 400 for line in lines), done.stdout[:2000]
    assert "a params file may have at most 1048576" in lines[0] and "at most 8192" in lines[1]


@pytest.mark.parametrize(("text", "message"), [
    ("publish:\n  name: " + "a" * 5000 + "\n", "publish.name: a text of 5000 characters; at most 4096"),
    ("tune:\n  guidance: [" + ", ".join(["1"] * 1001) + "]\n", "tune.guidance: 1001 entries; at most 1000"),
    ("data: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
    ("base: &base {seed: 1}\ngenerate:\n  <<: *base\n", "YAML alias *base is not allowed"),
], ids=["long-text", "long-list", "deep", "merge-key"])
def test_oversized_nested_or_aliased_values_are_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=re.escape(message)):
        load_params(path)


@pytest.mark.parametrize("override", ["model.dp.epsilon=inf", "model.dp.epsilon=1e-300", "model.diffusion.lr=inf",
                                      "model.vae.kl_weight=nan", "tune.guidance=[1, .inf]"])
def test_non_finite_and_absurd_numbers_are_refused_in_every_spelling(override: str) -> None:
    """README: non-finite numbers are refused; ``-S model.dp.epsilon=inf`` (a string to YAML) and 1e-300 passed."""
    with pytest.raises(ParamsError, match=override.split("=")[0].replace("[", "")):
        load_params(None, ["model.family=vae", override])
