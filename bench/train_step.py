"""One DACS training step at the paper setting, per precision/compile configuration: speed, memory, MFU.

The step is the training loop's own (:func:`dacs_uda.train.loop.fit`'s body): the task built by
:func:`dacs_uda.train.tasks.adaptation_task` (student and EMA teacher through ``prepare_module``), the
poly learning rate, ``autocast`` around the loss (student forward on the source and the mixed crops,
teacher forward, pseudo-labels, class mask, jitter, blur), ``optimizer_step`` (one backward, the
official optimiser with duplicated backbone updates) and the EMA update. Only the batches differ:
random but valid crops (uint8 pixels normalised as the loader does, labels in blocks of the 19
classes with a void band) instead of the dataset, so no data is needed.

Configurations (``--variants``): ``fp32`` (TF32 off), ``tf32`` (TF32 convolutions and matmuls),
``bf16`` (autocast), ``bf16-cl`` (+ channels-last), ``bf16-compile`` (+ ``torch.compile``) and
``bf16-cl-compile`` (all three). Each runs ``--warmup`` untimed steps (cuDNN autotuning, compilation),
then ``--repeats`` timed passes of ``--steps`` steps, each between two synchronisations; the fastest
pass counts (on a shared machine, the one other jobs disturbed least). FLOPs per step are counted once, with
``torch.utils.flop_counter.FlopCounterMode`` around the first warm-up step of the first eager
configuration (they do not depend on precision or memory format). MFU is against the card's dense peak
for the configuration's math (:data:`PEAK_TFLOPS`). The issue-12 targets (one H200: <= 25 ms/step,
peak <= 12 GiB, >= 4.5x the fp32 step rate) are printed as PASS/FAIL lines, not asserted.

    python bench/train_step.py --device cuda --out bench/results      # R101, 2 + 2 crops of 512x512
    python bench/train_step.py --device cpu --out bench/results       # the embedded default's model
    python bench/train_step.py --device cpu --model r101 --variants fp32 --warmup 1 --steps 1 \
        --repeats 1 --name train_step_cpu_r101 --out bench/results    # R101 on the CPU: 2 steps

``--model r101|small`` picks the network (``small``: the embedded default's model at its crop and
batch), ``-o KEY=VALUE`` adds Hydra overrides (a smaller model in the tests). Writes
``<out>/train_step_<device>.json`` and ``.md`` (``--name`` changes the stem).
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from loader_throughput import machine
from torch.utils.flop_counter import FlopCounterMode

from dacs_uda.config import MODEL_CODE, Params, compose_params
from dacs_uda.labels import IGNORE_INDEX, NUM_CLASSES
from dacs_uda.optim import set_lr
from dacs_uda.train.loop import Tensors, TrainTask, autocast, optimizer_step, to_device
from dacs_uda.train.tasks import adaptation_task
from dacs_uda.utils.image import IMG_MEAN_BGR
from dacs_uda.utils.io import write_json, write_text
from dacs_uda.utils.rng import keyed_generator
from dacs_uda.utils.seed import seed_everything

log = logging.getLogger("train_step")

SCHEDULE_STEPS = 250_000  # the paper's iterations
TARGET_MS = 25.0  # issue 12, one H200 at the paper setting
TARGET_PEAK_GIB = 12.0
TARGET_SPEEDUP = 4.5
TARGET_CARD = "H200"
# Dense (no sparsity) tensor-core peaks in TFLOPS of the SXM cards, by the math a configuration runs.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
}
# The paper's preset (conf/experiment/dacs_gta5.yaml) from random weights instead of the COCO file, so
# nothing is downloaded; ``small`` is conf/'s default (the embedded benchmark's model, crop and batch).
MODELS = {
    "r101": ["experiment=dacs_gta5", "model.init=scratch", "model.weights=null"],
    "small": [],
}
# A fresh model for adaptation (no pretrain checkpoint needed); cuDNN autotuning on, as for a GPU run.
COMMON = ["method=dacs", "fidelity=official", "adapt.init=model", f"runs.adapt.start={MODEL_CODE}",
          "deterministic=false"]  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """One configuration of the step: the loop's precision settings and the TF32 switch."""

    name: str
    precision: str
    tf32: bool
    channels_last: bool
    compile: bool

    @property
    def math(self) -> str:
        """The tensor-core math of the convolutions and matmuls (the key of :data:`PEAK_TFLOPS`)."""
        if self.precision != "fp32":
            return self.precision
        return "tf32" if self.tf32 else "fp32"

    def overrides(self) -> list[str]:
        return [
            f"train.precision={self.precision}",
            f"train.channels_last={str(self.channels_last).lower()}",
            f"train.compile={str(self.compile).lower()}",
        ]


VARIANTS = {
    v.name: v
    for v in (
        Variant("fp32", "fp32", tf32=False, channels_last=False, compile=False),
        Variant("tf32", "fp32", tf32=True, channels_last=False, compile=False),
        Variant("bf16", "bf16", tf32=True, channels_last=False, compile=False),
        Variant("bf16-cl", "bf16", tf32=True, channels_last=True, compile=False),
        Variant("bf16-compile", "bf16", tf32=True, channels_last=False, compile=True),
        Variant("bf16-cl-compile", "bf16", tf32=True, channels_last=True, compile=True),
    )
}
CPU_NOTE = [
    "## Still to be measured on a GPU",
    "",
    "The paper-setting numbers (R101, 2 + 2 crops of 512x512, every configuration, against the issue-12 "
    "targets) need one call on a CUDA machine: "
    "`python bench/train_step.py --device cuda --out bench/results` "
    "(about 10 warm-up and 30 timed steps per configuration; the two compiled ones compile first, so allow a "
    "few minutes). It writes `train_step_cuda.json` and `.md` beside this file. On the CPU, TF32 does not "
    "apply and the bf16 rows measure oneDNN's bf16 kernels, not tensor cores: these rows check the code "
    "paths and give the CPU's own step rate, nothing about the GPU.",
]
# TF32 is a CUDA switch: on the CPU the tf32 row would repeat fp32. Compilation there takes minutes.
DEFAULT_VARIANTS = {"cuda": list(VARIANTS), "cpu": ["fp32", "bf16", "bf16-cl"]}


def random_batch(params: Params, device: torch.device) -> Tensors:
    """Source and target crops of ``params``' crop and adaptation batch, as the loader hands them over.

    Pixels are uniform uint8 values normalised like the loader's (BGR minus the mean); labels are blocks
    of random classes (so the class mask has several classes to pick) under a void band at the top.
    """
    batch = params.adapt.optim.batch_size
    height, width = params.data.crop
    gen = keyed_generator(params.seed, "bench/train_step/batch")
    pixels = torch.randint(0, 256, (2, batch, 3, height, width), generator=gen).float()
    images = pixels - torch.tensor(IMG_MEAN_BGR).view(3, 1, 1)
    blocks = torch.randint(0, NUM_CLASSES, (batch, 1, 4, 8), generator=gen).float()
    labels = torch.nn.functional.interpolate(blocks, size=(height, width), mode="nearest")[:, 0].long()
    labels[:, : height // 8] = IGNORE_INDEX
    out = {"source_image": images[0], "source_label": labels, "target_image": images[1]}
    if device.type == "cuda":  # the loader pins its batches, so the copy is asynchronous
        out = {key: value.pin_memory() for key, value in out.items()}
    return out


def train_step(
    task: TrainTask, params: Params, step: int, batch: Tensors, device: torch.device, scaler: Any
) -> torch.Tensor:
    """One step exactly as :func:`dacs_uda.train.loop.fit` runs it; returns the loss (not synchronised)."""
    set_lr(task.optimizer, task.optim, step)
    with autocast(device, params.train.precision):
        loss, _ = task.loss(step, to_device(batch, device, params.train.channels_last))
    optimizer_step(task.optimizer, loss, scaler)
    assert task.after_step is not None  # adaptation's EMA update
    task.after_step(step)
    return loss.detach()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_peak_gib(device: torch.device, reset: bool) -> float | None:
    """The CUDA allocator's peak since the last reset (None on the CPU); reset it afterwards if asked."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return round(peak, 3)


def process_peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB on Linux


def peak_tflops(device_name: str, math: str) -> float | None:
    """The card's dense peak for ``math``, or None for a card not in :data:`PEAK_TFLOPS` (and the CPU)."""
    card = next((key for key in PEAK_TFLOPS if key in device_name), None)
    return None if card is None else PEAK_TFLOPS[card][math]


def warm_up(
    run: Callable[[int], torch.Tensor], steps: int, device: torch.device, count_flops: bool
) -> tuple[list[float], int | None]:
    """Seconds of each warm-up step; the FLOPs of the first one when ``count_flops``."""
    times, flops = [], None
    for step in range(steps):
        start = time.perf_counter()
        if count_flops and step == 0:
            with FlopCounterMode(display=False) as counter:
                run(step)
            flops = counter.get_total_flops()
        else:
            run(step)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times, flops


def timed(
    run: Callable[[int], torch.Tensor], first: int, steps: int, device: torch.device
) -> tuple[float, list[float]]:
    """Mean seconds per step over ``steps`` steps from ``first`` on, and their losses."""
    synchronize(device)
    start = time.perf_counter()
    losses = [run(step) for step in range(first, first + steps)]
    synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    values = [float(loss) for loss in losses]  # read after the clock: no host sync inside the timed steps
    return seconds, values


@dataclass(frozen=True)
class Schedule:
    """Steps of one configuration: ``warmup`` untimed, then ``repeats`` timed passes of ``steps`` each."""

    warmup: int
    steps: int
    repeats: int


def measure(
    model: str, variant: Variant, extra: list[str], device: torch.device, plan: Schedule, count_flops: bool
) -> dict[str, Any]:
    """Build the task for ``variant`` and run ``plan``; FLOPs of the first step if asked.

    The step time is the fastest pass's mean: on a shared machine, the pass other jobs disturbed least.
    """
    params = compose_params([*MODELS[model], *COMMON, *variant.overrides(), *extra])
    seed_everything(params.seed, params.deterministic)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = variant.tf32
    task = adaptation_task(params, device)
    scaler = torch.amp.GradScaler(device.type, enabled=params.train.precision == "fp16")
    batch = random_batch(params, device)
    gpu_peak_gib(device, reset=True)

    def run(step: int) -> torch.Tensor:
        return train_step(task, params, step, batch, device, scaler)

    warmup_times, flops = warm_up(run, plan.warmup, device, count_flops)
    warmup_peak = gpu_peak_gib(device, reset=True)
    passes = [timed(run, plan.warmup + i * plan.steps, plan.steps, device) for i in range(plan.repeats)]
    seconds = min(mean for mean, _ in passes)
    losses = [loss for _, values in passes for loss in values]
    if not all(math.isfinite(loss) for loss in losses):
        raise RuntimeError(f"{variant.name}: non-finite loss in the timed steps: {losses}")
    row = {
        **asdict(variant),
        "math": variant.math,
        "model": model,
        "crop": list(params.data.crop),
        "batch": f"{params.adapt.optim.batch_size} source + {params.adapt.optim.batch_size} target",
        "parameters": sum(p.numel() for p in task.model.parameters()),
        **asdict(plan),
        "ms_per_step_passes": [round(1000 * mean, 2) for mean, _ in passes],
        "ms_per_step": round(1000 * seconds, 2),
        "steps_per_s": round(1 / seconds, 3),
        "first_step_s": round(warmup_times[0], 2),
        "warmup_median_s": round(statistics.median(warmup_times), 3),
        "peak_memory_gib": gpu_peak_gib(device, reset=False),
        "warmup_peak_memory_gib": warmup_peak,
        "process_peak_rss_gib": process_peak_rss_gib(),
        "losses": [round(loss, 5) for loss in losses],
        "flops_per_step_counted": flops,
    }
    return row


def release(device: torch.device, compiled: bool) -> None:
    """Free the last configuration's models, graphs and cached GPU memory before the next one."""
    gc.collect()
    if compiled:
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def derive(rows: list[dict[str, Any]], flops: int, device_name: str) -> None:
    """Add achieved TFLOPS, MFU, projected hours and speed-up against fp32 to every row (in place)."""
    fp32 = next((r["ms_per_step"] for r in rows if r["name"] == "fp32"), None)
    for r in rows:
        seconds = r["ms_per_step"] / 1000
        r["flops_per_step"] = flops
        r["achieved_tflops"] = round(flops / seconds / 1e12, 3)
        peak = peak_tflops(device_name, r["math"])
        r["peak_tflops"] = peak
        r["mfu"] = None if peak is None else round(r["achieved_tflops"] / peak, 4)
        r["hours_250k_steps"] = round(seconds * SCHEDULE_STEPS / 3600, 2)
        r["speedup_vs_fp32"] = None if fp32 is None else round(fp32 / r["ms_per_step"], 2)


def target_lines(rows: list[dict[str, Any]], device_name: str) -> list[str]:
    """PASS/FAIL of the issue-12 targets for the fastest configuration (judged on an H200 only)."""
    best = min(rows, key=lambda r: r["ms_per_step"])
    judged = TARGET_CARD in device_name and best["model"] == "r101"
    verdict = (lambda ok: "PASS" if ok else "FAIL") if judged else (lambda ok: "n/a")
    why = (
        ""
        if judged
        else f" (targets are for R101 on one {TARGET_CARD}; this is {device_name}, {best['model']})"
    )
    lines = [
        f"{verdict(best['ms_per_step'] <= TARGET_MS)}: fastest configuration {best['name']} at "
        f"{best['ms_per_step']} ms/step (target <= {TARGET_MS} ms, {best['hours_250k_steps']} h for "
        f"{SCHEDULE_STEPS:,} steps){why}",
    ]
    if best["peak_memory_gib"] is not None:
        lines.append(
            f"{verdict(best['peak_memory_gib'] <= TARGET_PEAK_GIB)}: its peak memory "
            f"{best['peak_memory_gib']} GiB after warm-up (target <= {TARGET_PEAK_GIB} GiB){why}"
        )
    # The fp32 baseline (113 ms on an H200) ran with torch's default TF32 convolutions: the tf32 row.
    base = next((r for name in ("tf32", "fp32") for r in rows if r["name"] == name), None)
    if base is not None:
        speedup = round(base["ms_per_step"] / best["ms_per_step"], 2)
        lines.append(
            f"{verdict(speedup >= TARGET_SPEEDUP)}: its speed-up {speedup}x over {base['name']} eager "
            f"(target >= {TARGET_SPEEDUP}x the fp32 step rate; torch's default fp32 runs convolutions in "
            f"TF32){why}"
        )
    return lines


def device_info(device: torch.device) -> dict[str, Any]:
    """The shared machine record plus the accelerator (or ``cpu``)."""
    info = machine()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "device_name": torch.cuda.get_device_name(device),
            "device_memory_gib": round(props.total_memory / 2**30, 1),
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    else:
        info["device_name"] = "cpu"
    return info


def _cell(value: Any, missing: str, fmt: str = "{}") -> str:
    return missing if value is None else fmt.format(value)


def markdown(report: dict[str, Any]) -> str:
    m, rows = report["machine"], report["results"]
    first = rows[0]
    on_cpu = m["device_name"] == "cpu"
    missing = "n/a" if on_cpu else "unknown"
    crop = "x".join(map(str, first["crop"]))
    lines = [
        f"# DACS training step: {first['model']}, {first['batch']} crops of {crop}",
        "",
        f"Produced by `{report['command']}` on {report['date']} (git {m['git_revision']}). Device: "
        f"{m['device_name']}; CPU {m['cpu']} ({m['cores_visible']} cores visible, {m['memory_gib']} GiB; "
        "load "
        f"average {m['load_average_1min_at_start']} at the start and {report['load_average_1min_at_end']} at "
        f"the end: the machine is shared, expect noise); torch {m['torch']}. The loop's own step "
        "(`adaptation_task`, `autocast`, `optimizer_step`, EMA update), official fidelity, random weights "
        "and random but valid crops; see the script's docstring.",
        "",
        f"FLOPs per step (FlopCounterMode, counted once): {first['flops_per_step']:,} "
        f"({first['flops_per_step'] / 1e12:.4f} TFLOP; {first['parameters']:,} parameters).",
        "",
        "| configuration | math | ms / step, each pass | ms / step | steps / s | GPU peak (GiB) "
        "| GPU peak in warm-up (GiB) "
        "| process peak RSS (GiB) | first step (s) | TFLOPS | MFU | h / 250k steps | speed-up vs fp32 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {r['name']} | {r['math']} | {', '.join(map(str, r['ms_per_step_passes']))} | "
            f"{r['ms_per_step']} | {r['steps_per_s']} | "
            f"{_cell(r['peak_memory_gib'], 'n/a')} | {_cell(r['warmup_peak_memory_gib'], 'n/a')} | "
            f"{r['process_peak_rss_gib']} | {r['first_step_s']} | {r['achieved_tflops']} | "
            f"{_cell(r['mfu'], missing, '{:.1%}')} | {r['hours_250k_steps']} | "
            f"{_cell(r['speedup_vs_fp32'], 'n/a', '{}x')} |"
            for r in rows
        ],
        "",
        f"{first['warmup']} warm-up steps, then {first['repeats']} timed pass(es) of {first['steps']} steps "
        "per configuration; a pass's ms/step is the mean of its steps between two synchronisations, and "
        "*ms / step* is the fastest pass (the least disturbed on a shared machine). GPU peak is "
        "`torch.cuda.max_memory_allocated` over the timed steps (the warm-up peak includes cuDNN's "
        "autotuning workspaces); the process peak RSS is the high-water mark of the whole run so far. MFU "
        "is against the card's dense peak for the configuration's math "
        f"({missing} {'on the CPU' if on_cpu else 'for a card not in PEAK_TFLOPS'}). The losses in the JSON "
        "come from random weights on random crops: they only show that every step computed finite numbers.",
        "",
        "## Targets (issue 12)",
        "",
        *[f"* {line}" for line in report["targets"]],
    ]
    if on_cpu:
        lines += ["", *CPU_NOTE]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--model", choices=tuple(MODELS), help="default: r101 on cuda, small on cpu")
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), help="default: all on cuda")
    parser.add_argument("--warmup", type=int, help="untimed steps (default 10 on cuda, 2 on cpu); >= 1")
    parser.add_argument("--steps", type=int, help="timed steps per pass (default 30 on cuda, 5 on cpu)")
    parser.add_argument(
        "--repeats", type=int, help="timed passes, the fastest kept (default 1 on cuda, 3 on cpu)"
    )
    parser.add_argument("-o", "--override", action="append", default=[], help="extra Hydra override")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--name", help="file stem (default train_step_<device>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    on_cuda = args.device == "cuda"
    if on_cuda and not torch.cuda.is_available():
        print(f"train_step --device cuda needs a CUDA device visible to torch (torch {torch.__version__})",
              file=sys.stderr)  # fmt: skip
        return 2
    model = args.model or ("r101" if on_cuda else "small")
    variants = [VARIANTS[name] for name in (args.variants or DEFAULT_VARIANTS[args.device])]
    plan = Schedule(
        warmup=args.warmup if args.warmup is not None else (10 if on_cuda else 2),
        steps=args.steps if args.steps is not None else (30 if on_cuda else 5),
        repeats=args.repeats if args.repeats is not None else (1 if on_cuda else 3),
    )
    if min(plan.warmup, plan.steps, plan.repeats) < 1:
        parser.error(
            "--warmup, --steps and --repeats must be >= 1 (FLOPs are counted in the first warm-up step)"
        )
    if all(v.compile for v in variants):
        parser.error("--variants needs one configuration without compile: FLOPs are counted in eager mode")
    device = torch.device(args.device)
    info = device_info(device)
    rows: list[dict[str, Any]] = []
    flops = None
    for variant in variants:
        count = flops is None and not variant.compile
        row = measure(model, variant, args.override, device, plan, count)
        release(device, variant.compile)
        flops = row.pop("flops_per_step_counted") or flops
        rows.append(row)
        log.info("%s: %.2f ms/step, peak %s GiB", variant.name, row["ms_per_step"], row["peak_memory_gib"])
    assert flops is not None
    derive(rows, flops, info["device_name"])
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "command": " ".join(["python bench/train_step.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": info,
        "results": rows,
        "targets": target_lines(rows, info["device_name"]),
    }
    for line in report["targets"]:
        print(line)
    stem = args.out / (args.name or f"train_step_{args.device}")
    write_json(stem.with_suffix(".json"), report)
    write_text(stem.with_suffix(".md"), markdown(report))
    log.info("wrote %s.json and %s.md", stem, stem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
