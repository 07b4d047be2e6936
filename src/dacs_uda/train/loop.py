"""The training loop shared by every training stage (source pre-training, the oracle, adaptation).

A stage hands in a :class:`TrainTask`: the model and its optimiser, endless batches, a ``loss``
function that turns one step's batch into the loss to minimise and its statistics, and an optional
``after_step`` hook (the EMA teacher's update). The loop owns, once, what every stage shares: the
learning-rate schedule, the optimiser step, progress, the learning curve and the outputs (checkpoint,
curve, metrics).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from dacs_uda.config import OptimConfig, Params
from dacs_uda.models.checkpoint import save_checkpoint
from dacs_uda.optim import set_lr
from dacs_uda.train.curve import CurveLogger
from dacs_uda.utils.io import write_json

log = logging.getLogger(__name__)

Tensors = dict[str, torch.Tensor]
# step, batch on the device -> (loss to minimise, 0-dim statistics tensors for the curve)
LossFn = Callable[[int, Tensors], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class TrainTask:
    """What one training stage trains, and how one step's loss is computed."""

    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    optim: OptimConfig
    batches: Iterator[Tensors]
    loss: LossFn
    after_step: Callable[[int], None] | None = None
    teacher: torch.nn.Module | None = None  # saved with the model (adaptation's EMA teacher)


@dataclass(frozen=True)
class TrainResult:
    curve: CurveLogger
    seconds: float


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One gradient step on ``loss``: clear the gradients, back-propagate, update."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def to_device(batch: dict[str, Any], device: torch.device) -> Tensors:
    """The batch's tensors on ``device`` (asynchronous from pinned memory); other entries dropped."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}


def fit(task: TrainTask, device: torch.device, log_every: int) -> TrainResult:
    """Run ``task.optim.iterations`` steps of ``task``; return the learning curve and the wall time."""
    curve = CurveLogger(log_every)
    start = time.perf_counter()
    progress = tqdm(range(task.optim.iterations), desc=task.name, unit="step", mininterval=5.0)
    for step in progress:
        lr = set_lr(task.optimizer, task.optim, step)
        loss, stats = task.loss(step, to_device(next(task.batches), device))
        optimizer_step(task.optimizer, loss)
        if task.after_step is not None:
            task.after_step(step)
        row = curve.add(step, {**stats, "lr": lr})
        if row:
            progress.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k not in ("step", "lr")})
    return TrainResult(curve, time.perf_counter() - start)


def write_outputs(
    task: TrainTask, result: TrainResult, params: Params, section: str, run_lineage: dict[str, Any]
) -> None:
    """The checkpoint, learning curve and metrics of the training stage ``section`` of ``params``."""
    cfg = getattr(params, section)
    save_checkpoint(
        cfg.checkpoint,
        task.model,
        params,
        run_lineage,
        step=task.optim.iterations,
        optimizer=task.optimizer,
        ema_model=task.teacher,
    )
    result.curve.write(cfg.curve)
    final = result.curve.rows[-1] if result.curve.rows else {}
    metrics = {
        **{f"train/{k}": v for k, v in final.items() if k not in ("step", "lr")},
        "steps": task.optim.iterations,
        "seconds": round(result.seconds, 1),
    }
    write_json(cfg.metrics, metrics)
    log.info("%s: wrote %s (%.0f s)", section, cfg.checkpoint, result.seconds)
