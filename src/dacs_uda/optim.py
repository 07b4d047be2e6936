"""SGD with DeepLab's poly schedule, as in the official DACS code."""

from __future__ import annotations

import torch

from dacs_uda.config import OptimConfig
from dacs_uda.models.deeplabv2 import DeepLabV2


def poly_lr(base_lr: float, step: int, total: int, power: float) -> float:
    """``base_lr * (1 - step / total) ** power`` (no warm-up)."""
    return base_lr * (1.0 - step / total) ** power


def build_optimizer(model: DeepLabV2, cfg: OptimConfig) -> torch.optim.SGD:
    """SGD over the backbone (lr) and the classifier (head_lr_mult * lr) parameter groups."""
    return torch.optim.SGD(
        model.param_groups(cfg.lr, cfg.head_lr_mult),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )


def set_lr(optimizer: torch.optim.Optimizer, cfg: OptimConfig, step: int) -> float:
    """Apply the poly schedule at ``step`` (before the forward pass, as officially); return the base lr."""
    lr = poly_lr(cfg.lr, step, cfg.iterations, cfg.poly_power)
    optimizer.param_groups[0]["lr"] = lr
    optimizer.param_groups[1]["lr"] = lr * cfg.head_lr_mult
    return lr
