"""One writer at a time: a lock per workdir around any step, and a lock per data registry around publishing.

Two processes writing one workdir (two runs, a run and a `synthaug <step>`) would delete each other's files midway;
two publishes into one registry would race on its branch and tags. Each writer first takes an OS file lock
(``filelock``, a dependency of torch; ``flock`` on POSIX, so a killed process frees it at once and no stale lock
is ever left). The second writer waits, saying who holds the lock, and gives up after ``SYNTHAUG_LOCK_TIMEOUT``
seconds (default ``DEFAULT_TIMEOUT``) with a one-line error naming the holder and what to do.

- Workdir: ``<workdir>/.synthaug.lock``, taken by the flows (for their whole run) and by every step command.
- Registry: a local registry (a working repository or a bare one) is locked beside it,
  ``<parent>/.<name>.synthaug.lock``; a URL is locked on this machine in ``~/.cache/synthaug/locks``. Writers on
  other machines are kept apart by git itself: the atomic push of the branch and the tag fails when the branch moved,
  and a re-run publishes on top.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout

from synthaug.tasks.core.errors import UserError, mask_secrets

DEFAULT_TIMEOUT = 3600.0  # seconds: long enough for another run's step to finish, short enough to notice
TIMEOUT_ENV = "SYNTHAUG_LOCK_TIMEOUT"
WORKDIR_LOCK = ".synthaug.lock"
NOTICE_AFTER = 1.0  # seconds of waiting before saying so
F = TypeVar("F", bound=Callable[..., Any])
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")  # user@host:path, the ssh form git accepts


class LockTimeout(UserError):
    """Another writer held the lock for longer than the timeout."""


def lock_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        return DEFAULT_TIMEOUT if raw is None else float(raw)
    except ValueError:
        raise UserError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None


@contextlib.contextmanager
def hold(path: Path, what: str, *, timeout: float | None = None) -> Iterator[None]:
    """Hold the file lock ``path`` for ``what`` (e.g. "workdir data/work"); wait up to ``timeout`` seconds."""
    timeout = lock_timeout() if timeout is None else timeout
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, thread_local=False)
    owner = path.with_name(path.name + ".owner")
    try:
        lock.acquire(timeout=min(NOTICE_AFTER, timeout))
    except Timeout:
        print(f"waiting for {what}: {_holder(owner)} (up to {timeout:.0f} s; {TIMEOUT_ENV} sets the limit)",
              file=sys.stderr, flush=True)
        try:
            lock.acquire(timeout=max(timeout - NOTICE_AFTER, 0))
        except Timeout:
            raise LockTimeout(f"{what} is busy: {_holder(owner)}; waited {timeout:.0f} s. Let it finish (or stop it) "
                              f"and run again, or raise {TIMEOUT_ENV}") from None
    try:
        owner.write_text(json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv[:3]),
                                     "since": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")}))
        yield
    finally:
        with contextlib.suppress(OSError):
            owner.unlink()
        lock.release()


def workdir_lock(workdir: Path, *, timeout: float | None = None) -> contextlib.AbstractContextManager[None]:
    """The lock of ``workdir``: one process writes a workdir at a time."""
    return hold(Path(workdir) / WORKDIR_LOCK, f"workdir {workdir}", timeout=timeout)


def registry_lock(registry: str, *, timeout: float | None = None) -> contextlib.AbstractContextManager[None]:
    """The lock of the data registry ``registry`` (a local path or a URL; see the module docstring)."""
    if "://" in registry or _SCP_LIKE.match(registry):
        digest = hashlib.sha256(registry.rstrip("/").encode()).hexdigest()[:16]
        path = Path.home() / ".cache" / "synthaug" / "locks" / f"registry-{digest}.lock"
    else:
        local = Path(registry).expanduser().absolute()
        path = local.parent / f".{local.name}.synthaug.lock"
    return hold(path, f"registry {mask_secrets(registry)}", timeout=timeout)


def with_registry_lock(publish_fn: F) -> F:
    """Run ``publish_fn(dataset_dir, params, ...)`` holding the lock of ``params.registry``."""

    @functools.wraps(publish_fn)
    def locked(dataset_dir: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
        with registry_lock(params.registry):
            return publish_fn(dataset_dir, params, *args, **kwargs)

    return locked  # type: ignore[return-value]


def _holder(owner: Path) -> str:
    try:
        info = json.loads(owner.read_text())
        return f"held by process {info['pid']} (`{info['command']}`, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "held by another process"

