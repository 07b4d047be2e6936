"""Image normalisation of the official DACS loaders, shared by data loading, augmentation, models and export.

Images become float32 CHW tensors in **BGR order minus the Caffe/ImageNet mean, not scaled** (the
convention of the DeepLab-v2 COCO weights DACS starts from).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

IMG_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)


def as_size(pair: Sequence[int]) -> tuple[int, int]:
    """A two-number size from params (YAML lists) as the tuple PIL and torch expect."""
    if len(pair) != 2:
        raise ValueError(f"a size has two numbers, got {list(pair)}")
    return int(pair[0]), int(pair[1])


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 RGB HxWx3 -> float32 3xHxW, BGR, minus ``IMG_MEAN_BGR``."""
    bgr = torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).permute(2, 0, 1).float()
    return bgr - torch.tensor(IMG_MEAN_BGR).view(3, 1, 1)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize` for a (..., 3, H, W) tensor: RGB in [0, 1]."""
    mean = torch.tensor(IMG_MEAN_BGR, device=x.device, dtype=x.dtype).view(3, 1, 1)
    return ((x + mean) / 255.0).flip(-3).clamp(0, 1)
