"""Time one DACS training step of the paper's network (DeepLab-v2 ResNet-101, 512x512 crops) on the CPU.

The step follows the official order (vikolss/DACS ``trainUDA.py``): student forward on 2 source crops
(supervised CE), teacher forward without gradient on 2 target crops (pseudo-labels), student forward on
the 2 mixed crops (weighted CE), one backward through both student graphs, optimiser step (official
duplicated backbone updates), EMA update. Weights are random (no download); inputs are random tensors,
so only the timing and memory mean anything.

    .venv/bin/python bench/r101_cpu_step.py [--steps 1] [--out bench/results/r101_cpu_step.md]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dacs_uda.config import ModelConfig, OptimConfig
from dacs_uda.dacs.ema import ema_update_
from dacs_uda.models.deeplabv2 import DeepLabV2, upsample_logits
from dacs_uda.optim import build_optimizer

CROP = 512
BATCH = 2


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


def one_step(student, teacher, optimizer, gen: torch.Generator) -> dict[str, float]:
    src = torch.randn(BATCH, 3, CROP, CROP, generator=gen) * 50
    tgt = torch.randn(BATCH, 3, CROP, CROP, generator=gen) * 50
    src_label = torch.randint(0, 19, (BATCH, CROP, CROP), generator=gen)
    times: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        times[name] = now - t
        t = now

    optimizer.zero_grad(set_to_none=True)
    loss_source = F.cross_entropy(upsample_logits(student(src), (CROP, CROP)), src_label, ignore_index=255)
    lap("student forward, source")
    with torch.no_grad():
        probs = upsample_logits(teacher(tgt), (CROP, CROP)).softmax(1)
        confidence, pseudo = probs.max(1)
        weight = (confidence >= 0.968).float().mean()
    lap("teacher forward, target (no grad)")
    mask = (src_label % 2 == 0).unsqueeze(1)  # stands in for the class mask
    mixed = torch.where(mask, src, tgt)
    mixed_label = torch.where(mask.squeeze(1), src_label, pseudo)
    pixel_weight = torch.where(mask.squeeze(1), torch.ones(()), weight)
    ce = F.cross_entropy(
        upsample_logits(student(mixed), (CROP, CROP)), mixed_label, ignore_index=255, reduction="none"
    )
    loss = loss_source + (pixel_weight * ce).mean()
    lap("student forward, mixed")
    loss.backward()
    lap("backward (both graphs)")
    optimizer.step()
    lap("optimizer step (official x1/x3/x4 backbone updates)")
    ema_update_(teacher, student, 0.99)
    lap("EMA update")
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss.item()}")
    times["total"] = sum(times.values())
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--out", default="bench/results/r101_cpu_step.md")
    args = parser.parse_args()

    torch.manual_seed(0)
    start = time.perf_counter()
    cfg = ModelConfig(depths=[3, 4, 23, 3], width=64, aspp_dilations=[6, 12, 18, 24], aspp_sum="first_two")
    student = DeepLabV2(cfg).train()
    teacher = copy.deepcopy(student).train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    optimizer = build_optimizer(student, OptimConfig(lr=2.5e-4, duplicate_backbone_updates=True))
    build_s = time.perf_counter() - start
    gen = torch.Generator().manual_seed(0)
    steps = [one_step(student, teacher, optimizer, gen) for _ in range(args.steps)]
    peak = peak_rss_gib()
    load = os.getloadavg()

    rows = "\n".join(f"| {name} | " + " | ".join(f"{s[name]:.1f}" for s in steps) + " |" for name in steps[0])
    header = " | ".join(f"step {i + 1} (s)" for i in range(len(steps)))
    text = f"""# DeepLab-v2 ResNet-101: one DACS training step on the CPU

Produced by `bench/r101_cpu_step.py` ({args.steps} step(s), no warm-up: the first step includes oneDNN
set-up). Batch: {BATCH} source + {BATCH} target crops of {CROP}x{CROP}; student forward on source and on
mixed crops, one backward through both graphs, teacher forward without gradient, official optimiser
(duplicated backbone updates), ASPP d6+d12 (official), fp32. Random weights and inputs.

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
