"""Publish: put an assembled dataset folder into a DVC data registry as version ``<name>/v<N>``.

The registry is a git repository initialised for DVC. Each dataset lives at ``datasets/<name>/`` (tracked by
``datasets/<name>.dvc``); each version is an annotated git tag ``<name>/v<N>`` on the commit that tracks it, and its
files live in the registry's default DVC remote. Consumers need nothing but DVC::

    dvc get  <registry> datasets/<name> --rev <name>/v<N> -o <name>-v<N>
    dvc import <registry> datasets/<name> --rev <name>/v<N> -o data/<name>

A version means new content. Its identity is its images and the manifest's data columns
(``tasks.core.publishing.registry.dataset_identity``; the ``identity:`` line of its tag message): a run whose images
and manifest equal the latest version's publishes nothing, whatever its params, metrics, report or card say, and
returns that version with ``new=False`` (and the log says so). A generator version's identity is its checkpoint.

Atomicity (a version is published whole or not at all). The order is: copy the dataset into the working copy, name
the version in that copy, ``dvc add`` it, ``dvc push`` its objects, then ``git commit`` + ``git tag``, then (for a
cloned registry) one ``git push --atomic`` of the branch and the tags together. DVC's remote is content-addressed, so
objects pushed by a run that fails later are harmless orphans that a re-run finds already there. Until the tag exists
nothing names the new version; on any failure the working copy goes back to the commit it started from (a local
registry: tags deleted, ``git reset --hard``; a cloned one: the throw-away clone is deleted; the origin changed only
if the atomic push succeeded). A re-run therefore starts from the last good state and creates the version once.

Run naming: when the dataset has a ``run.json`` (tasks/core/render.py), once the tag is decided (under the registry
lock) the registry's copy gets the tag, the date and the registry in run.json and in the run blocks of report.html
and card.md; after the tags are made (and pushed) the assembled folder gets the same files, so the workdir's copy says
what the registry's says. An unchanged run stamps the assembled folder with the version it equals.

Generators: ``publish(..., generator=<folder>)`` adds the generator that made the dataset as ``models/<name>`` in the
same commit, tagged ``<name>-generator/v<N>`` (the checkpoint sha256 in the tag message), unless a published version
has the same checkpoint hash; the dataset card names the generator version. Both tags are created after the one
commit and pushed in the same atomic push (``tasks.core.publishing.generators`` assembles the folder). A generator is
published only with a new dataset version: when the dataset is unchanged, the generator made nothing new.

DVC artifacts: each version commit also declares the dataset and its generator in the registry's ``dvc.yaml``
(``artifacts:``) and tags them ``<artifact>@v<N>.0.0`` for ``dvc artifacts get`` (``tasks.core.publishing.registry``).

Registry kinds (``publish.registry``): a git URL, or a local path to a bare repository, is cloned afresh into a
temporary working copy under ``workdir`` for each run and pushed back; a local path to a non-bare repository is used
in place; a local path that does not exist (or an empty folder) is created there (git + DVC, default remote
``publish.remote``, initial commit). Relative local paths are relative to the current directory (the project root).
Credentials are never in params: DVC reads them from its own config (``dvc remote modify --local|--global``) or the
environment (for S3: ``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ...); git from its own helpers.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from synthaug.tasks.core.errors import UserError, mask_secrets
from synthaug.tasks.core.io.files import write_atomic
from synthaug.tasks.core.io.locks import with_registry_lock
from synthaug.tasks.core.params.publish import PublishParams
from synthaug.tasks.core.publishing.card import CARD_CHECKPOINT_ROW, GENERATOR_ROW
from synthaug.tasks.core.publishing.public import public_location
from synthaug.tasks.core.publishing.registry import (
    ARTIFACTS_FILE,
    DATASETS_DIR,
    MODELS_DIR,
    artifact_name,
    artifact_tag,
    dataset_identity,
    generator_name,
    identity_rows,
    rows_identity,
    tag_for,
)
from synthaug.tasks.core.publishing.vcs import (
    SITE_CACHE,
    PublishError,
    dvc,
    git,
    is_url,
    normalize_location,
    os_error_detail,
    rmtree,
    run_command,
)
from synthaug.tasks.core.render import RUN_FILE, read_run, render, stamp_run

log = logging.getLogger("synthaug.publish")  # tasks.core.logs: reaches the Prefect run log

REQUIRED_FILES = ("manifest.parquet", "metrics.json", "report.html", "card.md", "params.yaml")
REQUIRED_DIRS = ("images",)
IDENTITY = "identity"  # tag-message key: dataset_identity of the version (its images and manifest data columns)
GENERATOR_KEY = "generator"  # tag-message key: the generator version the dataset version names
STAMPED_FILES = (RUN_FILE, "card.md", "report.html")  # what naming the version rewrites in a dataset folder
REMOTE_NAME = "storage"  # name given to the default DVC remote of a registry this module creates


@dataclass(frozen=True)
class PublishResult:
    """What ``publish`` did.

    tag: ``<name>/v<N>``; version: N; commit: sha of the commit the tag points to; registry: the registry as used
    (URL, or absolute path); path: the dataset's path inside the registry; new: False when the content equalled the
    latest version and nothing was published; content_hash: DVC's hash of the dataset folder (``<md5>.dir``).
    """

    tag: str
    version: int
    commit: str
    registry: str
    path: str
    new: bool
    content_hash: str
    generator_tag: str | None = None  # ``<name>-generator/v<N>`` published with (or reused by) this version
    generator_new: bool = False
    shown: str | None = None  # the registry as the card and report show it (``publish.registry``, masked)

    @property
    def fetch_command(self) -> str:
        """``dvc get`` of this version, as a person would type it."""
        name = self.tag.rpartition("/")[0]
        return f"dvc get {self.shown or self.registry} {self.path} --rev {self.tag} -o {name}-v{self.version}"


# ---------------------------------------------------------------------------------------------------------------------
# publish


@with_registry_lock  # one publisher per registry at a time (tasks/core/io/locks.py)
def publish(dataset_dir: Path, params: PublishParams, *, workdir: Path,
            generator: Path | None = None) -> PublishResult:
    """Publish ``dataset_dir`` as the next version ``<name>/v<N>`` of the data registry ``params.registry``.

    Args:
        dataset_dir: the assembled dataset (``images/<label>/…``, ``manifest.parquet``, ``metrics.json``,
            ``report.html``, ``card.md``, ``params.yaml``); copied whole, never modified.
        params: the ``publish`` section.
        workdir: the pipeline's work folder; a cloned registry's temporary working copy goes under it.
        generator: the assembled generator that made the dataset
            (``tasks.core.publishing.generators.assemble_generator``), published in the same commit as ``models/<name>``
            tagged ``<name>-generator/v<N>`` unless a version with the same checkpoint hash exists; the registry's copy
            of the dataset card names that generator version.

    Returns the new version, or the latest one with ``new=False`` when its images and manifest are identical. Either
    way the assembled folder's run.json, card.md and report.html then name that version (as the registry's copy).
    Raises UserError for a missing file, a registry that cannot be used as is, or a failed push (nothing published).
    """
    try:
        return _publish(Path(dataset_dir), params, workdir=workdir, generator=generator)
    except OSError as exc:  # synthaug's own file operations (a copy, a folder made): one line, errno and fix
        raise PublishError(f"publishing {params.name} to {mask_secrets(params.registry)} failed: "
                           f"{os_error_detail(exc)} (nothing was published)") from None


def _publish(dataset_dir: Path, params: PublishParams, *, workdir: Path,
             generator: Path | None = None) -> PublishResult:
    check_dataset(dataset_dir)
    name = params.name
    shown = mask_secrets(params.registry)
    remote = normalize_location(params.remote)
    location = normalize_location(params.registry)
    if is_url(location) or _is_bare_repo(Path(location)):
        if not params.push:
            raise UserError(f"publish.push is false but {mask_secrets(location)} is a remote registry (a URL or a bare "
                            "repository): an unpushed version would be lost; use a local registry path or push")
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        wc = Path(tempfile.mkdtemp(prefix="registry-", dir=workdir))
        try:
            return _publish_cloned(location, wc, dataset_dir, name, remote, generator, shown=shown)
        finally:
            rmtree(wc)
    return _publish_in_place(Path(location), dataset_dir, name, remote, push=params.push, generator=generator,
                             shown=shown)


def check_dataset(dataset_dir: Path, *, hint: str = "assemble the dataset before publishing") -> None:
    """Raise UserError naming the first required file or folder missing from ``dataset_dir``."""
    if not dataset_dir.is_dir():
        raise UserError(f"{dataset_dir}: dataset folder not found; {hint}")
    for sub in REQUIRED_DIRS:
        if not (dataset_dir / sub).is_dir():
            raise UserError(f"{dataset_dir / sub}: required folder missing from the dataset; nothing was published")
    for file in REQUIRED_FILES:
        if not (dataset_dir / file).is_file():
            raise UserError(f"{dataset_dir / file}: required file missing from the dataset; nothing was published")


def _publish_cloned(url: str, wc: Path, dataset_dir: Path, name: str, remote: str,
                    generator: Path | None = None, *, shown: str | None = None) -> PublishResult:
    """Clone ``url`` into ``wc`` (a fresh, throw-away folder), publish there, push branch + tag atomically."""
    git(["clone", "--quiet", url, str(wc)], cwd=wc.parent)
    _ensure_identity(wc)
    branch = _current_branch(wc)
    _ensure_registry(wc, remote, bootstrap_message="Initialise the data registry (git + DVC)")

    created: list[str] = []  # the version's tags (the generator's, then the dataset's)

    def push_refs(tag: str) -> None:  # one atomic push: the origin gets every ref or none
        git(["push", "--atomic", "--quiet", "origin", f"HEAD:refs/heads/{branch}",
              *(f"refs/tags/{t}" for t in created)], cwd=wc,
             what=f"pushing the commit and tag to {mask_secrets(url)} (the data is in the DVC remote; "
                  "nothing names it yet: re-run to publish)")

    # Nothing to roll back here: the working copy is deleted by the caller, the origin changes only in push_refs.
    return _publish_in(wc, url, dataset_dir, name, push=True, after_tag=push_refs, created_tags=created,
                       generator=generator, shown=shown)


def _publish_in_place(root: Path, dataset_dir: Path, name: str, remote: str, *, push: bool,
                      generator: Path | None = None, shown: str | None = None) -> PublishResult:
    """Publish into the local working repository ``root`` (created if absent); roll back to the start on failure."""
    if not (root.exists() and _is_repo_root(root)):
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise UserError(f"{root}: publish.registry exists but is not a git repository; point it at a registry "
                            "repository, a git URL, or a path that does not exist yet (it is then created)")
        _create_registry(root, remote)
    elif _half_created(root):
        log.warning("%s: a registry whose creation was interrupted (DVC initialised, no commit); creating it again",
                    root)
        _clear_half_created(root)
    _ensure_identity(root)
    if git(["symbolic-ref", "-q", "HEAD"], cwd=root, check=False).returncode != 0:
        raise UserError(f"{root}: the registry has a detached HEAD; check out its branch (git checkout main)")
    _restore_own_paths(root, name)
    dirty = git(["status", "--porcelain", "--untracked-files=all"], cwd=root).stdout.strip()
    if dirty:
        raise UserError(f"{root}: the registry has uncommitted changes ({dirty.splitlines()[0].strip()} ...); "
                        "commit or discard them, then re-run")
    try:
        _ensure_registry(root, remote, bootstrap_message="Initialise the data registry (git + DVC)")
    except BaseException:
        if _half_created(root):  # a repository without a commit that this run began to initialise
            _clear_half_created(root)
        raise
    base = git(["rev-parse", "HEAD"], cwd=root).stdout.strip()
    created: list[str] = []
    try:
        return _publish_in(root, str(root), dataset_dir, name, push=push, after_tag=None, created_tags=created,
                           generator=generator, shown=shown)
    except BaseException:
        log.warning("publishing %s failed; resetting %s to %s", name, root, base[:12])
        for tag in created:
            git(["tag", "-d", tag], cwd=root, check=False)
        # Never move the branch back past a commit that a tag names: that version would fall off the branch.
        foreign = git(["tag", "--merged", "HEAD", "--no-merged", base], cwd=root, check=False).stdout.split()
        if foreign:
            log.warning("not resetting %s: tags %s were made after this run started", root, foreign)
        else:
            git(["reset", "--quiet", "--hard", base], cwd=root, check=False)
        _restore_own_paths(root, name)
        raise


def _create_registry(root: Path, remote: str) -> None:
    """A new registry at ``root`` (absent, or an empty folder): git init, DVC init, the default remote, the first
    commit. Whole or not at all: on any failure what was made is removed again, so no half-created registry (DVC
    initialised, nothing committed) is left to block the next run."""
    log.info("creating data registry %s", root)
    existed = root.exists()
    made_remote = not is_url(remote) and not Path(remote).exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        git(["init", "--quiet", "-b", "main"], cwd=root)
        _ensure_identity(root)
        _ensure_registry(root, remote, bootstrap_message="Initialise the data registry (git + DVC)")
    except BaseException:
        log.warning("creating the data registry %s failed; removing what was made", root)
        if existed:
            for child in root.iterdir():
                rmtree(child)
        else:
            rmtree(root)
        if made_remote and Path(remote).is_dir() and not any(Path(remote).iterdir()):
            Path(remote).rmdir()
        raise


def _half_created(root: Path) -> bool:
    """Whether ``root`` is a registry an interrupted creation left: a git repository without a commit, DVC
    initialised, holding nothing but what initialising writes (``.dvc``, ``.dvcignore``). Such a repository blocked
    every later run ("uncommitted changes")."""
    if not (root / ".dvc").is_dir():
        return False
    if git(["rev-parse", "-q", "--verify", "HEAD"], cwd=root, check=False).returncode == 0:
        return False
    return {p.name for p in root.iterdir()} <= {".git", ".dvc", ".dvcignore"}


def _clear_half_created(root: Path) -> None:
    """Undo an interrupted initialisation: unstage everything and remove ``.dvc`` and ``.dvcignore`` (git's own
    repository and its config are kept)."""
    git(["rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", "."], cwd=root, check=False)
    for name in (".dvc", ".dvcignore"):
        rmtree(root / name)


def _publish_in(wc: Path, registry: str, dataset_dir: Path, name: str, *, push: bool,
                after_tag: Callable[[str], None] | None, created_tags: list[str] | None = None,
                generator: Path | None = None, shown: str | None = None) -> PublishResult:
    """The steps shared by both registry kinds, run in the working copy ``wc``."""
    rel = f"{DATASETS_DIR}/{name}"
    latest = _latest_version(wc, name)
    target = wc / rel
    src, dst = dataset_dir.resolve(), target.resolve()
    if src == dst or src in dst.parents or dst in src.parents:
        raise UserError(f"{dataset_dir}: the dataset folder overlaps the registry's {rel}; assemble it elsewhere")
    identity = dataset_identity(dataset_dir)
    if latest is not None and _identity_at(wc, latest, name) == identity:
        return _unchanged(wc, registry, dataset_dir, name, latest, identity, push=push, cloned=after_tag is not None,
                          generator=generator, shown=shown)

    version = (latest or 0) + 1
    tag = tag_for(name, version)
    rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(dataset_dir, target, symlinks=False)
    staged = None if generator is None else _stage_generator(wc, Path(generator), name, push=push)
    name_version(target, name, tag, datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), registry=shown,
                 generator=staged and staged.tag)
    dvc(["add", "--quiet", rel], cwd=wc, what=f"dvc add {rel}")
    content_hash = _dvc_hash(wc / f"{rel}.dvc")
    if push:
        _dvc_push(wc, rel)
    declared = _declare_artifacts(wc, name, generator=staged is not None)
    git(["add", "--", f"{rel}.dvc", f"{DATASETS_DIR}/.gitignore", *([ARTIFACTS_FILE] if declared else [])], cwd=wc)
    if git(["diff", "--cached", "--quiet"], cwd=wc, check=False).returncode != 0:
        git(["commit", "--quiet", "-m", f"Publish {tag}\n\ncontent: {content_hash}\n{IDENTITY}: {identity}"], cwd=wc)
    # else: HEAD already tracks this content (an earlier run stopped between commit and tag); tag it.
    if staged is not None and staged.new:
        _tag_generator(wc, staged, created_tags)
    message = f"{tag}\n\ncontent: {content_hash}\n{IDENTITY}: {identity}"
    if staged is not None:
        message += f"\n{GENERATOR_KEY}: {staged.tag}"
    _tag(wc, tag, message, created_tags)
    gto = artifact_tag(name, version)
    if gto is not None:
        _tag(wc, gto, f"Registering artifact {artifact_name(name)} version v{version}.0.0 ({tag})", created_tags)
    if after_tag is not None:
        after_tag(tag)
    commit = git(["rev-parse", "HEAD"], cwd=wc).stdout.strip()
    log.info("published %s (%s) at %s", tag, content_hash, commit[:12])
    for file in STAMPED_FILES:  # the assembled folder says what the registry's copy says
        if (target / file).is_file():
            write_atomic((target / file).read_bytes(), dataset_dir / file)
    return PublishResult(tag, version, commit, registry, rel, True, content_hash,
                         generator_tag=staged and staged.tag, generator_new=bool(staged and staged.new), shown=shown)


def _unchanged(wc: Path, registry: str, dataset_dir: Path, name: str, latest: int, identity: str, *, push: bool,
               cloned: bool, generator: Path | None, shown: str | None) -> PublishResult:
    """The run's images and manifest equal version ``latest``: publish nothing (no generator either: it made nothing
    new) and name that version in the assembled folder."""
    rel = f"{DATASETS_DIR}/{name}"
    tag = tag_for(name, latest)
    found = re.search(rf"^{GENERATOR_KEY}: (\S+)$", _tag_message(wc, tag), re.M)
    generator_tag = found.group(1) if found else _same_generator(wc, name, generator)
    log.info("%s: images and manifest identical to %s (identity %s): nothing new published; params, metrics, the "
             "report or the card alone make no version", name, tag, identity[:12])
    stored = _dvc_hash_at(wc, latest, name) or ""
    # Make sure the data is there (idempotent: uploads nothing when it is): a local registry's cache has a push=false
    # trial's files, which a later run with push=true uploads; a cloned registry's tag reached the origin only after
    # its data was pushed, and its fresh clone has no cache to push from.
    if push and not cloned:
        _dvc_push(wc, rel)
    commit = git(["rev-parse", f"refs/tags/{tag}^{{commit}}"], cwd=wc).stdout.strip()
    name_version(dataset_dir, name, tag, _tag_date(wc, tag), registry=shown, generator=generator_tag, unchanged=True)
    return PublishResult(tag, latest, commit, registry, rel, False, stored, generator_tag=generator_tag, shown=shown)


def name_version(folder: Path, name: str, tag: str, date: str, *, registry: str | None, generator: str | None,
                 unchanged: bool = False) -> None:
    """Name version ``tag`` of dataset ``name`` in a dataset folder: run.json and the run blocks of report.html and
    card.md (``stamp_run``; a folder without run.json keeps them as they are), and the card's generator version row
    (after its checkpoint row)."""
    run = read_run(folder)
    if run is not None:
        # A published file names no local path: a local registry is local:<its folder's name> (docs/trust.md).
        stamp_run(folder, run.published(tag, date, registry=public_location(registry), artifact=artifact_name(name),
                                        unchanged=unchanged))
    card = folder / "card.md"
    if generator is not None and card.is_file():
        lines = [line for line in card.read_text(encoding="utf-8").splitlines() if not line.startswith(GENERATOR_ROW)]
        at = next((i + 1 for i, line in enumerate(lines) if line.startswith(CARD_CHECKPOINT_ROW)), None)
        if at is not None:
            lines.insert(at, render("card_generator_row.md.j2", tag=generator, path=f"{MODELS_DIR}/{name}").strip())
            write_atomic(("\n".join(lines) + "\n").encode("utf-8"), card)


def _tag(wc: Path, tag: str, message: str, created_tags: list[str] | None) -> None:
    git(["tag", "-a", tag, "-m", message], cwd=wc)
    if created_tags is not None:
        created_tags.append(tag)


def _tag_message(wc: Path, tag: str) -> str:
    return git(["tag", "--list", "--format=%(contents)", tag], cwd=wc).stdout


def _tag_date(wc: Path, tag: str) -> str:
    """When ``tag`` was made, as the run block writes a publish date (UTC)."""
    stamp = git(["tag", "--list", "--format=%(taggerdate:unix)", tag], cwd=wc).stdout.strip()
    return datetime.fromtimestamp(int(stamp), UTC).strftime("%Y-%m-%d %H:%M UTC") if stamp.isdigit() else "?"


def _identity_at(wc: Path, version: int, name: str) -> str | None:
    """The identity of version ``version`` (its tag message); a version published before identities were recorded
    is read from the registry (its manifest, through DVC); None when that fails (the run then publishes)."""
    tag = tag_for(name, version)
    found = re.search(rf"^{IDENTITY}: (\S+)$", _tag_message(wc, tag), re.M)
    if found:
        return found.group(1)
    try:
        import io

        import pyarrow.parquet as pq
        from dvc.api import read

        raw = read(f"{DATASETS_DIR}/{name}/manifest.parquet", repo=str(wc), rev=tag, mode="rb")
        return rows_identity(identity_rows(pq.read_table(io.BytesIO(raw))))
    except Exception as exc:  # an old version that cannot be read is compared as different
        log.warning("could not read the manifest of %s to compare with it (%s); publishing a new version",
                    tag, mask_secrets(str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
        return None


def _same_generator(wc: Path, name: str, generator: Path | None) -> str | None:
    """The published generator version with ``generator``'s checkpoint, if any (read from the tag messages)."""
    if generator is None:
        return None
    from synthaug.models.training import checkpoint_hash

    digest = checkpoint_hash(Path(generator) / "checkpoint")
    same = [v for v, c in _generator_checkpoints(wc, generator_name(name)).items() if c == digest]
    return tag_for(generator_name(name), max(same)) if same else None


def _declare_artifacts(wc: Path, name: str, *, generator: bool) -> bool:
    """Declare ``datasets/<name>`` (and ``models/<name>``) in the registry's dvc.yaml ``artifacts:`` section, keeping
    whatever else it holds; returns whether the file exists (to be committed)."""
    path = wc / ARTIFACTS_FILE
    data: object = {}
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: the registry's dvc.yaml is not YAML ({exc}); fix or remove it") from None
    artifacts = data.setdefault("artifacts", {}) if isinstance(data, dict) else None
    if not isinstance(artifacts, dict):
        raise UserError(f"{path}: the registry's dvc.yaml has no mapping at `artifacts:`; fix or remove it")
    wanted: dict[str, dict[str, object]] = {}
    dataset = artifact_name(name)
    if dataset is not None:
        wanted[dataset] = {"path": f"{DATASETS_DIR}/{name}", "type": "dataset",
                           "desc": f"{name}: a dataset published by synthaug (card.md inside)",
                           "labels": ["synthaug", "image-classification"]}
    model = artifact_name(generator_name(name)) if generator else None
    if model is not None:
        wanted[model] = {"path": f"{MODELS_DIR}/{name}", "type": "model",
                         "desc": f"the class-conditional generator of {name} (synthaug; card.md inside)",
                         "labels": ["synthaug", "generator"]}
    if any(artifacts.get(k) != v for k, v in wanted.items()):
        artifacts.update(wanted)
        write_atomic(yaml.safe_dump(data, sort_keys=False).encode("utf-8"), path)
    return path.is_file()


def _ensure_registry(wc: Path, remote: str, *, bootstrap_message: str) -> None:
    """Make ``wc`` a DVC registry with a default remote equal to ``remote``; commit what that changed."""
    if not (wc / ".dvc").is_dir():
        dvc(["init", "--quiet"], cwd=wc, what="dvc init")
    _set_site_cache(wc)
    configured = _default_remote_url(wc)
    if configured is None:
        if not is_url(remote):
            if Path(remote).exists() and not Path(remote).is_dir():
                raise UserError(f"{remote}: publish.remote exists and is not a folder")
            Path(remote).mkdir(parents=True, exist_ok=True)
        dvc(["remote", "add", "--default", "--force", REMOTE_NAME, remote], cwd=wc, what="dvc remote add")
    elif not _same_location(configured, remote):
        raise UserError(f"publish.remote is {mask_secrets(remote)!r} but the registry's default DVC remote is "
                        f"{mask_secrets(configured)!r}; set publish.remote to the registry's remote (or change the "
                        "registry's remote with `dvc remote modify` and commit it there)")
    git(["add", "--all", "--", ".dvc", ".dvcignore"], cwd=wc)
    has_head = git(["rev-parse", "-q", "--verify", "HEAD"], cwd=wc, check=False).returncode == 0
    if not has_head or git(["diff", "--cached", "--quiet"], cwd=wc, check=False).returncode != 0:
        git(["commit", "--quiet", "--allow-empty", "-m", bootstrap_message], cwd=wc)


def _restore_own_paths(root: Path, name: str) -> None:
    """Undo what an interrupted run may have left in the paths this module writes (and only those)."""
    if git(["rev-parse", "-q", "--verify", "HEAD"], cwd=root, check=False).returncode != 0:
        return
    for folder in (DATASETS_DIR, MODELS_DIR):
        _restore_paths(root, folder, f"{folder}/{name}")
    if git(["cat-file", "-e", f"HEAD:{ARTIFACTS_FILE}"], cwd=root, check=False).returncode == 0:
        git(["checkout", "--quiet", "HEAD", "--", ARTIFACTS_FILE], cwd=root)
    elif (root / ARTIFACTS_FILE).is_file():  # written by a run killed before its commit: ours if it only declares
        try:
            ours = set(yaml.safe_load((root / ARTIFACTS_FILE).read_text()) or {}) <= {"artifacts"}
        except yaml.YAMLError:
            ours = False
        if ours:
            (root / ARTIFACTS_FILE).unlink()


def _restore_paths(root: Path, folder: str, rel: str) -> None:
    for path in (f"{rel}.dvc", f"{folder}/.gitignore"):
        tracked = git(["cat-file", "-e", f"HEAD:{path}"], cwd=root, check=False).returncode == 0
        if tracked:
            git(["checkout", "--quiet", "HEAD", "--", path], cwd=root)
        else:
            git(["rm", "--quiet", "--cached", "--ignore-unmatch", "--", path], cwd=root)
            (root / path).unlink(missing_ok=True)
    rmtree(root / rel)  # the workspace copy; `dvc checkout` brings back the committed version


def _latest_version(wc: Path, name: str) -> int | None:
    pattern = re.compile(rf"{re.escape(name)}/v([1-9][0-9]*)")
    tags = git(["tag", "--list", f"{name}/v*"], cwd=wc).stdout.split()
    versions = [int(m.group(1)) for t in tags if (m := pattern.fullmatch(t))]
    return max(versions, default=None)


def _dvc_hash(dvc_file: Path) -> str:
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", ""))


def _dvc_hash_at(wc: Path, version: int, name: str) -> str | None:
    shown = git(["show", f"refs/tags/{tag_for(name, version)}:{DATASETS_DIR}/{name}.dvc"], cwd=wc, check=False)
    if shown.returncode != 0:
        return None
    outs = (yaml.safe_load(shown.stdout) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", ""))


def _dvc_push(wc: Path, rel: str) -> None:
    remote = _default_remote_url(wc) or "?"
    dvc(["push", "--quiet", f"{rel}.dvc"], cwd=wc,
         what=f"dvc push to {mask_secrets(remote)} (nothing was published; fix the remote and re-run)")


def _default_remote_url(wc: Path) -> str | None:
    from dvc.config import Config

    config = Config(dvc_dir=str(wc / ".dvc"))
    name = config["core"].get("remote")
    if not name:
        return None
    remote = config["remote"].get(name)
    return None if remote is None else str(remote["url"])


def _set_site_cache(wc: Path) -> None:
    from dvc.config import Config

    config = Config(dvc_dir=str(wc / ".dvc"), validate=False)
    wanted = str((wc / SITE_CACHE).resolve())
    if config.load_one("local").get("core", {}).get("site_cache_dir") != wanted:
        with config.edit("local") as conf:
            conf.setdefault("core", {})["site_cache_dir"] = wanted


def _ensure_identity(wc: Path) -> None:
    """A repo-local committer identity when git has none configured (fresh machines, CI)."""
    for key, value in (("user.name", "synthaug"), ("user.email", "synthaug@localhost")):
        if not git(["config", key], cwd=wc, check=False).stdout.strip():
            git(["config", "--local", key, value], cwd=wc)


def _current_branch(wc: Path) -> str:
    out = git(["symbolic-ref", "--short", "-q", "HEAD"], cwd=wc, check=False).stdout.strip()
    if not out:
        raise UserError(f"{wc}: the registry's default branch is not checked out (detached HEAD)")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# fetch


# ---------------------------------------------------------------------------------------------------------------------
# generator versions (published by ``publish(..., generator=...)`` in the dataset's commit)


@dataclass(frozen=True)
class _StagedGenerator:
    tag: str
    new: bool
    checkpoint: str


def _stage_generator(wc: Path, generator_dir: Path, name: str, *, push: bool) -> _StagedGenerator:
    """Add the generator as ``models/<name>`` (and push it) unless a version has its checkpoint hash. The caller
    names the version in the dataset card (``name_version``), commits and tags (``_tag_generator``)."""
    from synthaug.models.training import WEIGHTS_FILE, checkpoint_hash

    if not (generator_dir / "checkpoint" / WEIGHTS_FILE).is_file():
        raise UserError(f"{generator_dir}: no checkpoint/weights.pt in the generator folder; nothing was published")
    digest = checkpoint_hash(generator_dir / "checkpoint")
    gname = generator_name(name)
    versions = _generator_checkpoints(wc, gname)
    same = [v for v, c in versions.items() if c == digest]
    if same:
        staged = _StagedGenerator(tag_for(gname, max(same)), False, digest)
        log.info("generator unchanged (checkpoint %s): %s", digest[:12], staged.tag)
    else:
        staged = _StagedGenerator(tag_for(gname, max(versions, default=0) + 1), True, digest)
        rel = f"{MODELS_DIR}/{name}"
        target = wc / rel
        rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(generator_dir, target, symlinks=False)
        dvc(["add", "--quiet", rel], cwd=wc, what=f"dvc add {rel}")
        if push:
            _dvc_push(wc, rel)
        git(["add", "--", f"{rel}.dvc", f"{MODELS_DIR}/.gitignore"], cwd=wc)
    return staged


def _tag_generator(wc: Path, staged: _StagedGenerator, created_tags: list[str] | None) -> None:
    # The checkpoint hash in the tag message: the next run finds an unchanged generator without fetching any data.
    _tag(wc, staged.tag, f"{staged.tag}\n\ncheckpoint: {staged.checkpoint}", created_tags)
    gname, _, version = staged.tag.rpartition("/v")
    gto = artifact_tag(gname, int(version))
    if gto is not None:
        _tag(wc, gto, f"Registering artifact {artifact_name(gname)} version v{version}.0.0 ({staged.tag})",
             created_tags)


def _generator_checkpoints(wc: Path, gname: str) -> dict[int, str]:
    """Version -> checkpoint sha256 of every ``<gname>/v<N>`` tag (read from the tag messages)."""
    out = git(["for-each-ref", f"refs/tags/{gname}/", "--format=%(refname:strip=2)%00%(contents)%00"], cwd=wc).stdout
    pattern = re.compile(rf"{re.escape(gname)}/v([1-9][0-9]*)")
    found: dict[int, str] = {}
    for record in out.split("\0\n"):
        tag, _, message = record.strip("\n").partition("\0")
        m, c = pattern.fullmatch(tag), re.search(r"^checkpoint: ([0-9a-f]{64})$", message, re.M)
        if m and c:
            found[int(m.group(1))] = c.group(1)
    return found


# ---------------------------------------------------------------------------------------------------------------------
# dataset card


# ---------------------------------------------------------------------------------------------------------------------
# locations and processes


def _same_location(a: str, b: str) -> bool:
    if is_url(a) or is_url(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def _is_bare_repo(path: Path) -> bool:
    if not path.is_dir():
        return False
    out = run_command(["git", "rev-parse", "--is-bare-repository"], cwd=path, check=False)
    return out.returncode == 0 and out.stdout.strip() == "true"


def _is_repo_root(path: Path) -> bool:
    out = run_command(["git", "rev-parse", "--show-toplevel"], cwd=path, check=False)
    return out.returncode == 0 and Path(out.stdout.strip()).resolve() == path.resolve()
