"""The two losses of a DACS step: cross-entropy on the source crops, weighted cross-entropy on the mixed ones.

Both compare logits upsampled to the label size with labels whose ``ignore_index`` pixels carry no loss;
they differ in the average, exactly as the official code (vikolss/DACS ``utils/loss.py``) does: the source
loss averages over the valid pixels only, the mixed loss over *all* pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dacs_uda.labels import IGNORE_INDEX
from dacs_uda.models.deeplabv2 import upsample_logits
from dacs_uda.utils.dist import RankMean, local


def supervised_loss(
    model: torch.nn.Module, images: Tensor, labels: Tensor, rank_mean: RankMean = local
) -> Tensor:
    """Cross-entropy of upsampled logits, averaged over non-ignored pixels (official ``CrossEntropy2d``).

    Over several processes, the average is over the valid pixels of the *global* batch: each rank
    divides its sum by the mean valid-pixel count of the ranks, so that the mean of the ranks' losses
    (and DDP's mean of their gradients) is the loss of one process holding the whole batch. A rank whose
    crops are all unlabelled then adds 0, not NaN.

    Args:
        model: Segmentation network returning logits at a lower resolution.
        images: ``[B, 3, H, W]`` normalised images (this rank's share of the batch).
        labels: ``[B, H, W]`` int64 ground truth, ``IGNORE_INDEX`` where unlabelled.
        rank_mean: Mean over the ranks (:func:`~dacs_uda.utils.dist.local` in a single process).

    Returns:
        0-dim loss tensor.
    """
    height, width = labels.shape[-2:]
    logits = upsample_logits(model(images), (height, width))
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    # sum / count rounds exactly as the "mean" reduction does (same sum, one division)
    return total / rank_mean((labels != IGNORE_INDEX).sum())


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
