"""The train step's data paths: the set held on the device, or streamed from host memory as 8-bit pixels."""

from __future__ import annotations

import json

import torch

from synthaug.models.config import VAEConfig
from synthaug.models.training import fit, load_checkpoint
from synthaug.models.vae import VAE
from synthaug.tasks.core.params.data import DataParams
from synthaug.tasks.core.params.model import ModelParams
from synthaug.tasks.ingest import ingest
from synthaug.tasks.train.step import train
from tests.toy import digits_folder


def test_uint8_images_train_exactly_like_their_float_copy() -> None:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (12, 1, 16, 16), generator=g, dtype=torch.uint8)
    labels = torch.arange(12) % 3
    losses = []
    for images in (pixels.float() / 127.5 - 1.0, pixels):
        torch.manual_seed(0)
        model = VAE(VAEConfig.tiny(), image_shape=(1, 16, 16), num_classes=3, device=torch.device("cpu"))
        seen: list[dict[str, float]] = []
        fit(model, images, labels, seed=3, class_names=["a", "b", "c"],
            on_step=lambda s, loss, seen=seen: seen.append(loss))
        losses.append(seen)
    assert losses[0] == losses[1]


def test_a_set_over_the_limit_is_streamed_and_trains_the_same_weights(tmp_path) -> None:
    source = digits_folder(tmp_path / "digits", {"0": 10, "1": 10})
    manifest = ingest(DataParams(source=str(source)), tmp_path / "ingest", cache_dir=tmp_path / "cache").manifest_path
    vae = {"steps": 3, "batch_size": 8, "latent_dim": 4, "channels": 8, "embed_dim": 4, "kl_warmup": 2,
           "checkpoint_every": 0}
    held = train(manifest, ModelParams(family="vae", device="cpu", vae=vae), tmp_path / "held")
    streamed = train(manifest, ModelParams(family="vae", device="cpu", vae=vae, device_dataset_mb=0),
                     tmp_path / "streamed")
    assert held.summary["dataset"].startswith("on cpu as float32")
    assert streamed.summary["dataset"].startswith("streamed from host memory as uint8")
    assert json.loads((tmp_path / "streamed" / "train.json").read_text())["dataset"] == streamed.summary["dataset"]
    assert held.summary["peak_mib"] > 0 and "autoencoder" not in held.summary
    a, _, _ = load_checkpoint(held.checkpoint_dir, torch.device("cpu"))
    b, _, _ = load_checkpoint(streamed.checkpoint_dir, torch.device("cpu"))
    for (key, x), y in zip(a.net.state_dict().items(), b.net.state_dict().values(), strict=True):
        assert torch.equal(x, y), key
