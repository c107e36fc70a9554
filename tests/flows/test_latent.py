"""`synthaug run` with latent diffusion end to end at toy size on the CPU: RGB at 128 px, DICOM CT at 64 px."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.datasets import load_digits

from synthaug.models.judge import load_judge
from synthaug.tasks.core.io.manifest import read_manifest
from tests.markers import integration, slow
from tests.medical import dicom_digits_folder
from tests.toy import COUNTS, TINY

pytestmark = [integration, slow]

REPO = Path(__file__).resolve().parents[2]
# The latent family at toy size: 1 autoencoder step, then 2 UNet steps; the autoencoder halves twice (f = 4).
LATENT_TINY = [
    "model.family=latent_diffusion", "model.latent_diffusion.steps=3", "model.latent_diffusion.autoencoder_steps=1",
    "model.latent_diffusion.batch_size=4", "model.latent_diffusion.channels=[8,16]",
    "model.latent_diffusion.attention_levels=[false,true]", "model.latent_diffusion.norm_num_groups=4",
    "model.latent_diffusion.num_head_channels=8", "model.latent_diffusion.ae_channels=[8,8,8]",
    "model.latent_diffusion.latent_channels=2", "model.latent_diffusion.sample_steps=2",
    "model.latent_diffusion.sample_batch_size=4", "model.latent_diffusion.checkpoint_every=0"]
TINTS = {"0": (1.0, 0.2, 0.2), "1": (0.2, 1.0, 0.2), "2": (0.2, 0.2, 1.0), "3": (1.0, 1.0, 0.2)}


def rgb_digits_folder(root: Path) -> Path:
    """``<root>/<label>/<i>.png``: scikit-learn's digits as RGB images, each class tinted its own colour."""
    digits = load_digits()
    for label, n in COUNTS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(digits.images[digits.target == int(label)][:n]):
            rgb = (image[..., None] * 255 / 16 * np.array(TINTS[label])).astype(np.uint8)
            Image.fromarray(rgb, mode="RGB").save(root / label / f"{i}.png")
    return root


def run(tmp_path: Path, source: Path, *extra: str) -> Path:
    overrides = [*(t for t in TINY if not t.startswith("model.")), "model.device=cpu", *LATENT_TINY,
                 f"data.source={source}", f"publish.registry={tmp_path / 'registry'}",
                 f"publish.remote={tmp_path / 'remote'}", "publish.name=toy", *extra]
    work = tmp_path / "work"
    # The real command line in its own process (as a user runs it), with the test environment (conftest.py).
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "synthaug", "run", "-w", str(work),
                           *(a for o in overrides for a in ("-S", o))], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return work


def check_latent_outputs(work: Path, shape: tuple[int, int, int]) -> None:
    """The two training stages, both checkpoints, and generated images of ``shape``."""
    summary = json.loads((work / "model" / "train.json").read_text())
    assert summary["family"] == "latent_diffusion" and summary["peak_mib"] > 0
    ae = summary["autoencoder"]
    assert ae["steps"] == 1 and ae["reconstruction"]["split"] == "val" and ae["reconstruction"]["images"] > 0
    assert np.isfinite(ae["reconstruction"]["psnr_db"]) and ae["latent_scale"] > 0
    bundle = torch.load(work / "model" / "autoencoder" / "models" / "model.pt", weights_only=True)
    assert set(bundle) == {"autoencoder"} and bundle["autoencoder"]
    log = [json.loads(line) for line in (work / "model" / "train_log.jsonl").read_text().splitlines()]
    assert ["ae_loss" in r for r in log] == [True, False, False] and all(r["peak_mib"] > 0 for r in log)
    # every generated image (toy weights: the filter may reject them all before publishing)
    generated, _ = read_manifest(work / "generate" / "manifest.parquet")
    synthetic = generated[generated["source"] == "synthetic"]
    assert not synthetic.empty and (synthetic["channels"] == shape[0]).all()
    for rel in synthetic["path"]:
        with Image.open(work / "generate" / rel) as img:
            assert img.size == shape[1:] and img.mode == ("RGB" if shape[0] == 3 else "L")


def test_latent_diffusion_runs_end_to_end_on_rgb_at_128_px(tmp_path) -> None:
    work = run(tmp_path, rgb_digits_folder(tmp_path / "source"), "data.image_size=128", "data.channels=3")
    check_latent_outputs(work, (3, 128, 128))
    judge = load_judge(work / "judge" / "judge.pt")
    assert judge.image_shape == (3, 128, 128) and judge.backbone == "resnet"
    real = pd.read_parquet(work / "ingest" / "manifest.parquet")
    with Image.open(work / "ingest" / real["path"].iloc[0]) as img:
        pixels = np.asarray(img)
    assert pixels.shape == (128, 128, 3) and np.ptp(pixels.reshape(-1, 3).mean(0)) > 10  # tinted, not grey


def test_latent_diffusion_runs_end_to_end_on_windowed_dicom_at_64_px(tmp_path) -> None:
    source = dicom_digits_folder(tmp_path / "scans", COUNTS)
    work = run(tmp_path, source, "data.image_size=64", "data.window_center=-200", "data.window_width=1600")
    check_latent_outputs(work, (1, 64, 64))
    _, metadata = read_manifest(work / "ingest" / "manifest.parquet")
    assert metadata["intensity"]["unit"] == "HU"
    assert load_judge(work / "judge" / "judge.pt").backbone == "vgg"
