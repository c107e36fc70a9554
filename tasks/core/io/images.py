"""Image files <-> tensors: the one place that fixes the pixel convention.

Stored images are 8-bit PNGs; in memory they are float32 (N, C, H, W) in [-1, 1]
(the range every generator family trains and samples in).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synthaug.tasks.core.io.files import write_atomic


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C); NaN becomes 0 so a broken image is still writable."""
    x = torch.nan_to_num(images.detach().float().cpu(), nan=-1.0).clamp(-1, 1)
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode one (H, W, C) uint8 array (C = 1 or 3) as PNG bytes."""
    mode = "L" if pixels.shape[-1] == 1 else "RGB"
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def write_png(pixels: np.ndarray, path: Path) -> str:
    """Write one image atomically; returns the sha256 of the file (the manifest's ``image_id``)."""
    return write_atomic(png_bytes(pixels), path)


def load_images(root: Path, paths: Sequence[str], channels: int) -> torch.Tensor:
    """Stored PNGs under ``root`` -> float32 (N, C, H, W) in [-1, 1]."""
    mode = "L" if channels == 1 else "RGB"
    arrays = [np.asarray(Image.open(root / p).convert(mode), dtype=np.float32) for p in paths]
    stacked = np.stack(arrays)
    if stacked.ndim == 3:
        stacked = stacked[..., None]
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous() / 127.5 - 1.0


def save_grid(images: torch.Tensor, nrow: int, path: Path) -> None:
    """Tile (N, C, H, W) images into one PNG, ``nrow`` images per row (per-class sample grids)."""
    pixels = to_uint8(images)
    n, h, w, c = pixels.shape
    rows = -(-n // nrow)
    grid = np.zeros((rows * (h + 1), nrow * (w + 1), c), dtype=np.uint8)
    for i, img in enumerate(pixels):
        r, col = divmod(i, nrow)
        grid[r * (h + 1): r * (h + 1) + h, col * (w + 1): col * (w + 1) + w] = img
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(grid))
