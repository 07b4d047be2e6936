"""Validation during training: target-val mIoU of the models being trained, every ``eval_every`` steps.

The scores come from the evaluate stage's own code (:func:`dacs_uda.evaluate.val_loader`,
:func:`~dacs_uda.evaluate.torch_backend`, :func:`~dacs_uda.evaluate.evaluate_backends`,
:func:`~dacs_uda.evaluate.summarize`), so with ``eval_images: 0`` a validation at a stage's last step
equals the evaluate stage's mIoU of its checkpoint. ``eval_images`` bounds the cost (at the paper's
scale, 500 Cityscapes val frames at 1024x512 per model) with a fixed, evenly spaced subset of target
val. Scores are in fp32 whatever ``train.precision``, as the evaluate stage's are.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import cast

import torch
from torch import nn

from dacs_uda.config import AdaptConfig, Params, TrainConfig
from dacs_uda.evaluate import EvalDataset, evaluate_backends, summarize, torch_backend, val_loader

log = logging.getLogger(__name__)


@contextlib.contextmanager
def evaluation_mode(models: Mapping[str, nn.Module]) -> Iterator[None]:
    """Gradients off while inside; afterwards every module back in its own train/eval mode.

    Per module, not per model: the official teacher trains with batch statistics while a caller may
    have set single submodules to eval, and ``model.train()`` would lose that.
    """
    modes = {module: module.training for model in models.values() for module in model.modules()}
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes.items():
            module.training = training


class Validator:
    """Target-val mIoU of named models (``{"student": ..., "teacher": ...}`` or ``{"model": ...}``).

    Built once per training stage: the val images are chosen and their loader made here, not per call.
    """

    def __init__(self, params: Params, section: str, device: torch.device) -> None:
        cfg: TrainConfig | AdaptConfig = getattr(params, section)
        self.every, self.device, self.section = cfg.eval_every, device, section
        self.loader = val_loader(params, images=cfg.eval_images)
        images = len(cast(EvalDataset, self.loader.dataset))
        log.info("%s: target-val mIoU every %d steps on %d images", section, self.every, images)

    def due(self, done: int) -> bool:
        """Whether to validate after ``done`` steps."""
        return self.every > 0 and done % self.every == 0

    def __call__(self, step: int, models: Mapping[str, nn.Module]) -> dict[str, float]:
        """``{"mIoU_<name>": mIoU in %}`` of each model after ``step`` steps; modes restored afterwards."""
        with evaluation_mode(models):
            backends = {name: torch_backend(model) for name, model in models.items()}
            matrices = evaluate_backends(backends, self.loader, self.device, desc=f"validate step {step}")
        scores = {f"mIoU_{name}": summarize(matrix)["mIoU"] for name, matrix in matrices.items()}
        log.info("%s step %d: target-val %s", self.section, step,
                 ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))  # fmt: skip
        return scores


def validated_models(model: nn.Module, teacher: nn.Module | None = None) -> dict[str, nn.Module]:
    """What a stage validates: the student and its EMA teacher (adapt), or its model (pretrain, oracle)."""
    return {"model": model} if teacher is None else {"student": model, "teacher": teacher}


def build_validator(params: Params, section: str, device: torch.device) -> Validator | None:
    """The stage's validator, or None when ``<section>.eval_every`` is 0 (no validation)."""
    if getattr(params, section).eval_every == 0:
        return None
    return Validator(params, section, device)
