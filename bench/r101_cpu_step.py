"""Time one DACS training step of the paper's network (DeepLab-v2 ResNet-101, 512x512 crops) on the CPU.

The step is the library's, composed as the training loop composes it: :func:`dacs_uda.dacs.step.dacs_loss`
(student forward on 2 source crops, teacher forward without gradient on 2 target crops, pseudo-labels,
class mask, mixing, colour jitter and blur, student forward on the 2 mixed crops, both losses), then
:func:`dacs_uda.train.loop.optimizer_step` (one backward through both student graphs, official optimiser
with duplicated backbone updates) and :func:`dacs_uda.dacs.step.update_teacher` (EMA). Forward hooks time
the student's and the teacher's forward passes inside the loss. Weights are random (no download); inputs
are random tensors, so only the timing and memory mean anything.

    .venv/bin/python bench/r101_cpu_step.py [--steps 1] [--out bench/results/r101_cpu_step.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import time
from pathlib import Path

import torch

from dacs_uda.config import AdaptConfig, compose_params
from dacs_uda.dacs.ema import make_teacher
from dacs_uda.dacs.step import Batch, dacs_loss, update_teacher
from dacs_uda.models.deeplabv2 import DeepLabV2
from dacs_uda.optim import build_optimizer
from dacs_uda.train.loop import optimizer_step
from dacs_uda.utils.rng import step_random

CROP = 512
BATCH = 2
# The paper's network with the official ASPP quirk and optimiser; jitter and blur always applied (p = 1,
# the costliest step; officially 0.8 and 0.5) so that the timing does not depend on the draws.
OVERRIDES = [
    "model=r101",
    "model.init=scratch",
    "model.aspp_sum=first_two",
    "method=dacs",
    "fidelity=official",
    "adapt.optim.lr=2.5e-4",
    f"adapt.optim.batch_size={BATCH}",
    "adapt.optim.duplicate_backbone_updates=true",
    "adapt.jitter_p=1.0",
    "adapt.blur_p=1.0",
]


class ForwardClock:
    """Wall time spent inside a module's forward calls within a ``with`` block (hooks around each call)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> ForwardClock:
        self._handles = (
            self.module.register_forward_pre_hook(self._enter),
            self.module.register_forward_hook(self._leave),
        )
        return self

    def __exit__(self, *_: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _enter(self, *_: object) -> None:
        self._start = time.perf_counter()

    def _leave(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._start


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def random_batch(gen: torch.Generator) -> Batch:
    """Random crops; every pixel's label is a random class, so the class mask has 19 classes to pick."""
    images = torch.randn(2, BATCH, 3, CROP, CROP, generator=gen) * 50
    labels = torch.randint(0, 19, (BATCH, CROP, CROP), generator=gen)
    return Batch(source_images=images[0], source_labels=labels, target_images=images[1])


def one_step(
    student: DeepLabV2,
    teacher: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: AdaptConfig,
    step: int,
    gen: torch.Generator,
) -> dict[str, float]:
    batch = random_batch(gen)
    rng = step_random(0, "bench", step, range(BATCH))
    with ForwardClock(student) as student_clock, ForwardClock(teacher) as teacher_clock:
        start = time.perf_counter()
        loss, _ = dacs_loss(student, teacher, batch, cfg, rng)
        loss_done = time.perf_counter()
    optimizer_step(optimizer, loss)
    step_done = time.perf_counter()
    update_teacher(teacher, student, cfg, step)
    end = time.perf_counter()
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss.item()}")
    forwards = student_clock.seconds + teacher_clock.seconds
    return {
        "student forwards, source + mixed": student_clock.seconds,
        "teacher forward, target (no grad)": teacher_clock.seconds,
        "pseudo-labels, class mask, mixing, jitter, blur, losses": loss_done - start - forwards,
        "backward (both graphs) + optimizer step (official x1/x3/x4 backbone updates)": step_done - loss_done,
        "EMA update": end - step_done,
        "total": end - start,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--out", default="bench/results/r101_cpu_step.md")
    args = parser.parse_args()

    params = compose_params(OVERRIDES)
    torch.manual_seed(0)
    start = time.perf_counter()
    student = DeepLabV2(params.model).train()
    teacher = make_teacher(student).train()  # official fidelity: the teacher runs in train mode
    optimizer = build_optimizer(student, params.adapt.optim)
    build_s = time.perf_counter() - start
    gen = torch.Generator().manual_seed(0)
    steps = [one_step(student, teacher, optimizer, params.adapt, i, gen) for i in range(args.steps)]
    peak = peak_rss_gib()
    load = os.getloadavg()

    rows = "\n".join(f"| {name} | " + " | ".join(f"{s[name]:.1f}" for s in steps) + " |" for name in steps[0])
    header = " | ".join(f"step {i + 1} (s)" for i in range(len(steps)))
    text = f"""# DeepLab-v2 ResNet-101: one DACS training step on the CPU

Produced by `bench/r101_cpu_step.py` ({args.steps} step(s), no warm-up: the first step includes oneDNN
set-up). Batch: {BATCH} source + {BATCH} target crops of {CROP}x{CROP}; the library's step (`dacs_loss`,
`optimizer_step`, `update_teacher`): student forward on source and on mixed crops, teacher forward
without gradient, class mask, colour jitter and blur (always applied here), one backward through both
graphs, official optimiser (duplicated backbone updates), ASPP d6+d12 (official), fp32. Random weights and
inputs.

| machine | |
|---|---|
| CPU | {cpu_model()} |
| logical CPUs (os.cpu_count) | {os.cpu_count()} |
| torch intra-op threads | {torch.get_num_threads()} |
| torch | {torch.__version__} |
| Python | {platform.python_version()} |
| date | {dt.datetime.now().astimezone().isoformat(timespec="seconds")} |
| load average at the end (1/5/15 min) | {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (shared machine) |

| phase | {header} |
|---|{"---|" * len(steps)}
{rows}

Model build (R101 + teacher copy + optimiser): {build_s:.1f} s. Peak RSS of the process: {peak:.2f} GiB.
Parameters: {sum(p.numel() for p in student.parameters()):,}.
"""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
