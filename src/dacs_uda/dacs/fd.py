"""Thing-class feature distance (FD; DAFormer, Hoyer et al. CVPR 2022, ``mmseg/models/uda/dacs.py``).

Self-training can drift the backbone away from the features of the model it started from, which
DAFormer finds hurts the thing classes most. FD keeps the student's bottleneck features on the source
crops near those of a frozen copy of the initial model: the mean, over the feature pixels whose
downscaled source label is a thing class, of the L2 norm of the per-pixel feature difference.

DAFormer's model is the ImageNet backbone kept in eval mode; here it is the model ``adapt.init`` starts
from (the source-pretrained checkpoint, or ``model.init``'s ImageNet/COCO weights), also in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dacs_uda.config import FdConfig
from dacs_uda.dacs.ema import make_teacher
from dacs_uda.labels import IGNORE_INDEX, NUM_CLASSES
from dacs_uda.models.deeplabv2 import DeepLabV2
from dacs_uda.utils.dist import RankMean, local


def downscale_labels(
    labels: Tensor,
    size: Sequence[int],
    min_ratio: float,
    num_classes: int = NUM_CLASSES,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Labels at the feature resolution: each pixel the majority class of its window, or ``ignore_index``.

    DAFormer's ``downscale_label_ratio`` rule: a pixel keeps its window's most frequent label only when
    that label covers at least ``min_ratio`` of the window and is not ``ignore_index``. Windows are
    adaptive average pooling's (rows ``floor(i H / h)`` to ``ceil((i + 1) H / h)``), because DeepLab-v2's
    ceil-mode stride does not divide the crop (512 -> 65); when ``H, W`` are multiples of ``h, w`` they
    are DAFormer's non-overlapping ``H / h`` x ``W / w`` blocks.

    Args:
        labels: ``[B, H, W]`` int64 training ids, ``ignore_index`` where unlabelled.
        size: ``(h, w)``, the feature map's size.
        min_ratio: Smallest share of the window the majority label must cover.
        num_classes: Labels other than ``ignore_index`` are in ``[0, num_classes)``.
        ignore_index: The unlabelled value, in the input and the output.

    Returns:
        ``[B, h, w]`` int64 labels.
    """
    # the ignore label competes for the majority as one more class, so a mostly void window stays void
    dense = torch.where(labels == ignore_index, num_classes, labels)
    one_hot = F.one_hot(dense, num_classes + 1).permute(0, 3, 1, 2).float()
    shares = F.adaptive_avg_pool2d(one_hot, (int(size[0]), int(size[1])))
    share, majority = shares.max(dim=1)
    return torch.where((majority == num_classes) | (share < min_ratio), ignore_index, majority)


def thing_mask(labels: Tensor, classes: Sequence[int]) -> Tensor:
    """Where ``labels`` is one of ``classes`` (bool, same shape)."""
    return torch.isin(labels, torch.tensor(list(classes), device=labels.device))


def masked_feature_distance(
    features: Tensor, reference: Tensor, mask: Tensor, rank_mean: RankMean = local
) -> Tensor:
    """Mean over the ``mask`` pixels of the global batch of ``||features - reference||_2`` over channels.

    0, not NaN, when no pixel is masked anywhere (DAFormer's mean of an empty selection is NaN). Over
    several processes, each rank divides its sum by the ranks' mean pixel count, so that the mean of the
    ranks' values (and DDP's mean of their gradients) is the global batch's, as for the source loss.

    Args:
        features: ``[B, C, h, w]`` features with a graph (the student's).
        reference: ``[B, C, h, w]`` features to stay near (the frozen model's).
        mask: ``[B, h, w]`` bool, the pixels that count.
        rank_mean: Mean over the ranks (:func:`~dacs_uda.utils.dist.local` in a single process).

    Returns:
        0-dim float32 distance.
    """
    # float32 under autocast too: a norm over 2048 channels in half precision loses its small changes
    distance = torch.linalg.vector_norm(features.float() - reference.float(), dim=1)
    total = torch.where(mask, distance, 0.0).sum()
    count = rank_mean(mask.sum())
    # count is 0 only when no rank has a pixel, and every sum is then exactly 0
    return total / torch.where(count > 0, count, 1)


class FeatureTap(nn.Module):
    """Runs ``model`` with ``return_features=True``, returns the logits and keeps the features.

    A loss that calls ``model(images)`` (:func:`~dacs_uda.dacs.losses.supervised_loss`) then shares
    its forward pass with the feature distance, instead of a second pass through the backbone.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.features: Tensor | None = None

    def forward(self, images: Tensor) -> Tensor:
        logits, self.features = self.model(images, return_features=True)
        return logits


def frozen_copy(model: DeepLabV2) -> DeepLabV2:
    """A copy of ``model`` without gradients, in eval mode (BN on its running statistics), as DAFormer
    runs its ImageNet model; never trained, updated or saved."""
    return cast(DeepLabV2, make_teacher(model).eval())


def feature_distance(
    features: Tensor,
    frozen: DeepLabV2,
    images: Tensor,
    labels: Tensor,
    cfg: FdConfig,
    rank_mean: RankMean = local,
) -> Tensor:
    """FD of one step, before ``cfg.weight``: the student's ``features`` of the source ``images``
    against ``frozen``'s, on the thing-class pixels of the downscaled source ``labels``.

    Args:
        features: ``[B, C, h, w]`` the student's bottleneck features of ``images`` (with a graph).
        frozen: The frozen initial model (:func:`frozen_copy`).
        images: ``[B, 3, H, W]`` source crops.
        labels: ``[B, H, W]`` their labels.
        cfg: ``adapt.fd``.
        rank_mean: Mean over the ranks.

    Returns:
        0-dim distance (0 when the batch holds no thing-class feature pixel).
    """
    with torch.no_grad():
        reference = frozen.features(images)
    small = downscale_labels(labels, features.shape[-2:], cfg.scale_min_ratio)
    return masked_feature_distance(features, reference, thing_mask(small, cfg.classes), rank_mean)
