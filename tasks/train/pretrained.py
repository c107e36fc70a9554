"""Pretrained starting points from a local folder (``model.pretrained``): read, write and apply them.

Two layouts, both read without unpickling anything (nothing is downloaded):

- MONAI bundle: ``configs/`` (its ``metadata.json`` may give ``class_names`` and ``latent_scale``) and
  ``models/model.pt``, a state dict of tensors loaded with ``torch.load(weights_only=True)``: either one network's
  or ``{"unet": {...}, "autoencoder": {...}}``. Further ``models/*.pt`` files are read alike; a file named
  ``unet.pt``, ``diffusion_model.pt`` (MONAI's name) or ``autoencoder.pt`` names its network.
- diffusers format: ``config.json`` + ``*.safetensors`` (read with ``safetensors``), in the folder itself and/or in
  its ``unet/`` and ``vae/`` subfolders (a diffusers pipeline's layout); ``config.json`` may give ``class_names``
  and ``latent_scale``. The tensors must carry MONAI's key names (``DiffusionModelUNet``, ``AutoencoderKL``):
  diffusers' own ``UNet2DModel`` keys are not converted.

A network that no file or subfolder name identifies is recognised by its keys: an autoencoder has ``encoder.`` and
``decoder.`` keys, a UNet ``time_embed.`` keys. How the classes were mapped (by name, by index, or the conditioning
head re-initialised) is returned as notes for the log and ``train.json``.
"""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from synthaug.models.latent_diffusion import latent_scale_value
from synthaug.models.training import MAX_CLASSES, MAX_STATE_NUMEL
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.files import atomic_path, file_sha256
from synthaug.tasks.core.untrusted import read_json_object

BUNDLE_WEIGHTS = "models/model.pt"
MAX_PRETRAINED_NUMEL = MAX_STATE_NUMEL  # weights in a pretrained folder: no network here holds more
FILE_NAMES = {"unet": "unet", "diffusion_model": "unet", "autoencoder": "autoencoder", "vae": "autoencoder"}


@dataclass(frozen=True)
class Pretrained:
    """What a pretrained folder holds: state dicts by network name, its class names (if any) and metadata."""

    folder: Path
    layout: str  # "monai-bundle" or "diffusers"
    parts: dict[str, dict[str, torch.Tensor]]
    class_names: list[str] | None
    metadata: dict[str, Any]


def read_pretrained(folder: Path) -> Pretrained:
    """Read a MONAI bundle or diffusers-format folder; a clear ``UserError`` for anything else."""
    if not folder.is_dir():
        raise UserError(f"model.pretrained={folder}: no such folder")
    if (folder / "configs").is_dir() and (folder / BUNDLE_WEIGHTS).is_file():
        metadata = _json(folder / "configs" / "metadata.json") if (folder / "configs" / "metadata.json").is_file() \
            else {}
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for path in sorted((folder / "models").glob("*.pt")):
            _add_parts(parts, path, _torch_weights(path))
        layout = "monai-bundle"
    else:
        dirs = [d for d in (folder, folder / "unet", folder / "vae") if (d / "config.json").is_file()
                and any(d.glob("*.safetensors"))]
        if not dirs:
            raise UserError(f"model.pretrained={folder}: not a pretrained folder; expected a MONAI bundle "
                            f"(configs/ and {BUNDLE_WEIGHTS}) or a diffusers-format folder (config.json and "
                            "*.safetensors, here or in unet/ and vae/)")
        metadata, parts = {}, {}
        for d in dirs:
            config = _json(d / "config.json")
            metadata.update({k: v for k, v in config.items() if k in ("class_names", "latent_scale")})
            for path in sorted(d.glob("*.safetensors")):
                name = FILE_NAMES.get(d.name) if d != folder else None
                _add_parts(parts, path, _safetensors(path), name)
        layout = "diffusers"
    names = metadata.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(c, str) for c in names)
                                  and len(names) <= MAX_CLASSES):
        raise UserError(f"model.pretrained={folder}: class_names must be a list of at most {MAX_CLASSES} strings, got "
                        f"{str(names)[:80]}")
    if "latent_scale" in metadata:
        try:
            metadata["latent_scale"] = latent_scale_value(metadata["latent_scale"])
        except ValueError as exc:
            raise UserError(f"model.pretrained={folder}: {exc}; fix latent_scale in its metadata.json or "
                            "config.json (or remove it: the scale is then measured)") from None
    total = sum(t.numel() for state in parts.values() for t in state.values())
    if total > MAX_PRETRAINED_NUMEL:
        raise UserError(f"model.pretrained={folder}: {total:,} weights, more than the {MAX_PRETRAINED_NUMEL:,} a "
                        "network of this project can hold; not a starting point for it")
    return Pretrained(folder, layout, parts, names, metadata)


def apply_pretrained(model: Any, pretrained: Pretrained, class_names: list[str]) -> list[str]:
    """Load ``pretrained`` into ``model`` (a family with ``load_pretrained``); returns the notes for the log."""
    if not hasattr(model, "load_pretrained"):
        raise UserError(f"model.pretrained: the {model.name} family cannot start from a pretrained folder; use "
                        "diffusion or latent_diffusion")
    try:
        notes = model.load_pretrained(pretrained.parts, source_classes=pretrained.class_names, classes=class_names,
                                      metadata=pretrained.metadata)
    except (ValueError, RuntimeError, IndexError, KeyError, TypeError) as err:  # one line, whatever failed
        raise UserError(f"model.pretrained={pretrained.folder}: {str(err).strip().splitlines()[0][:300]}") from None
    return [f"pretrained {pretrained.layout} folder {pretrained.folder}", *notes]


def write_bundle(folder: Path, parts: dict[str, dict[str, torch.Tensor]], metadata: dict[str, Any]) -> str:
    """Write ``parts`` as a MONAI bundle folder (``configs/metadata.json``, ``models/model.pt``); returns the
    sha256 of ``model.pt``. Tensors only, so ``read_pretrained`` loads it with ``weights_only=True``."""
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    weights = folder / BUNDLE_WEIGHTS
    with atomic_path(weights) as tmp:
        torch.save({name: {k: v.detach().cpu().contiguous() for k, v in state.items()}
                    for name, state in parts.items()}, tmp)
    (folder / "configs" / "metadata.json").write_text(json.dumps({"format": "synthaug bundle 1", **metadata},
                                                                 indent=2))
    return file_sha256(weights)


def export_checkpoint(checkpoint_dir: Path, folder: Path) -> str:
    """A training checkpoint's networks (the EMA UNet, and the autoencoder of a latent family) as a bundle folder
    with its class names: a pretrained starting point for another dataset. Returns the weights' sha256."""
    from synthaug.models.training import load_checkpoint

    model, meta, _ = load_checkpoint(checkpoint_dir, torch.device("cpu"))
    if not hasattr(model, "pretrained_networks"):
        raise UserError(f"{checkpoint_dir}: a {model.name} checkpoint cannot be exported as a pretrained folder")
    parts = {name: net.state_dict() for name, net in model.pretrained_networks().items()}
    metadata = {"family": model.name, "class_names": meta["class_names"], "image_shape": meta["image_shape"],
                "config": meta["config"], "step": meta["step"], "latent_scale": getattr(model, "latent_scale", None)}
    return write_bundle(folder, parts, metadata)


# ------------------------------------------------------------------------------------------------ reading


def _json(path: Path) -> dict[str, Any]:
    return read_json_object(path, fix="give the pretrained folder's JSON as a JSON object")


def _torch_weights(path: Path) -> dict[str, Any]:
    """A ``.pt`` file read tensors-only and memory-mapped (its tensors are read when used, after their shapes are
    checked); any failure of torch's reader (not a zip, a pickle of other objects, a truncated file) is one line."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # the legacy (non-zip) format
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError,
            AttributeError, zipfile.BadZipFile) as err:
        refused = ("holds objects other than tensors and numbers, which are never unpickled"
                   if isinstance(err, pickle.UnpicklingError) else f"unreadable: {type(err).__name__}")
        raise UserError(f"{path}: not a tensors-only state dict (loaded with weights_only=True: {refused}); save it "
                        "with torch.save(model.state_dict(), ...)") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file; its header (names, dtypes, shapes) is checked before any tensor is read."""
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            names = list(handle.keys())
            numel = sum(math.prod(handle.get_slice(k).get_shape()) for k in names)
            if numel > MAX_PRETRAINED_NUMEL:
                raise UserError(f"{path}: declares {numel:,} weights, more than the {MAX_PRETRAINED_NUMEL:,} a network "
                                "of this project can hold")
            return {k: handle.get_tensor(k) for k in names}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({str(err).splitlines()[0][:200]})") from None


def _add_parts(parts: dict[str, dict[str, torch.Tensor]], path: Path, state: dict[str, Any],
               name: str | None = None) -> None:
    """Add the network(s) of one file: nested ``{"unet": ..., "autoencoder": ...}`` or one flat state dict."""
    if state and all(isinstance(v, dict) for v in state.values()):
        for key, sub in state.items():
            _add_parts(parts, path, sub, FILE_NAMES.get(key, key))
        return
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{path}: a state dict must map names to tensors")
    for key, value in state.items():
        if not value.is_floating_point():  # networks' weights are floats: int64 "weights" would be cast silently
            raise UserError(f"{path}: {key} holds {str(value.dtype).removeprefix('torch.')} values; pretrained "
                            "weights must be floating point")
    name = name or FILE_NAMES.get(path.stem) or _recognise(path, state)
    if name in parts:
        raise UserError(f"{path}: a second set of {name} weights in the pretrained folder; keep one")
    parts[name] = state


def _recognise(path: Path, state: dict[str, torch.Tensor]) -> str:
    roots = {k.split(".")[0] for k in state}
    if {"encoder", "decoder"} <= roots:
        return "autoencoder"
    if "time_embed" in roots:
        return "unet"
    raise UserError(f"{path}: cannot tell which network these weights are (neither a MONAI AutoencoderKL nor a "
                    f"DiffusionModelUNet; top-level keys {sorted(roots)[:6]}); name the file unet.pt or "
                    "autoencoder.pt")
