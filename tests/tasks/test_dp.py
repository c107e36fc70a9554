"""DP-SGD training of the vae, diffusion and latent diffusion families with Opacus: the accounting against Opacus's
own RDP analysis, per-sample clipping, the private latent scale, the record beside the checkpoint, what a release may
claim, and the refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from pydantic import ValidationError

from synthaug.models.config import DiffusionConfig, LatentDiffusionConfig, VAEConfig
from synthaug.models.diffusion import Diffusion
from synthaug.models.latent_diffusion import LatentDiffusion
from synthaug.models.training import checkpoint_hash, load_checkpoint
from synthaug.models.vae import VAE
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.params.model import DPParams, ModelParams
from synthaug.tasks.core.privacy.dp import DP_FILE, card_section, dp_claim
from synthaug.tasks.train.private import LOG_MOMENT_BOUND, SCALE_NOISE, fit_private, private_latent_scale
from tests.markers import slow

CONFIG = VAEConfig(steps=12, batch_size=16, latent_dim=4, channels=8, embed_dim=4, kl_warmup=2, checkpoint_every=0)
DIFFUSION = DiffusionConfig(steps=12, batch_size=16, channels=(8, 16), attention_levels=(False, True), num_res_blocks=1,
                            norm_num_groups=4, num_head_channels=8, timesteps=20, sample_steps=2, checkpoint_every=0)
LATENT = LatentDiffusionConfig(steps=12, autoencoder_steps=5, batch_size=16, channels=(8, 16),
                               attention_levels=(False, True), norm_num_groups=4, num_head_channels=8,
                               ae_channels=(8, 16), latent_channels=2, timesteps=20, sample_steps=2, checkpoint_every=0)
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))  # Opacus RDPAccountant's default orders


def data(n: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 16, 16, generator=g) * 2 - 1, torch.randint(0, 3, (n,), generator=g)


def model() -> VAE:
    torch.manual_seed(0)
    return VAE(CONFIG, image_shape=(1, 16, 16), num_classes=3, device=torch.device("cpu"))


def diffusion() -> Diffusion:
    torch.manual_seed(0)
    return Diffusion(DIFFUSION, image_shape=(1, 16, 16), num_classes=3, device=torch.device("cpu"))


def latent() -> LatentDiffusion:
    torch.manual_seed(0)
    return LatentDiffusion(LATENT, image_shape=(1, 16, 16), num_classes=3, device=torch.device("cpu"))


@pytest.fixture(scope="module", params=[model, diffusion, latent], ids=["vae", "diffusion", "latent_diffusion"])
def trained(request, tmp_path_factory) -> tuple[Path, dict, VAE | Diffusion]:
    out = tmp_path_factory.mktemp("dp") / "checkpoint"
    x, y = data()
    m = request.param()
    nets = [m.net, *([m.autoencoder] if isinstance(m, LatentDiffusion) else [])]
    before = [{k: v.clone() for k, v in net.state_dict().items()} for net in nets]
    record = fit_private(m, x, y, DPParams(epsilon=8.0, delta=1e-3), seed=0, class_names=["a", "b", "c"],
                         checkpoint_dir=out)
    for net, was in zip(nets, before, strict=True):  # every network trained
        assert any(not torch.equal(was[k], v) for k, v in net.state_dict().items())
    return out, record, m


@slow
def test_epsilon_is_opacus_rdp_analysis_of_the_noise_steps_and_poisson_rate(trained) -> None:
    out, record, _ = trained
    assert record["sample_rate"] == pytest.approx(16 / 120) and record["steps"] == 12
    rdp = compute_rdp(q=record["sample_rate"], noise_multiplier=record["noise_multiplier"], steps=record["steps"],
                      orders=ALPHAS)
    if "latent_scale" in record:  # latent diffusion: the scale's Gaussian mechanism on the whole set, composed
        rdp = rdp + compute_rdp(q=1.0, noise_multiplier=SCALE_NOISE, steps=1, orders=ALPHAS)
    epsilon, _ = get_privacy_spent(orders=ALPHAS, rdp=rdp, delta=record["delta"])
    assert record["epsilon"] == pytest.approx(epsilon)
    assert 0.9 * 8.0 < record["epsilon"] <= 8.0  # the smallest noise that stays within the target
    assert json.loads((out / DP_FILE).read_text()) == record
    assert record["weights_sha256"] == checkpoint_hash(out)
    loaded, meta, _ = load_checkpoint(out, torch.device("cpu"))  # an ordinary checkpoint: it samples
    assert meta["step"] == 12 and loaded.sample(torch.tensor([0, 2]), [1, 2]).shape == (2, 1, 16, 16)


def test_a_release_claims_dp_only_when_every_image_came_from_the_dp_checkpoint(trained, tmp_path) -> None:
    out, record, _ = trained
    ours = pd.DataFrame({"checkpoint": [record["weights_sha256"]] * 3})
    claim = dp_claim(out, ours)
    assert claim["claimed"] and claim["epsilon"] == record["epsilon"]
    assert "generator's weights" in claim["covers"] and "filter" in claim["does_not_cover"]
    card = card_section(claim)
    assert f"(ε, δ) = ({record['epsilon']:.3g}, 0.001)" in card and "What it does not cover" in card
    mixed = pd.DataFrame({"checkpoint": [record["weights_sha256"], "ab" * 32]})
    assert not dp_claim(out, mixed)["claimed"] and "2 checkpoint(s)" in dp_claim(out, mixed)["reason"]
    assert not dp_claim(tmp_path, ours)["claimed"]  # no dp.json: not DP-trained
    assert card_section(dp_claim(tmp_path, ours)).startswith("No differential-privacy guarantee")


def test_refusals() -> None:
    x, y = data(40)
    with pytest.raises(UserError, match=r"model.dp.delta=0.1 is not below 1 / 40"):
        fit_private(model(), x, y, DPParams(epsilon=1.0, delta=0.1), seed=0, class_names=["a", "b", "c"],
                    checkpoint_dir=Path("unused"))
    with pytest.raises(UserError, match="batch_size=16 must be between 16 and the 12 training images"):
        fit_private(model(), x[:12], y[:12], DPParams(epsilon=1.0, delta=1e-3), seed=0,
                    class_names=["a", "b", "c"], checkpoint_dir=Path("unused"))
    with pytest.raises(ValidationError, match="offered for diffusion, latent_diffusion, vae only, not 'gan'"):
        ModelParams(family="gan", dp=DPParams(epsilon=1.0))
    with pytest.raises(ValidationError, match=r"model\.processes=1"):
        ModelParams(family="vae", processes=2, dp=DPParams(epsilon=1.0))
    with pytest.raises(ValidationError, match=r"model\.latent_diffusion\.adv_weight=0"):
        ModelParams(family="latent_diffusion", latent_diffusion=LatentDiffusionConfig(adv_weight=0.1),
                    dp=DPParams(epsilon=1.0))
    assert ModelParams(family="latent_diffusion", dp=DPParams(epsilon=1.0)).dp.epsilon == 1.0
    with pytest.raises(ValidationError, match=r"model\.diffusion\.gradient_checkpointing=false"):
        ModelParams(family="diffusion", diffusion=DiffusionConfig(gradient_checkpointing=True),
                    dp=DPParams(epsilon=1.0))
    assert ModelParams(family="gan").dp.epsilon is None  # off by default, for every family


def test_per_sample_gradients_of_the_vae_average_to_the_batch_gradient() -> None:
    """Opacus's per-sample gradients of every VAE parameter (the class embedding is used twice per forward pass)
    average to the ordinary gradient of the batch-mean loss: DP-SGD clips the real per-image gradients."""
    from opacus import GradSampleModule

    from synthaug.models.vae import kl_divergence, reconstruction_loss

    m = model()
    wrapped = GradSampleModule(m.net)
    x, y = data(6)
    logits, mean, logvar = wrapped(x, y, torch.randn(6, CONFIG.latent_dim, generator=torch.Generator().manual_seed(1)))
    (reconstruction_loss(logits, x, "bce") + 0.5 * kl_divergence(mean, logvar)).backward()
    for name, p in m.net.named_parameters():
        assert p.grad_sample.shape[0] == 6, name
        assert torch.allclose(p.grad_sample.mean(0), p.grad, atol=1e-4, rtol=1e-4), name


def test_per_sample_gradients_of_the_latent_autoencoder_are_each_images_own_gradient() -> None:
    """Stage 1 of latent diffusion under DP: Opacus's per-sample gradients of every parameter of MONAI's
    AutoencoderKL (the training pass, L1 + KL) are the gradients of each image's own loss, computed alone."""
    from opacus import GradSampleModule

    from synthaug.models.latent_diffusion import AutoencoderPass, kl_to_standard_normal

    m, n = latent(), 3
    x, _ = data(n)
    eps = torch.randn((n, *m.space_shape), generator=torch.Generator().manual_seed(1))
    params = list(m.autoencoder.parameters())

    def loss(net: torch.nn.Module, rows: slice) -> torch.Tensor:
        recon, mu, sigma = net(x[rows], eps[rows])
        return F.l1_loss(recon, x[rows]) + LATENT.kl_weight * kl_to_standard_normal(mu, sigma)

    alone = [torch.autograd.grad(loss(AutoencoderPass(m.autoencoder), slice(i, i + 1)), params) for i in range(n)]
    loss(GradSampleModule(AutoencoderPass(m.autoencoder)), slice(None)).backward()
    for k, p in enumerate(params):
        assert torch.allclose(p.grad_sample, torch.stack([a[k] for a in alone]), atol=1e-6, rtol=1e-4), k


def test_dp_sgd_clips_every_per_image_gradient_of_the_diffusion_unet() -> None:
    """On one batch through the MONAI UNet (attention included): Opacus's per-sample gradients are the gradients of
    each image's own loss (computed alone, without Opacus), and the DP optimizer sums them clipped to max_grad_norm."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    m, clip, n = diffusion(), 1e-2, 4
    params = [p for p in m.net.parameters() if p.requires_grad]
    x, y = data(n)
    g = torch.Generator().manual_seed(1)
    t, noise = torch.randint(0, DIFFUSION.timesteps, (n,), generator=g), torch.randn(x.shape, generator=g)

    def loss(net: torch.nn.Module, rows: slice) -> torch.Tensor:
        return F.mse_loss(net(x[rows] + noise[rows], t[rows], class_labels=y[rows]), noise[rows])

    alone = [torch.autograd.grad(loss(m.net, slice(i, i + 1)), params) for i in range(n)]  # plain autograd
    norms = torch.stack([torch.cat([g_.flatten() for g_ in grads]).norm() for grads in alone])
    assert (norms > clip).all()  # clipping bites on every image
    optimizer = DPOptimizer(torch.optim.SGD(params, lr=0.0), noise_multiplier=0.0, max_grad_norm=clip,
                            expected_batch_size=n, loss_reduction="mean")
    loss(GradSampleModule(m.net), slice(None)).backward()
    optimizer.clip_and_accumulate()  # the DP step before its noise
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)  # Opacus's per-sample clip factor
    assert (norms * factors <= clip * (1 + 1e-5)).all()
    for k, p in enumerate(params):
        assert torch.allclose(p.grad_sample, torch.stack([a[k] for a in alone]), atol=1e-6, rtol=1e-4)
        clipped = sum(f * a[k] for f, a in zip(factors, alone, strict=True))
        assert torch.allclose(p.summed_grad, clipped, atol=1e-7, rtol=1e-4)


def test_the_private_latent_scale_is_the_clipped_log_moment_mean_plus_its_gaussian_noise() -> None:
    """The estimate is exp(-(sum of each image's clipped log mean-square latent + noise) / 2N), the noise drawn
    N(0, (SCALE_NOISE * LOG_MOMENT_BOUND)^2); one image moves the sum by at most the bound, whatever its latents."""
    m = latent()
    x, _ = data(64)
    logs = m.encode(x).pow(2).flatten(1).mean(1).log().clamp(-LOG_MOMENT_BOUND, LOG_MOMENT_BOUND)
    draw = torch.randn((), generator=torch.Generator().manual_seed(3)).item() * SCALE_NOISE * LOG_MOMENT_BOUND
    scale = private_latent_scale(m, x, torch.Generator().manual_seed(3))
    assert scale == pytest.approx(math.exp(-0.5 * (logs.sum().item() + draw) / 64), rel=1e-5)
    extreme = x.clone()
    extreme[0] = 1e6  # an outlier's latent: clipped, so the estimate moves by at most bound / 2N in log
    moved = private_latent_scale(m, extreme, torch.Generator().manual_seed(3))
    assert abs(math.log(moved) - math.log(scale)) <= LOG_MOMENT_BOUND / 64 + 1e-6
