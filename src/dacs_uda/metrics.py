"""Dataset-level confusion matrix and IoU, accumulated on the model's device.

The IoU follows the official Cityscapes evaluation (``cityscapesscripts``' ``getIouScoreForLabel``):
pixels whose ground truth is ignored count nowhere; a ground-truth pixel predicted as something
outside the training classes (a void label id read from a prediction file, say) is a false negative
of its class and a false positive of none; a class absent from both ground truth and predictions
has no IoU (NaN) and is left out of every mean.
"""

from __future__ import annotations

import torch

from dacs_uda.labels import IGNORE_INDEX


class ConfusionMatrix:
    """``matrix[gt, pred]`` pixel counts over a whole dataset; ignore-labelled pixels are skipped.

    Attributes:
        matrix: int64 ``num_classes x num_classes`` counts.
        missed: int64 ``num_classes`` counts of ground-truth pixels predicted as no valid class.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self.missed = torch.zeros(num_classes, dtype=torch.int64, device=device)

    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        """Add a batch of ground-truth and predicted training ids (any shape, same shape)."""
        if target.shape != pred.shape:
            raise ValueError(f"ground truth {tuple(target.shape)} and prediction {tuple(pred.shape)} differ")
        n = self.num_classes
        gt = target.to(self.matrix.device, torch.int64).flatten()
        guess = pred.to(self.matrix.device, torch.int64).flatten()
        valid = (gt >= 0) & (gt < n) & (gt != IGNORE_INDEX)
        hit = valid & (guess >= 0) & (guess < n)
        # Out-of-range pixels go to one extra bin instead of being selected out: boolean indexing
        # needs a device sync on a GPU and was 20x slower than this on two busy CPU cores.
        cell = torch.where(hit, gt * n + guess, n * n)
        self.matrix += torch.bincount(cell, minlength=n * n + 1)[: n * n].reshape(n, n)
        self.missed += torch.bincount(torch.where(valid & ~hit, gt, n), minlength=n + 1)[:n]

    def iou(self) -> torch.Tensor:
        """Per-class IoU; NaN for a class absent from both ground truth and predictions."""
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) + self.missed.double() - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def miou(self, classes: tuple[int, ...] | None = None) -> float:
        """Mean IoU over ``classes`` (all by default), ignoring classes with NaN IoU."""
        iou = self.iou()
        if classes is not None:
            iou = iou[list(classes)]
        return float(iou.nanmean())

    def never_predicted(self) -> list[int]:
        """Classes present in the ground truth that the model never predicted (class conflation)."""
        m = self.matrix
        gt = m.sum(1) + self.missed
        return [c for c in range(self.num_classes) if gt[c] > 0 and m[:, c].sum() == 0]

    def normalized(self) -> torch.Tensor:
        """Row-normalised matrix (share of each ground-truth class's pixels per prediction), float64.

        Rows of classes absent from the ground truth are zero.
        """
        m = self.matrix.double()
        total = m.sum(1, keepdim=True) + self.missed.double()[:, None]
        return m / total.clamp(min=1)
