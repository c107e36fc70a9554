"""The ``synthaug`` logger and step progress: a rich bar on a terminal, periodic log lines otherwise.

Prefect sends the records of the loggers named in its ``logging.extra_loggers`` setting
(``PREFECT_LOGGING_EXTRA_LOGGERS``) to the API, so they show in the flow run's log in the UI. The project sets it to
``synthaug`` where flows run: the worker's environment in prefect.yaml, ``synthaug serve`` and the ``synthaug``
command. Outside a flow run the records go to stderr (``log_to_stderr``, the command line) or wherever the
application's logging sends them.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from synthaug.tasks.core.errors import mask_secrets

ROOT = "synthaug"
EXTRA_LOGGERS = "PREFECT_LOGGING_EXTRA_LOGGERS"
EVERY_S = 30.0  # a progress line at least this often when output is not a terminal (a log, a worker)
EVERY_SHARE = 0.1  # and at every tenth of the work, so that a short step still says how far it got

Update = Callable[..., None]  # update(done, note="")


def mask_log_records() -> None:
    """Mask credentials (``mask_secrets``) in every log record this process makes from now on, whoever logs it:
    synthaug, Prefect (its task and flow run loggers, the tracebacks of failed runs it logs and sends to its API),
    DVC, git output. Installed once, as the process's log record factory."""
    current = logging.getLogRecordFactory()
    if getattr(current, "masks_secrets", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = current(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not fit its format: logging reports that itself
            return record
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            if mask_secrets(text) != text:  # formatters use exc_text when it is set: the masked traceback
                record.exc_text = mask_secrets(text)
        return record

    factory.masks_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def enable() -> logging.Logger:
    """The ``synthaug`` logger, at INFO when nothing set its level (the root logger's default WARNING would drop
    the progress lines); every record of the process masked (``mask_log_records``)."""
    mask_log_records()
    root = logging.getLogger(ROOT)
    if root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return root


def get_logger(name: str) -> logging.Logger:
    """The ``synthaug.<name>`` logger (``enable``d)."""
    enable()
    return logging.getLogger(f"{ROOT}.{name}")


def route_to_prefect() -> None:
    """Add ``synthaug`` to ``PREFECT_LOGGING_EXTRA_LOGGERS`` in this process's environment: flow runs it starts
    (``synthaug serve``), and flows it runs itself when Prefect is imported afterwards, send the records to the API."""
    names = [n.strip() for n in os.environ.get(EXTRA_LOGGERS, "").split(",") if n.strip()]
    if ROOT not in names:
        os.environ[EXTRA_LOGGERS] = ",".join([*names, ROOT])


class _StderrHandler(logging.StreamHandler):
    """The command line's handler: plain lines on stderr."""


def log_to_stderr() -> None:
    """The ``synthaug`` command: records as plain lines on stderr, once (not again through the root logger, where
    Prefect puts its console handler)."""
    root = enable()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.propagate = False


@contextmanager
def progress(logger: logging.Logger, label: str, total: int, *, unit: str = "",
             console: Console | None = None, every_s: float = EVERY_S) -> Iterator[Update]:
    """Report ``update(done, note="")`` calls: a rich progress bar when ``console`` (stderr by default) is a
    terminal; otherwise a log line ``<label>: <done>/<total> <unit> <note> (<s> s)`` every ``every_s`` seconds, at
    every tenth of ``total`` and at the end. Either way one last line says what was done and how long it took."""
    console = console or Console(stderr=True)
    t0 = time.monotonic()
    state = {"done": 0, "note": ""}
    if console.is_terminal:
        columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console) as bar:
            task = bar.add_task(label, total=total, note="")

            def update_bar(done: int, note: str = "") -> None:
                state.update(done=done, note=note)
                bar.update(task, completed=done, note=note)

            yield update_bar
    else:
        lines = _Lines(logger, label, total, unit, every_s, t0)

        def update_lines(done: int, note: str = "") -> None:
            state.update(done=done, note=note)
            lines(done, note)

        yield update_lines
        if lines.last == state["done"]:  # the end was reported already
            return
    logger.info(_line(label, state["done"], total, unit, str(state["note"]), time.monotonic() - t0))


class _Lines:
    """Decides when a non-terminal progress update becomes a log line."""

    def __init__(self, logger: logging.Logger, label: str, total: int, unit: str, every_s: float, t0: float) -> None:
        self.logger, self.label, self.total, self.unit, self.every_s = logger, label, total, unit, every_s
        self.t0 = self.t_last = t0
        self.step = max(1, round(total * EVERY_SHARE))
        self.last: int | None = None

    def __call__(self, done: int, note: str) -> None:
        now = time.monotonic()
        crossed = self.last is None or done // self.step > self.last // self.step
        if done != self.last and (crossed or done >= self.total or now - self.t_last >= self.every_s):
            self.logger.info(_line(self.label, done, self.total, self.unit, note, now - self.t0))
            self.last, self.t_last = done, now


def _line(label: str, done: int, total: int, unit: str, note: str, seconds: float) -> str:
    return f"{label}: {done}/{total}{f' {unit}' if unit else ''}{f' {note}' if note else ''} ({seconds:.0f} s)"
