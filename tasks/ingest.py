"""Ingest: read a source dataset into a normalized working copy plus ``manifest.parquet``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tasks.params_base import Section


class DataParams(Section):
    """``data`` section of params.yaml.

    source: ``example:digits`` (the bundled example, written on first use), a local path (image folder,
      CSV/parquet table or ``.npz``), or a path inside the DVC/git repository ``repo`` at revision ``rev``.
    """

    source: str = "example:digits"
    repo: str | None = None
    rev: str | None = None
    image_size: int = Field(16, ge=4, le=1024)
    channels: Literal[1, 3] = 1
    min_size: int = Field(8, ge=1)
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    split_seed: int = 0
