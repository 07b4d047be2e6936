"""GPU deployment benchmark: ONNX Runtime CUDA (fp32, fp16) against PyTorch (fp32, bf16), 1024x512.

Needs an NVIDIA GPU, a CUDA build of torch and ``onnxruntime-gpu`` (the project's ``gpu`` extra, never
installed beside ``onnxruntime``). Without them it says what is missing and exits with code 2.

    python bench/gpu_onnx_vs_torch.py [--models r101 params] [--batches 1 4 8] [--out bench/results]

For each model (the paper's DeepLab-v2 ResNet-101, ``model=r101``, and the default one of ``conf/``,
``model=small``; random weights, BN statistics calibrated on random inputs so that activations stay in
fp16's range): export with the project's exporter (opset and exporter as composed), convert to fp16
with :func:`dacs_uda.export.convert_fp16`, then time at 1024x512, after warm-up, with the GPU
synchronised around each run:

* PyTorch eager fp32 (cuDNN autotuning on; TF32 as torch's defaults leave it, recorded);
* PyTorch eager bf16 (``torch.autocast``);
* ONNX Runtime CUDA fp32 and fp16, with I/O binding to CUDA tensors (no host copies timed).

Recorded: median latency, images/s, and each runtime's argmax agreement with PyTorch fp32. Whole run:
about 2-4 minutes on an H100 (the ResNet-101 export is most of it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from dacs_uda.config import ExportConfig, ModelConfig, compose_params
from dacs_uda.export import convert_fp16, export_onnx, onnx_metadata
from dacs_uda.models.deeplabv2 import FullResolution, build_model

WIDTH, HEIGHT = 1024, 512
MODELS = {"r101": "model=r101", "params": "model=small"}  # name -> the conf/ model group option


def random_init(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with random weights: timing does not depend on them, and nothing is downloaded."""
    return replace(cfg, init="scratch", weights=None)


def missing_requirements() -> list[str]:
    missing = []
    if not torch.cuda.is_available():
        missing.append(
            f"a CUDA device visible to torch (torch {torch.__version__}, cuda {torch.version.cuda})"
        )
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        missing.append(
            f"onnxruntime-gpu (this onnxruntime {ort.__version__} offers {ort.get_available_providers()}): "
            "pip install -e '.[gpu]' in an environment without the CPU onnxruntime"
        )
    return missing


def cuda_timed(run, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def ort_runner(path: Path, x: torch.Tensor, out: torch.Tensor):
    """An ONNX Runtime CUDA session bound to ``x`` and ``out`` (device tensors): returns run()."""
    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"{path.name}: ONNX Runtime fell back to {session.get_providers()}")
    binding = session.io_binding()
    binding.bind_input("image", "cuda", 0, np.float32, list(x.shape), x.data_ptr())
    binding.bind_output("logits", "cuda", 0, np.float32, list(out.shape), out.data_ptr())

    def run() -> torch.Tensor:
        session.run_with_iobinding(binding)
        return out

    return run


def calibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Set the BN running statistics from one pass over ``images``, as training would have.

    With random weights and the default statistics (mean 0, variance 1) the activations of ResNet-101
    reach about 1e7, far past fp16's range (65504): an fp16 engine would then only measure overflow (the
    first H200 run, recorded in bench/results/onnx_vs_torch_gpu.md, did). Calibrated, they stay below ~30.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration pass
    model.train()
    with torch.no_grad():
        model(images)
    model.eval()


def bench_model(
    name: str, cfg: ModelConfig, export: ExportConfig, batches: list[int], warmup: int, reps: int
) -> list[dict]:
    opset, dynamo = export.opset, export.dynamo
    torch.manual_seed(0)
    cpu_model = FullResolution(build_model(cfg))
    calibrate_batchnorm(cpu_model, torch.randn(2, 3, HEIGHT // 2, WIDTH // 2) * 50)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        fp32, fp16 = Path(folder) / f"{name}.onnx", Path(folder) / f"{name}_fp16.onnx"
        start = time.perf_counter()
        metadata = onnx_metadata(cfg.num_classes, opset, dynamo, {})
        export_onnx(cpu_model, fp32, opset, dynamo, metadata, (256, 512))
        convert_fp16(fp32, fp16)
        print(f"{name}: exported fp32 + fp16 in {time.perf_counter() - start:.1f} s", flush=True)
        model = cpu_model.cuda()
        for batch in batches:
            x = torch.randn(batch, 3, HEIGHT, WIDTH, device="cuda") * 50
            out32 = torch.empty(batch, cfg.num_classes, HEIGHT, WIDTH, device="cuda")
            out16 = torch.empty_like(out32)

            @torch.inference_mode()
            def torch_fp32(x: torch.Tensor = x) -> torch.Tensor:
                return model(x)

            @torch.inference_mode()
            def torch_bf16(x: torch.Tensor = x) -> torch.Tensor:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return model(x).float()

            runners = {
                "pytorch fp32": torch_fp32,
                "pytorch bf16 (autocast)": torch_bf16,
                "onnxruntime cuda fp32": ort_runner(fp32, x, out32),
                "onnxruntime cuda fp16": ort_runner(fp16, x, out16),
            }
            reference = torch_fp32().argmax(1)
            base = None
            for runtime, run in runners.items():
                agreement = float((run().argmax(1) == reference).float().mean())
                times = cuda_timed(run, warmup, reps)
                median = statistics.median(times)
                base = base or median
                rows.append({
                    "model": name, "runtime": runtime, "batch": batch,
                    "median_s": median, "min_s": min(times),
                    "images_per_s": batch / median, "speedup_vs_pytorch_fp32": base / median,
                    "argmax_agreement_vs_pytorch_fp32": agreement, "reps": reps,
                })  # fmt: skip
                print(
                    f"{name:6s} {runtime:24s} b{batch}: {1000 * median:8.2f} ms  agree {agreement:.5f}",
                    flush=True,
                )
            del x, out32, out16
            torch.cuda.empty_cache()
    return rows


def machine_info() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def markdown(info: dict[str, Any], rows: list[dict]) -> str:
    lines = [
        "# GPU: ONNX Runtime CUDA vs PyTorch (DeepLab-v2, 1024x512)",
        "",
        "Produced by `bench/gpu_onnx_vs_torch.py`; random weights; median of the timed runs after warm-up.",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in info.items()],
        "",
        "| model | runtime | batch | latency (ms) | images/s | speed-up vs PyTorch fp32 | argmax agreement |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['batch']} | {1000 * r['median_s']:.2f} | "
            f"{r['images_per_s']:.1f} | {r['speedup_vs_pytorch_fp32']:.2f}x | "
            f"{r['argmax_agreement_vs_pytorch_fp32']:.5f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=["r101", "params"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    missing = missing_requirements()
    if missing:
        print("gpu_onnx_vs_torch needs " + "; and ".join(missing), file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    info = machine_info()
    rows = []
    for name in args.models:
        params = compose_params([MODELS[name]])
        cfg = random_init(params.model)
        rows += bench_model(name, cfg, params.export, args.batches, args.warmup, args.reps)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "onnx_vs_torch_gpu"
    stem.with_suffix(".json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(info, rows))
    print(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
