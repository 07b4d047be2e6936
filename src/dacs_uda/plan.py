"""Dry run of an experiment: what ``dvc exp run -S ...`` would run, and for how long on this machine.

``dacs-uda plan -S experiment=dacs_gta5`` composes the params exactly as ``dvc exp run`` does (Hydra,
``conf/``), validates them, lists the stages the experiment runs (a paper preset keeps only the
training stages its result needs, ``runs``), names the inputs that are still missing (the COCO
weights file, the dataset roots) and projects each training stage's wall time from the step rate
measured here: a few real steps of the stage's own training task (same model, batch, crops,
precision and method) on random crops, the first one discarded as warm-up.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import yaml

from dacs_uda.config import Params, RunConfig, TrainConfig, accepted_starts, params_hash
from dacs_uda.train.loop import Tensors, fit
from dacs_uda.train.tasks import adaptation_task, supervised_task

BEFORE_TRAINING = ("data", "validate", "prepare")
AFTER_TRAINING = ("evaluate", "export", "evaluate_onnx")
COCO_WEIGHTS = "resnet101COCO-41f33a49.pth"


@dataclass(frozen=True)
class Projection:
    stage: str
    steps: int
    seconds_per_step: float

    @property
    def hours(self) -> float:
        return self.steps * self.seconds_per_step / 3600


def stages(params: Params) -> list[str]:
    """The DVC stages of the experiment, in pipeline order."""
    return [*BEFORE_TRAINING, *(f"train@{section}" for section in params.runs), *AFTER_TRAINING]


def missing_inputs(params: Params) -> list[str]:
    """What must be in place before the run, and is not, each with how to provide it."""
    missing = []
    weights = params.model.weights
    if weights and not Path(weights).is_file():
        hint = (
            f" (the official code's COCO DeepLab ResNet-101, {COCO_WEIGHTS})"
            if COCO_WEIGHTS in weights
            else ""
        )
        missing.append(
            f"model.weights: {weights} not found{hint}: place the file there or set -S model.weights=PATH"
        )
    if params.data.pair != "embedded" and not params.data.download:
        for domain in ("source", "target"):
            root = getattr(params.data, domain).root
            if not Path(root).is_dir():
                missing.append(
                    f"data.{domain}.root: {root} not found: point it at the dataset (-S data.{domain}."
                    "root=PATH) or let the data stage download it (-S data.download=true, docs/datasets.md)"
                )
    return missing


def _without_weights(params: Params) -> Params:
    """``params`` with every model built from scratch: the speed of a step does not depend on the weights."""
    fresh = copy.deepcopy(params)
    fresh.model.init, fresh.model.weights, fresh.adapt.init = "scratch", None, "model"
    fresh.runs = {section: RunConfig(accepted_starts(fresh, section)[0]) for section in fresh.runs}
    return fresh


def _random_batches(params: Params, section: str, batch_size: int) -> Iterator[Tensors]:
    """Endless batches of random normalised crops and labels (ignore label included) at ``data.crop``."""
    gen = torch.Generator().manual_seed(params.seed)
    h, w = params.data.crop
    classes = params.model.num_classes

    def image() -> torch.Tensor:
        return torch.randn(batch_size, 3, h, w, generator=gen) * 60

    def label() -> torch.Tensor:
        values = torch.randint(0, classes + 1, (batch_size, h, w), generator=gen)
        return values.masked_fill(values == classes, 255)

    while True:
        if section == "adapt":
            yield {"source_image": image(), "source_label": label(), "target_image": image()}
        else:
            yield {"image": image(), "label": label()}


def measure_step_seconds(params: Params, section: str, device: torch.device, steps: int = 2) -> float:
    """Mean seconds per training step of ``section`` on ``device``, over ``steps`` steps after a warm-up."""
    fresh = _without_weights(params)
    task = adaptation_task(fresh, device) if section == "adapt" else supervised_task(fresh, section, device)
    cfg: TrainConfig = getattr(fresh, section)
    cfg.optim.iterations = steps + 1
    ends: list[float] = []

    def clock(step: int) -> None:
        if task_after is not None:
            task_after(step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ends.append(time.perf_counter())

    task_after = task.after_step
    batches = _random_batches(fresh, section, cfg.optim.batch_size)
    timed = replace(task, optim=cfg.optim, batches=lambda start: batches, after_step=clock)
    with tempfile.TemporaryDirectory() as tmp:
        fit(timed, device, cfg.log_every, fresh.train, Path(tmp) / "state.pt", "plan")
    return (ends[-1] - ends[0]) / steps


def render(params: Params, overrides: list[str], projections: list[Projection], device: str) -> str:
    """The dry run's report: resolved params, stages, missing inputs, projected training time."""
    lines = [
        f"# dvc exp run {' '.join(f'-S {o}' for o in overrides)}".rstrip(),
        f"# params hash {params_hash(params)}; resolved params:",
        yaml.safe_dump(asdict(params), sort_keys=False).rstrip(),
        "",
        "stages that will run: " + ", ".join(stages(params)),
    ]
    missing = missing_inputs(params)
    lines += ["missing inputs:", *(f"  - {m}" for m in missing)] if missing else ["missing inputs: none"]
    if projections:
        lines.append(f"projected training time on this machine ({device}, measured steps):")
        for p in projections:
            lines.append(
                f"  {p.stage}: {p.steps:,} steps x {p.seconds_per_step * 1000:.1f} ms = {p.hours:.2f} h"
            )
        lines.append(
            f"  total: {sum(p.hours for p in projections):.2f} h (validation, other stages not included)"
        )
    return "\n".join(lines)
