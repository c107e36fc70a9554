"""The ``judge`` step: train the judge classifier on the real train split, calibrate it on val, save it.

The judge (``models.judge``) is the label-consistency test of the filter and, through its penultimate features,
the default feature space of every distance, realism and distribution metric. ``embed`` is the one way the later
steps (filter, evaluate, report) turn images into features, so they all measure in the same space: the judge's,
or a user-supplied local extractor file when one is configured (nothing is downloaded).

Outputs in ``<out_dir>``: ``judge.pt`` (``models.judge.save_judge``) and ``judge.json`` (class names in index order,
train and val sizes, val accuracy, NLL and ECE before and after temperature scaling, the temperature, the config).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

from synthaug.models.common import pick_device
from synthaug.models.config import JudgeConfig
from synthaug.models.judge import Judge, balanced_class_weights, fit_temperature, save_judge, train_judge
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.files import write_atomic
from synthaug.tasks.core.io.images import load_images
from synthaug.tasks.core.io.manifest import read_manifest
from synthaug.tasks.core.labels import natural_key
from synthaug.tasks.core.scoring.features import INFO_FILE, JUDGE_FILE

ECE_BINS = 10


def train_judge_step(ingest_manifest: Path, config: JudgeConfig, out_dir: Path, *, device: str = "auto",
                     console: Console | None = None) -> Path:
    """Train the judge on the real train split of ``ingest_manifest``; calibrate on val; write ``out_dir``.

    Classes are indexed in natural order of the train labels (the planner's and the generators' order).
    The loss uses balanced class weights (n / (K * count_k)): the data this project serves is imbalanced, and an
    unweighted judge would doubt every image of a scarce class. The temperature is fitted on the real val images
    of the judge's classes; without any, the judge stays uncalibrated (T = 1) and ``judge.json`` says so.

    Args:
        ingest_manifest: the ingest step's ``manifest.parquet`` (images are read relative to its folder).
        config: network size and recipe (the ``filter.judge`` section).
        out_dir: folder for ``judge.pt`` and ``judge.json`` (created when absent).
        device: ``auto``, ``cpu`` or ``cuda``: where the judge trains.
        console: where the summary line is printed (stderr by default).

    Returns:
        The path of ``judge.pt``.

    Raises:
        UserError: the manifest is missing, or its train split has fewer than two classes.
    """
    console = console or Console(stderr=True)
    frame, _ = read_manifest(ingest_manifest)
    real = frame[frame["source"] == "real"]
    train = real[real["split"] == "train"]
    class_names = sorted({str(v) for v in train["label"]}, key=natural_key)
    if len(class_names) < 2:
        raise UserError(f"{ingest_manifest}: the judge needs real train images of at least two classes, "
                        f"found {class_names}")
    index = {name: i for i, name in enumerate(class_names)}
    channels = int(train["channels"].iloc[0])
    root = ingest_manifest.parent
    x = load_images(root, list(train["path"]), channels)
    y = torch.tensor([index[str(v)] for v in train["label"]], dtype=torch.int64)
    val = real[(real["split"] == "val") & real["label"].astype(str).isin(index)]
    torch_device = pick_device(device)

    start = time.perf_counter()
    judge = train_judge(x, y, num_classes=len(class_names), config=config, device=torch_device,
                        class_weights=balanced_class_weights(y, len(class_names)))
    seconds = time.perf_counter() - start
    info: dict = {
        "class_names": class_names,
        "image_shape": list(judge.image_shape),
        "train_size": len(y),
        "train_per_class": {name: int((y == i).sum()) for i, name in enumerate(class_names)},
        "val_size": len(val),
        "config": dataclasses.asdict(config),
        "device": str(torch_device),
        "train_seconds": round(seconds, 2),
        "temperature": 1.0,
        "calibrated": False,
    }
    if len(val):
        vx = load_images(root, list(val["path"]), channels)
        vy = torch.tensor([index[str(v)] for v in val["label"]], dtype=torch.int64)
        before = _calibration_stats(judge, vx, vy)
        temperature = fit_temperature(judge, vx, vy)
        after = _calibration_stats(judge, vx, vy)
        info.update(temperature=temperature, calibrated=True,
                    val_before={k: round(v, 6) for k, v in before.items()},
                    val_after={k: round(v, 6) for k, v in after.items()})
    else:
        console.print(f"[yellow]warning:[/] {ingest_manifest}: no real val images of the judge's classes; "
                      "the judge is not calibrated (temperature 1), so filter.min_confidence reads raw softmax")

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / JUDGE_FILE
    save_judge(judge.cpu(), path)
    write_atomic(json.dumps(info, indent=2), out_dir / INFO_FILE)
    acc = info.get("val_after", {}).get("accuracy")
    console.print(f"judge: {len(class_names)} classes, {len(y)} train images, {seconds:.1f} s"
                  + (f", val accuracy {acc:.3f}, temperature {info['temperature']:.3f}" if acc is not None else ""))
    return path


def _calibration_stats(judge: Judge, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, NLL and expected calibration error (ECE, 10 equal-width confidence bins) of calibrated probs."""
    proba = judge.predict_proba(images).double()
    conf, pred = proba.max(dim=1)
    correct = (pred == labels).double()
    nll = F.nll_loss(proba.clamp_min(1e-12).log(), labels).item()
    bins = (conf * ECE_BINS).ceil().clamp(1, ECE_BINS)  # bin b holds confidences in ((b-1)/B, b/B]
    ece = 0.0
    for b in range(1, ECE_BINS + 1):
        inside = bins == b
        if inside.any():
            ece += float(inside.double().mean() * (conf[inside].mean() - correct[inside].mean()).abs())
    return {"accuracy": float(correct.mean()), "nll": nll, "ece": ece}
