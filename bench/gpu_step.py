"""GPU check of the training step: CPU/CUDA parity of every method, and the step time at the paper setting.

1. **Parity.** The ``params.yaml`` model, ``--steps`` training steps (:func:`dacs_uda.dacs.step.dacs_loss`,
   :func:`dacs_uda.train.loop.optimizer_step`, :func:`dacs_uda.dacs.step.update_teacher`) for every
   ``adapt.method`` and both fidelities, from the same weights, batch and step generators, once on the CPU
   and once on CUDA (TF32 off on both sides). All random draws come from the same keyed CPU generators,
   so the masks, jitter and blur are the same; what differs is floating-point order (and, once the
   teacher's confidences straddle the threshold, a pseudo-label). Recorded per run: the largest
   |Δ| of the source loss, the mixed loss and λ over the steps, and max |Δ weight| after them.
2. **Speed.** The same step for DeepLab-v2 ResNet-101 at the paper setting (2 source + 2 target crops of
   512x512, ASPP d6+d12, duplicated backbone updates, official fidelity) and for the ``params.yaml``
   model at its crop and batch: median seconds per step after warm-up, peak GPU memory after warm-up
   (and during it, where cuDNN's autotuning tries algorithms with large workspaces). fp32, with
   TF32 convolutions as torch's defaults leave them (recorded).

    python bench/gpu_step.py [--steps 3] [--out bench/results]

Without a CUDA device it says so and exits with code 2.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dacs_uda.config import AdaptConfig, ModelConfig, compose_params, load_params
from dacs_uda.dacs.ema import make_teacher
from dacs_uda.dacs.pseudo import Alignment
from dacs_uda.dacs.step import Batch, dacs_loss, update_teacher
from dacs_uda.labels import NUM_CLASSES
from dacs_uda.models.deeplabv2 import DeepLabV2
from dacs_uda.optim import build_optimizer
from dacs_uda.train.loop import optimizer_step
from dacs_uda.utils.rng import step_random

METHODS = ("dacs", "classmix", "pseudo_label", "dist_align", "cutmix", "source_only")
# The paper's network with the official ASPP quirk; random weights (no download).
R101_OVERRIDES = ["model=r101", "model.init=scratch", "model.aspp_sum=first_two"]


def make_batch(batch: int, height: int, width: int, device: str, seed: int = 1) -> Batch:
    """Random crops whose labels are blocks of classes (so the class mask has classes to pick), with void."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, NUM_CLASSES, (batch, 1, 4, 8), generator=gen).float()
    labels = torch.nn.functional.interpolate(coarse, size=(height, width), mode="nearest")[:, 0].long()
    labels[:, : height // 8] = 255
    images = torch.randn(2, batch, 3, height, width, generator=gen) * 50
    return Batch(images[0].to(device), labels.to(device), images[1].to(device))


def train_step(
    student: DeepLabV2,
    teacher: DeepLabV2,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    cfg: AdaptConfig,
    step: int,
    alignment: Alignment | None = None,
) -> dict[str, torch.Tensor]:
    """One training step composed as the training loop composes it; its generators are keyed by ``step``."""
    rng = step_random(0, "bench", step, range(batch.source_images.shape[0]))
    loss, stats = dacs_loss(student, teacher, batch, cfg, rng, alignment)
    optimizer_step(optimizer, loss)
    update_teacher(teacher, student, cfg, step)
    return stats


def run_steps(
    model: DeepLabV2, cfg: AdaptConfig, batch: Batch, steps: int, device: str
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    student = copy.deepcopy(model).to(device).train()
    teacher = make_teacher(student).train(cfg.fidelity == "official")
    optimizer = build_optimizer(student, cfg.optim)
    alignment = None
    if cfg.method == "dist_align":
        alignment = Alignment(prior=torch.full((NUM_CLASSES,), 1.0 / NUM_CLASSES, device=device))
    stats = [train_step(student, teacher, optimizer, batch, cfg, i, alignment) for i in range(steps)]
    floats = [{key: float(value) for key, value in step.items()} for step in stats]
    return floats, {k: v.detach().cpu() for k, v in student.state_dict().items()}


def worst_tensor(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The tensor with the largest max |a - b| relative to its max |a| (parameters and BN buffers)."""
    rel = {
        k: float((a[k].double() - b[k].double()).abs().max() / a[k].double().abs().max().clamp(min=1e-12))
        for k in a
        if a[k].is_floating_point()
    }
    name = max(rel, key=rel.get)
    return {"max_rel_diff_weight": rel[name], "worst_tensor": name}


def parity(params: Any, steps: int) -> list[dict[str, Any]]:
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = DeepLabV2(params.model)
    h, w = params.data.crop
    batch_cpu = make_batch(params.adapt.optim.batch_size, h, w, "cpu")
    batch_gpu = Batch(*(t.cuda() for t in vars(batch_cpu).values()))
    rows = []
    for method in METHODS:
        for fidelity in ("official", "clean"):
            cfg = replace(params.adapt, method=method, fidelity=fidelity)
            cpu, cpu_w = run_steps(model, cfg, batch_cpu, steps, "cpu")
            gpu, gpu_w = run_steps(model, cfg, batch_gpu, steps, "cuda")
            row = {
                "method": method,
                "fidelity": fidelity,
                "steps": steps,
                **{
                    f"max_abs_diff_{key}": max(abs(a[key] - b[key]) for a, b in zip(cpu, gpu, strict=True))
                    for key in ("loss_source", "loss_mix", "confident")
                },
                **worst_tensor(cpu_w, gpu_w),
                "lambda_cpu": [round(s["confident"], 6) for s in cpu],
                "lambda_gpu": [round(s["confident"], 6) for s in gpu],
            }  # fmt: skip
            rows.append(row)
            print(
                f"parity {method:12s} {fidelity:8s} Δloss_src {row['max_abs_diff_loss_source']:.2e} "
                f"Δloss_mix {row['max_abs_diff_loss_mix']:.2e} Δλ {row['max_abs_diff_confident']:.2e} "
                f"Δw/|w| {row['max_rel_diff_weight']:.2e} ({row['worst_tensor']})",
                flush=True,
            )
    torch.backends.cudnn.allow_tf32 = True  # torch's default for convolutions
    return rows


def step_time(
    name: str,
    model_cfg: ModelConfig,
    cfg: AdaptConfig,
    batch: int,
    crop: tuple[int, int],
    warmup: int,
    reps: int,
) -> dict[str, Any]:
    torch.manual_seed(0)
    student = DeepLabV2(model_cfg).cuda().train()
    teacher = make_teacher(student).train(cfg.fidelity == "official")
    optimizer = build_optimizer(student, cfg.optim)
    data = make_batch(batch, *crop, "cuda")
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + reps):
        if i == warmup:  # the warm-up peak includes cuDNN's autotuning workspaces
            warmup_peak = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        start = time.perf_counter()
        train_step(student, teacher, optimizer, data, cfg, i)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    row = {
        "model": name, "batch": f"{batch} source + {batch} target", "crop": f"{crop[0]}x{crop[1]}",
        "median_step_s": statistics.median(times[warmup:]), "first_step_s": times[0],
        "steps_per_s": 1 / statistics.median(times[warmup:]), "reps": reps,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "warmup_peak_gpu_memory_gib": warmup_peak / 2**30,
    }  # fmt: skip
    print(f"speed {name}: {1000 * row['median_step_s']:.1f} ms/step, {row['peak_gpu_memory_gib']:.2f} GiB")
    del student, teacher, optimizer, data
    torch.cuda.empty_cache()
    return row


def machine_info() -> dict[str, Any]:
    return {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def markdown(info: dict[str, Any], parity_rows: list[dict], speed_rows: list[dict]) -> str:
    lines = [
        "# GPU: the training step on CUDA (parity with the CPU, speed)",
        "",
        "Produced by `bench/gpu_step.py`; random weights and inputs (see its docstring).",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in info.items()],
        "",
        "## CPU vs CUDA, same weights, batch and generator (TF32 off)",
        "",
        "| method | fidelity | steps | max Δ source loss | max Δ mixed loss | max Δ λ "
        "| max Δw / max abs w | tensor |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['method']} | {r['fidelity']} | {r['steps']} | {r['max_abs_diff_loss_source']:.2e} | "
            f"{r['max_abs_diff_loss_mix']:.2e} | {r['max_abs_diff_confident']:.2e} | "
            f"{r['max_rel_diff_weight']:.2e} | `{r['worst_tensor']}` |"
            for r in parity_rows
        ],
        "",
        "## Step time (fp32, TF32 convolutions), median after warm-up",
        "",
        "| model | batch | crop | ms / step | steps / s | first step (s) | peak GPU memory (GiB) "
        "| peak in warm-up (GiB) |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['model']} | {r['batch']} | {r['crop']} | {1000 * r['median_step_s']:.1f} | "
            f"{r['steps_per_s']:.2f} | {r['first_step_s']:.2f} | {r['peak_gpu_memory_gib']:.2f} | "
            f"{r['warmup_peak_gpu_memory_gib']:.2f} |"
            for r in speed_rows
        ],
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu_step needs a CUDA device visible to torch (torch {torch.__version__})", file=sys.stderr)
        return 2
    params = load_params()
    r101 = compose_params(R101_OVERRIDES).model
    parity_rows = parity(params, args.steps)
    torch.backends.cudnn.benchmark = True
    paper = replace(
        params.adapt,
        method="dacs",
        fidelity="official",
        optim=replace(params.adapt.optim, lr=2.5e-4, batch_size=2, duplicate_backbone_updates=True),
    )
    speed_rows = [
        step_time("ResNet-101 (paper setting)", r101, paper, 2, (512, 512), args.warmup, args.reps),
        step_time(
            "params.yaml model (embedded default)",
            params.model,
            params.adapt,
            params.adapt.optim.batch_size,
            tuple(params.data.crop),
            args.warmup,
            args.reps,
        ),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "gpu_step"
    info = machine_info()
    stem.with_suffix(".json").write_text(
        json.dumps({"machine": info, "parity": parity_rows, "speed": speed_rows}, indent=2) + "\n"
    )
    stem.with_suffix(".md").write_text(markdown(info, parity_rows, speed_rows))
    print(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
