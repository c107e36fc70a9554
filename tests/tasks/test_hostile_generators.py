"""Issue 29: a registry, a checkpoint and a pretrained folder are untrusted input. Tampered published generators,
checkpoint configs and pretrained folders are refused at the boundary, in one line naming the file, the field and
the fix: nothing is written outside the output folder, nothing allocates what a config declares, no raw exception
(IndexError, RecursionError, TypeError, a JSON decoder's, torch's multi-line advice) reaches the user, and a warm
start that cannot use the last published generator trains from scratch saying why.

Fast: the registry is replaced by a local folder (``fetch_generator`` patched); tests/tasks/test_generators.py has
the same refusal through a real git + DVC registry."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from synthaug.models.config import DiffusionConfig, VAEConfig
from synthaug.models.training import checkpoint_hash, save_checkpoint
from synthaug.models.vae import VAE
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.params.data import DataParams
from synthaug.tasks.core.params.model import ModelParams
from synthaug.tasks.core.params.publish import PublishParams
from synthaug.tasks.core.publishing import generators
from synthaug.tasks.core.untrusted import load_checked
from synthaug.tasks.ingest import ingest
from synthaug.tasks.train.pretrained import apply_pretrained, read_pretrained, write_bundle
from tests.bounds import run_bounded
from tests.tasks.test_pretrained import diffusion, latent
from tests.toy import digits_folder

CPU = torch.device("cpu")
TAG = "digits-generator/v1"


def generator_folder(root: Path, classes: list[str], **meta_changes) -> Path:
    """A real (untrained) tiny VAE generator in the published layout; ``meta_changes`` tamper with both its
    ``checkpoint/config.json`` and ``generator.json``."""
    config = VAEConfig.tiny()
    model = VAE(config, image_shape=(1, 16, 16), num_classes=len(classes), device=CPU)
    save_checkpoint(model, root / "checkpoint", step=2, class_names=classes)
    record = {"checkpoint": checkpoint_hash(root / "checkpoint"), "family": "vae", "class_names": classes,
              "image_shape": [1, 16, 16], "steps": 2, "config": dataclasses.asdict(config),
              "source": {"content_hash": "abc"}, "origin": {"from": None}}
    tamper(root, **meta_changes)
    (root / "generator.json").write_text(json.dumps({**record, **meta_changes}))
    return root


def tamper(root: Path, merge: bool = True, **changes) -> None:
    """Change fields of ``root``'s ``checkpoint/config.json``; a dict value is merged into the stored one unless
    ``merge`` is false."""
    path = root / "checkpoint" / "config.json"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if merge and isinstance(value, dict) and isinstance(meta.get(key), dict):
            meta[key] = {**meta[key], **value}
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder standing for the registry: ``fetch_generator`` copies ``<registry>/<tag>`` (tag's '/' as '_')."""
    root = tmp_path / "registry"
    root.mkdir()

    def fetch(location: str, tag: str, out: Path) -> Path:
        shutil.copytree(Path(location) / tag.replace("/", "_"), out)
        return out

    monkeypatch.setattr(generators, "fetch_generator", fetch)
    return root


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


# ---------------------------------------------------------------------------------------------------------------------
# finding 1: a tampered published generator writes outside --out


@pytest.mark.parametrize("hostile", ["../../../../x/PWNED", "..", ".git", "a/b", "con", "A"],
                         ids=["traversal", "dotdot", "dot-git", "separator", "device", "case-collision"])
def test_a_published_generator_whose_class_names_are_paths_writes_nothing(
        tmp_path: Path, registry: Path, hostile: str) -> None:
    generator_folder(registry / TAG.replace("/", "_"), ["a", "b"], class_names=["a", hostile])
    out = tmp_path / "deep" / "er" / "out"
    before = files_under(tmp_path)
    with pytest.raises(UserError) as caught:
        generators.sample_published(f"{registry}@{TAG}", out, count=2)
    message = str(caught.value)
    assert "generator.json" in message and "\n" not in message and "not made by synthaug" in message
    written = files_under(tmp_path) - before
    assert all(p.is_relative_to(out / "generator") or p in (out, *out.parents) for p in written), sorted(written)
    assert not (out / "images").exists()


def test_class_names_of_generator_json_and_of_its_checkpoint_must_agree(tmp_path: Path, registry: Path) -> None:
    folder = generator_folder(registry / TAG.replace("/", "_"), ["a", "b"])
    tamper(folder, class_names=["../../PWNED", "b"])  # generator.json says a, b; the checkpoint says otherwise
    with pytest.raises(UserError, match=r"config\.json: label '\.\./\.\./PWNED' holds a path separator"):
        generators.sample_published(f"{registry}@{TAG}", tmp_path / "out", count=1)


def test_an_intact_published_generator_still_samples(tmp_path: Path, registry: Path) -> None:
    generator_folder(registry / TAG.replace("/", "_"), ["a", "b"])
    manifest = generators.sample_published(f"{registry}@{TAG}", tmp_path / "out", count=1)
    assert manifest.is_file() and sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["a", "b"]


# ---------------------------------------------------------------------------------------------------------------------
# finding 4: a tampered config allocates whatever it declares (refused within 5 s of CPU and 300 MB)

CONFIG_BOMBS = {  # name -> (the change, what the refusal says)
    "channels": ({"family": "diffusion", "config": {**dataclasses.asdict(DiffusionConfig.tiny()),
                                                    "channels": [200000, 200000]}},
                 "channels must be at most 4096"),
    "wide-within-field-bounds": ({"family": "diffusion", "config": {**dataclasses.asdict(DiffusionConfig.tiny()),
                                                                    "channels": [4096] * 4, "norm_num_groups": 8,
                                                                    "num_head_channels": 8,
                                                                    "attention_levels": [False] * 4}},
                                 "numbers, more than the limit of 250,000,000"),
    "image-shape": ({"image_shape": [1, 60000, 60000]}, "image_shape [1, 60000, 60000] is out of bounds"),
    "classes": ({"class_names": [f"c{i}" for i in range(20000)]}, "class_names must hold 1 to 10000"),
    "latent": ({"config": {**dataclasses.asdict(VAEConfig.tiny()), "latent_dim": 10**9}},
               "latent_dim must be at most 4096"),
}


def test_tampered_checkpoint_configs_are_refused_before_allocating(tmp_path: Path) -> None:
    """``channels: 200000`` asked for 2.9 TB, ``image_shape: [1, 60000, 60000]`` for 7.2 GB. One interpreter (its
    torch import is not the bomb) refuses each within 5 s of CPU and 300 MB on top of what it held before."""
    folders = {}
    for bomb, (change, _) in CONFIG_BOMBS.items():
        folders[bomb] = generator_folder(tmp_path / bomb, ["a", "b"]) / "checkpoint"
        tamper(folders[bomb].parent, merge=False, **change)
    done = run_bounded("import torch\nfrom pathlib import Path\nfrom synthaug.tasks.core.errors import UserError\n"
                       "from synthaug.tasks.core.untrusted import load_checked\n"
                       "import synthaug.models.diffusion, synthaug.models.vae", f"""
        for bomb, folder in {({k: str(v) for k, v in folders.items()})!r}.items():
            try:
                load_checked(Path(folder), torch.device("cpu"), "fix it")
            except UserError as exc:
                print(bomb, "refused:", exc)
        """, cpu_s=5 * len(CONFIG_BOMBS))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(CONFIG_BOMBS), done.stdout
    for line, (_, reason) in zip(lines, CONFIG_BOMBS.values(), strict=True):
        assert "refused:" in line and "config.json" in line and reason in line and "fix it" in line, line


# ---------------------------------------------------------------------------------------------------------------------
# finding 5: raw exceptions reached the user


def test_a_tampered_checkpoint_ends_in_one_line_naming_the_file_and_field(tmp_path: Path) -> None:
    folder = generator_folder(tmp_path / "gen", ["a", "b"])
    ckpt = folder / "checkpoint"
    cases = {
        "unknown field(s) ['surprise']": {"config": {"surprise": 1}},  # was: unexpected keyword argument
        "config: steps: expected int, got '2'": {"config": {"steps": "2"}},
        "image_shape must be [channels, height, width]": {"image_shape": "16x16"},
        "family: unknown generator family 'pickle'": {"family": "pickle"},
        "class_names must hold 1 to": {"class_names": []},
    }
    original = (ckpt / "config.json").read_text()
    for expected, change in cases.items():
        (ckpt / "config.json").write_text(original)
        tamper(folder, **change)
        with pytest.raises(UserError) as caught:
            load_checked(ckpt, CPU, "fix it")
        assert expected in str(caught.value) and "config.json" in str(caught.value), caught.value
        assert "\n" not in str(caught.value)

    (ckpt / "config.json").write_text("{" * 100_000)  # was: RecursionError, or a decode error naming no file
    with pytest.raises(UserError, match=r"config\.json: not readable JSON"):
        load_checked(ckpt, CPU, "fix it")

    (ckpt / "config.json").write_text(original)
    tamper(folder, image_shape=[1, 32, 32])  # weights of a 16 px network: torch's multi-line state_dict error
    with pytest.raises(UserError) as caught:
        load_checked(ckpt, CPU, "fix it")
    assert "weights.pt" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("weights", ["garbage", "pickled", "nan", "int64", "truncated"])
def test_weights_that_are_not_a_checkpoint_of_the_network_are_refused_in_one_line(tmp_path: Path,
                                                                                  weights: str) -> None:
    folder = generator_folder(tmp_path / "gen", ["a", "b"])
    path = folder / "checkpoint" / "weights.pt"
    state = torch.load(path, weights_only=True)
    key = next(k for k, v in state["model"]["net"].items() if v.is_floating_point())
    if weights == "garbage":
        path.write_bytes(b"\x80\x02not a checkpoint" * 50)
    elif weights == "pickled":
        torch.save({"model": {"model": np.dtype("float32")}, "step": 1}, path)  # a pickled non-tensor object
    elif weights == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    else:
        bad = state["model"]["net"][key].clone()
        state["model"]["net"][key] = bad.fill_(float("nan")) if weights == "nan" else bad.long()
        torch.save(state, path)
    with pytest.raises(UserError) as caught:
        load_checked(folder / "checkpoint", CPU, "fix it")
    message = str(caught.value)
    assert "weights.pt" in message and "\n" not in message and "weights_only=False" not in message
    if weights in ("nan", "int64"):
        assert key in message


# ---------------------------------------------------------------------------------------------------------------------
# findings 5 and 6: pretrained folders


def bundle(tmp_path: Path, name: str, **metadata) -> Path:
    folder = tmp_path / name
    write_bundle(folder, {"unet": diffusion(["a", "b"]).ema.module.state_dict()}, {"class_names": ["a", "b"],
                                                                                   **metadata})
    return folder


@pytest.mark.parametrize("scale", [float("nan"), 0, -1, 1e308, True, [1], "2"],
                         ids=["nan", "zero", "negative", "huge", "true", "list", "text"])
def test_a_pretrained_latent_scale_that_is_not_a_sane_number_is_refused(tmp_path: Path, scale) -> None:
    """``latent_scale: [1]`` raised a TypeError; NaN, 0, -1, 1e308 and ``true`` were accepted."""
    folder = tmp_path / "ae"
    write_bundle(folder, {"autoencoder": latent(["a", "b"]).autoencoder.state_dict()}, {})
    meta = folder / "configs" / "metadata.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "latent_scale": scale}))
    with pytest.raises(UserError, match=r"latent_scale must be a finite number from 1e-06 to 1e\+06"):
        read_pretrained(folder)


def test_pretrained_weights_that_are_nan_or_integers_are_refused(tmp_path: Path) -> None:
    folder = bundle(tmp_path, "nan")
    weights = torch.load(folder / "models" / "model.pt", weights_only=True)
    key = "conv_in.conv.weight"
    weights["unet"][key] = torch.full_like(weights["unet"][key], float("nan"))
    torch.save(weights, folder / "models" / "model.pt")
    with pytest.raises(UserError, match=rf"unet: {key} holds NaN or infinite values"):
        apply_pretrained(diffusion(["a", "b"]), read_pretrained(folder), ["a", "b"])

    weights["unet"][key] = torch.zeros_like(weights["unet"][key], dtype=torch.int64)
    torch.save(weights, folder / "models" / "model.pt")
    with pytest.raises(UserError, match=rf"{key} holds int64 values; pretrained weights must be floating point"):
        read_pretrained(folder)

    flat = tmp_path / "diffusers"
    flat.mkdir()
    (flat / "config.json").write_text(json.dumps({"class_names": ["a", "b"]}))
    save_file({key: torch.zeros(3, dtype=torch.int64)}, flat / "unet.safetensors")
    with pytest.raises(UserError, match="holds int64 values"):
        read_pretrained(flat)


def test_broken_pretrained_files_are_one_line_errors(tmp_path: Path) -> None:
    folder = bundle(tmp_path, "deep")
    (folder / "configs" / "metadata.json").write_text("[" * 100_000)  # was: RecursionError
    with pytest.raises(UserError, match=r"metadata\.json: (JSON nested too deeply|not readable JSON)"):
        read_pretrained(folder)

    folder = bundle(tmp_path, "garbage")
    (folder / "models" / "model.pt").write_bytes(bytes(range(256)) * 8)  # was: IndexError
    with pytest.raises(UserError, match=r"model\.pt: not a tensors-only state dict") as caught:
        read_pretrained(folder)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------------------------------------------
# finding 7: a warm start that cannot load the last published generator trains from scratch, saying why


@pytest.mark.parametrize("damage", ["pickled", "config", "class-names"])
def test_a_warm_start_from_an_unusable_generator_trains_from_scratch_saying_why(
        tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    source = digits_folder(tmp_path / "source", {"0": 6, "1": 6})
    manifest = ingest(DataParams(source=str(source), image_size=16), tmp_path / "ingest",
                      cache_dir=tmp_path / "cache").manifest_path
    folder = generator_folder(registry / TAG.replace("/", "_"), ["0", "1"])
    if damage == "pickled":
        torch.save({"model": {"model": np.dtype("float32")}, "step": 1}, folder / "checkpoint" / "weights.pt")
    elif damage == "config":
        tamper(folder, config={"channels": 10**7})
    else:
        tamper(folder, class_names=["0", "../1"])
    monkeypatch.setattr(generators, "latest_generator", lambda registry, name: TAG)
    model = ModelParams(family="vae", vae=VAEConfig.tiny())
    warm = generators.resolve_warm_start(manifest, model, PublishParams(name="digits", registry=str(registry)),
                                         tmp_path / "warm")
    assert warm.checkpoint is None and warm.tag is None
    assert warm.reason.startswith(f"training from scratch: the published generator {TAG} cannot be used (")
    assert "weights_only" not in warm.reason.replace("weights_only=True", "") and "\n" not in warm.reason
