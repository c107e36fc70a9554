"""Shards: a step's work cut into pieces that run anywhere, each finished piece written once, atomically.

A shard is a contiguous slice of a step's work list (the generate step's (class, seed) jobs, the filter's
images to score) with a key: the sha256 of everything its output depends on. A shard writes its output files
first and its parquet table last, atomically (temp file + rename) with the key in the table's metadata, so a
table on disk means a finished shard. A re-run skips every shard whose table exists with the same key; a killed
run loses only the shards it had not finished, and never leaves a half-written file under a final name.

Where the shards run is the caller's choice: a ``RunShards`` function takes a shard function and the keyword
arguments of each call. ``run_in_process`` runs them one after the other; ``flows.runners`` submits them to a
Prefect task runner (threads, Dask or Ray).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from synthaug.tasks.core.io.files import atomic_path
from synthaug.tasks.core.io.manifest import METADATA_KEY

SHARDS_DIR = "shards"



class RunShards(Protocol):
    """Call ``fn(**kwargs, rank=...)`` for every kwargs of ``calls`` and return the results in call order.

    ``rank`` is the index of the worker the call runs on (or of the call, where workers have no index): it picks
    the worker's GPU (``models.common.pick_device``). ``on_done(i)`` is called as call i finishes.
    """

    def __call__(self, fn: Callable[..., Any], calls: Sequence[dict[str, Any]], *,
                 on_done: Callable[[int], None] | None = None) -> list[Any]: ...


def run_in_process(fn: Callable[..., Any], calls: Sequence[dict[str, Any]], *,
                   on_done: Callable[[int], None] | None = None) -> list[Any]:
    """The calls one after the other in this process (functions called without a flow, tests)."""
    results = []
    for i, kwargs in enumerate(calls):
        results.append(fn(**kwargs, rank=0))
        if on_done is not None:
            on_done(i)
    return results


@dataclass(frozen=True)
class Shard:
    """Items ``start:stop`` of a work list; ``path`` is the shard's table, written last, holding ``key``."""

    index: int
    start: int
    stop: int
    key: str
    path: Path


def digest(*parts: Any) -> str:
    """sha256 of JSON-encoded parts: a shard key from what its output depends on."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def cut(items: Sequence[Any], size: int, directory: Path, prefix: str, context: Any) -> list[Shard]:
    """Shards of ``size`` items (the last may be smaller), keyed on ``context`` and their own items."""
    if size < 1:
        raise ValueError(f"shard size must be >= 1, got {size}")
    shards = []
    for index, start in enumerate(range(0, len(items), size)):
        stop = min(start + size, len(items))
        key = digest(context, list(items[start:stop]))
        shards.append(Shard(index, start, stop, key, directory / f"{prefix}-{index:05d}-{key[:16]}.parquet"))
    return shards


def write_table(table: pa.Table, path: Path, key: str | None = None) -> Path:
    """Write ``table`` atomically (temp file + rename), with the shard ``key`` in its metadata when given."""
    if key is not None:
        meta = dict(table.schema.metadata or {})
        meta[METADATA_KEY] = json.dumps({**json.loads(meta.get(METADATA_KEY, b"{}")), "shard_key": key}).encode()
        table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def finished(shard: Shard) -> bool:
    """The shard's table exists and was written for the same key."""
    if not shard.path.is_file():
        return False
    try:
        meta = pq.read_schema(shard.path).metadata or {}
        return json.loads(meta.get(METADATA_KEY, b"{}")).get("shard_key") == shard.key
    except (OSError, ValueError, pa.ArrowException):  # truncated or not parquet: not finished
        return False


def concat_tables(paths: Iterable[Path], out: Path, schema: pa.Schema) -> Path:
    """Stream the tables at ``paths``, in order, into one parquet file ``out`` (atomically); one table in
    memory at a time, so the step table of any number of shards fits in a fixed memory bound."""
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for path in paths:
            writer.write_table(pq.read_table(path).select(schema.names).cast(schema))
    return out


def remove_stale(directory: Path, prefix: str, keep: Iterable[Path]) -> None:
    """Delete ``prefix`` shard tables other than ``keep`` (an earlier plan, shard size or checkpoint)."""
    wanted = {p.name for p in keep}
    for f in sorted(directory.glob(f"{prefix}-*.parquet")) if directory.is_dir() else []:
        if f.name not in wanted:
            f.unlink()


def remove_temporaries(directory: Path) -> None:
    """Delete ``*.tmp`` files a killed run left under ``directory`` (never read: only renames publish a file)."""
    for f in sorted(directory.rglob("*.tmp")) if directory.is_dir() else []:
        if f.is_file():
            f.unlink()
