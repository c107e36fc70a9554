"""Stopping within seconds on SIGTERM or SIGINT, as a scheduler or a container runtime asks.

``install()`` (the ``synthaug`` command does it first) makes both signals raise ``Stopped`` (a ``KeyboardInterrupt``)
in the main thread, so every ``with`` block unwinds: the workdir and registry locks are released, a Prefect flow run is
marked Crashed, a half-published version is rolled back. The first signal also terminates the processes this one
started that do the work (the flow runs of ``synthaug serve``, the evaluate step's classifier processes, torchrun),
and starts a watchdog: whatever is still running ``GRACE_S`` seconds later (a shard in a worker thread, a child that
did not stop, Prefect's temporary server) is killed and the process exits. A second signal does that at once.

What is left is resumable, never half-written: every file is written atomically, generation and filtering resume
from their finished shards, a step's Prefect cache entry exists only once it finished, and a version is tagged only
once whole. Re-running the same command continues.

During a flow run Prefect installs its own SIGTERM handler; it marks the run Crashed and then re-sends the signal to
the handler it replaced (this one). Whatever then ends the command (``Stopped``, a ``SystemExit`` of Prefect's, the
command line returning 130), ``main`` (``flows/cli.py``) exits with 128 + the signal number. ``synthaug serve`` runs
Prefect's ``Runner``, whose own SIGTERM handler waits for its flow runs; ``serve_deployments`` (``flows/serve.py``)
gives it this one instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from types import FrameType

GRACE_S = 8.0  # seconds between the first signal and killing what still runs
TEMPORARY_SERVER = "prefect.server.api.server:create_app"  # Prefect's temporary server: stopped at exit, not before
_stopping: dict[str, int] = {}


class Stopped(KeyboardInterrupt):
    """The process was asked to stop (``signum``); raised in the main thread by the signal handler."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def install() -> None:
    """Handle SIGTERM and SIGINT as described in the module docstring (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)


def exit_code(signum: int) -> int:
    return 128 + signum


def stop_signal() -> int | None:
    """The signal that asked this process to stop, or None while none did."""
    return _stopping.get("signum")


def on_signal(signum: int, _frame: FrameType | None = None) -> None:
    """The handler: the first signal stops the workers' processes, arms the watchdog and raises ``Stopped``; a
    second one ends the process at once."""
    if "signum" in _stopping:
        _finish(signum, "a second signal")
    _stopping["signum"] = signum
    name = signal.Signals(signum).name
    print(f"{name}: stopping (what finished is kept; run the same command again to continue)", file=sys.stderr,
          flush=True)
    terminate_children(keep_temporary_server=True)
    threading.Thread(target=_watchdog, args=(signum,), name="synthaug-stop-watchdog", daemon=True).start()
    raise Stopped(signum)


def terminate_children(*, keep_temporary_server: bool = False, wait_s: float = 0.0) -> None:
    """SIGTERM to every process this one started (recursively), then SIGKILL to those alive after ``wait_s``.
    ``keep_temporary_server``: leave Prefect's temporary server, which records the run's final state and stops when
    this process exits."""
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    if keep_temporary_server:
        children = [c for c in children if not _is_temporary_server(c)]
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    if wait_s > 0:
        _, alive = psutil.wait_procs(children, timeout=wait_s)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()


def _is_temporary_server(process: object) -> bool:
    import psutil

    try:
        return TEMPORARY_SERVER in " ".join(process.cmdline())  # type: ignore[attr-defined]
    except psutil.Error:
        return False


def _watchdog(signum: int) -> None:
    time.sleep(GRACE_S)
    _finish(signum, f"still running {GRACE_S:g} s after the signal")


def _finish(signum: int, why: str) -> None:
    """Kill what is left of this process's children and exit now (no more unwinding)."""
    print(f"{signal.Signals(signum).name}: {why}; killing what is left", file=sys.stderr, flush=True)
    terminate_children(wait_s=2.0)
    os._exit(exit_code(signum))
