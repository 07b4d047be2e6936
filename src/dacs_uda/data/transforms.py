"""Image normalisation and paired resize/crop, as in the official DACS loaders.

Images become float32 CHW tensors in **BGR order minus the Caffe/ImageNet mean, not scaled** (the
convention of the DeepLab-v2 COCO weights DACS starts from). Every random draw takes a generator.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMG_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 RGB HxWx3 -> float32 3xHxW, BGR, minus ``IMG_MEAN_BGR``."""
    bgr = torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).permute(2, 0, 1).float()
    return bgr - torch.tensor(IMG_MEAN_BGR).view(3, 1, 1)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize` for a (..., 3, H, W) tensor: RGB in [0, 1]."""
    mean = torch.tensor(IMG_MEAN_BGR, device=x.device, dtype=x.dtype).view(3, 1, 1)
    return ((x + mean) / 255.0).flip(-3).clamp(0, 1)


def resize_pair(image: Image.Image, label: Image.Image | None, size: tuple[int, int]):
    """Resize to ``size`` (W, H): bicubic image, nearest label (official DACS resampling)."""
    size = tuple(size)
    if image.size != size:
        image = image.resize(size, Image.BICUBIC)
    if label is not None and label.size != size:
        label = label.resize(size, Image.NEAREST)
    return image, label


def random_crop_box(
    height: int, width: int, crop: tuple[int, int], generator: torch.Generator
) -> tuple[int, int]:
    """Top-left corner (y, x) of a uniformly random ``crop`` (H, W) inside a ``height`` x ``width`` image."""
    ch, cw = crop
    y = int(torch.randint(0, height - ch + 1, (1,), generator=generator))
    x = int(torch.randint(0, width - cw + 1, (1,), generator=generator))
    return y, x
