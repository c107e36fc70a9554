"""Independent CPU runs (the evaluation's classifier trainings) spread over processes of one thread each.

A small network on small images keeps two intra-op threads only partly busy: on two cores the evaluation CNN
trained 1.1-1.3x faster with two threads than with one, while two one-thread processes side by side delivered
1.75-2.15x the runs (docs/BENCHMARKS.md, "Classifier runs in one-thread processes"). Every CPU run therefore uses
exactly one thread, in a worker process or, with one worker, in this process: floating-point sums then happen in
the same order whatever the worker count, so the results do not depend on it. On a GPU the runs go one after
another in this process.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

import numpy as np
import pandas as pd
import torch

_SHARED: Any = None  # a worker's copy of the data every run reads, sent once per worker (not once per run)
MEMORY_SHARE = 0.5  # the workers' copies of the shared data may take at most this share of the free memory
# Starting a worker (a new interpreter importing torch and the project) costs several seconds of both cores; below
# this much work the runs stay in this process (still one thread each, so the results are the same).
MIN_SPREAD_SECONDS = 60.0

POLL_S = 0.5  # seconds between wake-ups of the waiting main thread (flows/stopping.py)


def _init_worker(shared: Any) -> None:
    global _SHARED
    torch.set_num_threads(1)
    _SHARED = shared


def _call(fn: Callable[..., Any], job: tuple) -> Any:
    return fn(_SHARED, *job)


def nbytes(obj: Any) -> int:
    """Bytes of the arrays in ``obj`` (nested mappings, sequences and dataclasses): what a worker's copy holds."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, pd.DataFrame):
        return int(obj.memory_usage(deep=True).sum())
    if isinstance(obj, Mapping):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(nbytes(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(nbytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


def worker_count(requested: int | None, jobs: int, shared_bytes: int, work: float = math.inf) -> int:
    """Processes for ``jobs`` runs: ``requested``, or one per CPU this process may use when the runs' ``work``
    (one thread's seconds, roughly) is at least ``MIN_SPREAD_SECONDS``; never more than the runs, nor than
    ``MEMORY_SHARE`` of the free memory holds copies of ``shared_bytes`` (each worker keeps its own)."""
    if requested is None and work < MIN_SPREAD_SECONDS:
        return 1
    wanted = requested if requested is not None else len(os.sched_getaffinity(0))
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    by_memory = int(MEMORY_SHARE * free // max(1, shared_bytes))
    return max(1, min(wanted, jobs, by_memory))


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple], shared: Any, *, workers: int, device: torch.device,
             on_done: Callable[[tuple], None] | None = None) -> list[Any]:
    """``[fn(shared, *job) for job in jobs]``, in order; ``fn`` is a module-level function (workers import it).

    On the CPU each run uses one thread: in ``workers`` spawned processes, or in this process when ``workers`` is 1.
    Elsewhere (CUDA) the runs go in order in this process, as ``device`` is one device. ``on_done(job)`` is called
    in this process as each run finishes. A run's exception is raised here; the runs not yet started are cancelled.
    """
    results: list[Any] = [None] * len(jobs)
    if device.type != "cpu" or workers <= 1:
        threads = torch.get_num_threads()
        if device.type == "cpu":
            torch.set_num_threads(1)
        try:
            for i, job in enumerate(jobs):
                results[i] = fn(shared, *job)
                if on_done is not None:
                    on_done(job)
        finally:
            torch.set_num_threads(threads)
        return results
    # spawn, not fork: a forked child of a process that already runs torch's thread pools can deadlock.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(shared,))
    try:
        futures = {pool.submit(_call, fn, job): i for i, job in enumerate(jobs)}
        pending = set(futures)
        while pending:  # wake every POLL_S: a stop signal is handled only when this thread runs Python again
            finished, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=futures.__getitem__):
                i = futures[future]
                results[i] = future.result()
                if on_done is not None:
                    on_done(jobs[i])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results
