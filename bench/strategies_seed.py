"""One seed of the successors' strategies on the embedded benchmark, outside DVC: DACS, + warm-up,
+ RCS, + FD, + MIC, all four, each adapted from the workspace's own source-only checkpoint and scored
by the evaluate stage (student, official protocol). Fast where `dvc exp run` would retrain the
source-only and oracle models per variant; the 3-seed ablation belongs in DVC experiments.

Run from the repository root after `dvc repro` (it reads data/prepared and models/trained/pretrain.pt,
and takes the seed of the workspace's params.yaml, the seed that checkpoint was trained with):
`python bench/strategies_seed.py --out bench/results`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from dacs_uda.config import compose_params, load_params

VARIANTS = {
    "dacs": [],
    "warmup": ["adapt.optim.warmup_iters=30"],
    "rcs": ["adapt.rcs.enabled=true"],
    "fd": ["adapt.fd.enabled=true"],
    "mic": ["adapt.mic.enabled=true"],
    "all four": [
        "adapt.optim.warmup_iters=30",
        "adapt.rcs.enabled=true",
        "adapt.fd.enabled=true",
        "adapt.mic.enabled=true",
    ],
}
RARE = ("bus", "train", "motorcycle", "bicycle", "rider", "traffic light")
LINKED = ("data/prepared", "data/raw/target", "data/manifests")


def prepare_workdir(repo: Path, work: Path, overrides: list[str]) -> None:
    """A scratch project: the repo's prepared data (linked), its source-only checkpoint, variant params."""
    for name in LINKED:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).symlink_to(repo / name)
    (work / "models/trained").mkdir(parents=True)
    shutil.copy2(repo / "models/trained/pretrain.pt", work / "models/trained/pretrain.pt")
    params = compose_params(overrides)
    params.evaluate = dataclasses.replace(
        params.evaluate, models={"dacs": "models/trained/adapt.pt"}, save_predictions=[], num_samples=0
    )
    (work / "params.yaml").write_text(yaml.safe_dump(dataclasses.asdict(params), sort_keys=False))


def run_variant(repo: Path, work: Path, overrides: list[str]) -> dict[str, object]:
    prepare_workdir(repo, work, overrides)
    env = {**os.environ, "PYTHONPATH": str(repo / "src")}
    start = time.perf_counter()
    for module, args in (("dacs_uda.stages.train", ["--section", "adapt"]), ("dacs_uda.stages.evaluate", [])):
        subprocess.run([sys.executable, "-m", module, *args], cwd=work, env=env, check=True)
    scores = json.loads((work / "metrics/eval.json").read_text())["dacs"]
    with (work / "metrics/per_class_iou.csv").open() as fh:
        iou = {row["class"]: float(row["iou"]) for row in csv.DictReader(fh) if row["model"] == "dacs"}
    return {**scores, "rare": {c: iou[c] for c in RARE}, "seconds": round(time.perf_counter() - start, 1)}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def markdown(results: dict[str, dict], seed: int) -> str:
    lines = [
        f"# Successors' strategies on the embedded benchmark, seed {seed} (one seed: not the ablation)",
        "",
        f"`python bench/strategies_seed.py --out bench/results`, {time.strftime('%Y-%m-%d')}, "
        f"{cpu_model()} ({os.cpu_count()} cores, no GPU; "
        f"load average {os.getloadavg()[0]:.1f} at the end). Each variant adapts the workspace's "
        "source-only checkpoint for 800 steps and is scored by the evaluate stage (student, official "
        "protocol, 100 target-val frames).",
        "",
        "| variant | mIoU | never predicted | " + " | ".join(RARE) + " | s |",
        "|---|---:|---:|" + "---:|" * len(RARE) + "---:|",
    ]
    for name, r in results.items():
        rare = " | ".join(f"{r['rare'][c]:.2f}" for c in RARE)
        lines.append(f"| {name} | {r['mIoU']:.2f} | {r['never_predicted']} | {rare} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/dacs_strategies"))
    args = parser.parse_args()
    repo, seed = Path.cwd(), load_params().seed
    shutil.rmtree(args.work, ignore_errors=True)
    results = {}
    for name, overrides in VARIANTS.items():
        work = args.work / name.replace(" ", "_")
        results[name] = run_variant(repo, work, [f"seed={seed}", *overrides])
        print(name, results[name], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"strategies_seed{seed}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(results, seed))


if __name__ == "__main__":
    main()
