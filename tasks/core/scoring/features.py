"""The judge the judge step trains, loaded back, and the feature space every distance is measured in."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from synthaug.models.judge import Judge, load_feature_extractor, load_judge
from synthaug.tasks.core.errors import UserError

JUDGE_FILE = "judge.pt"
INFO_FILE = "judge.json"


def load_judge_step(out_dir: Path, *, device: str | torch.device = "cpu") -> tuple[Judge, list[str]]:
    """The judge written by ``train_judge_step`` into ``out_dir`` and its class names (index order).

    Raises:
        UserError: ``judge.pt`` or ``judge.json`` is missing, or they disagree on the number of classes.
    """
    path, info_path = out_dir / JUDGE_FILE, out_dir / INFO_FILE
    if not path.is_file() or not info_path.is_file():
        raise UserError(f"{out_dir}: no trained judge ({JUDGE_FILE} + {INFO_FILE}); run `synthaug judge` first")
    class_names = [str(c) for c in json.loads(info_path.read_text())["class_names"]]
    judge = load_judge(path, device=device)
    if judge.num_classes != len(class_names):
        raise UserError(f"{out_dir}: {JUDGE_FILE} has {judge.num_classes} classes but {INFO_FILE} names "
                        f"{len(class_names)}; rerun `synthaug judge`")
    return judge, class_names


@functools.lru_cache(maxsize=4)
def _extractor(path: str, mtime_ns: int, device: str):
    del mtime_ns  # part of the cache key only: a rewritten file is loaded again
    return load_feature_extractor(path, device=device)


def embed(images: torch.Tensor, judge: Judge, *, extractor: str | Path | None = None,
          batch_size: int = 256) -> torch.Tensor:
    """Features (N, F) float32 on the CPU: the judge's penultimate embedding, or ``extractor``'s output.

    Args:
        images: (N, C, H, W) in [-1, 1].
        judge: the trained judge (``load_judge_step``); its features are the default space.
        extractor: a local TorchScript file (``filter.extractor``; ``.pt2`` archives are refused); it runs on the
          judge's device and takes the images as they are (see ``models.judge.load_feature_extractor``).
        batch_size: images per forward pass.

    Raises:
        UserError: ``extractor`` names a file that does not exist or is not a network file.
    """
    if extractor is None:
        return judge.embed(images, batch_size=batch_size)
    path = Path(extractor)
    if not path.is_file():
        raise UserError(f"filter.extractor={extractor}: no such file (a local TorchScript network file; "
                        "nothing is downloaded)")
    device = str(judge.temperature.device)
    try:
        module = _extractor(str(path.resolve()), path.stat().st_mtime_ns, device)
    except ValueError as err:
        raise UserError(f"filter.extractor={extractor}: {err}") from None
    feats = module(images, batch_size=batch_size)
    if feats.shape[0] != images.shape[0] or not bool(torch.isfinite(feats).all()):
        raise UserError(f"filter.extractor={extractor}: returned {tuple(feats.shape)} features for "
                        f"{images.shape[0]} images, or non-finite values")
    return feats
