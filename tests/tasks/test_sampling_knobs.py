"""``generate.guidance_scale`` / ``generate.sample_steps``: sampling knobs applied to a trained checkpoint without
retraining, refused where the family has none, and never mixed with images of another sampler in a resumed folder."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from synthaug.flows.params import ParamsError, load_params
from synthaug.models.config import DiffusionConfig, VAEConfig
from synthaug.models.diffusion import Diffusion
from synthaug.models.training import save_checkpoint
from synthaug.models.vae import VAE
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.params.generate import GenerateParams
from synthaug.tasks.core.sampling import sampler_key
from synthaug.tasks.generate import CHECKPOINT_FILE, generate_from_plan

CLASSES = ["a", "b"]


def _save(model_cls, config, folder):
    """An untrained model with every weight jittered (the UNet's output layer starts at zero, which would make every
    guidance scale sample the same), seeded: the same weights whatever the config's sampling knobs."""
    torch.manual_seed(0)
    model = model_cls(config, image_shape=(1, 8, 8), num_classes=len(CLASSES), device=torch.device("cpu"))
    with torch.no_grad():
        for weight in model.ema.module.parameters() if isinstance(model, Diffusion) else ():
            weight.add_(0.1 * torch.randn_like(weight))  # the EMA network is what samples
    save_checkpoint(model, folder, step=0, class_names=CLASSES)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An untrained tiny diffusion checkpoint (guidance 2), the same weights saved with guidance 1, and a plan."""
    root = tmp_path_factory.mktemp("knobs")
    config = dataclasses.replace(DiffusionConfig.tiny(), guidance_scale=2.0)
    _save(Diffusion, config, root / "w2")
    _save(Diffusion, dataclasses.replace(config, guidance_scale=1.0), root / "w1")
    plan = root / "plan.csv"
    pd.DataFrame({"class": CLASSES, "real": [5, 1], "target": [5, 4], "to_generate": [0, 3]}).to_csv(plan, index=False)
    return root, plan


def _pixels(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted((folder / "images").rglob("*.png"))}


def test_guidance_knob_samples_as_the_checkpoint_trained_with_that_guidance(setup, tmp_path):
    root, plan = setup
    generate_from_plan(plan, root / "w2", GenerateParams(device="cpu"), tmp_path / "as_trained")
    generate_from_plan(plan, root / "w2", GenerateParams(device="cpu", guidance_scale=1.0), tmp_path / "knob")
    generate_from_plan(plan, root / "w1", GenerateParams(device="cpu"), tmp_path / "trained_w1")
    assert len(_pixels(tmp_path / "knob")) == 3
    assert _pixels(tmp_path / "knob") == _pixels(tmp_path / "trained_w1") != _pixels(tmp_path / "as_trained")


def test_a_folder_sampled_with_other_knobs_is_resampled_not_mixed(setup, tmp_path):
    root, plan = setup
    out = tmp_path / "g"
    generate_from_plan(plan, root / "w2", GenerateParams(device="cpu"), out)
    before = _pixels(out)
    knob = GenerateParams(device="cpu", guidance_scale=1.0, sample_steps=2)
    generate_from_plan(plan, root / "w2", knob, out)
    generate_from_plan(plan, root / "w2", knob, tmp_path / "fresh")
    assert _pixels(out) == _pixels(tmp_path / "fresh")
    assert set(_pixels(out).values()).isdisjoint(before.values())
    assert (out / CHECKPOINT_FILE).read_text().strip() == sampler_key(root / "w2", knob)


def test_a_checkpoint_resaved_with_another_guidance_resamples_the_folder(setup, tmp_path):
    """w1 and w2 hold the same weights (the same sha256); only the guidance in their config differs."""
    root, plan = setup
    out = tmp_path / "g"
    generate_from_plan(plan, root / "w2", GenerateParams(device="cpu"), out)
    generate_from_plan(plan, root / "w1", GenerateParams(device="cpu"), out)
    generate_from_plan(plan, root / "w1", GenerateParams(device="cpu"), tmp_path / "fresh")
    assert _pixels(out) == _pixels(tmp_path / "fresh")


def test_filter_top_ups_refuse_a_generate_folder_of_another_sampler(setup, tmp_path):
    from synthaug.tasks.filter.step import same_sampler

    root, plan = setup
    generate_from_plan(plan, root / "w2", GenerateParams(device="cpu"), tmp_path / "g")
    same_sampler(tmp_path / "g", sampler_key(root / "w2", GenerateParams(device="cpu")))  # the same: no error
    with pytest.raises(UserError, match="sampled with other generate params"):
        same_sampler(tmp_path / "g", sampler_key(root / "w2", GenerateParams(device="cpu", guidance_scale=3.0)))


def test_a_family_without_the_knob_is_refused_naming_checkpoint_and_knob(tmp_path):
    ckpt = _save(VAE, VAEConfig.tiny(), tmp_path / "vae")
    plan = tmp_path / "plan.csv"
    pd.DataFrame({"class": CLASSES, "real": [5, 1], "target": [5, 2], "to_generate": [0, 1]}).to_csv(plan, index=False)
    with pytest.raises(UserError, match=r"vae: generate: guidance_scale is a sampling knob.*vae generator has none"):
        generate_from_plan(plan, ckpt, GenerateParams(device="cpu", guidance_scale=1.0), tmp_path / "g")
    assert not list((tmp_path / "g").rglob("*.png"))


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.family=vae", "generate.guidance_scale=1.5"],
     "generate: .*vae generator has none: set generate.guidance_scale to null"),
    (["model.family=gan", "tune.guidance=[1, 3]"], "tune: .*guidance 1: guidance_scale is a sampling knob .*gan"),
    (["tune.guidance=[2, 80]"], "tune: .*guidance 80: guidance_scale must be in"),
    (["model.diffusion.label_dropout=0", "model.diffusion.guidance_scale=1", "generate.guidance_scale=3"],
     "generate: .*needs the null class"),
    (["generate.sample_steps=5000"], "generate: .*sample_steps=5000 cannot exceed timesteps=1000"),
])
def test_params_refuse_knobs_the_configured_family_cannot_take(overrides, message):
    with pytest.raises(ParamsError, match=message):
        load_params(None, overrides)
    assert load_params(None, ["generate.guidance_scale=1.0"]).generate.sampling_knobs() == {"guidance_scale": 1.0}


def test_compare_gives_the_sampling_knobs_only_to_the_families_that_have_them():
    from synthaug.flows.compare import params_for
    from synthaug.flows.params import Params

    params = load_params(None, ["generate.guidance_scale=2.0", "generate.sample_steps=10"])
    for family in ("gan", "vae"):
        own = params_for(params, family)
        assert own.generate.sampling_knobs() == {} and own.model.warm_start == "never"
        Params.model_validate(own.model_dump())  # what load_params would accept for that family
    assert params_for(params, "diffusion").generate.sampling_knobs() == {"guidance_scale": 2.0, "sample_steps": 10}
