"""The judge classifier on scikit-learn's bundled digits (8x8, upsampled to 16x16), and external extractors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from synthaug.models.config import JudgeConfig
from synthaug.models.judge import (
    Judge,
    balanced_class_weights,
    fit_temperature,
    load_feature_extractor,
    load_judge,
    save_judge,
    train_judge,
    translate,
)
from tests.markers import slow

# Small enough for ~5 s on one CPU thread, large enough for > 90% held-out accuracy on digits.
FAST = JudgeConfig(steps=200, width=16, feature_dim=64, batch_size=64, lr=5e-3, seed=0)




@pytest.fixture(scope="module")
def digits() -> dict[str, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # 0..16 -> [-1, 1]
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, va = perm[:1300], perm[1300:]
    return {"x": x[tr], "y": y[tr], "vx": x[va], "vy": y[va]}


@pytest.fixture(scope="module")
def trained(digits) -> Judge:
    return train_judge(digits["x"], digits["y"], num_classes=10, config=FAST, device="cpu",
                       val_images=digits["vx"], val_labels=digits["vy"])


def test_judge_learns_digits_in_a_few_steps(trained, digits) -> None:
    """FAST's step budget is enough for digits (how long those steps take is a benchmark's question, not a test's)."""
    acc = (trained.predict_proba(digits["vx"]).argmax(1) == digits["vy"]).float().mean().item()
    assert acc > 0.90, f"val accuracy {acc:.3f}"
    assert not trained.training


def test_temperature_keeps_argmax_and_does_not_raise_val_nll(trained, digits) -> None:
    judge = trained
    t = float(judge.temperature)
    assert t > 0 and t != 1.0  # it was fitted
    logits = judge.predict_logits(digits["vx"])
    proba = judge.predict_proba(digits["vx"])
    assert torch.equal(proba.argmax(1), logits.argmax(1))
    torch.testing.assert_close(proba, torch.softmax(logits / t, 1))
    nll_raw = F.cross_entropy(logits, digits["vy"]).item()
    nll_cal = F.nll_loss(proba.log(), digits["vy"]).item()
    assert nll_cal <= nll_raw + 1e-6
    # Refitting on the same data lands on the same optimum.
    assert fit_temperature(judge, digits["vx"], digits["vy"]) == pytest.approx(t, rel=1e-3)


def test_features_are_the_embedding_and_batch_independent(trained, digits) -> None:
    judge = trained
    x = digits["vx"][:40]
    emb = judge.embed(x)
    assert emb.shape == (40, FAST.feature_dim) and emb.dtype == torch.float32
    torch.testing.assert_close(judge.embed(x, batch_size=7), emb, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(judge.head(judge.features(x)), judge(x))
    with pytest.raises(ValueError, match=r"\(N, 1, 16, 16\)"):
        judge.embed(torch.zeros(2, 1, 8, 8))


def test_save_load_gives_identical_logits(trained, digits, tmp_path) -> None:
    judge = trained
    path = tmp_path / "judge.pt"
    save_judge(judge, path)
    payload = torch.load(path, weights_only=True)  # plain data only: no pickled classes
    assert payload["config"] == dataclasses.asdict(FAST)
    loaded = load_judge(path)
    assert loaded.config == judge.config and not loaded.training
    assert float(loaded.temperature) == float(judge.temperature)
    x = digits["vx"][:64]
    assert torch.equal(loaded.predict_logits(x), judge.predict_logits(x))
    assert torch.equal(loaded.predict_proba(x), judge.predict_proba(x))
    with pytest.raises(ValueError, match="not a judge checkpoint"):
        torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
        load_judge(tmp_path / "other.pt")


def test_training_is_deterministic_and_leaves_global_rng_alone(digits) -> None:
    cfg = dataclasses.replace(FAST, steps=4)
    x, y = digits["x"][:200], digits["y"][:200]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = train_judge(x, y, num_classes=10, config=cfg, device="cpu")
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(456)  # the caller's global RNG must not matter
    b = train_judge(x, y, num_classes=10, config=cfg, device="cpu")
    c = train_judge(x, y, num_classes=10, config=dataclasses.replace(cfg, seed=1), device="cpu")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.head[1].weight, c.head[1].weight)
    assert float(a.temperature) == 1.0  # no val set: left uncalibrated


def test_class_weights_and_step_callback(digits) -> None:
    y = torch.tensor([0, 0, 0, 1, 2, 2])
    torch.testing.assert_close(balanced_class_weights(y, 4), torch.tensor([6 / 12, 6 / 4, 6 / 8, 0.0]))
    cfg = dataclasses.replace(FAST, steps=3)
    x, y = digits["x"][:100], digits["y"][:100]
    seen: list[int] = []
    plain = train_judge(x, y, num_classes=10, config=cfg, device="cpu", on_step=lambda s, _: seen.append(s))
    weighted = train_judge(x, y, num_classes=10, config=cfg, device="cpu",
                           class_weights=torch.linspace(0.1, 2.0, 10))
    assert seen == [1, 2, 3]
    assert not torch.equal(plain.head[1].weight, weighted.head[1].weight)
    with pytest.raises(ValueError, match="class_weights"):
        train_judge(x, y, num_classes=10, config=cfg, device="cpu", class_weights=torch.ones(3))


@slow
def test_sample_weights_weigh_images_in_the_loss(digits) -> None:
    """Equal weights change nothing (a weighted mean of equal weights is the mean); where the same images carry two
    labels, the heavier label wins, in either direction; bad weights are refused."""
    x, y = digits["x"][:100], digits["y"][:100]
    cfg = dataclasses.replace(FAST, steps=4)
    plain = train_judge(x, y, num_classes=10, config=cfg, device="cpu")
    equal = train_judge(x, y, num_classes=10, config=cfg, device="cpu", sample_weights=torch.full((100,), 3.0))
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(v, equal.state_dict()[k], rtol=1e-4, atol=1e-5, msg=k)
    both_x, both_y = torch.cat([x, x]), torch.cat([y, (y + 1) % 10])
    heavy, light = torch.full((100,), 5.0), torch.full((100,), 0.2)
    cfg = FAST
    first = train_judge(both_x, both_y, num_classes=10, config=cfg, device="cpu",
                        sample_weights=torch.cat([heavy, light])).predict_logits(x).argmax(dim=1)
    second = train_judge(both_x, both_y, num_classes=10, config=cfg, device="cpu",
                         sample_weights=torch.cat([light, heavy])).predict_logits(x).argmax(dim=1)
    assert float((first == y).float().mean()) > 0.8
    assert float((second == (y + 1) % 10).float().mean()) > 0.8
    for bad in (torch.ones(3), torch.cat([torch.ones(99), torch.zeros(1)])):
        with pytest.raises(ValueError, match="sample_weights"):
            train_judge(x, y, num_classes=10, config=cfg, device="cpu", sample_weights=bad)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 16, 16), (3, 28, 28), (3, 32, 32), (1, 64, 48)])
def test_network_is_sized_to_the_images(shape) -> None:
    judge = Judge(shape, 4, config=JudgeConfig(width=8, feature_dim=16))
    x = torch.zeros(2, *shape)
    assert judge(x).shape == (2, 4) and judge.features(x).shape == (2, 16)
    spatial = judge.body(x).shape[-2:]
    assert 2 <= min(spatial) <= 7  # downsampled to a few pixels, whatever the input size



@pytest.mark.parametrize(("side", "stages"), [(8, 2), (12, 2), (16, 2), (32, 3), (64, 4)])
def test_vgg_keeps_at_least_two_stages(side: int, stages: int) -> None:
    # One stage at 8 px was too weak a classifier (docs/BENCHMARKS.md): small images still get two.
    judge = Judge((1, side, side), 4, config=JudgeConfig(width=8, feature_dim=16, backbone="vgg"))
    assert sum(isinstance(m, torch.nn.AvgPool2d) for m in judge.body) == stages


def test_shift_translates_with_edge_padding() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = translate(x, torch.tensor([1]), torch.tensor([-1]), 1)
    # Down one row, left one column; the vacated top row / right column repeat the edge.
    expected = torch.tensor([[1.0, 2, 3, 3], [1, 2, 3, 3], [5, 6, 7, 7], [9, 10, 11, 11]])
    assert torch.equal(out[0, 0], expected)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script/save: the user's side of the format
def test_torchscript_feature_extractor(tmp_path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1))
    scripted = torch.jit.script(net)
    path = tmp_path / "extractor.ts"
    torch.jit.save(scripted, str(path))
    extract = load_feature_extractor(path)
    x = torch.randn(10, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    feats = extract(x, batch_size=3)
    assert feats.shape == (10, 8)
    with torch.no_grad():
        torch.testing.assert_close(feats, net(x).flatten(1))
    torch.save({"not": "torchscript"}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="TorchScript"):
        load_feature_extractor(tmp_path / "plain.pt")
    with pytest.raises(FileNotFoundError):
        load_feature_extractor(tmp_path / "missing.ts")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: JudgeConfig(steps=0), "steps must be >= 1, got 0"),
        (lambda: JudgeConfig(dropout=1.0), "dropout"),
        (lambda: JudgeConfig(lr=-1.0), "-1.0"),
        (lambda: Judge((1, 4, 4), 3), r"\(1, 4, 4\)"),
        (lambda: Judge((1, 16, 16), 1), "num_classes"),
        (lambda: train_judge(torch.zeros(4, 1, 16, 16), torch.tensor([0, 1, 2, 5]), num_classes=3,
                             config=FAST, device="cpu"), r"\[0, 5\]"),
        (lambda: train_judge(torch.zeros(4, 1, 16, 16), torch.zeros(3, dtype=torch.int64), num_classes=3,
                             config=FAST, device="cpu"), "labels must be"),
        (lambda: train_judge(torch.zeros(4, 1, 16, 16), torch.zeros(4, dtype=torch.int64), num_classes=3,
                             config=FAST, device="cpu", val_images=torch.zeros(2, 1, 16, 16)), "together"),
    ],
)
def test_bad_input_raises_value_error_naming_it(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


class _WritesMarker:
    """Unpickled, it opens (creates) the marker file: a stand-in for any code a crafted file could run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted_export_archive(path, marker) -> None:
    """A real ``torch.export.save`` archive whose bias is switched to ``use_pickle`` with a hostile pickle."""
    import json
    import pickle
    import zipfile

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    honest = path.with_name("honest.pt2")
    torch.export.save(torch.export.export(Net(), (torch.zeros(2, 1, 2, 2),)), str(honest))
    with zipfile.ZipFile(honest) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("weights/model_weights_config.json"):
                config = json.loads(data)
                entry = next(e for e in config["config"].values() if e["path_name"] == "weight_1")
                entry["use_pickle"] = True
                data = json.dumps(config).encode()
            elif name.endswith("weights/weight_1"):
                data = pickle.dumps(_WritesMarker(str(marker)), protocol=2)
            dst.writestr(name, data)


@pytest.mark.parametrize("name", ["extractor.pt2", "extractor.ts"])  # the suffix of the file does not matter
def test_crafted_export_archive_is_refused_without_running_its_pickle(tmp_path, name) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / name
    _crafted_export_archive(path, marker)
    with pytest.raises(ValueError, match=r"torch\.export archive.*refused.*torch\.jit\.save"):
        load_feature_extractor(path)
    assert not marker.exists(), "loading the extractor unpickled the crafted payload"
    with pytest.raises(ValueError, match=r"torch\.export archive"):  # an honest archive is refused all the same
        load_feature_extractor(tmp_path / "honest.pt2")


def test_auto_backbone_keeps_vgg_up_to_64_px_and_takes_monai_resnet_above() -> None:
    """16-64 px keep the VGG stages (so existing numbers do not move); larger images get MONAI's ResNet-10."""
    for side, backbone in ((16, "vgg"), (64, "vgg"), (65, "resnet"), (128, "resnet"), (256, "resnet")):
        judge = Judge((3, side, side), 4)
        assert judge.backbone == backbone, side
    torch.manual_seed(0)
    auto = Judge((1, 16, 16), 10, config=FAST)
    torch.manual_seed(0)
    vgg = Judge((1, 16, 16), 10, config=dataclasses.replace(FAST, backbone="vgg"))
    assert all(torch.equal(a, b) for a, b in zip(auto.state_dict().values(), vgg.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="backbone must be one of auto, vgg, resnet"):
        JudgeConfig(backbone="vit")


@slow
def test_resnet_judge_learns_128_px_rgb_and_embeds_in_bounded_memory() -> None:
    from synthaug.models.common import peak_memory_mib, reset_peak_memory

    g = torch.Generator().manual_seed(0)
    n = 48
    y = torch.arange(n) % 2
    # class 0: a bright red disc; class 1: a bright blue square; both on noise, at random places
    x = torch.rand((n, 3, 128, 128), generator=g) * 0.4 - 1.0
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    for i in range(n):
        cy, cx = torch.randint(24, 104, (2,), generator=g).tolist()
        if y[i] == 0:
            x[i, 0][(yy - cy) ** 2 + (xx - cx) ** 2 < 400] = 1.0
        else:
            x[i, 2][((yy - cy).abs() < 18) & ((xx - cx).abs() < 18)] = 1.0
    config = JudgeConfig(steps=30, width=8, feature_dim=32, batch_size=16, lr=5e-3, seed=0)
    judge = train_judge(x[:32], y[:32], num_classes=2, config=config, device="cpu")
    assert judge.backbone == "resnet"
    assert (judge.predict_logits(x[32:]).argmax(1) == y[32:]).float().mean() >= 0.9
    # 256 images of 256 px asked in one pass of 512: the passes are capped to bounded pixels, same features
    big = torch.rand((256, 3, 256, 256), generator=g) * 2 - 1
    wide = Judge((3, 256, 256), 2, config=dataclasses.replace(config, width=32))
    start = reset_peak_memory(torch.device("cpu"))
    features = wide.embed(big, batch_size=512)
    peak = peak_memory_mib(torch.device("cpu"))
    if start is not None and peak is not None:
        # one uncapped VGG-style pass would hold 512 x 32 x 256 x 256 floats (4 GiB) in its first stage alone
        assert peak - start < 1024, f"embedding took {peak - start:.0f} MiB above its start"
    torch.testing.assert_close(features[:4], wide.embed(big[:4], batch_size=1), rtol=1e-4, atol=1e-5)
