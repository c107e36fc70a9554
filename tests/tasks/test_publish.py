"""Publishing to a real data registry: real git, real DVC, a local-folder DVC remote, a bare git repo as origin."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.manifest import write_manifest
from synthaug.tasks.core.params.publish import PublishParams
from synthaug.tasks.core.publishing.card import write_card
from synthaug.tasks.core.publishing.registry import code_version, fetch
from synthaug.tasks.core.publishing.vcs import PublishError
from synthaug.tasks.core.render import RunInfo, read_run, render, write_run
from synthaug.tasks.publish.step import REQUIRED_FILES, publish
from tests.markers import integration

pytestmark = [integration]

NAME = "digits"


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user or system git/DVC config leaks in (so publish must set its own repo-local identity)."""
    (tmp_path / "gitconfig").write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DVC_GLOBAL_CONFIG_DIR", str(tmp_path / "dvc-global"))
    monkeypatch.setenv("DVC_SYSTEM_CONFIG_DIR", str(tmp_path / "dvc-system"))
    monkeypatch.delenv("DVC_SITE_CACHE_DIR", raising=False)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_dataset(folder: Path, variant: str, extras: str | None = None) -> Path:
    """A small dataset in the published layout: images whose bytes depend on ``variant``, their manifest, and the
    other required files, whose text depends on ``extras`` (default: ``variant``)."""
    rows = []
    for label in ("0", "1"):
        (folder / "images" / label).mkdir(parents=True)
        for i in range(3):
            path = f"images/{label}/{label}_{i}.png"
            data = f"{variant}:{label}:{i}".encode() * 50
            (folder / path).write_bytes(data)
            rows.append({"image_id": hashlib.sha256(data).hexdigest(), "path": path, "label": label,
                         "split": "train", "source": "real", "generator": None, "checkpoint": None, "seed": None,
                         "accepted": True, "reject_reason": None, "height": 8, "width": 8, "channels": 1})
    frame = pd.DataFrame(rows)
    frame["seed"] = frame["seed"].astype("Int64")
    write_manifest(frame, folder / "manifest.parquet")
    for file in REQUIRED_FILES:
        if file != "manifest.parquet":
            (folder / file).write_text(f"{file} of {extras or variant}\n")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tags(repo: Path) -> list[str]:
    return git("tag", "--list", f"{NAME}/v*", cwd=repo).split()


def commits_titled(repo: Path, title: str) -> int:
    return git("log", "--format=%s", cwd=repo).splitlines().count(title)


def break_remote(remote: Path) -> Path:
    """Put a regular file where the DVC remote folder was (fails for root too); return where the folder went."""
    aside = remote.with_name(remote.name + ".aside")
    remote.rename(aside)
    remote.write_text("not a folder\n")
    return aside


def mend_remote(remote: Path, aside: Path) -> None:
    remote.unlink()
    aside.rename(remote)


def bare_origin(tmp_path: Path) -> tuple[Path, Path, Path, PublishParams]:
    """A bare git origin and an empty DVC remote folder: the registry as a team would host it; and a workdir."""
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(origin)], check=True)
    remote, work = tmp_path / "remote", tmp_path / "work"
    remote.mkdir()
    return origin, remote, work, PublishParams(name=NAME, registry=str(origin), remote=str(remote))


def test_publish_to_git_origin_versions_fetches_and_recovers(tmp_path: Path) -> None:
    origin, remote, work, params = bare_origin(tmp_path)
    ds1 = make_dataset(tmp_path / "ds1", "one")
    ds2 = make_dataset(tmp_path / "ds2", "two")

    r1 = publish(ds1, params, workdir=work)
    assert (r1.tag, r1.version, r1.new, r1.path) == (f"{NAME}/v1", 1, True, f"datasets/{NAME}")
    assert tags(origin) == [f"{NAME}/v1"]
    assert git("rev-parse", f"{NAME}/v1^{{commit}}", cwd=origin) == r1.commit
    assert list(work.iterdir()) == []  # the throw-away clone is gone
    assert snapshot(fetch(str(origin), NAME, 1, tmp_path / "get-v1")) == snapshot(ds1)

    # The DVC push fails: no tag, the origin untouched.
    aside = break_remote(remote)
    with pytest.raises(PublishError, match="dvc push"):
        publish(ds2, params, workdir=work)
    assert tags(origin) == [f"{NAME}/v1"]
    assert git("rev-parse", "HEAD", cwd=origin) == r1.commit
    mend_remote(remote, aside)

    # The data is pushed but the origin refuses the git push: still nothing named v2.
    hook = origin / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho refused by test >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(PublishError, match="push"):
        publish(ds2, params, workdir=work)
    assert tags(origin) == [f"{NAME}/v1"]
    assert git("rev-parse", "HEAD", cwd=origin) == r1.commit
    hook.unlink()

    r2 = publish(ds2, params, workdir=work)
    assert (r2.tag, r2.version, r2.new) == (f"{NAME}/v2", 2, True)
    assert r2.content_hash != r1.content_hash
    assert tags(origin) == [f"{NAME}/v1", f"{NAME}/v2"]
    assert commits_titled(origin, f"Publish {NAME}/v2") == 1
    again = publish(ds2, params, workdir=work)  # identical content: nothing new
    assert (again.tag, again.version, again.commit, again.new) == (r2.tag, 2, r2.commit, False)
    assert tags(origin) == [f"{NAME}/v1", f"{NAME}/v2"]

    assert snapshot(fetch(str(origin), NAME, "v1", tmp_path / "again-v1")) == snapshot(ds1)
    assert snapshot(fetch(str(origin), NAME, "latest", tmp_path / "latest")) == snapshot(ds2)


def test_local_registry_is_created_rolled_back_and_completed(tmp_path: Path) -> None:
    registry, remote = tmp_path / "registry" / "repo", tmp_path / "registry" / "remote"
    params = PublishParams(name=NAME, registry=str(registry), remote=str(remote))
    ds1 = make_dataset(tmp_path / "ds1", "one")
    ds2 = make_dataset(tmp_path / "ds2", "two")

    r1 = publish(ds1, params, workdir=tmp_path / "work")
    assert (r1.tag, r1.new, r1.registry) == (f"{NAME}/v1", True, str(registry))
    assert (registry / ".dvc").is_dir() and remote.is_dir()
    assert git("config", "--local", "user.email", cwd=registry)
    assert f"site_cache_dir = {registry}/" in (registry / ".dvc" / "config.local").read_text()
    assert git("status", "--porcelain", cwd=registry) == ""
    assert tags(registry) == [f"{NAME}/v1"]

    aside = break_remote(remote)
    with pytest.raises(PublishError, match="dvc push"):
        publish(ds2, params, workdir=tmp_path / "work")
    assert tags(registry) == [f"{NAME}/v1"]
    assert git("rev-parse", "HEAD", cwd=registry) == r1.commit
    assert git("status", "--porcelain", cwd=registry) == ""
    mend_remote(remote, aside)

    # Leftovers of a run killed mid-way in the paths publish owns are cleaned, other changes refused.
    (registry / "datasets" / f"{NAME}.dvc").write_text("half-written\n")
    (registry / "notes.txt").write_text("someone's work\n")
    with pytest.raises(UserError, match="uncommitted changes"):
        publish(ds2, params, workdir=tmp_path / "work")
    (registry / "notes.txt").unlink()

    with pytest.raises(UserError, match="default DVC remote"):
        publish(ds2, params.model_copy(update={"remote": str(tmp_path / "elsewhere")}), workdir=tmp_path / "work")

    r2 = publish(ds2, params, workdir=tmp_path / "work")
    assert (r2.tag, r2.version, r2.new) == (f"{NAME}/v2", 2, True)
    assert tags(registry) == [f"{NAME}/v1", f"{NAME}/v2"]
    assert commits_titled(registry, f"Publish {NAME}/v2") == 1
    assert snapshot(fetch(str(registry), NAME, 2, tmp_path / "get-v2")) == snapshot(ds2)
    assert snapshot(fetch(str(registry), NAME, f"{NAME}/v1", tmp_path / "get-v1")) == snapshot(ds1)


@pytest.mark.parametrize("missing", [*REQUIRED_FILES, "images"])
def test_missing_required_file_is_refused_by_name(tmp_path: Path, missing: str) -> None:
    ds = make_dataset(tmp_path / "ds", "one")
    target = ds / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    registry = tmp_path / "registry"
    with pytest.raises(UserError, match=missing.replace(".", r"\.")):
        publish(ds, PublishParams(name=NAME, registry=str(registry), remote=str(tmp_path / "r")), workdir=tmp_path)
    assert not registry.exists()


@pytest.mark.parametrize("bad", ["", "a/b", "../up", "x..y", ".hidden", "-dash", "v.lock", "end.", "a b", "n:1",
                                 "t~1", "q?", "x" * 101])
def test_unsafe_dataset_names_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError, match="dataset name"):
        PublishParams(name=bad)


@pytest.mark.parametrize("good", ["digits-balanced", "mnist_v2.1", "A1"])
def test_safe_dataset_names_are_accepted(good: str) -> None:
    assert PublishParams(name=good).name == good


def test_credentials_are_refused_in_params() -> None:
    with pytest.raises(ValidationError, match="password"):
        PublishParams(registry="https://me:s3cret@git.example.org/data/registry.git")
    with pytest.raises(ValidationError, match="password"):
        PublishParams(remote="https://me:s3cret@dav.example.org/store")
    assert PublishParams(registry="git@git.example.org:data/registry.git", remote="s3://bucket/prefix").push


def test_unpushed_publish_to_a_remote_registry_is_refused(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", "one")
    params = PublishParams(name=NAME, registry="https://git.example.org/data/registry.git", push=False)
    with pytest.raises(UserError, match="push"):
        publish(ds, params, workdir=tmp_path / "work")


def test_fetch_refuses_bad_versions_and_existing_output(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="version"):
        fetch(str(tmp_path), NAME, "v0", tmp_path / "out")
    with pytest.raises(UserError, match="version"):
        fetch(str(tmp_path), NAME, "newest", tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(UserError, match="already exists"):
        fetch(str(tmp_path), NAME, 1, tmp_path / "out")


def _card_manifest(ds: Path) -> None:
    frame = pd.DataFrame({
        "image_id": ["a", "b", "c", "d"],
        "path": ["images/0/a.png", "images/1/b.png", "images/1/c.png", "images/1/d.png"],
        "label": ["0", "1", "1", "1"], "split": ["train", "train", "test", "train"],
        "source": ["real", "real", "real", "synthetic"], "generator": [None, None, None, "diffusion"],
        "checkpoint": [None, None, None, "c" * 64], "seed": pd.array([None, None, None, 7], dtype="Int64"),
        "accepted": [True] * 4, "reject_reason": [None] * 4, "height": [16] * 4, "width": [16] * 4,
        "channels": [1] * 4,
    })
    write_manifest(frame, ds / "manifest.parquet")


def test_card_is_a_hugging_face_card_with_lineage_contents_and_no_params_dump(tmp_path: Path) -> None:
    from huggingface_hub import DatasetCard

    ds = tmp_path / NAME
    _card_manifest(ds)
    kwargs = dict(source={"source": "digits", "repo": "https://git.example.org/data.git", "rev": "v3",
                          "resolved_rev": None, "content_hash": "d" * 64},
                  params_yaml="plan:\n  strategy: match_majority\n", code_version="git 1234abcd",
                  checkpoint="c" * 64, metrics={"fid": None})
    path = write_card(ds, **kwargs)
    text = path.read_text()
    for expected in ("| source repository | https://git.example.org/data.git |", "| source revision | v3 |",
                     "d" * 64, "| pipeline code | git 1234abcd |", "c" * 64, "| params | [params.yaml](params.yaml)",
                     "| 0 | 1 | 0 | 0 |", "| 1 | 1 | 1 | 1 |", "| version | not published", "## Intended use",
                     "## Out-of-scope use", "## How to load", "## Limitations", "## Lineage",
                     'rows[rows["split"] != "test"]', "The real test split (1 images) is included"):
        assert expected in text, expected
    assert "None" not in text and "strategy: match_majority" not in text  # params.yaml is beside the card
    card = DatasetCard(text)  # the header as the Hub reads it
    assert card.data.license == "unknown" and card.data.task_categories == ["image-classification"]
    assert card.data.size_categories == ["n<1K"] and "synthetic" in card.data.tags
    assert card.data.source_datasets == ["https://git.example.org/data.git:digits"]
    assert write_card(ds, **kwargs).read_text() == text  # no timestamp: same inputs, same card, same version
    # The heading names the dataset (not its folder); a run without a source repository leaves the row out.
    run = RunInfo(dataset="digits-balanced", family="diffusion", code_version="git 1234abcd", source="digits")
    text = write_card(ds, **kwargs, run=run, license="cc-by-4.0").read_text()
    assert "\n# digits-balanced\n" in text and "| generator family | diffusion |" in text
    assert DatasetCard(text).data.license == "cc-by-4.0" and DatasetCard(text).data.pretty_name == "digits-balanced"
    assert "source repository" not in text and "None" not in text


def test_card_cells_cannot_break_the_table_or_open_a_tag(tmp_path: Path) -> None:
    run = RunInfo(dataset="d", family="<script>alert(1)</script>", source="a|b\nc")
    text = write_card(tmp_path / "d", source={}, params_yaml="", code_version="", checkpoint=None, metrics={},
                      run=run).read_text()
    assert "<script>" not in text and "| generator family | &lt;script>alert(1)&lt;/script> |" in text
    assert "| source | a\\|b c |" in text


def _stamped_dataset(folder: Path, variant: str, run: RunInfo, extras: str | None = None) -> Path:
    """A dataset as ``assemble`` leaves it: run.json, and a card and report with the run blocks (not published);
    ``extras`` changes the card, report, metrics and params without changing an image or the manifest."""
    make_dataset(folder, variant, extras)
    write_card(folder, source={}, params_yaml=f"variant: {extras or variant}\n", code_version="", checkpoint=None,
               metrics={}, run=run)
    (folder / "report.html").write_text(f"<html><body>{render('status.html.j2', run=run)}"
                                        f"{render('run.html.j2', run=run)}<p>{extras or variant}</p></body></html>")
    write_run(folder, run)
    return folder


def test_publish_names_the_version_in_both_copies_and_an_unchanged_rerun_publishes_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunInfo(dataset=NAME, family="diffusion", code_version="git 1234abcd", source="digits",
                  source_rev="e" * 40, source_hash="d" * 64)
    ds = _stamped_dataset(tmp_path / "ds", "a", run)
    assert "not published" in (ds / "card.md").read_text() and "Not published." in (ds / "report.html").read_text()
    registry = tmp_path / "registry"
    params = PublishParams(name=NAME, registry=str(registry), remote=str(tmp_path / "remote"))
    first = publish(ds, params, workdir=tmp_path / "work")
    assert first.new and first.tag == f"{NAME}/v1"
    assert first.fetch_command == f"dvc get {registry} datasets/{NAME} --rev {NAME}/v1 -o {NAME}-v1"
    v1 = fetch(str(registry), NAME, 1, tmp_path / "v1")
    card, page, stamped = (v1 / "card.md").read_text(), (v1 / "report.html").read_text(), read_run(v1)
    assert stamped is not None and stamped.tag == f"{NAME}/v1" and stamped.date and stamped.family == "diffusion"
    assert f"\n# {NAME}\n" in card and f"| version | {NAME}/v1 |" in card and "| registry | local:registry |" in card
    assert f"| published | {stamped.date} |" in card and "not published" not in card
    # how to load, with the real version; the registry by its public name (a published file names no local path)
    assert f"dvc get local:registry datasets/{NAME} --rev {NAME}/v1" in card and str(tmp_path) not in card
    assert f"dvc artifacts get local:registry {NAME} --rev v1.0.0" in card
    assert f'<th class="l">version</th><td class="l">{NAME}/v1</td>' in page and "Not published" not in page
    assert f"<b>Published as {NAME}/v1</b>" in page
    assert "source repository" not in card and "None" not in card + page
    # The assembled (workdir) copy says what the registry's copy says.
    assert {f: (ds / f).read_text() for f in ("card.md", "report.html", "run.json")} == \
        {f: (v1 / f).read_text() for f in ("card.md", "report.html", "run.json")}

    # Same content again: the tag and date it would get do not make it a new version, and nothing is left behind.
    again = publish(ds, params, workdir=tmp_path / "work")
    assert (again.new, again.tag, again.content_hash, again.commit) == (False, first.tag, first.content_hash,
                                                                        first.commit)
    assert git("status", "--porcelain", "--untracked-files=all", cwd=registry) == ""

    # Params, metrics, report and card changed, images and manifest not (a params-only re-run): nothing published,
    # the log says so, and the assembled copy names the version it equals.
    monkeypatch.setattr(logging.getLogger("synthaug"), "propagate", True)  # the CLI's stderr handler may own it
    caplog.set_level(logging.INFO, logger="synthaug")
    params_only = _stamped_dataset(tmp_path / "ds-params", "a", run, extras="other params and metrics")
    same = publish(params_only, params, workdir=tmp_path / "work")
    assert (same.new, same.tag, same.commit) == (False, first.tag, first.commit)
    assert tags(registry) == [f"{NAME}/v1"]
    assert f"identical to {NAME}/v1" in caplog.text and "nothing new published" in caplog.text
    assert f"| version | {NAME}/v1 (nothing new published" in (params_only / "card.md").read_text()
    assert f"Nothing new published:</b> this run's images and manifest are those of <b>{NAME}/v1</b>" in \
        (params_only / "report.html").read_text()

    changed = _stamped_dataset(tmp_path / "ds2", "b", run)
    second = publish(changed, params, workdir=tmp_path / "work")
    assert second.new and second.tag == f"{NAME}/v2"
    v2 = fetch(str(registry), NAME, 2, tmp_path / "v2")
    assert f"| version | {NAME}/v2 |" in (v2 / "card.md").read_text() and read_run(v2).tag == f"{NAME}/v2"
    assert (fetch(str(registry), NAME, 1, tmp_path / "v1-again") / "card.md").read_text() == card


def test_a_dataset_whose_images_do_not_match_its_manifest_is_refused(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", "one")
    (ds / "images" / "0" / "0_0.png").write_bytes(b"changed after assembly")
    params = PublishParams(name=NAME, registry=str(tmp_path / "registry"), remote=str(tmp_path / "remote"))
    with pytest.raises(UserError, match=r"0_0\.png: its sha256 is not the manifest's image_id"):
        publish(ds, params, workdir=tmp_path / "work")
    ds = make_dataset(tmp_path / "ds2", "one")
    (ds / "images" / "1" / "stray.png").write_bytes(b"x")
    with pytest.raises(UserError, match="an image the manifest does not list"):
        publish(ds, params, workdir=tmp_path / "work")
    assert not (tmp_path / "registry").exists() or tags(tmp_path / "registry") == []


def test_the_registry_declares_dvc_artifacts_and_dvc_artifacts_get_fetches_them(tmp_path: Path) -> None:
    """Each version is also tagged <artifact>@v<N>.0.0 and the registry's dvc.yaml declares the dataset, so plain
    `dvc artifacts get <registry> <name>` fetches the latest version (and --rev v1.0.0 the first); the <name>/v<N>
    tags stay as they were."""
    registry, remote = tmp_path / "registry" / "repo", tmp_path / "registry" / "remote"
    params = PublishParams(name="digits.v2", registry=str(registry), remote=str(remote))  # '.': no artifact name
    publish(make_dataset(tmp_path / "dotted", "zero"), params, workdir=tmp_path / "work")
    params = params.model_copy(update={"name": NAME})
    ds1, ds2 = make_dataset(tmp_path / "ds1", "one"), make_dataset(tmp_path / "ds2", "two")
    publish(ds1, params, workdir=tmp_path / "work")
    publish(ds2, params, workdir=tmp_path / "work")
    assert tags(registry) == [f"{NAME}/v1", f"{NAME}/v2"]
    assert git("tag", "--list", f"{NAME}@*", cwd=registry).split() == [f"{NAME}@v1.0.0", f"{NAME}@v2.0.0"]
    assert git("rev-parse", f"{NAME}@v2.0.0^{{commit}}", cwd=registry) == \
        git("rev-parse", f"{NAME}/v2^{{commit}}", cwd=registry)
    declared = yaml.safe_load((registry / "dvc.yaml").read_text())["artifacts"]
    assert declared[NAME]["path"] == f"datasets/{NAME}" and declared[NAME]["type"] == "dataset"
    assert declared["digits-v2"]["path"] == "datasets/digits.v2"

    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for args, expected in (([], ds2), (["--rev", "v1.0.0"], ds1)):
        out = tmp_path / f"got{len(args)}"
        done = subprocess.run([sys.executable, "-m", "dvc", "artifacts", "get", str(registry), NAME, *args, "-o",
                               str(out)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert snapshot(out) == snapshot(expected)


def test_code_version_names_the_checkout_or_the_package() -> None:
    version = code_version()
    root = Path(__file__).resolve().parents[2]
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    if top.returncode == 0 and Path(top.stdout.strip()).resolve() == root:  # tests run from a checkout: its commit
        described = subprocess.run(["git", "describe", "--tags", "--always", "--dirty", "--abbrev=40"], cwd=root,
                                   capture_output=True, text=True).stdout.strip()
        assert version == f"git {described}"
    else:
        assert version.startswith("synthaug ") and len(version) > 9


# ---------------------------------------------------------------------------------------------------------------------
# issue 29, finding 7: git and DVC failures name their cause; no half-created registry; no retry of what fails alike


def test_a_missing_version_or_registry_says_which_and_what_there_is(tmp_path: Path) -> None:
    """A missing tag or registry said only `dvc get ... failed: exit status 1`."""
    from synthaug.tasks.core.publishing.registry import fetch_generator

    origin, _, work, params = bare_origin(tmp_path)
    publish(make_dataset(tmp_path / "ds1", "one"), params, workdir=work)
    with pytest.raises(UserError, match=rf"no version {NAME}/v7 \(its versions of {NAME}: {NAME}/v1\)"):
        fetch(str(origin), NAME, 7, tmp_path / "get")
    with pytest.raises(UserError, match=rf"no version {NAME}-generator/v1 \(it has no version of {NAME}-generator\)"):
        fetch_generator(str(origin), f"{NAME}-generator/v1", tmp_path / "get-gen")
    with pytest.raises(PublishError, match="does not appear to be a git repository"):
        fetch(str(tmp_path / "nowhere"), NAME, 1, tmp_path / "get-nowhere")
    assert not (tmp_path / "get").exists() and not (tmp_path / "get-gen").exists()


def test_a_read_only_remote_names_the_cause_leaves_no_half_created_registry_and_is_not_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only remote: the OSError(30) appeared only in a log line, Prefect retried the publish, the user was
    told "the registry has uncommitted changes", and a staged `dvc init` without a commit blocked later runs."""
    import errno

    from synthaug.flows.augment import transient

    registry, remote = tmp_path / "registry" / "repo", tmp_path / "ro" / "remote"
    params = PublishParams(name=NAME, registry=str(registry), remote=str(remote))
    real_mkdir = Path.mkdir

    def read_only(self: Path, *args, **kwargs) -> None:
        if self == remote:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(PublishError) as caught:
        publish(make_dataset(tmp_path / "ds1", "one"), params, workdir=tmp_path / "work")
    message = str(caught.value)
    assert "EROFS" in message and "read-only" in message and "nothing was published" in message
    assert not registry.exists(), "a half-created registry was left behind"

    class Failed:  # a Prefect state whose result is the error
        def result(self, raise_on_failure: bool = False) -> BaseException:
            return caught.value

    assert transient(None, None, Failed()) is False  # the same cause would fail the same way again
    monkeypatch.undo()
    assert publish(make_dataset(tmp_path / "ds2", "two"), params, workdir=tmp_path / "work").tag == f"{NAME}/v1"


def test_a_half_created_registry_left_by_an_earlier_run_is_created_again(tmp_path: Path) -> None:
    registry, remote = tmp_path / "registry" / "repo", tmp_path / "registry" / "remote"
    registry.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=registry)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=registry, check=True)  # staged, not committed
    params = PublishParams(name=NAME, registry=str(registry), remote=str(remote))
    result = publish(make_dataset(tmp_path / "ds", "one"), params, workdir=tmp_path / "work")
    assert result.tag == f"{NAME}/v1" and git("status", "--porcelain", cwd=registry) == ""
