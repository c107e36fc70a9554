"""The ``runner`` section: where shards and classifier runs execute (never what they write)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from synthaug.tasks.core.errors import refuse_credentials
from synthaug.tasks.core.params.base import Section

DEFAULT_SHARD_SIZE = 1024


class RunnerParams(Section):
    """``runner`` section: how the generate and filter steps' shards are run.

    kind: ``threads`` (in this process), ``dask`` or ``ray`` (pip extras ``synthaug[dask]`` / ``synthaug[ray]``).
    address: an existing cluster's scheduler (dask: ``tcp://host:8786``; ray: ``ray://host:10001``); null starts
      a local one (a Dask ``LocalCluster`` of ``workers`` processes, or a local Ray instance).
    workers: concurrent shards (threads, or local cluster workers); null: one per CUDA GPU, else 1.
    shard_size: images per shard, the unit that is skipped when a re-run finds it finished.
    gpus_per_shard: GPUs Ray reserves for each shard task (Ray then sets its ``CUDA_VISIBLE_DEVICES``); 0 on
      CPU-only clusters. Threads and Dask workers pick GPU ``worker index % GPUs`` themselves.
    cpu_processes: the evaluate step's classifier runs on the CPU go to this many local processes of one thread
      each (``tasks/core/evaluation/pool.py``; the same results for any count); null: one per CPU core.
    """

    kind: Literal["threads", "dask", "ray"] = "threads"
    address: str | None = None
    workers: int | None = Field(None, ge=1)
    shard_size: int = Field(DEFAULT_SHARD_SIZE, ge=1)
    gpus_per_shard: float = Field(0.0, ge=0.0)
    cpu_processes: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _address_needs_a_cluster(self) -> RunnerParams:
        if self.address and self.kind == "threads":
            raise ValueError(f"runner.address={self.address!r} needs runner.kind dask or ray (threads run here)")
        if self.address:
            refuse_credentials(self.address, "runner.address")
        return self


# The generate and filter steps' default. Each filter shard streams the whole real reference once: larger shards
# are faster, smaller ones lose less to a kill.
