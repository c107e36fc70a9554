"""Latent diffusion: the two training stages, their checkpoints, the latent scale, the autoencoder's quality."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from monai.metrics import PSNRMetric

from synthaug.models.config import DiffusionConfig, LatentDiffusionConfig
from synthaug.models.diffusion import Diffusion
from synthaug.models.latent_diffusion import LatentDiffusion
from synthaug.models.training import fit, load_checkpoint

CPU = torch.device("cpu")
CLASSES = ["a", "b"]


def images_and_labels(n: int = 16, shape: tuple[int, int, int] = (1, 16, 16)) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images (blurred noise): something an autoencoder can learn in a few dozen steps."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand((n, shape[0], shape[1] // 4, shape[2] // 4), generator=g) * 2 - 1
    images = torch.nn.functional.interpolate(coarse, size=shape[1:], mode="bilinear", align_corners=False)
    return images, torch.arange(n) % len(CLASSES)


def model(**changes) -> LatentDiffusion:
    config = dataclasses.replace(LatentDiffusionConfig.tiny(), **changes)
    torch.manual_seed(0)
    return LatentDiffusion(config, image_shape=(1, 16, 16), num_classes=len(CLASSES), device=CPU)


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_autoencoder_trains_first_then_only_the_unet() -> None:
    m = model(steps=4, autoencoder_steps=2)
    images, labels = images_and_labels()
    g = torch.Generator().manual_seed(0)
    ae0, unet0 = flat(m.autoencoder), flat(m.net)
    first = [m.train_step(images[:8], labels[:8], g) for _ in range(2)]
    assert all("ae_loss" in losses and "loss" not in losses for losses in first)
    ae1, unet1 = flat(m.autoencoder), flat(m.net)
    assert not torch.equal(ae0, ae1) and torch.equal(unet0, unet1), "stage 1 must train the autoencoder alone"
    assert m.latent_scale is None
    second = m.train_step(images[:8], labels[:8], g)
    assert set(second) == {"loss"}
    assert torch.equal(ae1, flat(m.autoencoder)) and not torch.equal(unet1, flat(m.net)), "stage 2: the UNet alone"
    assert (m.ae_steps_done, m.steps_done) == (2, 1)


def test_latent_scale_is_the_inverse_std_of_the_first_unet_batch() -> None:
    m = model(steps=3, autoencoder_steps=0)
    images, labels = images_and_labels()
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    m.train_step(images[:8], labels[:8], g)
    g.set_state(state)
    z = m.encode(images[:8], g)  # the same posterior draw the step made
    assert m.latent_scale == pytest.approx(1.0 / z.double().std(unbiased=False).item(), rel=1e-5)
    scale = m.latent_scale
    m.train_step(images[8:], labels[8:], g)
    assert m.latent_scale == scale, "the scale is fixed after the first UNet step"


def test_a_crash_in_the_unet_stage_resumes_without_retraining_the_autoencoder(tmp_path) -> None:
    images, labels = images_and_labels()
    m = model(steps=5, autoencoder_steps=2, checkpoint_every=0)

    class Crash(Exception):
        pass

    def crash_at_4(step: int, losses: dict[str, float]) -> None:
        if step == 4:
            raise Crash

    with pytest.raises(Crash):
        fit(m, images, labels, seed=1, class_names=CLASSES, checkpoint_dir=tmp_path, on_step=crash_at_4)
    resumed, meta, state = load_checkpoint(tmp_path, CPU)
    assert meta["step"] == 2, "the end of the autoencoder stage is checkpointed even with checkpoint_every=0"
    assert resumed.ae_steps_done == 2 and resumed.steps_done == 0
    ae = flat(resumed.autoencoder)
    seen: list[dict[str, float]] = []
    fit(resumed, images, labels, seed=1, class_names=CLASSES, checkpoint_dir=tmp_path, start_step=2,
        rng_state=state["rng"], on_step=lambda step, losses: seen.append(losses))
    assert len(seen) == 3 and all(set(losses) == {"loss"} for losses in seen)
    assert torch.equal(ae, flat(resumed.autoencoder))
    final, meta, _ = load_checkpoint(tmp_path, CPU)
    assert meta["step"] == 5 and final.steps_done == 3 and final.latent_scale is not None


def test_adversarial_term_trains_a_discriminator_and_survives_a_round_trip(tmp_path) -> None:
    m = model(steps=3, autoencoder_steps=2, adv_weight=0.1)
    images, labels = images_and_labels()
    d0 = flat(m.discriminator)
    losses: list[dict[str, float]] = []
    fit(m, images, labels, seed=0, class_names=CLASSES, checkpoint_dir=tmp_path,
        on_step=lambda step, loss: losses.append(loss))
    assert {"ae_adv", "disc"} <= set(losses[0]) and all(math.isfinite(v) for v in losses[0].values())
    assert not torch.equal(d0, flat(m.discriminator))
    loaded, _, _ = load_checkpoint(tmp_path, CPU)
    assert torch.equal(flat(loaded.discriminator), flat(m.discriminator))


def test_reconstruction_quality_matches_skimage_and_improves_with_training() -> None:
    images, labels = images_and_labels(32)
    m = model(steps=80, autoencoder_steps=80, ae_lr=3e-3)
    before = m.reconstruction_quality(images)
    recon = m.autoencoder.decode(m.encode(images)).clamp(-1, 1).detach()
    # MONAI's PSNR over all images pooled as one (1, N*C, H, W) "image": the pooled error the method reports
    reference = PSNRMetric(max_val=2.0)(recon.reshape(1, -1, 16, 16), images.reshape(1, -1, 16, 16)).item()
    assert before["psnr_db"] == pytest.approx(reference, abs=1e-3)
    assert before["l1"] == pytest.approx((recon - images).abs().mean().item(), rel=1e-4)
    fit(m, images, labels, seed=0, class_names=CLASSES)
    after = m.reconstruction_quality(images)
    assert after["mse"] < 0.5 * before["mse"], (before, after)


def test_image_sizes_the_autoencoder_cannot_halve_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"divisible by 2.*ae_channels"):
        LatentDiffusion(LatentDiffusionConfig.tiny(), image_shape=(1, 15, 16), num_classes=2, device=CPU)
    with pytest.raises(ValueError, match="autoencoder_steps must be >= 0"):
        dataclasses.replace(LatentDiffusionConfig.tiny(), autoencoder_steps=-1)
    with pytest.raises(ValueError, match="must divide every entry of ae_channels"):
        dataclasses.replace(LatentDiffusionConfig.tiny(), ae_channels=(8, 10))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients() -> None:
    images, labels = images_and_labels()
    grads = []
    for checkpointing in (False, True):
        config = dataclasses.replace(DiffusionConfig.tiny(), gradient_checkpointing=checkpointing, grad_clip=0.0)
        torch.manual_seed(0)
        m = Diffusion(config, image_shape=(1, 16, 16), num_classes=2, device=CPU)
        keys = list(m.net.state_dict())
        m.train_step(images[:8], labels[:8], torch.Generator().manual_seed(0))
        grads.append(torch.cat([p.grad.flatten() for p in m.net.parameters()]))
        assert keys == list(m.ema.module.state_dict()), "checkpointing must not change the state-dict keys"
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
