"""The ``data`` section: where the source is and how its images are normalized."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from synthaug.tasks.core.errors import refuse_credentials
from synthaug.tasks.core.params.base import Section

WindowPreset = Literal["lung", "mediastinum", "soft_tissue", "bone", "brain"]


class DataParams(Section):
    """``data`` section: where the source is, how its images are normalized and split.

    source: ``example:digits`` (the bundled example, written on first use), a local path (image folder,
      CSV/parquet table or ``.npz``), or a path inside the DVC/git repository ``repo`` at revision ``rev``.
    repo: a git/DVC repository (URL or local path) holding ``source``; null: ``source`` is local. Credentials go
      into git's credential helper or DVC's remote config, never into the URL (one with a password, a token or a
      secret query parameter is refused).
    rev: the revision of ``repo`` (branch, tag or commit); null: its HEAD.
    image_size: side of the square every image is resized to (Pillow's bilinear filter, antialiased when shrinking;
      non-square images are stretched, not cropped).
    channels: every image is converted to 1 (grayscale) or 3 (RGB) channels; an alpha channel is dropped.
    min_size: images narrower or shorter than this many pixels (at the source size) are quarantined.
    val_fraction: share of each class's images drawn into val, for images the source gives no split (per source
      item: the slices of one volume share a split); a class too small for the fractions keeps at least one
      training image.
    test_fraction: share of each class's images drawn into test, in the same draw.
    split_seed: seed of that draw.
    window: a CT window preset (``tasks.core.sources.medical.WINDOW_PRESETS``) for DICOM/NIfTI sources, or null.
    window_center, window_width: an explicit window in physical units (both or neither; not with ``window``).
      With neither, the physical range of the stored bits is the window.
    slice_axis: the array axis a 3D volume (NIfTI, DICOM series) is cut into 2D slices along.
    slices: ``all`` or ``start:stop`` (first slice, one past the last) along ``slice_axis``.
    """

    source: str = "example:digits"
    repo: str | None = None
    rev: str | None = None
    image_size: int = Field(8, ge=4, le=1024)
    channels: Literal[1, 3] = 1
    min_size: int = Field(8, ge=1)
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    split_seed: int = 0
    window: WindowPreset | None = None
    window_center: float | None = None
    window_width: float | None = Field(None, gt=0, validate_default=True)
    slice_axis: Literal[0, 1, 2] = 2
    slices: str = "all"

    @field_validator("repo")
    @classmethod
    def _no_secrets(cls, value: str | None) -> str | None:
        if value is not None:
            refuse_credentials(value, "data.repo")
        return value

    @field_validator("window_width")
    @classmethod
    def _one_window(cls, width: float | None, info: ValidationInfo) -> float | None:
        if (width is None) != (info.data.get("window_center") is None):
            raise ValueError("set data.window_center and data.window_width together, or neither")
        if width is not None and info.data.get("window") is not None:
            raise ValueError("data.window (a preset) and data.window_center/width exclude each other; keep one")
        return width

    @field_validator("test_fraction")
    @classmethod
    def _room_for_train(cls, test: float, info: ValidationInfo) -> float:
        val = info.data.get("val_fraction")
        if val is not None and val + test >= 1.0:
            raise ValueError(f"data.val_fraction={val} + data.test_fraction={test} leaves no share for train; keep "
                             "their sum below 1 (e.g. 0.15 each)")
        return test

    @field_validator("slices", mode="before")
    @classmethod
    def _slice_range(cls, value: Any) -> str:
        # YAML reads an unquoted 10:20 as the base-60 number 620, hence the hint.
        match = re.fullmatch(r"(\d+):(\d+)", value.strip()) if isinstance(value, str) else None
        if value != "all" and (match is None or int(match[1]) >= int(match[2])):
            raise ValueError("expected 'all' or 'start:stop' with start < stop (quoted in YAML: '10:20')")
        return value.strip()

    @property
    def slice_range(self) -> tuple[int, int] | None:
        """``slices`` as (start, stop); None for all."""
        if self.slices == "all":
            return None
        start, stop = self.slices.split(":")
        return int(start), int(stop)
