"""Exact-value tests of the EMA teacher schedule and update."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dacs_uda.dacs.ema import ema_alpha, ema_update_, make_teacher


def _linear(weight: list[float], bias: float) -> nn.Linear:
    layer = nn.Linear(len(weight), 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weight]))
        layer.bias.fill_(bias)
    return layer


@pytest.mark.parametrize(
    ("step", "expected"), [(0, 0.0), (1, 0.5), (3, 0.75), (98, 1 - 1 / 99), (99, 0.99), (1000, 0.99)]
)
def test_ema_alpha_schedule(step: int, expected: float) -> None:
    assert ema_alpha(step, 0.99) == pytest.approx(expected, abs=1e-12)


def test_ema_alpha_capped_by_max_alpha() -> None:
    assert ema_alpha(10, 0.5) == 0.5
    assert ema_alpha(1000, 0.999) == pytest.approx(0.999)


def test_ema_update_exact_on_linear_including_frozen_parameters() -> None:
    teacher = make_teacher(_linear([1.0, 2.0], 0.0))
    student = _linear([3.0, 6.0], 4.0)
    student.bias.requires_grad_(False)  # frozen parameters are averaged too (official: BN affine terms)
    ema_update_(teacher, student, 0.75)
    assert torch.equal(teacher.weight, torch.tensor([[1.5, 3.0]]))  # 0.75 * t + 0.25 * s
    assert torch.equal(teacher.bias, torch.tensor([1.0]))
    assert not teacher.weight.requires_grad and teacher.weight.grad_fn is None
    assert torch.equal(student.weight, torch.tensor([[3.0, 6.0]]))


def test_ema_update_alpha_zero_copies_student_and_one_keeps_teacher() -> None:
    teacher, student = make_teacher(_linear([1.0, 2.0], 0.0)), _linear([3.0, 6.0], 4.0)
    ema_update_(teacher, student, 1.0)
    assert torch.equal(teacher.weight, torch.tensor([[1.0, 2.0]]))
    ema_update_(teacher, student, 0.0)
    assert torch.equal(teacher.weight, student.weight) and torch.equal(teacher.bias, student.bias)


def test_ema_update_buffers_policy() -> None:
    student = nn.BatchNorm1d(2)
    teacher = make_teacher(student)
    with torch.no_grad():
        student.running_mean.fill_(5.0)
        student.weight.fill_(3.0)
    ema_update_(teacher, student, 0.5)
    assert torch.equal(teacher.running_mean, torch.zeros(2))  # official: buffers untouched
    assert torch.equal(teacher.weight, torch.full((2,), 2.0))
    ema_update_(teacher, student, 0.5, copy_buffers=True)
    assert torch.equal(teacher.running_mean, torch.full((2,), 5.0))
    assert torch.equal(teacher.num_batches_tracked, student.num_batches_tracked)


def test_ema_update_rejects_different_architectures() -> None:
    with pytest.raises(ValueError):
        ema_update_(nn.Linear(2, 1), nn.Sequential(nn.Linear(2, 1), nn.Linear(1, 1)), 0.5)


def test_make_teacher_is_an_independent_frozen_copy() -> None:
    student = _linear([1.0, 2.0], 3.0)
    student(torch.ones(1, 2)).sum().backward()
    teacher = make_teacher(student)
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(p.requires_grad and p.grad is not None for p in student.parameters())
    assert torch.equal(teacher.weight, student.weight)
    assert teacher.weight.data_ptr() != student.weight.data_ptr()
    with torch.no_grad():
        teacher.weight.zero_()
    assert torch.equal(student.weight, torch.tensor([[1.0, 2.0]]))
    assert teacher.training == student.training
