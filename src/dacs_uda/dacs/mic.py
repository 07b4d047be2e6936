"""Masked image consistency (MIC, Hoyer et al., CVPR 2023): the random block mask and the masked image.

MIC trains the student to predict the teacher's pseudo-labels of a target crop from a copy of the crop
with random square blocks hidden, so it must infer a region from its context. As in lhoyer/MIC
(``seg/mmseg/models/utils/masking_transforms.py``, ``BlockMaskGenerator``) the crop is divided into a
``round(H / block_size)`` x ``round(W / block_size)`` grid; each block draws ``u ~ U[0, 1)`` and is
*kept* when ``u > mask_ratio``: with the paper's ratio 0.7 a block is hidden with probability 0.7 and
kept with 0.3. The grid is brought to ``H x W`` by nearest-neighbour upsampling and the image multiplied
by it; images here are normalised (mean-subtracted), so a hidden pixel becomes the dataset's mean colour,
as in MIC. Each sample draws its blocks from its own CPU generator (:mod:`dacs_uda.utils.rng`), so the
mask of a slice of the batch, given the matching slice of generators, is that slice of the mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def upsample_blocks(kept: Tensor, height: int, width: int) -> Tensor:
    """``[B, rows, cols]`` bool block grid -> ``[B, height, width]`` bool pixel mask (nearest neighbour).

    Pixel ``(i, j)`` takes block ``(floor(i * rows / height), floor(j * cols / width))``: blocks of
    ``height / rows`` pixels when it divides, otherwise some blocks one pixel taller or wider.
    """
    if kept.dim() != 3:
        raise ValueError(f"kept must be a [B, rows, cols] block grid, got shape {tuple(kept.shape)}")
    pixels = F.interpolate(kept.unsqueeze(1).float(), size=(height, width), mode="nearest")
    return pixels.squeeze(1).bool()


def block_mask(
    height: int,
    width: int,
    generators: Sequence[torch.Generator],
    *,
    block_size: int,
    mask_ratio: float,
    device: torch.device | str | None = None,
) -> Tensor:
    """MIC's random block mask: True where a pixel stays visible.

    Sample ``b`` draws ``torch.rand((rows, cols), generator=generators[b])``, its only draw, with
    ``rows = max(1, round(height / block_size))`` (``cols`` likewise): a crop smaller than half a block
    is one block. A block is kept when its draw exceeds ``mask_ratio``: ratio 1 hides everything, ratio 0
    keeps everything (but for a draw of exactly 0, probability 2**-24 per block).

    Args:
        height: Crop height ``H``.
        width: Crop width ``W``.
        generators: CPU generators, one per sample; the batch size ``B`` is their number.
        block_size: Side of a square block in pixels (MIC: 64 at full resolution, 32 at half).
        mask_ratio: Probability that a block is hidden, in ``[0, 1]`` (MIC: 0.7).
        device: Device of the returned mask.

    Returns:
        ``[B, H, W]`` bool mask on ``device``.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
    rows, cols = max(1, round(height / block_size)), max(1, round(width / block_size))
    draws = torch.stack([torch.rand((rows, cols), generator=generator) for generator in generators])
    return upsample_blocks((draws > mask_ratio).to(device), height, width)


def mask_images(images: Tensor, visible: Tensor) -> Tensor:
    """``images * visible``: ``[B, C, H, W]`` normalised images, zero (the mean colour) where hidden.

    Args:
        images: ``[B, C, H, W]`` normalised images.
        visible: ``[B, H, W]`` bool mask from :func:`block_mask`, broadcast over the channels.
    """
    if visible.shape != images.shape[:1] + images.shape[2:]:
        raise ValueError(
            f"visible {tuple(visible.shape)} must be the [B, H, W] of images {tuple(images.shape)}"
        )
    return images * visible.unsqueeze(1).to(images.dtype)
