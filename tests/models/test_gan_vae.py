"""Family-specific checks of the GAN and the VAE (the registry-wide contract lives in test_families.py)."""

from __future__ import annotations

import pytest
import torch

from synthaug.models.config import GANConfig, VAEConfig
from synthaug.models.gan import GAN, Generator, diff_augment, mode_seeking_loss
from synthaug.models.vae import VAE, kl_beta

CPU = torch.device("cpu")


def test_diff_augment_is_differentiable_and_keeps_shape():
    x = (torch.rand(6, 3, 16, 16) * 2 - 1).requires_grad_()
    out = diff_augment(x, ("color", "translation", "cutout"), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert not torch.equal(out, x)  # it did something
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_diff_augment_is_reproducible_from_the_generator():
    x = torch.rand(4, 1, 8, 8)
    policy = ("color", "translation", "cutout")
    a = diff_augment(x, policy, torch.Generator().manual_seed(3))
    b = diff_augment(x, policy, torch.Generator().manual_seed(3))
    c = diff_augment(x, policy, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_augmentation_is_rejected_by_name():
    with pytest.raises(ValueError, match="rotate"):
        GANConfig(augment="translation,rotate")


def test_mode_seeking_penalises_one_image_per_class():
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    varied = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    collapsed = varied[labels * 4]  # every image of a class is the same
    assert mode_seeking_loss(collapsed, z, labels) > 100 * mode_seeking_loss(varied, z, labels)
    assert mode_seeking_loss(varied[:2], z[:2], torch.tensor([0, 1])) == 0  # no same-class pair


@pytest.mark.parametrize("shape", [(1, 12, 12), (1, 16, 32), (1, 128, 128), (1, 4, 4)])
def test_gan_generator_rejects_unsupported_sizes(shape):
    with pytest.raises(ValueError, match="image_shape"):
        Generator(shape, 3)
    with pytest.raises(ValueError, match="image_shape"):
        GAN(GANConfig.tiny(), image_shape=shape, num_classes=3, device=CPU)


@pytest.mark.parametrize("side", [8, 16, 32, 64])
def test_gan_generator_output_size_and_range(side):
    g = Generator((3, side, side), 4, z_dim=8, channels=8, embed_dim=8)
    out = g(torch.randn(2, 8), torch.tensor([0, 3]))
    assert out.shape == (2, 3, side, side)
    assert out.abs().max() <= 1


def test_kl_warmup_ramps_from_zero_to_one():
    betas = [kl_beta(step, 100) for step in range(0, 201, 25)]
    assert betas[0] == 0.0
    assert betas == sorted(betas)
    assert kl_beta(50, 100) == pytest.approx(0.5)
    assert betas[-1] == kl_beta(100, 100) == 1.0
    assert kl_beta(0, 0) == 1.0  # no warm-up


def test_vae_reports_the_ramped_kl_weight():
    config = VAEConfig(steps=3, batch_size=4, latent_dim=4, channels=8, embed_dim=4, kl_warmup=2, kl_weight=0.5)
    model = VAE(config, image_shape=(1, 8, 8), num_classes=2, device=CPU)
    x, y, g = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 0, 1]), torch.Generator().manual_seed(0)
    assert [model.train_step(x, y, g)["beta"] for _ in range(3)] == [0.0, 0.25, 0.5]


def test_vae_temperature_scales_diversity():
    torch.manual_seed(0)
    model = VAE(VAEConfig.tiny(), image_shape=(1, 8, 8), num_classes=2, device=CPU)
    labels, seeds = torch.zeros(16, dtype=torch.long), list(range(16))
    cold = model.sample(labels, seeds, temperature=1e-6)
    warm = model.sample(labels, seeds, temperature=1.0)
    assert cold.std(dim=0).max() < 1e-4 < warm.std(dim=0).max()
    with pytest.raises(ValueError, match="temperature"):
        model.sample(labels, seeds, temperature=0.0)


@pytest.mark.parametrize(("family", "config", "keys"), [
    (GAN, GANConfig.tiny(), {"d_loss", "g_loss"}),
    (VAE, VAEConfig.tiny(), {"loss", "recon", "kl", "beta"}),
])
def test_a_few_steps_on_tiny_data_give_finite_losses(family, config, keys):
    torch.manual_seed(0)
    model = family(config, image_shape=(1, 16, 16), num_classes=3, device=CPU)
    images = torch.rand(12, 1, 16, 16) * 2 - 1
    labels = torch.arange(12) % 3
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        idx = torch.randint(0, 12, (8,), generator=torch.Generator().manual_seed(step))
        losses = model.train_step(images[idx], labels[idx], g)
        assert set(losses) == keys
        assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    out = model.sample(torch.tensor([0, 1, 2]), [0, 1, 2])
    assert out.shape == (3, 1, 16, 16) and out.dtype == torch.float32 and out.abs().max() <= 1


@pytest.mark.parametrize(("family", "config"), [(GAN, GANConfig.tiny()), (VAE, VAEConfig.tiny())])
def test_samples_are_bitwise_independent_of_batch_size(family, config):
    torch.manual_seed(0)
    model = family(config, image_shape=(1, 16, 16), num_classes=5, device=CPU)
    labels, seeds = torch.arange(70) % 5, list(range(100, 170))
    whole = model.sample(labels, seeds)
    ones = torch.cat([model.sample(labels[i:i + 1], seeds[i:i + 1]) for i in (0, 33, 69)])
    eights = torch.cat([model.sample(labels[i:i + 8], seeds[i:i + 8]) for i in range(0, 70, 8)])
    assert torch.equal(ones, whole[[0, 33, 69]])
    assert torch.equal(eights, whole)
