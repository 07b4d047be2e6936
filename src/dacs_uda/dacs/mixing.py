"""Cross-domain mixing masks (ClassMix / CutMix) and the mixing operation itself.

DACS (Tranheden et al., WACV 2021, Eq. 1) pastes half of the classes of a *source* image onto a *target*
image: ``X_M = M * X_S + (1 - M) * X_T`` and ``Y_M = M * Y_S + (1 - M) * Y_T``. The mask ``M`` comes from
the source ground truth. Every random draw here comes from the sample's own CPU ``torch.Generator``
(see :mod:`dacs_uda.utils.rng`), so no sample's mask depends on the others; tensors may live on any device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from dacs_uda.labels import IGNORE_INDEX


def class_mask(
    labels: Tensor,
    generators: Sequence[torch.Generator],
    *,
    ignore_index: int = IGNORE_INDEX,
    include_ignore: bool = False,
) -> Tensor:
    """ClassMix mask: per sample, the pixels of a random half of that sample's own classes.

    For each sample ``b`` the classes are ``unique(labels[b])`` (sorted ascending). ``ignore_index`` is
    dropped unless ``include_ignore`` is True: the official code (vikolss/DACS ``trainUDA.py``) has the
    filtering line commented out, so 255 can be picked and pasted there; set ``include_ignore=True`` to
    reproduce that. Of the ``n`` eligible classes, ``ceil(n / 2)`` are chosen uniformly without
    replacement as the first entries of ``torch.randperm(n, generator=generators[b])``, the only draw of
    sample ``b``. A sample with no eligible class gets an all-False mask (nothing is pasted).

    Classes are taken per sample, never as the union over the batch (the batch-vs-sample slip
    acknowledged in lhoyer/DAFormer issue #19), and each sample draws from its own generator, so the
    mask of a slice of the batch, given the matching slice of ``generators``, is that slice of the mask.

    Args:
        labels: ``[B, H, W]`` int64 label maps of the source images.
        generators: ``B`` CPU generators, one per sample (also used when ``labels`` is on a GPU).
        ignore_index: Value marking unlabelled pixels.
        include_ignore: Treat ``ignore_index`` as an ordinary class (official-code quirk).

    Returns:
        ``[B, H, W]`` bool mask on ``labels.device``, True where the pixel's class was chosen.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be [B, H, W], got shape {tuple(labels.shape)}")
    if len(generators) != labels.shape[0]:
        raise ValueError(f"need one generator per sample: {labels.shape[0]} samples, {len(generators)} given")
    # One unique over the whole batch plus a [B, K] presence table keeps the pixel work vectorised;
    # only the tiny per-sample permutation below loops over the batch.
    values, inverse = torch.unique(labels, return_inverse=True)
    flat = inverse.flatten(1)
    present = torch.zeros(labels.shape[0], values.numel(), dtype=torch.bool, device=labels.device)
    present.scatter_(1, flat, True)
    if not include_ignore:
        present &= values != ignore_index
    present = present.cpu()  # the choice is made on the CPU generators
    chosen = torch.zeros_like(present)
    for b, (row, generator) in enumerate(zip(present, generators, strict=True)):
        candidates = row.nonzero().squeeze(1)
        n = candidates.numel()
        picked = torch.randperm(n, generator=generator)[: math.ceil(n / 2)]
        chosen[b, candidates[picked]] = True
    return chosen.to(labels.device).gather(1, flat).view_as(labels)


def cutmix_mask(
    height: int,
    width: int,
    generators: Sequence[torch.Generator],
    *,
    area: float = 0.5,
    device: torch.device | str | None = None,
) -> Tensor:
    """CutMix mask: one axis-aligned rectangle per sample, fully inside the image.

    The rectangle has sides ``round(height * sqrt(area))`` by ``round(width * sqrt(area))`` (Python
    rounding), so it covers ``area`` of the image up to rounding. Its top-left corner is uniform over all
    positions that keep it inside the image: sample ``b`` draws, from ``generators[b]``, its row offset
    (``torch.randint(0, height - box_h + 1, (1,))``) then its column offset (same with ``width``).
    (The official DACS code only implements the class mask; this is the CutMix alternative.)

    Args:
        height: Image height ``H``.
        width: Image width ``W``.
        generators: CPU generators, one per sample; the batch size ``B`` is their number.
        area: Fraction of the image covered, in ``[0, 1]``.
        device: Device of the returned mask.

    Returns:
        ``[B, H, W]`` bool mask, True inside each sample's rectangle.
    """
    if not 0.0 <= area <= 1.0:
        raise ValueError(f"area must be in [0, 1], got {area}")
    side = math.sqrt(area)
    box_h, box_w = round(height * side), round(width * side)
    free_rows, free_cols = height - box_h, width - box_w
    corners = torch.stack([_corner(generator, free_rows, free_cols) for generator in generators]).to(device)
    top, left = corners[:, :1], corners[:, 1:]
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    in_rows = (rows >= top) & (rows < top + box_h)
    in_cols = (cols >= left) & (cols < left + box_w)
    return in_rows[:, :, None] & in_cols[:, None, :]


def _corner(generator: torch.Generator, free_rows: int, free_cols: int) -> Tensor:
    """``[2]`` top-left corner of one CutMix box: its row offset, then its column offset."""
    top = torch.randint(0, free_rows + 1, (1,), generator=generator)
    left = torch.randint(0, free_cols + 1, (1,), generator=generator)
    return torch.cat((top, left))


def mix(mask: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """Take ``source`` where ``mask`` is True and ``target`` elsewhere (DACS Eq. 1).

    Works for label maps and pixel weights (``[B, H, W]``) and for images (``[B, C, H, W]``, the mask is
    broadcast over channels). The official code mixes images *before* any augmentation, on normalised
    tensors; a selection (rather than ``M * s + (1 - M) * t``) gives the same values without rounding.

    Args:
        mask: ``[B, H, W]`` bool mask.
        source: ``[B, H, W]`` or ``[B, C, H, W]`` tensor pasted where the mask is True.
        target: Tensor of the same shape and dtype as ``source``.

    Returns:
        The mixed tensor, same shape and dtype as the inputs.
    """
    if source.shape != target.shape or source.dtype != target.dtype:
        raise ValueError(
            f"source ({tuple(source.shape)}, {source.dtype}) and target "
            f"({tuple(target.shape)}, {target.dtype}) must match"
        )
    if source.dim() == 4:
        mask = mask.unsqueeze(1)
    elif source.dim() != 3:
        raise ValueError(f"expected [B, H, W] or [B, C, H, W], got shape {tuple(source.shape)}")
    return torch.where(mask, source, target)
