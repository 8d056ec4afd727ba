"""Image grids as PNG files, written atomically (the official code's `save_image_grid`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from progan_cli.files import atomic_write


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] (the networks' data range) to uint8 [0, 255]: x * 127.5 + 127.5, rounded and
    clipped, as the official `convert_images_to_uint8`; samples and metrics share it."""
    return (images.float() * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)


def grid_image(images: torch.Tensor, cols: int) -> np.ndarray:
    """uint8 NCHW (or float in [-1, 1]) images tiled row by row, `cols` across: (H*rows, W*cols, C) uint8."""
    if images.dtype != torch.uint8:
        images = to_uint8(images)
    n, c, h, w = images.shape
    rows = -(-n // cols)
    canvas = torch.zeros(rows * cols, c, h, w, dtype=torch.uint8)
    canvas[:n] = images.cpu()
    canvas = canvas.reshape(rows, cols, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)
    return canvas.numpy()


def save_grid(images: torch.Tensor, path: Path, cols: int) -> Path:
    """Write `images` as one PNG grid at `path`, atomically."""
    from PIL import Image

    path = Path(path)
    array = grid_image(images, cols)
    if array.shape[2] == 1:
        array = array[:, :, 0]
    with atomic_write(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path
