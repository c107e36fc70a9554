"""The contract every registered generator family keeps, checked on tiny CPU configs with no per-family branches.

Each family's config provides ``Config.tiny()``: a config that trains a few steps in well under a second.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from synthaug.models.base import GeneratorFamily
from synthaug.models.config import TrainConfig
from synthaug.models.families import family_names, get_family
from synthaug.models.training import fit, has_checkpoint, load_checkpoint, read_checkpoint_meta, save_checkpoint

CPU = torch.device("cpu")
IMAGE_SHAPE = (1, 16, 16)
CLASS_NAMES = ["a", "b", "c"]
N_IMAGES = 16
SEED = 7


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Pixels as they are written to disk: the level at which determinism is required."""
    return torch.round((x + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)


def tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand((N_IMAGES, *IMAGE_SHAPE), generator=g) * 2.0 - 1.0
    labels = torch.arange(N_IMAGES) % len(CLASS_NAMES)
    return images, labels


def tiny_config(family: type[GeneratorFamily], **changes) -> TrainConfig:
    config = family.Config.tiny()
    assert config.steps <= 10 and config.batch_size <= 16, "tiny() must stay tiny: the contract test runs every family"
    return dataclasses.replace(config, **changes)


def new_model(family: type[GeneratorFamily], config: TrainConfig) -> GeneratorFamily:
    return family(config, image_shape=IMAGE_SHAPE, num_classes=len(CLASS_NAMES), device=CPU)


def weights(model: GeneratorFamily) -> dict[str, torch.Tensor]:
    """Every tensor of the model state, flattened to dotted keys (optimizer states included)."""
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            flat[prefix] = value.detach().clone()
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)

    walk("", model.state_dict())
    return flat


def request() -> tuple[torch.Tensor, list[int]]:
    """A sampling request with repeated labels and unordered seeds."""
    labels = torch.tensor([0, 2, 1, 1, 0, 2, 2, 0, 1])
    seeds = [11, 3, 500, 42, 7, 1_000_003, 2**31 + 5, 0, 99]
    return labels, seeds


@pytest.fixture(scope="module", params=family_names())
def trained(request, tmp_path_factory) -> tuple[str, GeneratorFamily, Path]:
    """Each family trained with ``fit`` for its tiny step count, with a finished checkpoint."""
    name = request.param
    family = get_family(name)
    model = new_model(family, tiny_config(family))
    images, labels = tiny_data()
    ckpt = tmp_path_factory.mktemp(f"{name}-ckpt")
    losses: list[dict[str, float]] = []
    final = fit(model, images, labels, seed=SEED, class_names=CLASS_NAMES, checkpoint_dir=ckpt,
                on_step=lambda step, loss: losses.append(loss))
    assert final == model.config.steps
    assert len(losses) == model.config.steps
    assert all(losses) and all(torch.isfinite(torch.tensor(list(loss.values()))).all() for loss in losses), losses
    return name, model, ckpt


def test_registry_names_match_families(trained) -> None:
    name, model, _ = trained
    assert isinstance(model, GeneratorFamily)
    assert type(model).name == name
    assert isinstance(model.config, type(model).Config)
    assert issubclass(type(model).Config, TrainConfig)


def test_unknown_family_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid names") as info:
        get_family("no-such-family")
    for name in family_names():
        assert name in str(info.value)


def test_training_gives_finite_gradients_and_changes_weights(trained) -> None:
    name, _, _ = trained
    family = get_family(name)
    model = new_model(family, tiny_config(family))
    before = weights(model)
    images, labels = tiny_data()
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        losses = model.train_step(images[:8], labels[:8], generator)
        assert losses and all(isinstance(v, float) and torch.isfinite(torch.tensor(v)) for v in losses.values())
    modules = [m for m in vars(model).values() if isinstance(m, nn.Module)]
    grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    assert grads, f"{name}: no parameter has a gradient after train_step"
    assert all(torch.isfinite(g).all() for g in grads)
    after = weights(model)
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after), f"{name}: weights did not change"


def test_sample_shape_dtype_range(trained) -> None:
    _, model, _ = trained
    labels, seeds = request()
    x = model.sample(labels, seeds)
    assert x.shape == (len(seeds), *IMAGE_SHAPE)
    assert x.dtype == torch.float32 and x.device.type == "cpu"
    assert torch.isfinite(x).all() and x.min() >= -1.0 and x.max() <= 1.0
    assert len({to_uint8(img).numpy().tobytes() for img in x}) > 1, "every seed gave the same image"


def test_sample_is_per_image_deterministic(trained) -> None:
    """Image i depends only on (weights, labels[i], seeds[i]): not on batch size, position or shard split."""
    _, model, _ = trained
    labels, seeds = request()
    n = len(seeds)
    reference = to_uint8(model.sample(labels, seeds))
    for batch in (1, 3, n):
        parts = [model.sample(labels[i:i + batch], seeds[i:i + batch]) for i in range(0, n, batch)]
        assert torch.equal(to_uint8(torch.cat(parts)), reference), f"batch size {batch} changed pixels"
    shards = [model.sample(labels[5:], seeds[5:]), model.sample(labels[:5], seeds[:5])]
    assert torch.equal(to_uint8(torch.cat([shards[1], shards[0]])), reference), "shard split changed pixels"
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1)).tolist()
    shuffled = to_uint8(model.sample(labels[order], [seeds[i] for i in order]))
    assert torch.equal(shuffled, reference[order]), "position in the batch changed pixels"


def test_checkpoint_round_trip_gives_identical_samples(trained, tmp_path) -> None:
    _, model, _ = trained
    assert not has_checkpoint(tmp_path)
    save_checkpoint(model, tmp_path, step=model.config.steps, class_names=CLASS_NAMES)
    loaded, meta, _ = load_checkpoint(tmp_path, CPU)
    assert has_checkpoint(tmp_path) and read_checkpoint_meta(tmp_path) == meta  # what the steps read of it
    assert type(loaded) is type(model) and loaded.config == model.config
    assert meta["class_names"] == CLASS_NAMES and tuple(meta["image_shape"]) == IMAGE_SHAPE
    labels, seeds = request()
    assert torch.equal(to_uint8(loaded.sample(labels, seeds)), to_uint8(model.sample(labels, seeds)))
    # the saved state loads with weights_only=True (tensors and plain values only): load_checkpoint uses it
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert state["step"] == model.config.steps


def test_fine_tuning_continues_from_checkpoint(trained) -> None:
    _, model, ckpt = trained
    start = model.config.steps
    more = dataclasses.replace(model.config, steps=start + 2)
    tuned, meta, state = load_checkpoint(ckpt, CPU, config_override=more)
    assert meta["step"] == start
    before = weights(tuned)
    images, labels = tiny_data()
    seen: list[int] = []
    final = fit(tuned, images, labels, seed=SEED, class_names=CLASS_NAMES, checkpoint_dir=ckpt, start_step=start,
                rng_state=state["rng"], on_step=lambda step, loss: seen.append(step))
    assert final == start + 2 and seen == [start + 1, start + 2]
    after = weights(tuned)
    assert any(not torch.equal(before[k], after[k]) for k in before), "fine-tuning did not change the weights"
    reloaded, meta, _ = load_checkpoint(ckpt, CPU)
    assert meta["step"] == start + 2 and reloaded.config.steps == start + 2


def test_interrupted_fit_resumes_to_a_finished_checkpoint(trained, tmp_path) -> None:
    name, _, _ = trained
    family = get_family(name)
    config = tiny_config(family, steps=4, checkpoint_every=2)
    images, labels = tiny_data()

    class Interrupted(Exception):
        pass

    def crash_at_3(step: int, losses: dict[str, float]) -> None:
        if step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(new_model(family, config), images, labels, seed=SEED, class_names=CLASS_NAMES,
            checkpoint_dir=tmp_path, on_step=crash_at_3)
    resumed, meta, state = load_checkpoint(tmp_path, CPU)
    assert meta["step"] == 2, "the last checkpoint before the crash is the one at checkpoint_every"
    final = fit(resumed, images, labels, seed=SEED, class_names=CLASS_NAMES, checkpoint_dir=tmp_path,
                start_step=meta["step"], rng_state=state["rng"])
    assert final == config.steps
    finished, meta, _ = load_checkpoint(tmp_path, CPU)
    assert meta["step"] == config.steps
    labels, seeds = request()
    x = finished.sample(labels, seeds)
    assert x.shape == (len(seeds), *IMAGE_SHAPE) and torch.isfinite(x).all()
