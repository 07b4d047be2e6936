"""ONNX Runtime against PyTorch eager on the CPU: latency and throughput of the same model at 1024x512.

Two models of the DeepLab-v2 family: the one ``params.yaml`` trains (``model`` section; the composed
defaults of ``conf/`` where there is no ``params.yaml``) and the paper's ResNet-101 (``model=r101``:
``depths=[3, 4, 23, 3], width=64``, ASPP dilations 6/12/18/24). Each is exported with the project's
exporter (:func:`dacs_uda.export.export_onnx`, same opset/exporter as ``params.yaml``) and timed as
deployed: logits at the input resolution (``FullResolution``), fp32, batch 1 and 4, the same number of
threads for both runtimes. Weights are random (timing does not depend on them; ``model.init`` is set to
``scratch``); the outputs are compared so that a fast but wrong runtime cannot pass.

    .venv/bin/python bench/onnx_vs_torch.py [--models params r101] [--threads N] [--out bench/results]

Repetitions: one warm-up run per runtime and batch size, then ``--reps`` timed runs (default 5 for
the small model); the ResNet-101 takes seconds to tens of seconds per image on two cores, so it gets
``--r101-reps`` (default 1) to keep the whole run near five minutes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from dacs_uda.config import ExportConfig, ModelConfig, Params, compose_params, load_params
from dacs_uda.export import export_onnx, onnx_metadata
from dacs_uda.models.deeplabv2 import FullResolution, build_model

WIDTH, HEIGHT = 1024, 512
BATCHES = (1, 4)


def project_params() -> Params:
    """``params.yaml`` when run where there is one (the repository root), else the defaults of ``conf/``."""
    return load_params() if Path("params.yaml").is_file() else compose_params()


def random_init(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with random weights: timing does not depend on them, and nothing is downloaded."""
    return replace(cfg, init="scratch", weights=None)


def machine_info(threads: int) -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = [
                    f
                    for f in line.split(":", 1)[1].split()
                    if f in ("avx2", "avx512f", "avx512_vnni", "amx_tile")
                ]
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def load_average() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def timed(run, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def bench_model(
    name: str, cfg: ModelConfig, export: ExportConfig, threads: int, reps: int, warm_b4: bool
) -> list[dict[str, Any]]:
    """Export ``cfg`` (opset and exporter from ``export``) and time PyTorch eager and ONNX Runtime at
    batch 1 and 4."""
    torch.manual_seed(0)
    model = FullResolution(build_model(cfg)).eval()
    params = sum(p.numel() for p in model.parameters())
    opset, dynamo = export.opset, export.dynamo
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.onnx"
        start = time.perf_counter()
        export_onnx(model, path, opset, dynamo, onnx_metadata(cfg.num_classes, opset, dynamo, {}), (256, 512))
        export_s = time.perf_counter() - start
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    rows = []
    rng = np.random.default_rng(0)
    for batch in BATCHES:
        x = (rng.standard_normal((batch, 3, HEIGHT, WIDTH)) * 50).astype(np.float32)
        xt = torch.from_numpy(x)
        results: dict[str, Any] = {}

        def run_torch(xt: torch.Tensor = xt, results: dict = results) -> None:
            with torch.inference_mode():
                results["torch"] = model(xt).numpy()

        def run_ort(x: np.ndarray = x, results: dict = results) -> None:
            results["ort"] = session.run(["logits"], {"image": x})[0]

        warm = batch == 1 or warm_b4
        for runtime, fn in (("pytorch eager", run_torch), ("onnxruntime", run_ort)):
            if warm:
                fn()
            times = timed(fn, reps)
            median = statistics.median(times)
            rows.append({
                "model": name, "params": params, "runtime": runtime, "batch": batch, "reps": reps,
                "warm_up": warm, "median_s": median, "min_s": min(times),
                "images_per_s": batch / median, "export_s": export_s,
            })  # fmt: skip
            print(
                f"{name:5s} {runtime:14s} batch {batch}: {median:8.3f} s ({batch / median:.2f} img/s)",
                flush=True,
            )
        diff = np.abs(results["torch"] - results["ort"])
        agreement = float((results["torch"].argmax(1) == results["ort"].argmax(1)).mean())
        scale = float(np.abs(results["torch"]).max())  # random deep nets have huge logits: relative error
        for row in rows[-2:]:
            row.update(max_abs_diff=float(diff.max()), max_abs_logit=scale, argmax_agreement=agreement)
    return rows


def markdown(info: dict[str, Any], rows: list[dict[str, Any]], load_before: str, load_after: str) -> str:
    lines = [
        "# ONNX Runtime vs PyTorch eager on the CPU (DeepLab-v2, 1024x512, fp32)",
        "",
        "Produced by `bench/onnx_vs_torch.py`. Logits at the input resolution (the exported graph),",
        f"random weights, {info['threads']} threads for both runtimes. Median of the timed runs.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {info['cpu']} ({', '.join(info['cpu_flags'])}) |",
        f"| logical CPUs | {info['logical_cpus']} |",
        f"| threads | {info['threads']} |",
        f"| torch / onnxruntime / onnx | {info['torch']} / {info['onnxruntime']} / {info['onnx']} |",
        f"| Python | {info['python']} |",
        f"| date | {info['date']} |",
        f"| load average before / after (1/5/15 min) | {load_before} ; {load_after} (shared machine) |",
        "",
        "| model | parameters | runtime | batch | timed runs | latency (s) | images/s | speed-up "
        "| max abs diff / max abs logit | argmax agreement |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i in range(0, len(rows), 2):
        eager, onnx_rt = rows[i], rows[i + 1]
        for row in (eager, onnx_rt):
            speedup = eager["median_s"] / row["median_s"]
            note = "" if row["warm_up"] else " (no warm-up)"
            lines.append(
                f"| {row['model']} | {row['params'] / 1e6:.1f} M | {row['runtime']} | {row['batch']} | "
                f"{row['reps']}{note} | {row['median_s']:.3f} | {row['images_per_s']:.2f} | {speedup:.2f}x | "
                f"{row['max_abs_diff']:.2g} / {row['max_abs_logit']:.2g} | {row['argmax_agreement']:.5f} |"
            )
    lines += ["", "Export time (TorchScript exporter): " + ", ".join(
        f"{r['model']} {r['export_s']:.1f} s" for r in rows[::4]
    ) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=("params", "r101"), default=["params", "r101"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--reps", type=int, default=5, help="timed runs, small model")
    parser.add_argument("--r101-reps", type=int, default=1, help="timed runs, ResNet-101")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info, load_before = machine_info(args.threads), load_average()
    params = project_params()
    rows = []
    for name in args.models:
        if name == "params":
            cfg, reps = params.model, args.reps
        else:
            cfg, reps = compose_params(["model=r101"]).model, args.r101_reps
        rows += bench_model(name, random_init(cfg), params.export, args.threads, reps, warm_b4=True)
    load_after = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "onnx_vs_torch_cpu"
    stem.with_suffix(".json").write_text(
        json.dumps(
            {"machine": info, "load_before": load_before, "load_after": load_after, "rows": rows}, indent=2
        )
        + "\n"
    )
    stem.with_suffix(".md").write_text(markdown(info, rows, load_before, load_after))
    print(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
