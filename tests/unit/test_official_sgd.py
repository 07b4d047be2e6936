"""The official optimiser's duplicated backbone updates (reference §3.3), with exact values."""

from __future__ import annotations

import copy
import dataclasses
import io
from fractions import Fraction

import pytest
import torch
from torch import nn

from dacs_uda.config import compose_params
from dacs_uda.models.deeplabv2 import DeepLabV2, build_model
from dacs_uda.optim import (
    RepeatedSGD,
    build_optimizer,
    official_backbone_listing,
    official_backbone_multiplicity,
    set_lr,
)
from tests.conftest import r101_model, tiny_model

TINY = tiny_model()
OPTIM = compose_params().pretrain.optim  # the embedded default's SGD (lr 0.01, momentum 0.9, wd 5e-4)


pytestmark = pytest.mark.usefixtures("one_thread")


def scalar(value: float, dtype=torch.float64) -> nn.Parameter:
    return nn.Parameter(torch.tensor([value], dtype=dtype))


def set_grads(params: list[nn.Parameter], step: int) -> None:
    gen = torch.Generator().manual_seed(step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


# ---------------------------------------------------------------- exact values on one scalar


def test_k3_scalar_hand_computed_lr_0p1_momentum_0p9() -> None:
    p = scalar(0.0)
    opt = RepeatedSGD([{"params": [p], "repeats": [3]}], lr=0.1, momentum=0.9)
    p.grad = torch.tensor([1.0], dtype=torch.float64)
    opt.step()
    # buf: 1, 1.9, 2.71 -> displacement 0.1 * (1 + 1.9 + 2.71) = 0.561
    assert p.item() == pytest.approx(-0.561, abs=1e-15)
    assert opt.state[p]["momentum_buffer"].item() == pytest.approx(2.71, abs=1e-15)
    opt.step()  # buf: 3.439, 4.0951, 4.68559
    assert p.item() == pytest.approx(-0.561 - 0.1 * (3.439 + 4.0951 + 4.68559), abs=1e-14)


@pytest.mark.parametrize("repeats", [1, 3, 4])
def test_scalar_matches_the_pytorch_1p5_recurrence_exactly(repeats: int) -> None:
    """Dyadic constants: every intermediate is exact in binary, so equality is exact."""
    lr, momentum, wd, grad, p0 = (
        Fraction(1, 4),
        Fraction(1, 2),
        Fraction(1, 8),
        Fraction(3, 2),
        Fraction(5, 4),
    )
    p = scalar(float(p0))
    opt = RepeatedSGD(
        [{"params": [p], "repeats": [repeats]}],
        lr=float(lr),
        momentum=float(momentum),
        weight_decay=float(wd),
    )
    value, buf = p0, None
    for _ in range(2):  # (a third step with k = 4 would need more than float64's 53 bits)
        p.grad = torch.tensor([float(grad)], dtype=torch.float64)
        opt.step()
        for _ in range(repeats):  # one full SGD update per listed occurrence, same grad, one buffer
            d = grad + wd * value
            buf = d if buf is None else momentum * buf + d
            value -= lr * buf
        assert abs(value.numerator).bit_length() <= 53  # exactly representable: no rounding anywhere
        assert p.item() == float(value)
        assert opt.state[p]["momentum_buffer"].item() == float(buf)


def test_total_displacement_per_unit_gradient_is_k_times() -> None:
    """§3.3: with momentum 0.9 and a constant gradient, the long-run displacement is 10 / 30 / 40 lr."""
    steps = {}
    for k in (1, 3, 4):
        p = scalar(0.0)
        opt = RepeatedSGD([{"params": [p], "repeats": [k]}], lr=1.0, momentum=0.9)
        p.grad = torch.ones(1, dtype=torch.float64)
        for _ in range(400):
            opt.step()
        before = p.item()
        opt.step()
        steps[k] = before - p.item()
    assert steps[1] == pytest.approx(10.0, rel=1e-9)
    assert steps[3] == pytest.approx(30.0, rel=1e-9)
    assert steps[4] == pytest.approx(40.0, rel=1e-9)


# ---------------------------------------------------------------- bit-for-bit against torch.optim.SGD


def test_k1_is_torch_sgd_bit_for_bit() -> None:
    torch.manual_seed(0)
    ours_model = DeepLabV2(TINY)
    ref_model = copy.deepcopy(ours_model)
    groups = ours_model.param_groups(0.01, 10.0)
    ours = RepeatedSGD(groups, lr=0.01, momentum=0.9, weight_decay=5e-4)
    ref = torch.optim.SGD(
        ref_model.param_groups(0.01, 10.0), lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=False
    )
    for step in range(5):
        for opt in (ours, ref):
            opt.param_groups[0]["lr"] = 0.01 * (1 - step / 10)
            opt.param_groups[1]["lr"] = 0.1 * (1 - step / 10)
        set_grads([p for p in ours_model.parameters() if p.requires_grad], step)
        set_grads([p for p in ref_model.parameters() if p.requires_grad], step)
        ours.step()
        ref.step()
        for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
            assert torch.equal(a, b)
    for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        if a.requires_grad:
            assert torch.equal(ours.state[a]["momentum_buffer"], ref.state[b]["momentum_buffer"])


def test_k3_is_torch_sgd_stepped_three_times_with_the_same_grad() -> None:
    torch.manual_seed(1)
    w_ours, w_ref = nn.Parameter(torch.randn(4, 5)), None
    w_ref = nn.Parameter(w_ours.detach().clone())
    ours = RepeatedSGD([{"params": [w_ours], "repeats": [3]}], lr=0.05, momentum=0.9, weight_decay=5e-4)
    ref = torch.optim.SGD([w_ref], lr=0.05, momentum=0.9, weight_decay=5e-4, foreach=False)
    for step in range(4):
        set_grads([w_ours], step)
        set_grads([w_ref], step)
        ours.step()
        for _ in range(3):
            ref.step()
        assert torch.equal(w_ours, w_ref)


def test_official_optimizer_on_the_model_equals_per_parameter_repeated_sgd() -> None:
    """build_optimizer(duplicate_backbone_updates=True): backbone tensors k-fold, classifier once."""
    cfg = dataclasses.replace(
        OPTIM, lr=0.01, head_lr_mult=10.0, momentum=0.9, weight_decay=5e-4, duplicate_backbone_updates=True
    )
    torch.manual_seed(2)
    model = build_model(TINY)
    ref_model = copy.deepcopy(model)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, RepeatedSGD)
    mult = official_backbone_multiplicity(ref_model)
    head_ids = {id(p) for p in ref_model.classifier.parameters()}
    refs = []
    for p in ref_model.parameters():
        if p.requires_grad:
            lr = cfg.lr * (cfg.head_lr_mult if id(p) in head_ids else 1.0)
            k = 1 if id(p) in head_ids else mult[p]
            refs.append((torch.optim.SGD([p], lr=lr, momentum=0.9, weight_decay=5e-4, foreach=False), k))
    for step in range(3):
        set_grads([p for p in model.parameters() if p.requires_grad], step)
        set_grads([p for p in ref_model.parameters() if p.requires_grad], step)
        opt.step()
        for ref, k in refs:
            for _ in range(k):
                ref.step()
        for (name, a), b in zip(model.named_parameters(), ref_model.parameters(), strict=True):
            assert torch.equal(a, b), name


# ---------------------------------------------------------------- multiplicities of the official generator


def test_r101_multiplicities_match_section_3_3() -> None:
    with torch.device("meta"):
        model = DeepLabV2(r101_model())
    listing = official_backbone_listing(model)
    mult = official_backbone_multiplicity(model)
    assert len(listing) == 314 and len(mult) == 104 and sum(mult.values()) == 314
    names = {p: n for n, p in model.named_parameters()}
    by_name = {names[p]: k for p, k in mult.items()}
    assert by_name["conv1.weight"] == 1
    downsample = {n: k for n, k in by_name.items() if ".downsample." in n}
    assert sorted(downsample) == [f"layer{i}.0.downsample.0.weight" for i in range(1, 5)]
    assert set(downsample.values()) == {4}
    bottleneck = {n: k for n, k in by_name.items() if n != "conv1.weight" and n not in downsample}
    assert len(bottleneck) == 33 * 3 and set(bottleneck.values()) == {3}
    assert all(n.rsplit(".", 2)[-2] in ("conv1", "conv2", "conv3") for n in bottleneck)
    assert not any(
        ".bn" in n or n.startswith(("bn1", "classifier")) for n in by_name
    )  # BN frozen, head apart


def test_embedded_default_multiplicities() -> None:
    mult = official_backbone_multiplicity(DeepLabV2(compose_params().model))
    assert sorted(mult.values()) == [1] + [3] * 12 + [4] * 4  # depths [1, 1, 1, 1]


def test_unfrozen_bn_would_be_listed_too() -> None:
    """The generator lists whatever requires grad: with trainable BN, BN parameters are repeated as well."""
    model = DeepLabV2(tiny_model(freeze_bn_affine=False))
    names = {p: n for n, p in model.named_parameters()}
    by_name = {names[p]: k for p, k in official_backbone_multiplicity(model).items()}
    assert by_name["bn1.weight"] == 1 and by_name["layer1.0.bn2.bias"] == 3
    assert by_name["layer2.0.downsample.1.weight"] == 4


def test_r101_build_optimizer_groups_and_set_lr() -> None:
    with torch.device("meta"):
        model = DeepLabV2(r101_model())
    cfg = dataclasses.replace(OPTIM, lr=2.5e-4, iterations=250_000, duplicate_backbone_updates=True)
    opt = build_optimizer(model, cfg)
    backbone, head = opt.param_groups
    assert len(backbone["params"]) == 104 and sum(backbone["repeats"]) == 314
    assert len(head["params"]) == 8 and head["repeats"] == [1] * 8
    lr = set_lr(opt, cfg, 125_000)
    assert lr == pytest.approx(2.5e-4 * 0.5**0.9)
    assert backbone["lr"] == lr and head["lr"] == pytest.approx(10 * lr)
    plain = build_optimizer(model, OPTIM)
    assert type(plain) is torch.optim.SGD and all("repeats" not in g for g in plain.param_groups)


# ---------------------------------------------------------------- robustness


def test_parameters_without_grad_are_skipped_entirely() -> None:
    a, b = scalar(1.0), scalar(2.0)
    opt = RepeatedSGD([{"params": [a, b], "repeats": [3, 4]}], lr=0.1, momentum=0.9, weight_decay=0.5)
    a.grad = torch.zeros(1, dtype=torch.float64)
    opt.step()
    assert b.item() == 2.0 and b not in opt.state  # no gradient: no decay, no buffer (as PyTorch SGD)
    assert a.item() < 1.0  # decay alone moves it, three times


def test_state_dict_round_trip_continues_identically() -> None:
    torch.manual_seed(3)
    model = build_model(TINY)
    cfg = dataclasses.replace(OPTIM, duplicate_backbone_updates=True)
    opt = build_optimizer(model, cfg)
    set_grads([p for p in model.parameters() if p.requires_grad], 0)
    opt.step()
    clone = copy.deepcopy(model)
    restored = build_optimizer(clone, cfg)
    buffer = io.BytesIO()  # through bytes, as a checkpoint (an in-memory state dict shares the buffers)
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.param_groups[0]["repeats"] == opt.param_groups[0]["repeats"]
    for m, o in ((model, opt), (clone, restored)):
        set_grads([p for p in m.parameters() if p.requires_grad], 1)
        o.step()
    for a, b in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("repeats", [[0], [1, 1], [-2]])
def test_bad_repeats_are_rejected(repeats: list[int]) -> None:
    with pytest.raises(ValueError, match="repeats"):
        RepeatedSGD([{"params": [scalar(0.0)], "repeats": repeats}], lr=0.1)


def test_momentum_zero_keeps_no_buffer() -> None:
    p = scalar(1.0)
    opt = RepeatedSGD([{"params": [p], "repeats": [4]}], lr=0.25, weight_decay=0.0)
    p.grad = torch.ones(1, dtype=torch.float64)
    opt.step()
    assert p.item() == 0.0 and "momentum_buffer" not in opt.state[p]
