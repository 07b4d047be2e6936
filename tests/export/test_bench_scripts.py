"""Benchmark scripts: without CUDA the GPU ones say what is missing; the training step runs on the CPU."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run for minutes")
@pytest.mark.parametrize("script", ["gpu_onnx_vs_torch.py", "gpu_step.py", "train_step.py"])
def test_gpu_benchmark_fails_cleanly_without_cuda(script: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "needs a CUDA device" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_train_step_cpu_path_records_consistent_numbers(tmp_path: Path) -> None:
    """The training-step benchmark on the CPU, tiny model: every field it derives agrees with its inputs."""
    tiny = ["-o", "model.width=4", "-o", "data.crop=[32,32]", "-o", "adapt.optim.batch_size=2"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "train_step.py"), "--device", "cpu", "--variants", "fp32",
         "bf16-cl", "--warmup", "1", "--steps", "2", "--repeats", "2", *tiny, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "train_step_cpu.json").read_text())
    rows = report["results"]
    assert [r["name"] for r in rows] == ["fp32", "bf16-cl"]
    assert [(r["precision"], r["channels_last"], r["compile"]) for r in rows] == [
        ("fp32", False, False),
        ("bf16", True, False),
    ]
    flops = rows[0]["flops_per_step"]
    assert flops > 0 and all(r["flops_per_step"] == flops for r in rows)
    for r in rows:
        assert (r["warmup"], r["steps"], r["repeats"], len(r["losses"])) == (1, 2, 2, 4)
        assert r["ms_per_step"] == min(r["ms_per_step_passes"]) and len(r["ms_per_step_passes"]) == 2
        assert all(math.isfinite(loss) and loss > 0 for loss in r["losses"])
        assert r["crop"] == [32, 32] and r["batch"] == "2 source + 2 target"
        seconds = r["ms_per_step"] / 1000
        assert r["achieved_tflops"] == round(flops / seconds / 1e12, 3)
        assert r["hours_250k_steps"] == round(seconds * 250_000 / 3600, 2)
        assert r["mfu"] is None and r["peak_memory_gib"] is None  # no card to compare with on the CPU
    assert rows[0]["speedup_vs_fp32"] == 1.0
    assert rows[1]["speedup_vs_fp32"] == round(rows[0]["ms_per_step"] / rows[1]["ms_per_step"], 2)
    assert rows[0]["parameters"] == rows[1]["parameters"] > 0
    assert [line.split(":")[0] for line in report["targets"]] == ["n/a", "n/a"]  # judged on an H200 only
    assert "Still to be measured on a GPU" in (tmp_path / "train_step_cpu.md").read_text()


def test_loader_projection_arithmetic() -> None:
    """15 workers at the one-worker rate per core, against 4 crops per step at each step time."""
    spec = importlib.util.spec_from_file_location(
        "loader_throughput", REPO / "bench" / "loader_throughput.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rates = [
        {"domain": "source", "workers": 1, "crops_per_s_per_core": 10.0},
        {"domain": "target", "workers": 1, "crops_per_s_per_core": 20.0},
        {"domain": "source", "workers": 0, "crops_per_s_per_core": 99.0},  # not a worker process: unused
    ]
    # one core: 2 / 10 + 2 / 20 = 0.3 s per step of 4 crops -> 13.33 crops/s, 15 workers -> 200 crops/s
    plain = bench.projection(rates)
    assert (plain["mixed_crops_per_s_per_core"], plain["crops_per_s_15_workers"]) == (13.33, 200.0)
    assert [
        (s["ms_per_step"], s["gpu_crops_per_s"], s["headroom"], s["meets_3x"]) for s in plain["step_times"]
    ] == [
        (113.0, 35.4, 5.65, True),
        (25.0, 160.0, 1.25, False),
    ]
    # source crops 50 of their 100 ms faster: 2 / 20 + 2 / 20 = 0.2 s a step -> 20 crops/s a core, 300 in all
    faster = bench.projection(rates, {"source": 50.0})
    assert (faster["mixed_crops_per_s_per_core"], faster["crops_per_s_15_workers"]) == (20.0, 300.0)
    assert [s["meets_3x"] for s in faster["step_times"]] == [True, False]  # 300 / 160 = 1.88x at 25 ms
