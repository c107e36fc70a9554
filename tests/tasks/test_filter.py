"""The judge and filter steps on a tiny real dataset (scikit-learn digits 0-3 at 16x16) written to temp dirs.

Each constructed synthetic image has a known answer: a copy of a training image is memorized, an image of another
class fails the label test, uniform noise falls outside the real k-NN balls, a constant image fails sanity, a
second copy of a kept image is a near-duplicate. The top-up runs a real (tiny) VAE checkpoint.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from rich.console import Console
from sklearn.datasets import load_digits

from synthaug.models.config import JudgeConfig, VAEConfig
from synthaug.models.metrics import nearest_correlation, nearest_distance, realism_inside
from synthaug.tasks.core.io.images import load_images, to_uint8, write_png
from synthaug.tasks.core.io.manifest import COLUMNS, read_manifest, write_manifest
from synthaug.tasks.core.params.filter import FilterParams
from synthaug.tasks.core.params.generate import GenerateParams
from synthaug.tasks.core.params.model import ModelParams
from synthaug.tasks.core.sampling import image_path, seeds_for
from synthaug.tasks.core.scoring.features import embed, load_judge_step
from synthaug.tasks.core.scoring.rules import (
    MIN_ACCEPTANCE_RATE,
    REJECT_REASONS,
    SCORE_COLUMNS,
    MemorizationThresholds,
    Thresholds,
    memorization_thresholds,
    pixels_uint8,
    reject_reasons,
    sanity_reason,
    topup_count,
)
from synthaug.tasks.filter.reference import class_radii
from synthaug.tasks.filter.step import filter_step
from synthaug.tasks.generate import generate_from_plan
from synthaug.tasks.judge import train_judge_step
from synthaug.tasks.train.step import train

CLASSES = ("0", "1", "2", "3")
SCARCE = "3"  # keeps only SCARCE_TRAIN training images
SCARCE_TRAIN = 12
VAL, HELDBACK = 10, 20  # per class
TINY_JUDGE = JudgeConfig(width=16, feature_dim=64, steps=200, batch_size=32, lr=3e-3, seed=0)
GEN = GenerateParams(device="cpu", batch_size=64)




def _manifest_rows(images: torch.Tensor, labels: list[str], splits: list[str], root, names: list[str]) -> list[dict]:
    rows = []
    for img, label, split, name in zip(to_uint8(images), labels, splits, names, strict=True):
        path = f"images/{label}/{name}.png"
        rows.append({"image_id": write_png(img, root / path), "path": path, "label": label, "split": split,
                     "source": "real", "generator": None, "checkpoint": None, "seed": None, "accepted": True,
                     "reject_reason": None, "height": 16, "width": 16, "channels": 1})
    return rows


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An ingest dir (train/val/heldback per class; class 3 scarce) and a judge trained on it."""
    root = tmp_path_factory.mktemp("filter")
    d = load_digits()
    keep = np.isin(d.target, [int(c) for c in CLASSES])
    x = torch.tensor(d.images[keep], dtype=torch.float32)[:, None] / 8.0 - 1.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp(-1, 1)
    y = [str(t) for t in d.target[keep]]
    splits = []
    seen: dict[str, int] = {}
    for label in y:
        i = seen[label] = seen.get(label, -1) + 1
        if i < VAL:
            splits.append("val")
        elif i < VAL + HELDBACK:
            splits.append("heldback")
        elif label != SCARCE or i < VAL + HELDBACK + SCARCE_TRAIN:
            splits.append("train")
        else:
            splits.append("test")
    ingest = root / "ingest"
    rows = _manifest_rows(x, y, splits, ingest, [f"d{i:04d}" for i in range(len(y))])
    frame = pd.DataFrame(rows, columns=list(COLUMNS)).astype({"seed": "Int64"})
    write_manifest(frame, ingest / "manifest.parquet")
    judge_dir = root / "judge"
    quiet = Console(file=io.StringIO())
    train_judge_step(ingest / "manifest.parquet", TINY_JUDGE, judge_dir, device="cpu", console=quiet)
    judge, names = load_judge_step(judge_dir)
    # decoded exactly as the filter will see them (PNG round trip)
    images = load_images(ingest, list(frame["path"]), 1)
    return {"root": root, "ingest": ingest, "frame": frame, "images": images, "judge_dir": judge_dir,
            "judge": judge, "names": names}


def _plan(path, world, needed: dict[str, int], to_generate: dict[str, int]) -> None:
    train_counts = world["frame"][world["frame"]["split"] == "train"]["label"].value_counts()
    rows = [(c, int(train_counts[c]), int(train_counts[c]) + needed.get(c, 0), to_generate.get(c, 0))
            for c in CLASSES]
    pd.DataFrame(rows, columns=["class", "real", "target", "to_generate"]).to_csv(path, index=False)


def _confidence(world, images: torch.Tensor, label: str) -> torch.Tensor:
    return world["judge"].predict_proba(images)[:, world["names"].index(label)]


def _pick(world, split: str, label: str, *, judged_as: str) -> int:
    """Row index of the first ``split`` image of ``label`` the judge gives >= 0.9 for ``judged_as``."""
    f = world["frame"]
    rows = np.flatnonzero(((f["split"] == split) & (f["label"] == label)).to_numpy())
    conf = _confidence(world, world["images"][rows], judged_as)
    return int(rows[int(torch.nonzero(conf >= 0.9)[0, 0])])


# --------------------------------------------------------------------------------------------------- the judge


def test_judge_step_writes_calibrated_judge_with_class_names(world) -> None:
    info = json.loads((world["judge_dir"] / "judge.json").read_text())
    assert info["class_names"] == list(CLASSES) == world["names"]
    assert info["train_per_class"][SCARCE] == SCARCE_TRAIN
    assert info["train_size"] == int((world["frame"]["split"] == "train").sum())
    assert info["calibrated"] and info["temperature"] > 0 and info["val_size"] == VAL * len(CLASSES)
    # temperature scaling keeps every argmax: accuracy unchanged, NLL not worse
    assert info["val_before"]["accuracy"] == info["val_after"]["accuracy"] >= 0.7
    assert info["val_after"]["nll"] <= info["val_before"]["nll"] + 1e-9
    assert float(world["judge"].temperature) == pytest.approx(info["temperature"])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_embed_uses_the_judge_or_a_local_extractor(world, tmp_path) -> None:
    x = world["images"][:5]
    assert torch.equal(embed(x, world["judge"]), world["judge"].embed(x))
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 7)).eval())
    path = tmp_path / "extractor.pt"
    scripted.save(str(path))
    assert embed(x, world["judge"], extractor=path).shape == (5, 7)
    with pytest.raises(Exception, match="no such file"):
        embed(x, world["judge"], extractor=tmp_path / "missing.pt")


# ---------------------------------------------------------------------------------------------- pure helpers


def test_sanity_reason_flags_nan_inf_range_and_constant() -> None:
    x = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x[1, 0, 3, 3] = float("nan")
    x[2, 0, 0, 0] = float("inf")
    x[3] = 0.25  # constant
    x[4, 0, 5, 5] = 1.5  # out of [-1, 1]
    x[5, 0] = torch.linspace(-1, -1 + 1 / 127.5, 16)[None, :]  # one grey level of variation: still constant
    assert sanity_reason(x) == [None, "non_finite", "non_finite", "constant", "out_of_range", "constant"]
    assert sanity_reason(torch.full((2, 3, 8, 8), float("nan"))) == ["non_finite", "non_finite"]


def test_memorization_thresholds_are_holdout_quantiles() -> None:
    train_feats = np.array([[0.0, 0.0], [100.0, 0.0]])
    holdout_feats = np.array([[0.0, d] for d in (5.0, 1.0, 4.0, 2.0, 3.0)])  # nearest distances 1..5
    t = np.array([1.0, -1.0, 0.0, 0.0])  # zero-mean, orthogonal to u: holdout rows have correlation cos(a) with t
    u = np.array([0.0, 0.0, 1.0, -1.0])
    corrs = (0.5, 0.9, 0.6, 0.8, 0.7)
    holdout_pixels = np.stack([c * t / np.linalg.norm(t) + math.sqrt(1 - c * c) * u / np.linalg.norm(u)
                               for c in corrs])
    train_pixels = np.stack([t, -t])  # -t correlates negatively: the maximum is with t
    m = memorization_thresholds(holdout_feats, train_feats, holdout_pixels, train_pixels, 0.25)
    assert m.feature_distance == pytest.approx(2.0)  # 25% quantile of 1..5
    assert m.pixel_correlation == pytest.approx(0.8)  # 75% quantile of 0.5..0.9
    assert m.n_holdout == 5 and m.quantile == 0.25
    m0 = memorization_thresholds(holdout_feats, train_feats, holdout_pixels, train_pixels, 0.0)
    assert (m0.feature_distance, m0.pixel_correlation) == pytest.approx((1.0, 0.9))
    # A holdout image that is itself a copy puts the quantiles at 0 / 1: clamped so a copy still counts.
    copy = memorization_thresholds(train_feats[:1], train_feats, train_pixels[:1], train_pixels, 0.0)
    assert copy.feature_distance > 0 and copy.pixel_correlation < 1
    with pytest.raises(ValueError, match="quantile"):
        memorization_thresholds(holdout_feats, train_feats, holdout_pixels, train_pixels, 0.7)


def test_pixels_uint8_are_the_stored_levels() -> None:
    levels = torch.randint(0, 256, (5, 1, 4, 4), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    decoded = levels.float() / 127.5 - 1.0  # as tasks.core.io.images.load_images decodes a PNG
    assert np.array_equal(pixels_uint8(decoded), levels.reshape(5, -1).numpy())


def test_topup_count_learns_from_the_acceptance_rate() -> None:
    assert topup_count(10, accepted=5, generated=10, budget_left=100) == 20  # rate 0.5
    assert topup_count(3, accepted=1, generated=3, budget_left=100) == 9  # rate 1/3
    assert topup_count(10, accepted=0, generated=40, budget_left=1000) == math.ceil(10 / MIN_ACCEPTANCE_RATE)
    assert topup_count(10, accepted=0, generated=0, budget_left=100) == 10  # nothing observed: rate 1
    assert topup_count(10, accepted=5, generated=10, budget_left=7) == 7  # budget caps it
    assert topup_count(0, accepted=5, generated=10, budget_left=7) == 0
    assert topup_count(4, accepted=5, generated=10, budget_left=0) == 0


def test_reject_reasons_follow_the_documented_order() -> None:
    mem = MemorizationThresholds(feature_distance=1.0, pixel_correlation=0.9, quantile=0.01, n_holdout=10)
    t = Thresholds(min_confidence=0.5, memorization=mem, realism_k=3, duplicate_distance=0.5,
                   median_real_nn_distance=2.5)
    good = {"sanity": None, "score_confidence": 0.9, "score_nn_pixel_corr": 0.5, "score_nn_feature": 3.0,
            "score_realism": 2.0}
    rows = [
        {**good, "sanity": "constant", "score_confidence": 0.1},  # sanity before label
        {**good, "score_confidence": 0.2, "score_nn_pixel_corr": 1.0},  # label before memorization
        {**good, "score_nn_pixel_corr": 0.95, "score_nn_feature": 0.0},  # pixel before feature
        {**good, "score_nn_feature": 1.0, "score_realism": 0.5},  # feature threshold is inclusive; before realism
        {**good, "score_realism": 0.99},
        good,  # seed 5: kept
        good,  # seed 6: same features as seed 5: near-duplicate
        good,  # seed 7: another class, same features: not a duplicate
    ]
    frame = pd.DataFrame(rows)
    frame["label"] = ["a"] * 7 + ["b"]
    frame["seed"] = list(range(8))
    feats = torch.tensor([[10.0 * i, 0.0] for i in range(5)] + [[100.0, 0.0]] * 3, dtype=torch.float64)
    reasons, dup = reject_reasons(frame, feats, t)
    assert reasons == ["sanity", "label", "memorized_pixel", "memorized_feature", "unrealistic", None,
                       "near_duplicate", None]
    # score_duplicate: distance to the nearest earlier kept image of the class (NaN: none earlier)
    assert np.isnan(dup[:6]).all() and dup[6] == 0.0 and np.isnan(dup[7])


def test_filter_params_validate_ranges() -> None:
    p = FilterParams(judge={"steps": 10})
    assert p.judge.steps == 10 and p.min_confidence == 0.5 and p.realism_k == 3 and p.topup_rounds == 3
    for bad in ({"min_confidence": 1.5}, {"memorization_quantile": -0.1}, {"topup_budget": -1},
                {"realism_k": 0}, {"judge": {"steps": 0}}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            FilterParams(**bad)


# ------------------------------------------------------------------------------------------ constructed cases


def test_constructed_images_get_their_known_reasons(world, tmp_path) -> None:
    f, images = world["frame"], world["images"]
    copy = _pick(world, "train", "0", judged_as="0")
    other = _pick(world, "heldback", "1", judged_as="1")
    # Novel images of class 0 any sane filter keeps: unseen real ones, confidently judged, inside the real class-0
    # k-NN balls, and farther from the train set than a quarter of the val images in both feature and pixel space.
    train = (f["split"] == "train").to_numpy(copy=True)
    labels = f["label"].to_numpy(copy=True)
    feats = embed(images, world["judge"]).double()
    tr_feats, tr_pixels = feats[torch.from_numpy(train)], images[torch.from_numpy(train)]
    val = torch.tensor((f["split"] == "val").to_numpy())
    held0 = np.flatnonzero(((f["split"] == "heldback") & (f["label"] == "0")).to_numpy())
    radii = class_radii(tr_feats, labels[train], 3)
    inside = realism_inside(tr_feats[torch.from_numpy(labels[train] == "0")], radii[labels[train] == "0"],
                            feats[held0])
    far = (nearest_distance(feats[held0], tr_feats).distance
           > np.quantile(nearest_distance(feats[val], tr_feats).distance, 0.25))
    far &= (nearest_correlation(images[held0], tr_pixels).correlation
            < np.quantile(nearest_correlation(images[val], tr_pixels).correlation, 0.75))
    sure = _confidence(world, images[held0], "0").numpy() >= 0.9
    novel = [int(i) for i in held0[inside & far & sure]]
    assert len(novel) >= 3, "the tiny judge should find a few clearly novel, realistic zeros"
    noise = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    constant = torch.full((1, 1, 16, 16), -1.0)
    cases = [  # (label, seed, image, expected reason)
        ("0", 1, images[copy], "memorized_pixel"),
        ("0", 2, images[other], "label"),
        ("0", 3, noise[0], None),  # label or unrealistic: checked below
        ("0", 4, constant[0], "sanity"),
        ("0", 5, images[novel[0]], None),
        ("0", 6, images[novel[0]], "near_duplicate"),
        ("1", 7, images[novel[1]], "label"),  # a zero sent as a one
        ("0", 8, images[novel[1]], None),
        ("0", 9, images[novel[2]], "surplus"),  # class 0 needs 2: seeds 5 and 8 are kept
    ]
    gen = tmp_path / "generate"
    rows = []
    for label, seed, img, _ in cases:
        path = image_path(label, seed)
        rows.append({"image_id": write_png(to_uint8(img[None])[0], gen / path), "path": path, "label": label,
                     "split": "train", "source": "synthetic", "generator": "test", "checkpoint": "none",
                     "seed": seed, "accepted": True, "reject_reason": None, "height": 16, "width": 16, "channels": 1})
    # an unreadable file: sanity, and no crash
    rows.append({**rows[-1], "seed": 10, "path": image_path("0", 10), "image_id": "x"})
    (gen / image_path("0", 10)).write_bytes(b"not a png")
    write_manifest(pd.DataFrame(rows, columns=list(COLUMNS)).astype({"seed": "Int64"}), gen / "manifest.parquet")
    plan = tmp_path / "plan.csv"
    _plan(plan, world, needed={"0": 2, "1": 3}, to_generate={"0": 10, "1": 1})
    out = tmp_path / "filter"
    console = Console(file=io.StringIO(), width=200)
    result = filter_step(world["ingest"], gen, world["judge_dir"], plan, tmp_path / "no-checkpoint",
                         FilterParams(topup_rounds=0, device="cpu"), GEN, out, console=console)

    m, meta = read_manifest(out / "manifest.parquet")
    assert set(SCORE_COLUMNS) <= set(m.columns)
    by_seed = m.set_index("seed")
    for label, seed, _, expected in cases:
        if seed != 3:
            got = by_seed.loc[seed, "reject_reason"]
            assert (None if pd.isna(got) else got) == expected, (label, seed, by_seed.loc[seed].to_dict())
    assert by_seed.loc[3, "reject_reason"] in ("label", "unrealistic")
    assert by_seed.loc[3, "score_realism"] < 1  # noise lies outside every real class-0 k-NN ball
    assert by_seed.loc[5, "score_realism"] >= 1 and by_seed.loc[5, "score_confidence"] >= 0.9
    assert by_seed.loc[1, "score_nn_pixel_corr"] == pytest.approx(1.0) and by_seed.loc[1, "score_nn_feature"] < 1e-5
    assert by_seed.loc[6, "score_duplicate"] == pytest.approx(0.0, abs=1e-6)
    assert by_seed.loc[10, "reject_reason"] == "sanity" and by_seed.loc[10, list(SCORE_COLUMNS)].isna().all()
    readable = by_seed.drop(index=10)
    assert readable[list(SCORE_COLUMNS[:4])].notna().all().all()  # every score where computable
    assert list(m["accepted"]) == list(m["reject_reason"].isna())
    assert sorted(by_seed.index[by_seed["accepted"]]) == [5, 8]
    assert set(m["reject_reason"].dropna()) <= set(REJECT_REASONS)
    # a self-contained dataset root: relative paths, images hard-linked from the generate step
    for p in m["path"]:
        assert (out / p).is_file() and not os.path.isabs(p)
        assert os.path.samefile(out / p, gen / p)

    # never silent: class 1 needs 3 and got none, class 0 is met; printed, returned and in the summary
    assert result.shortfall == {"1": 3} and not result.met and result.rounds_used == 0
    summary = json.loads(result.summary_path.read_text())
    assert summary["shortfall"] == {"1": 3} and summary["met"] is False
    c0 = summary["classes"]["0"]
    assert (c0["needed"], c0["generated"], c0["accepted"], c0["shortfall"]) == (2, 9, 2, 0)
    assert c0["rejected"]["surplus"] == 1 and c0["rejected"]["sanity"] == 2
    assert c0["sanity"] == {"constant": 1, "unreadable": 1}
    assert sum(c0["rejected"].values()) + c0["accepted"] == c0["generated"]
    th = summary["thresholds"]
    assert th["memorization_feature_distance"] == pytest.approx(result.thresholds.memorization.feature_distance)
    assert 0 < th["memorization_pixel_correlation"] < 1 and th["realism_k"] == 3 and th["duplicate_distance"] > 0
    assert meta["thresholds"] == th
    text = console.file.getvalue()
    assert "warning: class '1' is 3 short" in text and "class '0'" not in text


# ------------------------------------------------------------------------------------------------------ top-up


@pytest.fixture(scope="module")
def topped_up(world, tmp_path_factory):
    """A tiny VAE trained on the ingest dir, 1 image per class generated, a plan needing 3 per class."""
    root = tmp_path_factory.mktemp("topup")
    vae = dataclasses.replace(VAEConfig.tiny(), steps=30)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # tasks.train draws the initial weights from the global RNG
        train(world["ingest"] / "manifest.parquet", ModelParams(family="vae", device="cpu", vae=vae), root / "model")
    ckpt = root / "model" / "checkpoint"
    plan = root / "plan.csv"
    _plan(plan, world, needed={c: 3 for c in CLASSES}, to_generate={c: 1 for c in CLASSES})
    generate_from_plan(plan, ckpt, GEN, root / "generate")
    params = FilterParams(topup_rounds=2, topup_budget=12.0, device="cpu")
    console = Console(file=io.StringIO(), width=200)
    result = filter_step(world["ingest"], root / "generate", world["judge_dir"], plan, ckpt, params, GEN,
                         root / "filter", console=console)
    return {"root": root, "plan": plan, "ckpt": ckpt, "params": params, "result": result,
            "text": console.file.getvalue()}


def test_short_classes_are_topped_up_with_new_seeds(topped_up) -> None:
    result = topped_up["result"]
    m, _ = read_manifest(result.manifest_path)
    summary = json.loads(result.summary_path.read_text())
    assert result.rounds_used >= 1 and summary["rounds_used"] == result.rounds_used
    first = summary["rounds"][0]["classes"]
    for i, c in enumerate(CLASSES):
        rows = m[m["label"] == c]
        seeds = sorted(int(s) for s in rows["seed"])
        assert seeds[0] == seeds_for(i, 0, 1, GEN.seed)[0]  # the generate step's seed
        s = summary["classes"][c]
        assert s["generated"] == len(rows) == 1 + s["generated_topup"] and s["generated_topup"] <= s["topup_budget"]
        # the top-up continues the class's seed block right after the largest seed used, without gaps
        assert seeds == seeds_for(i, 0, len(seeds), GEN.seed)
        for p in rows["path"]:
            assert (result.manifest_path.parent / p).is_file()
        # round 1 asked for shortfall / observed rate of the first image (floored at 5%), within the budget
        reason = rows[rows["seed"] == seeds[0]]["reject_reason"].iloc[0]
        ok = int(pd.isna(reason) or reason == "surplus")  # later seeds cannot change the first one's fate
        assert first[c]["generated_before"] == 1 and first[c]["accepted_before"] == ok
        assert first[c]["asked"] == min(math.ceil((3 - ok) / max(ok / 1, MIN_ACCEPTANCE_RATE)), s["topup_budget"])
        assert first[c]["seeds"] == [seeds[1], seeds[first[c]["asked"]]]
        # the account adds up, and the shortfall is what is missing
        assert s["accepted"] + sum(s["rejected"].values()) == s["generated"]
        assert s["accepted"] == min(3, s["accepted"] + s["rejected"]["surplus"])
        assert s["shortfall"] == 3 - s["accepted"] == result.shortfall.get(c, 0)
        assert s["met"] == (s["shortfall"] == 0)
    assert len(m) > len(CLASSES)  # something was generated beyond the first block
    # never silent: each short class is warned about, and the summary says whether the plan was met
    for c, n in result.shortfall.items():
        assert f"warning: class '{c}' is {n} short" in topped_up["text"]
    assert summary["met"] == result.met == (not result.shortfall)
    assert "filter: top-up round 1" in topped_up["text"]


def test_rerun_resumes_without_sampling_again(topped_up, world) -> None:
    out = topped_up["root"] / "filter"
    before = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    m1, _ = read_manifest(out / "manifest.parquet")
    result = filter_step(world["ingest"], topped_up["root"] / "generate", world["judge_dir"], topped_up["plan"],
                         topped_up["ckpt"], topped_up["params"], GEN, out, console=Console(file=io.StringIO()))
    after = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    assert after == before  # nothing re-sampled, nothing new
    m2, _ = read_manifest(result.manifest_path)
    pd.testing.assert_frame_equal(m1, m2)

