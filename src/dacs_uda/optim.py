"""SGD with DeepLab's poly schedule, as in the official DACS code.

``optim.duplicate_backbone_updates`` reproduces the official optimiser exactly (reference §3.3): its
backbone parameter generator (``get_1x_lr_params_NOscale``) yields a parameter once per ancestor module in
``[conv1, bn1, layer1, ..., layer4]`` (stem conv 1x, bottleneck convs 3x, downsample convs 4x), and the
for-loop ``SGD.step`` of PyTorch 1.5 applied every listed occurrence as a full update with the same
``.grad`` and one shared momentum buffer. :class:`RepeatedSGD` performs those updates explicitly; duplicate
tensors are never handed to ``torch.optim.SGD``, whose modern implementations treat them differently.

``optim.warmup_iters`` adds DAFormer's linear warm-up (``configs/_base_/schedules/poly10warm.py``: mmcv's
``LrUpdaterHook`` with ``warmup='linear'``, ``warmup_ratio=1e-6``), see :func:`warmup_factor`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from dacs_uda.config import OptimConfig
from dacs_uda.models.deeplabv2 import DeepLabV2

# DAFormer's warmup_ratio: the first step's lr is this fraction of the schedule's (near 0, never 0).
WARMUP_RATIO = 1e-6


def poly_lr(base_lr: float, step: int, total: int, power: float) -> float:
    """``base_lr * (1 - step / total) ** power`` (no warm-up)."""
    return base_lr * (1.0 - step / total) ** power


def warmup_factor(step: int, warmup_iters: int, ratio: float = WARMUP_RATIO) -> float:
    """What the scheduled lr is multiplied by at 0-based ``step``: mmcv's linear warm-up.

    ``1 - (1 - step / warmup_iters) * (1 - ratio)`` while ``step < warmup_iters``, else exactly 1: from
    ``ratio`` at step 0 up to 1 at ``warmup_iters``. As in mmcv, it scales the poly schedule's value *at
    that step* (not a ramp to a fixed target), so the warmed lr meets the poly curve at ``warmup_iters``.
    """
    if step >= warmup_iters:
        return 1.0
    return 1.0 - (1.0 - step / warmup_iters) * (1.0 - ratio)


def official_backbone_listing(model: DeepLabV2) -> list[nn.Parameter]:
    """The backbone group as the official generator lists it, duplicates included (314 entries for R101).

    ``for m in [conv1, bn1, layer1..4]: for j in m.modules(): for k in j.parameters(): if
    k.requires_grad: yield k`` -- ``modules()`` includes ``m`` itself and ``parameters()`` recurses, so a
    parameter appears once per ancestor in that walk.
    """
    tops = (model.conv1, model.bn1, model.layer1, model.layer2, model.layer3, model.layer4)
    return [p for top in tops for module in top.modules() for p in module.parameters() if p.requires_grad]


def official_backbone_multiplicity(model: DeepLabV2) -> dict[nn.Parameter, int]:
    """Times the official generator lists each backbone parameter (stem 1, bottleneck 3, downsample 4)."""
    counts: dict[nn.Parameter, int] = {}
    for p in official_backbone_listing(model):
        counts[p] = counts.get(p, 0) + 1
    return counts


class RepeatedSGD(torch.optim.Optimizer):
    """SGD (momentum, weight decay; no dampening/Nesterov) updating parameter i ``repeats[i]`` times per step.

    Each of the ``k`` updates is PyTorch's single-tensor SGD update with the same gradient ``g`` and one
    momentum buffer: ``d = g + wd * p; buf = m * buf + d`` (``buf = d`` the very first time);
    ``p -= lr * buf``. With all repeats 1 it is ``torch.optim.SGD(foreach=False)`` bit for bit. Parameter
    groups take a ``repeats`` list aligned with ``params`` (default: all 1); parameters without a gradient
    are skipped (no weight decay either), as in PyTorch.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"invalid lr/momentum/weight_decay: {lr}, {momentum}, {weight_decay}")
        super().__init__(
            params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "repeats": None}
        )

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        repeats = (
            [1] * len(group["params"]) if group["repeats"] is None else [int(k) for k in group["repeats"]]
        )
        if len(repeats) != len(group["params"]) or min(repeats, default=1) < 1:
            raise ValueError("`repeats` needs one integer >= 1 per parameter of its group")
        group["repeats"] = repeats

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch.optim.Optimizer's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
            for p, repeats in zip(group["params"], group["repeats"], strict=True):
                if p.grad is None:
                    continue
                state = self.state[p]
                for _ in range(repeats):
                    d = p.grad if weight_decay == 0 else p.grad.add(p, alpha=weight_decay)
                    if momentum != 0:
                        buf = state.get("momentum_buffer")
                        if buf is None:
                            buf = state["momentum_buffer"] = d.detach().clone()
                        else:
                            buf.mul_(momentum).add_(d, alpha=1)
                        d = buf
                    p.add_(d, alpha=-lr)
        return loss


def build_optimizer(model: DeepLabV2, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD over the backbone (lr) and the classifier (head_lr_mult * lr) parameter groups.

    With ``cfg.duplicate_backbone_updates`` a :class:`RepeatedSGD` whose backbone repeats are the official
    multiplicities (the classifier group has none: the official 10x generator lists each tensor once).
    """
    groups = model.param_groups(cfg.lr, cfg.head_lr_mult)
    if not cfg.duplicate_backbone_updates:
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    multiplicity = official_backbone_multiplicity(model)
    backbone, head = groups
    backbone["repeats"] = [multiplicity[p] for p in backbone["params"]]
    head["repeats"] = [1] * len(head["params"])
    return RepeatedSGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def scheduled_lr(cfg: OptimConfig, step: int) -> float:
    """The backbone lr at ``step``: poly schedule, warmed up over ``cfg.warmup_iters`` (0: none)."""
    # after the warm-up (always, with 0) the factor is exactly 1.0: the plain poly value, bit for bit
    return poly_lr(cfg.lr, step, cfg.iterations, cfg.poly_power) * warmup_factor(step, cfg.warmup_iters)


def set_lr(optimizer: torch.optim.Optimizer, cfg: OptimConfig, step: int) -> float:
    """Apply :func:`scheduled_lr` at ``step`` (before the forward pass, as officially); return it.

    The classifier group gets ``head_lr_mult`` times it, warm-up included (mmcv warms every group alike).
    """
    lr = scheduled_lr(cfg, step)
    optimizer.param_groups[0]["lr"] = lr
    optimizer.param_groups[1]["lr"] = lr * cfg.head_lr_mult
    return lr
