"""Paired resize and random crops, as in the official DACS loaders (normalisation:
:mod:`dacs_uda.utils.image`). Every random draw takes a generator.
"""

from __future__ import annotations

import torch
from PIL import Image

from dacs_uda.utils.image import as_size


def resize_pair(
    image: Image.Image, label: Image.Image | None, size: tuple[int, int]
) -> tuple[Image.Image, Image.Image | None]:
    """Resize to ``size`` (W, H): bicubic image, nearest label (official DACS resampling)."""
    size = as_size(size)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    if label is not None and label.size != size:
        label = label.resize(size, Image.Resampling.NEAREST)
    return image, label


def random_crop_box(
    height: int, width: int, crop: tuple[int, int], generator: torch.Generator
) -> tuple[int, int]:
    """Top-left corner (y, x) of a uniformly random ``crop`` (H, W) inside a ``height`` x ``width`` image."""
    ch, cw = crop
    y = int(torch.randint(0, height - ch + 1, (1,), generator=generator))
    x = int(torch.randint(0, width - cw + 1, (1,), generator=generator))
    return y, x
