"""Loss of the mixed images: pixel-wise weighted cross-entropy.

The supervised source loss is plain ``F.cross_entropy(..., ignore_index=255)`` (mean over valid pixels);
only the mixed loss needs a dedicated function, because the official DACS code averages it differently.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dacs_uda.labels import IGNORE_INDEX


def weighted_cross_entropy(
    logits: Tensor, labels: Tensor, weights: Tensor, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Per-pixel cross-entropy times per-pixel weights, averaged over *all* pixels.

    Matches the official ``CrossEntropyLoss2dPixelWiseWeighted`` (vikolss/DACS ``utils/loss.py``): the
    unreduced cross-entropy is 0 at ``ignore_index`` pixels, but those pixels stay in the denominator,
    which is ``B * H * W``. This is the second term of the DACS loss,
    ``(1 / BHW) * sum_{b,p} w * CE(f(x_M), y_M) * [y_M != 255]``.

    Args:
        logits: ``[B, C, H, W]`` student logits of the mixed images (already at label resolution).
        labels: ``[B, H, W]`` int64 mixed labels (source ground truth / teacher pseudo-labels).
        weights: ``[B, H, W]`` pixel weights (1 on source pixels, ``lambda`` on target pixels).
        ignore_index: Label value that contributes zero loss.

    Returns:
        0-dim loss tensor.
    """
    per_pixel = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    return (per_pixel * weights).mean()
