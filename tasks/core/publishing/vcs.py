"""Git and DVC run as subprocesses on the data registry, with their failures as ``PublishError`` and every URL in a
message masked (``tasks.core.errors.mask_secrets``)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from synthaug.tasks.core.errors import UserError, mask_secrets

log = logging.getLogger(__name__)
SITE_CACHE = ".dvc/tmp/site_cache"  # DVC's index/state for the registry, kept inside it (never /var/tmp)


_SCP_LIKE_RE = re.compile(r"^[\w.-]+@[\w.-]+:")  # user@host:path, the ssh short form git accepts


class PublishError(UserError):
    """A step that talks to the registry or its remote failed; the message says what, and that re-running is safe."""


def is_url(location: str) -> bool:
    return "://" in location or bool(_SCP_LIKE_RE.match(location))


def normalize_location(location: str) -> str:
    """URLs as given (trailing '/' dropped); local paths made absolute against the current directory."""
    if is_url(location):
        return location.rstrip("/")
    return str(Path(location).expanduser().absolute())


def git(args: Sequence[str], *, cwd: Path, check: bool = True, what: str | None = None) -> subprocess.CompletedProcess:
    return run_command(["git", *args], cwd=cwd, check=check, what=what)


def dvc(args: Sequence[str], *, cwd: Path, what: str, site_cache: Path | None = None) -> None:
    """Run DVC from this interpreter. Its site cache (index, state) goes to ``site_cache`` (default: the registry's
    ``.dvc/tmp/site_cache``, a temporary folder before ``dvc init``), unless DVC_SITE_CACHE_DIR is already set."""
    with tempfile.TemporaryDirectory(prefix="dvc-site-") as scratch:
        if site_cache is None:
            site_cache = cwd / SITE_CACHE if (cwd / ".dvc").is_dir() else Path(scratch)
        env = {"DVC_SITE_CACHE_DIR": os.environ.get("DVC_SITE_CACHE_DIR", str(site_cache))}
        run_command([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, what=what)


def run_command(cmd: Sequence[str], *, cwd: Path, check: bool = True, env: Mapping[str, str] | None = None,
         what: str | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_TERMINAL_PROMPT": "0", **(env or {})}
    log.debug("running %s in %s", " ".join(cmd), cwd)
    done = subprocess.run(list(cmd), cwd=cwd, env=full_env, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        detail = " | ".join(line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip())
        detail = mask_secrets(detail[-600:]) or f"exit status {done.returncode}"
        if what is not None:
            raise PublishError(f"{what} failed: {detail}")
        raise RuntimeError(f"`{' '.join(mask_secrets(c) for c in cmd)}` in {cwd} failed: {detail}")
    return done


def rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=_force_remove)


def _force_remove(func: Any, path: str, _exc: Any) -> None:
    for p in (os.path.dirname(path), path):  # DVC makes cache files (and some folders) read-only
        if os.path.lexists(p) and not os.path.islink(p):
            os.chmod(p, 0o700)
    func(path)
