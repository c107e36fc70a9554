"""Pretrained starting points: MONAI bundle and diffusers-format folders the tests build themselves."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from synthaug.models.config import DiffusionConfig, LatentDiffusionConfig
from synthaug.models.diffusion import Diffusion
from synthaug.models.latent_diffusion import LatentDiffusion
from synthaug.models.training import fit, save_checkpoint
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.params.data import DataParams
from synthaug.tasks.core.params.model import ModelParams
from synthaug.tasks.ingest import ingest
from synthaug.tasks.train.pretrained import apply_pretrained, export_checkpoint, read_pretrained, write_bundle
from synthaug.tasks.train.step import train
from tests.markers import slow
from tests.toy import digits_folder

CPU = torch.device("cpu")
SHAPE = (1, 16, 16)


def diffusion(classes: list[str], seed: int = 0, **changes) -> Diffusion:
    torch.manual_seed(seed)
    config = dataclasses.replace(DiffusionConfig.tiny(), **changes)
    return Diffusion(config, image_shape=SHAPE, num_classes=len(classes), device=CPU)


def latent(classes: list[str], seed: int = 0) -> LatentDiffusion:
    torch.manual_seed(seed)
    return LatentDiffusion(LatentDiffusionConfig.tiny(), image_shape=SHAPE, num_classes=len(classes), device=CPU)


def trained_diffusion(classes: list[str], tmp_path: Path) -> tuple[Diffusion, Path]:
    model = diffusion(classes, seed=1)
    images = torch.rand((8, *SHAPE), generator=torch.Generator().manual_seed(0)) * 2 - 1
    fit(model, images, torch.arange(8) % len(classes), seed=0, class_names=classes)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(model, ckpt, step=model.config.steps, class_names=classes)
    return model, ckpt


def test_monai_bundle_maps_classes_by_name(tmp_path) -> None:
    source, ckpt = trained_diffusion(["a", "b", "c"], tmp_path)
    folder = tmp_path / "bundle"
    export_checkpoint(ckpt, folder)
    assert (folder / "configs" / "metadata.json").is_file() and (folder / "models" / "model.pt").is_file()
    pretrained = read_pretrained(folder)
    assert pretrained.layout == "monai-bundle" and pretrained.class_names == ["a", "b", "c"]

    model = diffusion(["b", "d", "c"], seed=5)
    fresh = model.ema.module.state_dict()["class_embedding.weight"].clone()
    notes = apply_pretrained(model, pretrained, ["b", "d", "c"])
    assert any("mapped by name: 2 of 3 (b, c); re-initialised: d" in n for n in notes), notes
    rows = model.net.state_dict()["class_embedding.weight"]
    src = source.ema.module.state_dict()["class_embedding.weight"]
    assert torch.equal(rows[0], src[1]) and torch.equal(rows[2], src[2]) and torch.equal(rows[3], src[3])
    assert torch.equal(rows[1], fresh[1]), "a class the folder does not know keeps its fresh initialisation"
    for key, value in source.ema.module.state_dict().items():
        if key != "class_embedding.weight":
            assert torch.equal(model.net.state_dict()[key], value), key
            assert torch.equal(model.ema.module.state_dict()[key], value), key


def test_diffusers_folder_loads_unet_and_autoencoder_and_reinitialises_an_unnamed_head(tmp_path) -> None:
    source = latent(["x", "y", "z", "w"], seed=3)
    source.latent_scale = 0.75
    for sub, net in (("unet", source.ema.module), ("vae", source.autoencoder)):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "config.json").write_text(json.dumps({"_class_name": "monai", "latent_scale": 0.75}))
        save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                  tmp_path / sub / "diffusion_pytorch_model.safetensors")
    pretrained = read_pretrained(tmp_path)
    assert pretrained.layout == "diffusers" and set(pretrained.parts) == {"unet", "autoencoder"}
    model = latent(["p", "q"], seed=9)
    fresh = model.net.state_dict()["class_embedding.weight"].clone()
    notes = apply_pretrained(model, pretrained, ["p", "q"])
    assert any("head re-initialised: the pretrained UNet has 4 classes, the data 2" in n for n in notes), notes
    assert torch.equal(model.net.state_dict()["class_embedding.weight"], fresh)
    assert all(torch.equal(a, b) for a, b in zip(model.autoencoder.state_dict().values(),
                                                 source.autoencoder.state_dict().values(), strict=True))
    assert model.latent_scale == 0.75


def test_a_flat_state_dict_is_recognised_by_its_keys(tmp_path) -> None:
    source = latent(["a", "b"], seed=2)
    (tmp_path / "configs").mkdir()
    (tmp_path / "models").mkdir()
    torch.save(source.autoencoder.state_dict(), tmp_path / "models" / "model.pt")
    pretrained = read_pretrained(tmp_path)
    assert set(pretrained.parts) == {"autoencoder"} and pretrained.class_names is None
    model = latent(["a", "b"], seed=4)
    notes = apply_pretrained(model, pretrained, ["a", "b"])
    assert any("autoencoder trains 2 more steps first" in n for n in notes), notes


class NotATensor:
    """Anything pickled that is not a tensor or plain data: weights_only loading refuses it."""


def test_pickled_objects_wrong_shapes_and_unknown_folders_are_clear_errors(tmp_path) -> None:
    bad = tmp_path / "pickled"
    (bad / "configs").mkdir(parents=True)
    (bad / "models").mkdir()
    torch.save({"unet": {"conv_in.conv.weight": NotATensor()}}, bad / "models" / "model.pt")
    with pytest.raises(UserError, match=r"model\.pt: not a tensors-only state dict \(loaded with weights_only"):
        read_pretrained(bad)

    wide = diffusion(["a", "b"], channels=(8, 32))
    write_bundle(tmp_path / "wide", {"unet": wide.ema.module.state_dict()}, {"class_names": ["a", "b"]})
    with pytest.raises(UserError, match=r"down_blocks\..* has shape .* in the pretrained weights but .* here"):
        apply_pretrained(diffusion(["a", "b"]), read_pretrained(tmp_path / "wide"), ["a", "b"])
    with pytest.raises(UserError, match="networks \\['autoencoder'\\] do not fit the diffusion family"):
        apply_pretrained(diffusion(["a", "b"]), read_pretrained_autoencoder(tmp_path), ["a", "b"])

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a pretrained folder; expected a MONAI bundle"):
        read_pretrained(tmp_path / "empty")


def read_pretrained_autoencoder(tmp_path: Path):
    write_bundle(tmp_path / "ae", {"autoencoder": latent(["a", "b"]).autoencoder.state_dict()}, {})
    return read_pretrained(tmp_path / "ae")


@slow
def test_train_step_starts_from_a_pretrained_folder_and_says_so(tmp_path) -> None:
    """`model.pretrained` in the train step: the first loss is far below a from-scratch start, and train.json
    records how the classes were mapped."""
    source = digits_folder(tmp_path / "digits", {"0": 24, "1": 24, "2": 24})
    manifest = ingest(DataParams(source=str(source)), tmp_path / "ingest", cache_dir=tmp_path / "cache").manifest_path
    tiny = {"steps": 60, "batch_size": 16, "channels": [8, 16], "attention_levels": [False, True],
            "norm_num_groups": 4, "num_head_channels": 8, "sample_steps": 2, "sample_batch_size": 8,
            "checkpoint_every": 0, "lr": 3e-3}
    base = ModelParams(family="diffusion", device="cpu", diffusion=tiny)
    first = train(manifest, base, tmp_path / "first")
    export_checkpoint(first.checkpoint_dir, tmp_path / "bundle")

    short = {**tiny, "steps": 3}
    scratch = train(manifest, ModelParams(family="diffusion", device="cpu", diffusion=short), tmp_path / "scratch")
    tuned = train(manifest, ModelParams(family="diffusion", device="cpu", diffusion=short,
                                        pretrained=str(tmp_path / "bundle")), tmp_path / "tuned")
    assert "pretrained" not in scratch.summary
    assert any("mapped by name: 3 of 3" in n for n in tuned.summary["pretrained"]), tuned.summary
    assert json.loads((tmp_path / "tuned" / "train.json").read_text())["pretrained"] == tuned.summary["pretrained"]

    def first_loss(out: str) -> float:
        return json.loads((tmp_path / out / "train_log.jsonl").read_text().splitlines()[0])["loss"]

    assert first_loss("tuned") < 0.8 * first_loss("scratch"), (first_loss("tuned"), first_loss("scratch"))
    with pytest.raises(UserError, match=r"model\.init_from and model\.pretrained both set"):
        train(manifest, ModelParams(family="diffusion", device="cpu", diffusion=short, init_from=str(tmp_path),
                                    pretrained=str(tmp_path / "bundle")), tmp_path / "both")
