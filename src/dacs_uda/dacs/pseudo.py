"""Teacher pseudo-labels, their confidence weight and (optional) distribution alignment.

In DACS (Tranheden et al., WACV 2021) every target pixel gets the teacher's argmax as a hard pseudo-label;
confidence only enters through one scalar per batch, ``lambda`` = the fraction of pixels whose max softmax
probability reaches a threshold (0.968 in the official ``configUDA.json``), which weighs the target part
of the mixed loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dacs_uda.utils.dist import RankMean, local


@torch.no_grad()
def teacher_probabilities(teacher_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Class probabilities of the teacher at the crop size.

    As in the official code: bilinear upsampling of the logits to ``size`` with ``align_corners=True``,
    then softmax over classes. Runs under ``no_grad`` on detached logits, so no autograd graph is built
    (the teacher is never trained by back-propagation).

    Args:
        teacher_logits: ``[B, C, h, w]`` teacher output.
        size: Output ``(H, W)``, the size of the training crops.

    Returns:
        ``[B, C, H, W]`` float32 probabilities.
    """
    logits = F.interpolate(teacher_logits.detach().float(), size=size, mode="bilinear", align_corners=True)
    return torch.softmax(logits, dim=1)


@torch.no_grad()
def pseudo_labels(teacher_logits: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Hard pseudo-labels and their confidence from teacher logits (argmax and max of the softmax).

    Args:
        teacher_logits: ``[B, C, h, w]`` teacher output.
        size: Output ``(H, W)``, the size of the training crops.

    Returns:
        ``(labels, confidence)``: ``[B, H, W]`` int64 argmax classes and ``[B, H, W]`` float32 max
        probabilities.
    """
    confidence, labels = teacher_probabilities(teacher_logits, size).max(dim=1)
    return labels, confidence


def confident_fraction(confidence: Tensor, threshold: float, rank_mean: RankMean = local) -> Tensor:
    """DACS ``lambda``: fraction of all pixels of the batch whose confidence is ``>= threshold``.

    One scalar for the whole (global) batch, computed on the unmixed teacher output (it also counts
    target pixels that mixing later covers with source pixels), exactly as the official ``pixel_weight ==
    "threshold_uniform"`` branch.

    Args:
        confidence: Max softmax probabilities, any shape (``[B, H, W]`` in practice): this rank's share.
        threshold: Inclusive confidence threshold.
        rank_mean: Mean over the ranks, whose shares are equal in size (identity in a single process).

    Returns:
        0-dim float32 tensor on ``confidence.device`` (no host sync).
    """
    return rank_mean((confidence >= threshold).float().mean())


def pixel_weights(mask: Tensor, lam: Tensor | float) -> Tensor:
    """Per-pixel loss weights of the mixed images: 1 on pasted source pixels, ``lambda`` elsewhere.

    Equals the official ``mix(mask, ones, lambda_map)``: source pixels carry ground truth and get full
    weight, target pixels carry pseudo-labels and get the batch confidence ``lambda``.

    Args:
        mask: ``[B, H, W]`` bool mixing mask (True = source pixel).
        lam: Scalar weight of target pixels (Python float or 0-dim tensor).

    Returns:
        ``[B, H, W]`` floating tensor on ``mask.device`` (float32 unless ``lam`` is a floating tensor of
        another dtype).
    """
    lam = torch.as_tensor(lam, device=mask.device)
    if not lam.is_floating_point():
        lam = lam.float()
    return torch.where(mask, torch.ones_like(lam), lam)


@dataclass
class Alignment:
    """Distribution-alignment state: the class prior p and the running mean p~ of teacher predictions.

    ``running`` is None until the first target batch, which initialises it (see the ``dist_align`` method
    of :mod:`dacs_uda.dacs.step`); it is replaced, never modified in place, at every step.
    """

    prior: Tensor
    running: Tensor | None = None

    def state_dict(self) -> dict[str, Tensor | None]:
        """The running mean (the prior is recomputed from the data), for a resumed run."""
        return {"running": self.running}

    def load_state_dict(self, state: dict[str, Tensor | None]) -> None:
        running = state["running"]
        self.running = None if running is None else running.to(self.prior.device)


def align_distribution(probs: Tensor, prior: Tensor, running_mean: Tensor, eps: float = 1e-6) -> Tensor:
    """Distribution alignment of per-pixel class probabilities.

    From ReMixMatch (Berthelot et al., ICLR 2020), used in the DACS paper's ablation study: each
    pixel's prediction ``q`` becomes ``Normalize(q * p / p~)``, where ``p`` is a target class prior and
    ``p~`` a running mean of the model's predictions on target data. ``eps`` only guards divisions by
    zero (it bounds ``p~`` and the normaliser from below).

    Args:
        probs: ``[B, C, H, W]`` class probabilities (softmax output).
        prior: ``[C]`` class distribution ``p`` to impose.
        running_mean: ``[C]`` running mean ``p~`` of predicted probabilities.
        eps: Lower bound for the denominators.

    Returns:
        ``[B, C, H, W]`` aligned probabilities, summing to 1 over ``C`` at every pixel.
    """
    ratio = (prior / running_mean.clamp_min(eps)).view(1, -1, 1, 1)
    aligned = probs * ratio
    return aligned / aligned.sum(dim=1, keepdim=True).clamp_min(eps)


def class_mean(probs: Tensor, rank_mean: RankMean = local) -> Tensor:
    """``[C]`` mean class probability over the (global) batch and all pixels; detached.

    Args:
        probs: ``[B, C, H, W]`` class probabilities, this rank's equal share of the batch.
        rank_mean: Mean over the ranks (identity in a single process).
    """
    return rank_mean(probs.detach().mean(dim=(0, 2, 3)))


def update_running_mean(
    running_mean: Tensor, probs: Tensor, momentum: float, rank_mean: RankMean = local
) -> Tensor:
    """New running mean ``momentum * running_mean + (1 - momentum) * mean(probs)`` for alignment.

    The mean is over the (global) batch and all pixels, per class (:func:`class_mean`). Pure: returns
    a new tensor and leaves ``running_mean`` unchanged; ``probs`` is detached (the statistic carries no
    gradient).

    Args:
        running_mean: ``[C]`` current running mean ``p~``.
        probs: ``[B, C, H, W]`` class probabilities of the current target batch (this rank's share).
        momentum: Weight of the old value, in ``[0, 1]``.
        rank_mean: Mean over the ranks (identity in a single process).

    Returns:
        ``[C]`` updated running mean, dtype of ``running_mean``.
    """
    batch_mean = class_mean(probs, rank_mean).to(running_mean.dtype)
    return momentum * running_mean + (1.0 - momentum) * batch_mean
