"""Dataset-level confusion matrix and IoU, accumulated on the model's device."""

from __future__ import annotations

import torch

from dacs_uda.labels import IGNORE_INDEX


class ConfusionMatrix:
    """``matrix[gt, pred]`` pixel counts over a whole dataset; ignore-labelled pixels are skipped."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        """Add a batch of ground-truth and predicted training ids (any shape, same shape)."""
        n = self.num_classes
        valid = (target >= 0) & (target < n) & (target != IGNORE_INDEX)
        index = target[valid].to(torch.int64) * n + pred[valid].to(torch.int64)
        self.matrix += torch.bincount(index, minlength=n * n).reshape(n, n)

    def iou(self) -> torch.Tensor:
        """Per-class IoU; NaN for a class absent from both ground truth and predictions."""
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
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
        return [c for c in range(self.num_classes) if m[c].sum() > 0 and m[:, c].sum() == 0]
