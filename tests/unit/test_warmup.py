"""Learning-rate warm-up (``*.optim.warmup_iters``): mmcv's linear rule, as in DAFormer; off by default."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dacs_uda.config import ConfigError, compose_params, parse_params
from dacs_uda.optim import WARMUP_RATIO, poly_lr, scheduled_lr, set_lr, warmup_factor

OPTIM = compose_params().adapt.optim  # the embedded default (lr 0.005, 800 steps, poly 0.9, no warm-up)


def test_warmup_factor_hand_computed() -> None:
    assert warmup_factor(0, 4, ratio=0.0) == 0.0
    assert warmup_factor(1, 4, ratio=0.0) == 0.25
    assert warmup_factor(2, 4, ratio=0.2) == 1.0 - 0.5 * 0.8  # 0.6: ratio + (1 - ratio) * step / iters
    assert warmup_factor(4, 4, ratio=0.2) == 1.0  # the warm-up is over at warmup_iters
    assert warmup_factor(0, 1500) == pytest.approx(1e-6, rel=1e-9)  # DAFormer's first step
    assert WARMUP_RATIO == 1e-6


def test_no_warmup_is_exactly_the_poly_schedule() -> None:
    assert OPTIM.warmup_iters == 0
    lrs = [scheduled_lr(OPTIM, step) for step in range(OPTIM.iterations)]
    assert lrs == [poly_lr(OPTIM.lr, s, OPTIM.iterations, OPTIM.poly_power) for s in range(OPTIM.iterations)]


def test_warmup_scales_the_poly_value_of_its_step_then_hands_over() -> None:
    # mmcv LrUpdaterHook(warmup='linear'): regular_lr(step) * (1 - (1 - step / W) * (1 - ratio))
    cfg = dataclasses.replace(OPTIM, lr=0.01, iterations=10, poly_power=1.0, warmup_iters=4)
    assert scheduled_lr(cfg, 0) == pytest.approx(0.01 * 1e-6, rel=1e-9)
    assert scheduled_lr(cfg, 2) == pytest.approx(0.008 * (1 - 0.5 * (1 - 1e-6)), rel=1e-12)  # 0.004000004
    assert scheduled_lr(cfg, 4) == poly_lr(0.01, 4, 10, 1.0)  # 0.006, unscaled from here on
    assert scheduled_lr(cfg, 9) == poly_lr(0.01, 9, 10, 1.0)


def test_set_lr_warms_both_groups_alike() -> None:
    cfg = dataclasses.replace(
        OPTIM, lr=0.01, iterations=10, poly_power=1.0, warmup_iters=4, head_lr_mult=10.0
    )
    backbone, head = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [backbone]}, {"params": [head]}], lr=cfg.lr)
    lr = set_lr(optimizer, cfg, 1)
    assert lr == scheduled_lr(cfg, 1)
    assert [g["lr"] for g in optimizer.param_groups] == [lr, lr * 10.0]


def test_every_training_section_has_the_key_off_by_default() -> None:
    params = compose_params()
    assert [getattr(params, s).optim.warmup_iters for s in ("pretrain", "oracle", "adapt")] == [0, 0, 0]


@pytest.mark.parametrize(("section", "value"), [("pretrain", -1), ("oracle", 801), ("adapt", 801)])
def test_warmup_out_of_range_is_rejected_by_name(section: str, value: int) -> None:
    raw = dataclasses.asdict(compose_params())
    raw[section]["optim"]["warmup_iters"] = value
    with pytest.raises(ConfigError, match=rf"`{section}\.optim\.warmup_iters` must be in \[0, "):
        parse_params(raw)
