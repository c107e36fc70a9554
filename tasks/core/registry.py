"""The data registry: a git + DVC repository holding dataset and generator versions, tagged ``<name>/v<N>``.

Naming and reading versions, and running git and DVC on it with secrets redacted; publishing a version is the
publish step (``tasks/publish.py``)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import field_validator

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.params_base import Section

log = logging.getLogger(__name__)

DATASETS_DIR = "datasets"
MODELS_DIR = "models"  # the generator of dataset <name> lives at models/<name>, tagged <name>-generator/v<N>
GENERATOR_SUFFIX = "-generator"
SITE_CACHE = ".dvc/tmp/site_cache"  # DVC's index/state for the registry, kept inside it (never /var/tmp)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SCP_LIKE_RE = re.compile(r"^[\w.-]+@[\w.-]+:")  # user@host:path, the ssh short form git accepts
_USERINFO_PASSWORD_RE = re.compile(r"^[a-zA-Z][\w+.-]*://[^/@]*:[^/@]*@")  # scheme://user:secret@host


class PublishParams(Section):
    """``publish`` section of params.yaml.

    name: dataset name; the registry path is ``datasets/<name>`` and versions are tagged ``<name>/v<N>``.
      Letters, digits, ``.``, ``_``, ``-``; starts with a letter or digit; at most 100 characters.
    registry: the data registry: a git URL (``https://…``, ``ssh://…``, ``git@host:org/repo.git``), a local bare
      repository (cloned like a URL), or a local working repository, created with git + DVC on first use if absent.
    remote: URL of the registry's default DVC remote (``s3://bucket/prefix``, ``gs://…``, ``ssh://…``, a local
      folder, ...). Set as the default remote when the registry is created; for an existing registry it must equal
      the registry's default remote. Credentials go into DVC's config or the environment, never here.
    push: push the data to ``remote`` and the commit + tag to the registry's origin. ``false`` commits and tags in a
      local registry only (an offline trial); a later run with ``true`` pushes the same content.
    schedule: cron (UTC) of ``synthaug serve`` and ``prefect.yaml``; a scheduled run that finds the source, params
      and code unchanged publishes nothing.
    utility_gate: publish only when the evaluate step's utility gate passed (the synthetic images do not measurably
      hurt against the best real baseline; the rule is ``tasks.core.gate.gate_verdict``). ``false`` publishes anyway
      and says so in the step's record.
    """

    name: str = "digits-balanced"
    registry: str = "registry/repo"
    remote: str = "registry/remote"
    push: bool = True
    schedule: str = "0 3 * * *"
    utility_gate: bool = True

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        check_name(value)
        return value

    @field_validator("registry", "remote")
    @classmethod
    def _no_secrets(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if _USERINFO_PASSWORD_RE.match(value):
            raise ValueError(f"{_redact(value)!r} embeds a password; put credentials in DVC's or git's own config "
                             "or in the environment, never in params.yaml")
        return value


class PublishError(UserError):
    """A step that talks to the registry or its remote failed; the message says what, and that re-running is safe."""


def check_name(name: str) -> None:
    """Raise ValueError unless ``name`` is safe as a folder name and as one component of a git tag."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name or name.endswith((".", ".lock")):
        raise ValueError(f"dataset name {name!r} is not allowed: use letters, digits, '.', '_', '-', start with a "
                         "letter or digit, no '..', not ending in '.' or '.lock', at most 100 characters")


def tag_for(name: str, version: int) -> str:
    return f"{name}/v{version}"


def fetch(registry: str, name: str, version: int | str, out: Path) -> Path:
    """Download version ``version`` of dataset ``name`` from ``registry`` into the new folder ``out``.

    Plain DVC, the same as ``dvc get <registry> datasets/<name> --rev <name>/v<N> -o <out>``.
    ``version`` is N, ``"vN"``, ``"<name>/vN"`` or ``"latest"``. ``out`` must not exist (or be an empty folder);
    it appears only when complete.
    """
    return _get_version(registry, f"{DATASETS_DIR}/{name}", name, name, version, Path(out))


def _get_version(registry: str, rel: str, name: str, tag_name: str, version: int | str, out: Path) -> Path:
    """``rel`` at version ``version`` of the tags ``<tag_name>/v<N>`` (``name``: the dataset) into ``out``."""
    try:
        check_name(name)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    location = _normalize_location(registry)
    return _get_into(location, rel, _resolve_tag(location, tag_name, version), out)


def _get_into(location: str, rel: str, tag: str, out: Path) -> Path:
    """``dvc get <location> <rel> --rev <tag>`` into the new folder ``out``, which appears only when complete."""
    out = out.absolute()  # DVC runs in out's parent: a relative path would land one level too deep
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists; fetch into a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        with tempfile.TemporaryDirectory(prefix="dvc-site-") as site:
            _dvc(["get", "--quiet", location, rel, "--rev", tag, "-o", str(partial)],
                 cwd=out.parent, site_cache=Path(site), what=f"dvc get {tag} from {_redact(location)}")
        if out.exists():
            out.rmdir()
        partial.rename(out)
    finally:
        _rmtree(partial)
    return out


def _resolve_tag(location: str, name: str, version: int | str) -> str:
    text = str(version).strip()
    if text == "latest":
        listed = _git(["ls-remote", "--tags", "--refs", location, f"refs/tags/{name}/v*"], cwd=Path.cwd(),
                      what=f"listing the versions of {name} in {_redact(location)}").stdout
        pattern = re.compile(rf"refs/tags/{re.escape(name)}/v([1-9][0-9]*)")
        versions = [int(m.group(1)) for line in listed.splitlines() if (m := pattern.search(line.split()[-1]))]
        if not versions:
            raise UserError(f"{_redact(location)}: no published version of {name!r}")
        return tag_for(name, max(versions))
    text = text.removeprefix(f"{name}/").removeprefix("v")
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"version {version!r}: expected N, 'vN', '{name}/vN' or 'latest' (N >= 1)")
    return tag_for(name, int(text))


def generator_name(name: str) -> str:
    """The tag prefix of dataset ``name``'s generator: its versions are ``<name>-generator/v<N>``."""
    return f"{name}{GENERATOR_SUFFIX}"


def latest_generator(registry: str, name: str) -> str | None:
    """The tag of the last generator published with dataset ``name`` in ``registry`` (None: none yet, or no
    registry there). Reads only the registry's tags (``git ls-remote``)."""
    location = _normalize_location(registry)
    if not _is_url(location) and not Path(location).exists():  # created by the first publish
        return None
    try:
        return _resolve_tag(location, generator_name(name), "latest")
    except PublishError:  # the registry is unreachable: say so rather than silently train from scratch
        raise
    except UserError:  # no generator version yet
        return None


def fetch_generator(registry: str, tag: str, out: Path) -> Path:
    """Download generator version ``tag`` (``<name>-generator/v<N>``) from ``registry`` into the new folder ``out``:
    plain DVC, the same as ``dvc get <registry> models/<name> --rev <tag> -o <out>``."""
    gname, _, version = tag.rpartition("/")
    if not gname.endswith(GENERATOR_SUFFIX) or not re.fullmatch(r"v[1-9][0-9]*|latest", version):
        raise UserError(f"generator tag {tag!r}: expected <dataset>{GENERATOR_SUFFIX}/v<N> (or /latest), e.g. "
                        f"digits-balanced{GENERATOR_SUFFIX}/v1")
    name = gname.removesuffix(GENERATOR_SUFFIX)
    return _get_version(registry, f"{MODELS_DIR}/{name}", name, gname, version, Path(out))


def code_version() -> str:
    """The pipeline code's version: ``git describe`` (full sha, ``-dirty`` when modified) of the synthaug checkout,
    or the installed package version when the code is not a git checkout."""
    root = Path(__file__).resolve().parents[2]  # the checkout holding tasks/core/
    top = _run(["git", "rev-parse", "--show-toplevel"], cwd=root, check=False)
    if top.returncode == 0 and Path(top.stdout.strip()).resolve() == root:
        described = _run(["git", "describe", "--tags", "--always", "--dirty", "--abbrev=40"], cwd=root, check=False)
        if described.returncode == 0 and described.stdout.strip():
            return f"git {described.stdout.strip()}"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"synthaug {version('synthaug')}"
    except PackageNotFoundError:
        return "unknown"


def _is_url(location: str) -> bool:
    return "://" in location or bool(_SCP_LIKE_RE.match(location))


def _normalize_location(location: str) -> str:
    """URLs as given (trailing '/' dropped); local paths made absolute against the current directory."""
    if _is_url(location):
        return location.rstrip("/")
    return str(Path(location).expanduser().absolute())


def _redact(location: str) -> str:
    return re.sub(r"(://[^/@]*?):[^/@]*@", r"\1:***@", location)


def _git(args: Sequence[str], *, cwd: Path, check: bool = True, what: str | None = None) -> subprocess.CompletedProcess:
    return _run(["git", *args], cwd=cwd, check=check, what=what)


def _dvc(args: Sequence[str], *, cwd: Path, what: str, site_cache: Path | None = None) -> None:
    """Run DVC from this interpreter. Its site cache (index, state) goes to ``site_cache`` (default: the registry's
    ``.dvc/tmp/site_cache``, a temporary folder before ``dvc init``), unless DVC_SITE_CACHE_DIR is already set."""
    with tempfile.TemporaryDirectory(prefix="dvc-site-") as scratch:
        if site_cache is None:
            site_cache = cwd / SITE_CACHE if (cwd / ".dvc").is_dir() else Path(scratch)
        env = {"DVC_SITE_CACHE_DIR": os.environ.get("DVC_SITE_CACHE_DIR", str(site_cache))}
        _run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, what=what)


def _run(cmd: Sequence[str], *, cwd: Path, check: bool = True, env: Mapping[str, str] | None = None,
         what: str | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_TERMINAL_PROMPT": "0", **(env or {})}
    log.debug("running %s in %s", " ".join(cmd), cwd)
    done = subprocess.run(list(cmd), cwd=cwd, env=full_env, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        detail = " | ".join(line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip())
        detail = _redact(detail[-600:]) or f"exit status {done.returncode}"
        if what is not None:
            raise PublishError(f"{what} failed: {detail}")
        raise RuntimeError(f"`{' '.join(_redact(c) for c in cmd)}` in {cwd} failed: {detail}")
    return done


def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=_force_remove)


def _force_remove(func: Any, path: str, _exc: Any) -> None:
    for p in (os.path.dirname(path), path):  # DVC makes cache files (and some folders) read-only
        if os.path.lexists(p) and not os.path.islink(p):
            os.chmod(p, 0o700)
    func(path)
