"""Git and DVC run as subprocesses on the data registry, with their failures as ``PublishError`` and every URL in a
message masked (``tasks.core.errors.mask_secrets``)."""

from __future__ import annotations

import errno
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
    """A step that talks to the registry or its remote failed; the message says what, and that re-running is safe.

    ``transient``: the cause may go away by itself (a network timeout, a refused connection), so a retry may
    succeed; a full disk, a read-only or forbidden remote, a missing tag or repository fail the same way again."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# What a failure's output says about its cause: the line that names it, in this order of preference.
_CAUSE_LINES = re.compile(r"\[Errno -?\d+\]|No space left|Read-only file system|Permission denied|"
                          r"unknown (Git )?revision|does not appear to be a git repository|not found|"
                          r"Could not resolve host|Failed to resolve|Connection (refused|timed out|reset)|"
                          r"Authentication failed|could not read Username", re.IGNORECASE)
_ERROR_LINES = re.compile(r"^(ERROR|error|fatal|FATAL)\b")
_NOISE = ("Having any troubles?", "Hit us up at")  # DVC's footer
_TRANSIENT = re.compile(r"Connection (refused|timed out|reset)|timed? ?out|Temporary failure|Try again|"
                        r"\b50[234]\b|\[Errno (110|111|104|11)\]", re.IGNORECASE)
_ERRNO_HINTS = {
    errno.ENOSPC: "the disk or remote is full: free space there, then re-run",
    errno.EROFS: "the file system is read-only: point publish.remote/registry at a writable place",
    errno.EACCES: "permission denied: give this user write access there",
    errno.EPERM: "operation not permitted: give this user write access there",
    errno.EDQUOT: "a disk quota is exceeded: free space there, then re-run",
}


def failure_detail(output: str, returncode: int) -> str:
    """The cause of a failed git or DVC run from its output: the lines that name it (``[Errno 28] No space left on
    device``, ``unknown revision``, ``Could not resolve host``, ...) before its other error lines, DVC's footer
    dropped, masked (``mask_secrets``) and clipped; ``exit status N`` when it said nothing."""
    lines = [line.strip() for line in output.splitlines() if line.strip() and not line.strip().startswith(_NOISE)]
    causes = [line for line in lines if _CAUSE_LINES.search(line)]
    errors = [line for line in lines if _ERROR_LINES.match(line) and line not in causes]
    chosen = causes + errors or lines[-3:]
    detail = " | ".join(dict.fromkeys(chosen))
    detail = detail if len(detail) <= 600 else detail[:600] + " ..."
    hint = next((h for code, h in _ERRNO_HINTS.items() if f"[Errno {code}]" in detail), None)
    return mask_secrets(detail + (f" ({hint})" if hint else "")) or f"exit status {returncode}"


def os_error_detail(exc: OSError) -> str:
    """One line for an OSError of synthaug's own file operations, with its errno's name and the fix."""
    name = errno.errorcode.get(exc.errno or 0, "")
    hint = _ERRNO_HINTS.get(exc.errno or 0)
    where = f": {exc.filename}" if exc.filename else ""
    text = f"[Errno {exc.errno}] {exc.strerror or exc}{where}" if exc.errno else str(exc)
    return mask_secrets(f"{name + ' ' if name else ''}{text}{f' ({hint})' if hint else ''}")


def is_transient(detail: str) -> bool:
    """Whether a failure's detail names a cause a retry may outlive (a timeout, a refused connection, HTTP 50x)."""
    return bool(_TRANSIENT.search(detail))


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
    # --quiet would hide DVC's error lines too (a full remote would say only "exit status 1"): the output is
    # captured anyway, and failure_detail picks the cause out of it.
    args = [a for a in args if a != "--quiet"]
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
        detail = failure_detail(f"{done.stderr}\n{done.stdout}", done.returncode)
        if what is not None:
            raise PublishError(f"{what} failed: {detail}", transient=is_transient(detail))
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
