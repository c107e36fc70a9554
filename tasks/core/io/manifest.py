"""The manifest contract (README "The manifest"): one row per image, written with an explicit pyarrow schema.

Filter scores are extra float64 columns named ``score_<name>``; dataset-level facts (source revision,
content hash, ...) go into the parquet file's key-value metadata under ``synthaug``. Images sampled from a published
generator (``synthaug generate --generator``) name it there as ``generator_version`` (registry, tag, checkpoint);
every row's ``checkpoint`` column is that version's checkpoint hash.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.files import atomic_path

SPLITS = ("train", "val", "test", "heldback")  # heldback: real images withheld from training (the oracle set)
SOURCES = ("real", "synthetic")
SCORE_PREFIX = "score_"

SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),   # sha256 of the stored image file
    pa.field("path", pa.string(), nullable=False),       # POSIX, relative to the dataset root
    pa.field("label", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("generator", pa.string()),                  # family name; null for real rows
    pa.field("checkpoint", pa.string()),                 # sha256 of the weights; null for real rows
    pa.field("seed", pa.int64()),                        # null for real rows
    pa.field("accepted", pa.bool_(), nullable=False),
    pa.field("reject_reason", pa.string()),              # null when accepted
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("channels", pa.int32(), nullable=False),
])
COLUMNS = tuple(SCHEMA.names)
METADATA_KEY = b"synthaug"


def schema_for(frame: pd.DataFrame) -> pa.Schema:
    """The contract schema plus one float64 column per ``score_*`` column present in ``frame``."""
    scores = sorted(c for c in frame.columns if c.startswith(SCORE_PREFIX))
    return pa.schema(list(SCHEMA) + [pa.field(c, pa.float64()) for c in scores])


def check_rows(frame: pd.DataFrame) -> None:
    """Raise ValueError naming the column and the bad values when ``frame`` breaks the contract."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"manifest is missing columns {missing}")
    for column, allowed in (("split", SPLITS), ("source", SOURCES)):
        bad = sorted(set(frame[column]) - set(allowed))
        if bad:
            raise ValueError(f"manifest column {column!r} has values {bad}; allowed: {list(allowed)}")
    for p in frame["path"]:
        pp = PurePosixPath(p)
        if pp.is_absolute() or ".." in pp.parts or "\\" in p:
            raise ValueError(f"manifest path {p!r} must be POSIX, relative to the dataset root, without '..'")


def write_manifest(frame: pd.DataFrame, path: Path, metadata: dict[str, Any] | None = None) -> Path:
    """Validate and write ``frame`` (atomically: temp file + rename) with the explicit schema."""
    check_rows(frame)
    schema = schema_for(frame)
    if metadata:
        schema = schema.with_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    table = pa.Table.from_pandas(frame[list(schema.names)], schema=schema, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_manifest(path: Path | str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The manifest rows and the synthaug metadata stored with them."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: manifest not found; run the step that writes it first (e.g. `synthaug ingest`)")
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    # Int64 keeps the nullable seed column an integer (a plain to_pandas makes it float64).
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    return frame, (json.loads(raw) if raw else {})


def iter_manifest(path: Path, columns: Sequence[str] | None = None,
                  batch_rows: int = 65_536) -> Iterator[pd.DataFrame]:
    """The manifest's rows in chunks of at most ``batch_rows`` (pyarrow ``iter_batches``), only ``columns``:
    a step walking a large manifest holds one chunk at a time."""
    if not path.is_file():
        raise UserError(f"{path}: manifest not found; run the step that writes it first (e.g. `synthaug ingest`)")
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
        yield batch.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def read_manifests(paths: Iterable[Path]) -> pd.DataFrame:
    """The rows of several manifests (e.g. shard manifests), concatenated in order."""
    frames = [read_manifest(p)[0] for p in paths]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="Int64" if c == "seed" else object) for c in COLUMNS})
    return pd.concat(frames, ignore_index=True)
