"""The tiny pipeline workdir many tests read, built once per test run (a session fixture): real digits 0-3 with "3"
scarce (heldback rows too), a judge trained with a tiny config, and a filter result of perturbed and copied images.

Tests read these folders and never write into them: a test that changes a workdir works on ``copy_workdir``.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console

from synthaug.models import metrics as M
from synthaug.models.config import JudgeConfig
from synthaug.tasks.core.io.images import write_png
from synthaug.tasks.core.io.manifest import write_manifest
from synthaug.tasks.core.params.evaluate import EvaluateParams
from synthaug.tasks.evaluate.step import evaluate_step
from synthaug.tasks.judge import train_judge_step

CLASSES = ("0", "1", "2", "3")
TRAIN = {"0": 25, "1": 25, "2": 25, "3": 4}  # "3" is the scarce class
VAL, TEST, HELDBACK = 4, 12, 20  # per class; heldback only for "3"
NASTY_REASON = 'label: <script>alert("x")</script> & co'  # must come out escaped in the report
TINY = JudgeConfig(width=8, feature_dim=16, steps=40, batch_size=32)
SEEDS = 3


def tiny_params(**overrides: Any) -> EvaluateParams:
    return EvaluateParams(**{"seeds": SEEDS, "classifier": TINY, "kid_subsets": 10, "fid_min_samples": 10,
                             "device": "cpu", "choose_on_validation": True, **overrides})


def real_row(path: str, image_id: str, label: str, split: str) -> dict:
    return {"image_id": image_id, "path": path, "label": label, "split": split, "source": "real", "generator": None,
            "checkpoint": None, "seed": None, "accepted": True, "reject_reason": None, "height": 16, "width": 16,
            "channels": 1}


def upscale(digit: np.ndarray) -> np.ndarray:
    """One 8x8 scikit-learn digit (0..16) -> 16x16x1 uint8."""
    pixels = np.round(digit * 255 / 16).astype(np.uint8)
    return np.kron(pixels, np.ones((2, 2), dtype=np.uint8))[..., None]


def build_workdir(root: Path) -> dict[str, Path]:
    """A tiny pipeline workdir: ``ingest`` (real digits 0-3, "3" scarce with heldback rows), ``judge`` (trained by
    the judge step with a tiny config) and ``filter`` (synthetic rows made by perturbing heldback "3" images and
    train "1" images, one exact copy of a train image, accepted and rejected ones, ``filter_summary.json``)."""
    from sklearn.datasets import load_digits

    digits = load_digits(n_class=len(CLASSES))
    ingest, filt = root / "ingest", root / "filter"
    rows = []
    kept: dict[str, dict[str, list[np.ndarray]]] = {c: {} for c in CLASSES}
    for label in CLASSES:
        order = np.flatnonzero(digits.target == int(label))
        quota = [("test", TEST), ("val", VAL), ("train", TRAIN[label]), ("heldback", HELDBACK if label == "3" else 0)]
        pos = 0
        for split, n in quota:
            for index in order[pos:pos + n]:
                pixels = upscale(digits.images[index])
                path = f"images/{label}/d{index:04d}.png"
                rows.append(real_row(path, write_png(pixels, ingest / path), label, split))
                kept[label].setdefault(split, []).append(pixels)
            pos += n
    frame = pd.DataFrame(rows)
    frame["seed"] = frame["seed"].astype("Int64")
    write_manifest(frame, ingest / "manifest.parquet")

    rng = np.random.default_rng(0)
    sources = [("3", p) for p in kept["3"]["heldback"][:16]] + [("1", p) for p in kept["1"]["train"][:6]]
    syn_rows, synthetic = [], []
    for label, pixels in sources:
        moved = np.roll(pixels.astype(np.float64), 1, axis=1) + rng.normal(0, 12, pixels.shape)
        synthetic.append((label, np.clip(np.round(moved), 0, 255).astype(np.uint8)))
    synthetic.append(("1", kept["1"]["train"][7]))  # an exact copy: the top memorization pair
    # The filter's reasons (tasks.filter.REJECT_REASONS), and one with markup that must come out escaped.
    reasons = {3: "memorized_pixel", 7: "unrealistic", 11: NASTY_REASON, 20: "near_duplicate"}
    train_px = torch.from_numpy(np.stack([p for c in CLASSES for p in kept[c]["train"]])).float()
    for seed, (label, pixels) in enumerate(synthetic):
        path = f"images/{label}/{label}_s{seed}.png"
        corr = float(M.nearest_correlation(torch.from_numpy(pixels[None]).float(), train_px).correlation[0])
        syn_rows.append({"image_id": write_png(pixels, filt / path), "path": path, "label": label, "split": "train",
                         "source": "synthetic", "generator": "diffusion", "checkpoint": "ab" * 32, "seed": seed,
                         "accepted": seed not in reasons, "reject_reason": reasons.get(seed), "height": 16,
                         "width": 16, "channels": 1, "score_nn_pixel_corr": corr})
    syn = pd.DataFrame(syn_rows)
    syn["seed"] = syn["seed"].astype("Int64")
    write_manifest(syn, filt / "manifest.parquet")
    summary = {"met": True, "shortfall": {}, "feature_space": "judge", "thresholds": {"min_confidence": 0.5},
               "classes": {c: {"generated": int((syn["label"] == c).sum()), "accepted": int(syn["accepted"][
                   syn["label"] == c].sum()), "acceptance_rate": 0.75 if c in ("1", "3") else None, "needed": 0,
                   "shortfall": 0, "met": True} for c in CLASSES}}  # the fields evaluate reads, as the filter writes
    (filt / "filter_summary.json").write_text(json.dumps(summary))
    train_judge_step(ingest / "manifest.parquet", TINY, root / "judge", device="cpu",
                     console=Console(file=io.StringIO()))
    return {"ingest": ingest, "filter": filt, "judge": root / "judge", "evaluate": root / "evaluate",
            "report": root / "report"}


def copy_workdir(dirs: dict[str, Path], root: Path) -> dict[str, Path]:
    """A private copy of the ``ingest``, ``filter`` and ``judge`` folders of ``dirs`` under ``root``."""
    copied = {}
    for name in ("ingest", "filter", "judge"):
        copied[name] = shutil.copytree(dirs[name], root / name)
    return {**copied, "evaluate": root / "evaluate", "report": root / "report"}


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``build_workdir`` once per test run (read only: see ``copy_workdir``)."""
    return build_workdir(tmp_path_factory.mktemp("tiny-workdir"))


@pytest.fixture(scope="session")
def evaluated_workdir(tiny_workdir: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny workdir evaluated once (``tiny_params``, two worker processes), its console output in ``log``."""
    log = io.StringIO()
    out = tmp_path_factory.mktemp("evaluated") / "evaluate"
    evaluate_step(tiny_workdir["ingest"], tiny_workdir["filter"], tiny_workdir["judge"], tiny_params(), out,
                  console=Console(file=log, width=120), processes=2)
    return {**tiny_workdir, "evaluate": out, "log": log}
