"""Where the generate and filter steps run their shards: a Prefect task runner chosen by the ``runner`` params
(and how many local processes the evaluate step's classifier runs use: ``cpu_processes``).

``with shard_runner(params, name) as run_shards`` gives a ``tasks.core.io.shards.RunShards``: each call becomes one
Prefect task run of a flow named ``name``, submitted to threads in this process (``ThreadPoolTaskRunner``), a Dask
cluster (``prefect-dask``'s ``DaskTaskRunner``: a ``LocalCluster`` living as long as the ``with`` block, or an existing
scheduler) or a Ray cluster (``prefect-ray``'s ``RayTaskRunner``). Called inside a running flow (the ``augment``
flow's step task) it is a nested flow run; called from the CLI or ``dvc repro`` it is a flow run of its own.

The runner never changes what a step writes (a synthetic image is a function of checkpoint, class and seed; a
classifier run uses one thread whatever the process count), so the ``runner`` section is in no step's cache key.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.shards import RunShards
from synthaug.tasks.core.params.runner import RunnerParams

DASK_MISSING = "runner.kind=dask needs prefect-dask: pip install 'synthaug[dask]'"


def local_workers(params: RunnerParams) -> int:
    if params.workers is not None:
        return params.workers
    import torch

    return max(1, torch.cuda.device_count())


def task_runner(params: RunnerParams, address: str | None = None):
    """The Prefect task runner ``params`` names; ``address``: the Dask scheduler of ``cluster(params)``."""
    if params.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=local_workers(params))
    if params.kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise UserError(DASK_MISSING) from None
        return DaskTaskRunner(address=address or params.address)
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise UserError("runner.kind=ray needs prefect-ray: pip install 'synthaug[ray]'") from None
    if params.address:
        return RayTaskRunner(address=params.address)
    api = _api_url()  # as for Dask: the local Ray workers report to this process's temporary server
    return RayTaskRunner(init_kwargs={"num_cpus": local_workers(params), "include_dashboard": False,
                                      "runtime_env": {"env_vars": {"PREFECT_API_URL": api}} if api else {}})


@contextlib.contextmanager
def cluster(params: RunnerParams) -> Iterator[str | None]:
    """For ``dask`` without an address: a ``LocalCluster`` of ``workers`` processes (one thread each) for as long
    as a step runs, shared by all its shard flows; yields its scheduler address (None for other runners)."""
    if params.kind != "dask" or params.address:
        yield None
        return
    try:
        from distributed import LocalCluster
    except ImportError:
        raise UserError(DASK_MISSING) from None
    # With a temporary Prefect server (no API URL set), point the workers at this process's: otherwise each
    # worker would start its own.
    api = _api_url()
    with LocalCluster(n_workers=local_workers(params), threads_per_worker=1, processes=True,
                      env={"PREFECT_API_URL": api} if api else {}) as local:
        yield local.scheduler_address


def worker_rank(call_index: int) -> int:
    """The index of the worker running this call: a Dask worker's name in a ``LocalCluster`` (0, 1, ...), else
    the call's own index (threads: consecutive calls run side by side; Ray hands each task its own GPU)."""
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):  # not on a Dask worker
        return call_index
    return name if isinstance(name, int) else call_index


def _run_call(fn: Callable[..., Any], kwargs: dict[str, Any], call_index: int) -> Any:
    return fn(**kwargs, rank=worker_rank(call_index))


@contextlib.contextmanager
def shard_runner(params: RunnerParams, name: str) -> Iterator[RunShards]:
    """A ``RunShards`` submitting every call as a task of a flow ``name`` to the runner ``params`` names; a local
    Dask cluster lives as long as the ``with`` block."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    # The step's own cache key covers the shards; each shard skips itself when finished, so no task caching.
    shard_task = task(_run_call, name=f"{name}-shard", cache_policy=NO_CACHE, persist_result=False)

    with cluster(params) as address:
        def run(fn: Callable[..., Any], calls: Sequence[dict[str, Any]], *,
                on_done: Callable[[int], None] | None = None) -> list[Any]:
            if not calls:
                return []

            def shards() -> list[Any]:
                futures = [_submit(shard_task, params, fn, kwargs, i) for i, kwargs in enumerate(calls)]
                results = []
                for i, future in enumerate(futures):  # in call order; a failed shard raises here
                    results.append(wait_result(future))
                    if on_done is not None:
                        on_done(i)
                return results

            sharded = flow(shards, name=name, flow_run_name=f"{name}: {len(calls)} shards",
                           validate_parameters=False)
            return sharded.with_options(task_runner=task_runner(params, address))()

        yield run


POLL_S = 0.5  # the main thread wakes at least this often while it waits for workers


def wait_result(future: Any) -> Any:
    """``future.result()``, waking every ``POLL_S`` seconds meanwhile: a signal delivered to a worker thread is
    handled only when the main thread runs Python again, and a plain wait for a long shard would keep a SIGTERM
    waiting as long (``flows/stopping.py``)."""
    done = threading.Event()
    add = getattr(future, "add_done_callback", None)
    if add is None:
        return future.result()
    add(lambda _: done.set())
    while not done.wait(POLL_S):
        pass
    return future.result()


def _submit(shard_task, params: RunnerParams, fn: Callable[..., Any], kwargs: dict[str, Any], index: int):
    if params.kind == "ray" and params.gpus_per_shard:
        from prefect_ray.context import remote_options

        with remote_options(num_gpus=params.gpus_per_shard):
            return shard_task.submit(fn, kwargs, index)
    return shard_task.submit(fn, kwargs, index)


def _api_url() -> str | None:
    """This process's temporary Prefect server (started if need be); None when an API URL is set (the workers
    inherit it from the environment or the profile)."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the one Prefect's own client starts on demand (a per-process singleton)
    server.start()
    return server.api_url
