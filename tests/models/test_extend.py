"""A checkpoint's class conditioning grows to new classes (warm start on a superset of classes), for every family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthaug.models.families import family_names, get_family
from synthaug.models.training import fit, load_extended, save_checkpoint
from tests.models.test_families import CPU, IMAGE_SHAPE, new_model, tiny_config, tiny_data, to_uint8

OLD, NEW = ["a", "b", "c"], ["a", "b", "c", "d"]


@pytest.mark.parametrize("name", family_names())
def test_extended_model_keeps_the_old_classes_and_trains_on_the_new_one(name: str, tmp_path: Path) -> None:
    family = get_family(name)
    torch.manual_seed(0)
    model = new_model(family, tiny_config(family, steps=2, checkpoint_every=0))
    images, labels = tiny_data()
    fit(model, images, labels, seed=0, class_names=OLD, checkpoint_dir=tmp_path)
    before = to_uint8(model.sample(torch.tensor([0, 1, 2]), [11, 12, 13]))

    torch.manual_seed(1)
    grown, meta = load_extended(tmp_path, CPU, NEW)
    assert meta["class_names"] == OLD and grown.num_classes == len(NEW)
    # The old classes sample the very same pixels: only the class dimension grew.
    assert torch.equal(to_uint8(grown.sample(torch.tensor([0, 1, 2]), [11, 12, 13])), before)
    # The new class trains (optimizer restarted on the grown tensors) and samples.
    new_labels = torch.arange(len(labels)) % len(NEW)
    grown.config = tiny_config(family, steps=1, checkpoint_every=0)
    fit(grown, images, new_labels, seed=0, class_names=NEW)
    assert grown.sample(torch.tensor([3]), [5]).shape == (1, *IMAGE_SHAPE)
    save_checkpoint(grown, tmp_path / "grown", step=1, class_names=NEW)


def test_extension_refuses_a_reordered_class_list(tmp_path: Path) -> None:
    family = get_family(family_names()[0])
    model = new_model(family, tiny_config(family, steps=1, checkpoint_every=0))
    save_checkpoint(model, tmp_path, step=0, class_names=OLD)
    with pytest.raises(ValueError, match="must start with the checkpoint's classes"):
        load_extended(tmp_path, CPU, ["b", "a", "c", "d"])
