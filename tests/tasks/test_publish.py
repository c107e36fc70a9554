"""Publishing to a real data registry: real git, real DVC, a local-folder DVC remote, a bare git repo as origin."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
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


def make_dataset(folder: Path, variant: str) -> Path:
    """A small dataset in the published layout; ``variant`` changes every file's bytes."""
    for label in ("0", "1"):
        (folder / "images" / label).mkdir(parents=True)
        for i in range(3):
            (folder / "images" / label / f"{label}_{i}.png").write_bytes(f"{variant}:{label}:{i}".encode() * 50)
    for file in REQUIRED_FILES:
        (folder / file).write_text(f"{file} of {variant}\n")
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


def test_card_names_lineage_contents_metrics_and_params(tmp_path: Path) -> None:
    ds = tmp_path / NAME
    frame = pd.DataFrame({
        "image_id": ["a", "b", "c"], "path": ["images/0/a.png", "images/1/b.png", "images/1/c.png"],
        "label": ["0", "1", "1"], "split": ["train"] * 3, "source": ["real", "real", "synthetic"],
        "generator": [None, None, "diffusion"], "checkpoint": [None, None, "c" * 64],
        "seed": pd.array([None, None, 7], dtype="Int64"), "accepted": [True, True, True],
        "reject_reason": [None, None, None], "height": [16] * 3, "width": [16] * 3, "channels": [1] * 3,
    })
    write_manifest(frame, ds / "manifest.parquet")
    kwargs = dict(source={"source": "digits", "repo": "https://git.example.org/data.git", "rev": "v3",
                          "resolved_rev": None, "content_hash": "d" * 64},
                  params_yaml="plan:\n  strategy: match_majority\n", code_version="git 1234abcd",
                  checkpoint="c" * 64, metrics={"balanced_accuracy": 0.91234, "per_class": {"0": {"recall": 0.5}},
                                                "fid": None})
    path = write_card(ds, **kwargs)
    text = path.read_text()
    for expected in ("| source repository | https://git.example.org/data.git |", "| source revision | v3 |",
                     "d" * 64, "| pipeline code | git 1234abcd |", "c" * 64, "| params | [params.yaml](params.yaml)",
                     "| balanced_accuracy | 0.9123 |", "| per_class.0.recall | 0.5 |", "strategy: match_majority",
                     "| 1 | 1 | 1 |", "| version | not published yet", "| fid | not measured |"):
        assert expected in text
    assert "None" not in text
    assert write_card(ds, **kwargs).read_text() == text  # no timestamp: same inputs, same card, same version
    # The heading names the dataset (not its folder); a run without a source repository leaves the row out.
    run = RunInfo(dataset="digits-balanced", family="diffusion", code_version="git 1234abcd", source="digits")
    text = write_card(ds, **kwargs, run=run).read_text()
    assert text.startswith("# Dataset card: digits-balanced\n") and "| generator family | diffusion |" in text
    assert "source repository" not in text and "None" not in text


def test_card_cells_cannot_break_the_table_or_open_a_tag(tmp_path: Path) -> None:
    run = RunInfo(dataset="d", family="<script>alert(1)</script>", source="a|b\nc")
    text = write_card(tmp_path / "d", source={}, params_yaml="", code_version="", checkpoint=None, metrics={},
                      run=run).read_text()
    assert "<script>" not in text and "| generator family | &lt;script>alert(1)&lt;/script> |" in text
    assert "| source | a\\|b c |" in text


def _stamped_dataset(folder: Path, variant: str, run: RunInfo) -> Path:
    """A dataset as ``assemble`` leaves it: run.json, and a card and report with the run block (not published)."""
    make_dataset(folder, variant)
    manifest = folder / "manifest.parquet"
    placeholder = manifest.read_bytes()
    manifest.unlink()  # make_dataset's manifest is a placeholder, not parquet: a card without a contents table
    write_card(folder, source={}, params_yaml=f"variant: {variant}\n", code_version="", checkpoint=None,
               metrics={}, run=run)
    manifest.write_bytes(placeholder)
    (folder / "report.html").write_text(f"<html><body>{render('run.html.j2', run=run)}<p>{variant}</p></body></html>")
    write_run(folder, run)
    return folder


def test_publish_names_the_version_in_the_registry_copy_and_an_unchanged_rerun_publishes_nothing(
        tmp_path: Path) -> None:
    run = RunInfo(dataset=NAME, family="diffusion", code_version="git 1234abcd", source="digits",
                  source_rev="e" * 40, source_hash="d" * 64)
    ds = _stamped_dataset(tmp_path / "ds", "a", run)
    assembled = snapshot(ds)
    registry = tmp_path / "registry"
    params = PublishParams(name=NAME, registry=str(registry), remote=str(tmp_path / "remote"))
    first = publish(ds, params, workdir=tmp_path / "work")
    assert first.new and first.tag == f"{NAME}/v1"
    assert snapshot(ds) == assembled  # the assembled folder is never written to: only the registry's copy
    v1 = fetch(str(registry), NAME, 1, tmp_path / "v1")
    card, page, stamped = (v1 / "card.md").read_text(), (v1 / "report.html").read_text(), read_run(v1)
    assert stamped is not None and stamped.tag == f"{NAME}/v1" and stamped.date and stamped.family == "diffusion"
    assert card.startswith(f"# Dataset card: {NAME}\n") and f"| version | {NAME}/v1 |" in card
    assert f"| published | {stamped.date} |" in card and "not published yet" not in card
    assert f'<th class="l">version</th><td class="l">{NAME}/v1</td>' in page and "not published yet" not in page
    assert "source repository" not in card and "None" not in card + page

    # Same content again: the tag and date it would get do not make it a new version, and nothing is left behind.
    again = publish(ds, params, workdir=tmp_path / "work")
    assert (again.new, again.tag, again.content_hash, again.commit) == (False, first.tag, first.content_hash,
                                                                        first.commit)
    assert git("status", "--porcelain", "--untracked-files=all", cwd=registry) == ""

    changed = _stamped_dataset(tmp_path / "ds2", "b", run)
    second = publish(changed, params, workdir=tmp_path / "work")
    assert second.new and second.tag == f"{NAME}/v2"
    v2 = fetch(str(registry), NAME, 2, tmp_path / "v2")
    assert f"| version | {NAME}/v2 |" in (v2 / "card.md").read_text() and read_run(v2).tag == f"{NAME}/v2"
    assert (fetch(str(registry), NAME, 1, tmp_path / "v1-again") / "card.md").read_text() == card


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
