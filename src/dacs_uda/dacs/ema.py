"""Mean-teacher EMA of the student parameters (vikolss/DACS ``trainUDA.py``: ``update_ema_variables``).

The teacher only produces pseudo-labels; it is never trained by back-propagation. After every optimiser
step its parameters move towards the student's, ``theta_t = alpha * theta_t + (1 - alpha) * theta_s``, with
``alpha = min(1 - 1 / (step + 1), 0.99)``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_alpha(step: int, max_alpha: float) -> float:
    """EMA decay of the official schedule: ``min(1 - 1 / (step + 1), max_alpha)``.

    ``step`` is the 0-based iteration: at step 0 the decay is 0 (the teacher becomes a copy of the
    once-updated student), 0.5 at step 1, and ``max_alpha`` (0.99 officially) from step 99 on.

    Args:
        step: 0-based training iteration.
        max_alpha: Upper bound of the decay.

    Returns:
        The decay ``alpha``.
    """
    return min(1.0 - 1.0 / (step + 1), max_alpha)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, alpha: float, *, copy_buffers: bool = False) -> None:
    """In place: ``theta_t = alpha * theta_t + (1 - alpha) * theta_s`` for every parameter.

    Every parameter is averaged, frozen ones (``requires_grad=False``, e.g. DeepLab's BN affine terms)
    included, as in the official code; parameters are matched by position, so both modules must have the
    same architecture. Buffers (BN running statistics) are left alone by default, which is the official
    behaviour (its teacher always runs in train mode, on batch statistics); ``copy_buffers=True`` copies
    them from the student instead, for a teacher used in eval mode.

    Args:
        teacher: EMA model, updated in place.
        student: Trained model.
        alpha: Decay, see :func:`ema_alpha`.
        copy_buffers: Copy the student's buffers into the teacher.
    """
    for teacher_param, student_param in zip(teacher.parameters(), student.parameters(), strict=True):
        # Same rounding as the official ``alpha * t + (1 - alpha) * s``.
        teacher_param.copy_(alpha * teacher_param + (1.0 - alpha) * student_param)
    if copy_buffers:
        for teacher_buffer, student_buffer in zip(teacher.buffers(), student.buffers(), strict=True):
            teacher_buffer.copy_(student_buffer)


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` to serve as EMA teacher, with gradients switched off.

    Unlike the official code, which builds a fresh network and copies only the parameters (its teacher's
    BN statistics start at 0/1 and are never used), the copy also carries the student's buffers; the
    training mode is kept as is (the official teacher runs in train mode).

    Args:
        student: Model to copy.

    Returns:
        The teacher, whose parameters have ``requires_grad=False`` and no ``.grad``.
    """
    teacher = copy.deepcopy(student)
    for param in teacher.parameters():
        param.requires_grad_(False)
        param.grad = None
    return teacher
