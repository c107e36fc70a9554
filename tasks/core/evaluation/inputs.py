"""What the evaluate step and ``synthaug tune`` read: the real splits and the accepted synthetic images as tensors,
the minority classes, and their features in the space the filter used."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.evaluation.downstream import EvalData
from synthaug.tasks.core.io.images import load_images
from synthaug.tasks.core.io.results import FILTER_SUMMARY, real_rows, synthetic_rows
from synthaug.tasks.core.labels import natural_key
from synthaug.tasks.core.params.evaluate import EvaluateParams
from synthaug.tasks.core.scoring.features import embed, load_judge_step


def _load(root: Path, rows: pd.DataFrame, index: Mapping[str, int], shape: tuple[int, int, int]):
    c, h, w = shape
    if rows.empty:
        return torch.empty(0, c, h, w), torch.empty(0, dtype=torch.int64)
    x = load_images(root, list(rows["path"]), c)
    if tuple(x.shape[1:]) != shape:
        raise UserError(f"{root}: images are {tuple(x.shape[1:])} but the judge was trained on {shape}; "
                        "rerun the judge step on this data")
    return x, torch.tensor([index[v] for v in rows["label"]], dtype=torch.int64)


def read_data(ingest_dir: Path, filter_dir: Path | None, class_names: list[str],
              image_shape: tuple[int, int, int]) -> EvalData:
    """The real splits (``train``, ``val``, ``test``, ``heldback``; a split may be empty) and the accepted synthetic
    images as tensors; ``filter_dir`` None: no synthetic images."""
    real = real_rows(ingest_dir)
    synthetic = synthetic_rows(filter_dir) if filter_dir is not None else real.iloc[:0]  # the columns, no rows
    index = {name: i for i, name in enumerate(class_names)}
    for what, frame in (("real", real), ("synthetic", synthetic)):
        unknown = sorted(set(frame["label"]) - set(index), key=natural_key)
        if unknown:
            raise UserError(f"{what} images of classes {unknown} are not among the judge's classes {class_names}; "
                            "rerun the judge step on this data")
    split = {s: real[real["split"] == s] for s in ("train", "val", "test", "heldback")}
    loaded = {s: _load(ingest_dir, rows, index, image_shape) for s, rows in split.items()}
    accepted = synthetic[synthetic["accepted"].astype(bool)]
    syn_x, syn_y = _load(filter_dir or ingest_dir, accepted, index, image_shape)  # no rows without a filter_dir
    return EvalData(class_names, *loaded["train"], *loaded["val"], *loaded["test"], *loaded["heldback"],
                 syn_x, syn_y, synthetic)


def read_real(ingest_dir: Path) -> EvalData:
    """The real splits alone, before any judge or generator exists: the classes are every real label in natural
    order (as the judge orders its own), the image shape the manifest's."""
    real = real_rows(ingest_dir)
    if real.empty:
        raise UserError(f"{ingest_dir / 'manifest.parquet'}: no real images; run `synthaug ingest` first")
    first = real.iloc[0]
    shape = (int(first["channels"]), int(first["height"]), int(first["width"]))  # ingest gives every image one size
    return read_data(ingest_dir, None, sorted(set(real["label"]), key=natural_key), shape)


def default_minority(train_counts: Mapping[str, int]) -> list[str]:
    """Classes whose real train count is below half the largest."""
    largest = max(train_counts.values(), default=0)
    return [name for name, n in train_counts.items() if n < largest / 2]


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The data, its minority classes, the features of the real train then val images (``real_f``) and of the
    accepted synthetic images (``syn_f``), ``embed`` for more images, the extractor used and the filter summary."""

    data: EvalData
    minority: list[str]
    real_f: np.ndarray
    syn_f: np.ndarray
    embed: Callable[[torch.Tensor], np.ndarray]
    extractor: str | Path | None
    summary: dict[str, Any] | None


def read_inputs(ingest_dir: Path, filter_dir: Path, judge_dir: Path, params: EvaluateParams, *,
                extractor: str | Path | None = None, device: torch.device | str = "cpu") -> Inputs:
    """Read everything the utility measurements need (``Inputs``).

    ``extractor``: a local feature-extractor file; None: the one the filter used (``feature_space`` of
    ``filter_summary.json``), else the judge's penultimate features.

    Raises:
        UserError: a manifest or the judge is missing, there are no real test images, a class is unknown to the
            judge, or a ``minority_classes`` name is not a class.
    """
    judge, class_names = load_judge_step(judge_dir, device=device)
    data = read_data(ingest_dir, filter_dir, class_names, judge.image_shape)
    if data.test_x.shape[0] == 0:
        raise UserError(f"{ingest_dir / 'manifest.parquet'}: no real test images; utility is scored on the test "
                        "split (set data.test_fraction > 0 or give the source a test split)")
    if params.minority_classes is None:
        minority = default_minority({name: int((data.train_y == i).sum()) for i, name in enumerate(class_names)})
    else:
        unknown = [c for c in params.minority_classes if c not in class_names]
        if unknown:
            raise UserError(f"evaluate.minority_classes: {unknown} are not classes of this dataset "
                            f"({class_names})")
        minority = sorted(params.minority_classes, key=natural_key)
    summary_path = filter_dir / FILTER_SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if extractor is None and summary and summary.get("feature_space") not in (None, "judge"):
        extractor = summary["feature_space"]  # measure in the space the filter used

    def features(images: torch.Tensor) -> np.ndarray:
        return embed(images, judge, extractor=extractor).numpy()

    real_f = features(torch.cat([data.train_x, data.val_x]))
    syn_f = features(data.syn_x) if data.syn_x.shape[0] else np.empty((0, real_f.shape[1]), dtype=real_f.dtype)
    return Inputs(data, minority, real_f, syn_f, features, extractor, summary)
