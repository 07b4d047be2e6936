"""The training loop shared by every training stage (source pre-training, the oracle, adaptation).

A stage hands in a :class:`TrainTask`: the model and its optimiser, endless batches from any step on, a
``loss`` function that turns one step's batch into the loss to minimise and its statistics, and an
optional ``after_step`` hook (the EMA teacher's update). The loop owns, once, what every stage shares:
the learning-rate schedule, precision (autocast and, for fp16, a grad scaler), the optimiser step,
progress, the learning curve, resume checkpoints and the outputs (checkpoint, curve, metrics).

Resume: every ``train.checkpoint_every`` steps, and at the end, the whole training state (model,
teacher, optimiser, scaler, curve, extra state such as the distribution-alignment mean, step) goes
atomically to ``<train.resume_dir>/<stage>.pt``. A rerun with the same params continues from it; as
every random draw is keyed by seed and step (:mod:`dacs_uda.utils.rng`), the result is bit-identical
to an uninterrupted run.

Several processes (``torchrun``, :mod:`dacs_uda.utils.dist`): the task's ``ranks`` say where this one
stands. Each trains on its share of the global batch with the student in DDP; rank 0 alone writes
(resume states, outputs) and shows progress; every rank reads the resume state. The curve's statistics
are averaged over the ranks once per log window, not per step.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dacs_uda.config import LoopConfig, OptimConfig, Params, params_hash, run_outputs
from dacs_uda.models.checkpoint import read_state, save_checkpoint, write_state
from dacs_uda.optim import set_lr
from dacs_uda.train.curve import CurveLogger, LiveFiles
from dacs_uda.train.validation import Validator, build_validator, validated_models
from dacs_uda.utils.dist import SINGLE, Ranks, same_on_every_rank, sync_batchnorm
from dacs_uda.utils.io import write_json

log = logging.getLogger(__name__)

Tensors = dict[str, torch.Tensor]
# step, batch on the device -> (loss to minimise, 0-dim statistics tensors for the curve)
LossFn = Callable[[int, Tensors], tuple[torch.Tensor, dict[str, torch.Tensor]]]
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class TrainTask:
    """What one training stage trains, and how one step's loss is computed."""

    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    optim: OptimConfig
    batches: Callable[[int], Iterator[Tensors]]  # endless batches from the given step on
    loss: LossFn
    after_step: Callable[[int], None] | None = None
    teacher: torch.nn.Module | None = None  # saved with the model (adaptation's EMA teacher)
    extra_state: Mapping[str, Stateful] = field(default_factory=dict)  # resumed with the rest
    ranks: Ranks = SINGLE  # this process's place among the training processes


@dataclass(frozen=True)
class TrainResult:
    curve: CurveLogger
    seconds: float


def optimizer_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, scaler: torch.amp.GradScaler | None = None
) -> None:
    """One gradient step on ``loss``: clear the gradients, back-propagate, update (scaled for fp16)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None or not scaler.is_enabled():
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for the forward passes of ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def prepare_module(
    module: torch.nn.Module, loop: LoopConfig, ranks: Ranks = SINGLE, *, trained: bool = False
) -> torch.nn.Module:
    """``module`` as the loop runs it (call it for student and teacher): in the loop's memory format,
    over several processes with global-batch BatchNorm (``train.sync_bn``) and, when ``trained``, in
    DDP; compiled when asked.

    Returns the module to run; the module itself (whose state dict has plain keys) stays the one to save.
    """
    if loop.channels_last:
        module.to(memory_format=torch.channels_last)
    run = module
    if ranks.distributed:
        device = next(module.parameters()).device
        if loop.sync_bn:
            sync_batchnorm(module, device)
        if trained:
            # static graph: DACS runs the student twice per backward, and official ASPP leaves branches
            # unused; with sync_bn every rank already holds the same BN statistics (no buffer broadcast).
            run = DistributedDataParallel(
                module,
                device_ids=None if device.type == "cpu" else [device],
                forward_sync_buffers=not loop.sync_bn,
                static_graph=True,
            )
    return torch.compile(run) if loop.compile else run  # type: ignore[return-value]


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> Tensors:
    """The batch's tensors on ``device`` (asynchronous from pinned memory); other entries dropped."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if channels_last:
        out = {
            k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in out.items()
        }
    return out


def resume_path(params: Params, section: str) -> Path:
    return Path(params.train.resume_dir) / f"{section}.pt"


def _state(
    task: TrainTask, scaler: torch.amp.GradScaler, curve: CurveLogger, step: int, seconds: float, run_id: str
) -> dict[str, Any]:
    """Everything a rerun needs to continue at ``step`` as if it had never stopped."""
    return {
        "run_id": run_id,
        "step": step,
        "seconds": seconds,
        "model": task.model.state_dict(),
        "teacher": None if task.teacher is None else task.teacher.state_dict(),
        "optimizer": task.optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "curve": curve.state_dict(),
        "extra": {name: obj.state_dict() for name, obj in task.extra_state.items()},
    }


def restore(
    path: Path, run_id: str, task: TrainTask, scaler: torch.amp.GradScaler, curve: CurveLogger
) -> tuple[int, float]:
    """Load the resume state at ``path`` into ``task``; return (first step to run, seconds so far)."""
    if not path.is_file():
        return 0, 0.0
    state = read_state(path)
    if state.get("run_id") != run_id:
        log.info("%s holds another configuration's state (params changed): starting from step 0", path)
        return 0, 0.0
    task.model.load_state_dict(state["model"])
    if task.teacher is not None:
        task.teacher.load_state_dict(state["teacher"])
    task.optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    curve.load_state_dict(state["curve"])
    for name, obj in task.extra_state.items():
        obj.load_state_dict(state["extra"][name])
    log.info("resuming from %s at step %d of %d", path, state["step"], task.optim.iterations)
    return int(state["step"]), float(state["seconds"])


def mean_window_over_ranks(
    curve: CurveLogger, stats: dict[str, torch.Tensor], ranks: Ranks
) -> dict[str, torch.Tensor]:
    """At the step that closes a log window: the open window's sums in ``curve``, and the step's
    ``stats`` (returned), replaced by their means over the ranks, so that the row is the global batch's.

    One collective per window: the steps in between stay free of cross-rank traffic for the curve.
    """
    state = curve.state_dict()
    keys, open_keys = list(stats), [key for key in stats if key in state["sums"]]
    local = torch.stack([stats[key].double() for key in keys] + [state["sums"][key] for key in open_keys])
    means = ranks.mean(local)
    state["sums"] = {**state["sums"], **dict(zip(open_keys, means[len(keys) :], strict=True))}
    curve.load_state_dict(state)
    return dict(zip(keys, means[: len(keys)], strict=True))


def fit(
    task: TrainTask,
    device: torch.device,
    log_every: int,
    loop: LoopConfig,
    resume: Path,
    run_id: str,
    files: LiveFiles | None = None,
    validator: Validator | None = None,
) -> TrainResult:
    """Run ``task`` to ``task.optim.iterations`` steps, continuing from ``resume`` when it is this run's.

    ``files``: where the curves and latest metrics are rewritten while it runs; ``validator``: target-val
    mIoU every ``eval_every`` steps (rank 0 only: the other ranks wait at their next collective).
    """
    scaler = torch.amp.GradScaler(device.type, enabled=loop.precision == "fp16")
    curve = CurveLogger(log_every, files if task.ranks.is_main else None)
    start, seconds = restore(resume, run_id, task, scaler, curve)
    curve.flush()  # the files as the resumed state has them: drops what a killed run logged after it
    same_on_every_rank(
        start, f"the step resumed from {resume} (put train.resume_dir where every node reads it)"
    )
    batches, clock = task.batches(start), time.perf_counter()
    total, ranks = task.optim.iterations, task.ranks
    progress = tqdm(
        range(start, total), desc=task.name, unit="step", mininterval=5.0, initial=start, total=total,
        disable=not ranks.is_main,
    )  # fmt: skip
    for step in progress:
        lr = set_lr(task.optimizer, task.optim, step)
        with autocast(device, loop.precision):
            loss, stats = task.loss(step, to_device(next(batches), device, loop.channels_last))
        optimizer_step(task.optimizer, loss, scaler)
        if task.after_step is not None:
            task.after_step(step)
        if ranks.distributed and (step + 1) % log_every == 0:
            stats = mean_window_over_ranks(curve, stats, ranks)
        row = curve.add(step, {**stats, "lr": lr})
        if row:
            progress.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k not in ("step", "lr")})
        done = step + 1
        if validator is not None and validator.due(done) and ranks.is_main:  # before the checkpoint: resumed
            curve.add_validation(done, validator(done, validated_models(task.model, task.teacher)))
        checkpoint = done == total or (loop.checkpoint_every and done % loop.checkpoint_every == 0)
        if checkpoint and ranks.is_main:
            elapsed = seconds + time.perf_counter() - clock
            write_state(resume, _state(task, scaler, curve, done, elapsed, run_id))
    return TrainResult(curve, seconds + time.perf_counter() - clock)


def write_outputs(
    task: TrainTask, result: TrainResult, params: Params, section: str, run_lineage: dict[str, Any]
) -> None:
    """The checkpoint and final metrics of the training stage ``section`` (its curves are already written)."""
    out = run_outputs(params, section)
    save_checkpoint(
        out.checkpoint,
        task.model,
        params,
        run_lineage,
        step=task.optim.iterations,
        ema_model=task.teacher,
        optimizer=task.optimizer,
    )
    metrics = {**result.curve.metrics(), "steps": task.optim.iterations, "seconds": round(result.seconds, 1)}
    write_json(out.metrics, metrics)
    log.info("%s: wrote %s (%.0f s)", section, out.checkpoint, result.seconds)


def train_stage(
    params: Params, section: str, task: TrainTask, device: torch.device, run_lineage: dict[str, Any]
) -> None:
    """Fit ``task`` (resuming when a state of this configuration exists) and write the stage's outputs."""
    cfg, out = getattr(params, section), run_outputs(params, section)
    log.info("%s: %d steps, %s, device %s, %s", section, task.optim.iterations, task.name, device,
             params.train.precision)  # fmt: skip
    files = LiveFiles(out.curve, out.validation, out.metrics)
    validator = build_validator(params, section, device) if task.ranks.is_main else None
    result = fit(task, device, cfg.log_every, params.train, resume_path(params, section), params_hash(params),
                 files, validator)  # fmt: skip
    if task.ranks.is_main:
        write_outputs(task, result, params, section, run_lineage)
