"""Toy-sized pipeline inputs shared by the end-to-end tests: a small digits folder and tiny params."""

import subprocess
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

TINY = [  # every step at toy size (the families' and the judge's tiny configs); seconds per run on one CPU thread
    "model.family=vae", "model.vae.steps=2", "model.vae.batch_size=8", "model.vae.latent_dim=4", "model.vae.channels=8",
    "model.vae.embed_dim=4", "model.vae.kl_warmup=2", "model.vae.checkpoint_every=0", "model.device=cpu",
    "generate.device=cpu", "plan.strategy=ratio", "plan.ratio=0.1", "plan.cap=2", "plan.overgenerate=1.0",
    "filter.judge.width=8", "filter.judge.feature_dim=16", "filter.judge.steps=10", "filter.judge.batch_size=32",
    "filter.topup_rounds=0", "filter.device=cpu", "privacy.attack_network.width=8",
    "privacy.attack_network.feature_dim=16", "privacy.attack_network.steps=10", "evaluate.classifier.width=8",
    "evaluate.classifier.feature_dim=16", "evaluate.classifier.steps=5", "evaluate.classifier.batch_size=32",
    "evaluate.trees=20", "evaluate.kid_subsets=2",
    "evaluate.kid_subset_size=20", "evaluate.fid_min_samples=10", "evaluate.device=cpu",
    # A 5-step classifier on a 2-step generator measures noise: the utility gate has its own tests (test_gate.py).
    "publish.utility_gate=false"]
COUNTS = {"0": 30, "1": 30, "2": 30, "3": 8}  # "3" is the scarce class


def digits_folder(root: Path, counts: dict[str, int] = COUNTS) -> Path:
    """``<root>/<label>/<i>.png`` from scikit-learn's bundled digits (8x8, 17 grey levels, scaled to 0-255)."""
    digits = load_digits()
    for label, n in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(digits.images[digits.target == int(label)][:n]):
            Image.fromarray((image * 255 / 16).astype(np.uint8)).save(root / label / f"{i}.png")
    return root


def registry_tags(registry: Path) -> list[str]:
    """The version tags (``<name>/v<N>``, ``<name>-generator/v<N>``) of a data registry; none where there is none."""
    if not registry.exists():
        return []
    return subprocess.run(["git", "-C", str(registry), "tag", "--list", "*/v*"], capture_output=True, text=True,
                          check=True).stdout.split()
