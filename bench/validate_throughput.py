"""Throughput of the ``validate`` and ``prepare`` stages at the real frame sizes, and what the full
datasets would take on the 16-core GPU machine.

Fixture: ``--pairs`` pairs per dataset from the embedded scene generator (:mod:`dacs_uda.data.synth`),
written at the released sizes in the official layouts: GTA5 1914x1052 (palette labels) and Cityscapes
2048x1024 (8-bit label ids), in a temporary folder. Then, with 1 process and with every core
(``data.io_workers: 0``):

1. **validate, decode**: :func:`~dacs_uda.data.manifest.build_manifest` (hash and fully decode every
   file, the stage's per-file work): files/s and files/s per process.
2. **validate, checks**: the Great Expectations suite over the manifest repeated to the full dataset's
   row count (24,966 GTA5, 3,475 Cityscapes): one process, it does not grow with the files' size.
3. **prepare**: :func:`~dacs_uda.data.prepare.prepare_domain` to the official DACS sizes (GTA5
   1280x720 bicubic, Cityscapes 1024x512 bilinear): files/s (2 per pair) and per process.

Projection for the full datasets on :data:`GPU_MACHINE_CORES` cores: the per-process rate measured
with one process, times the cores, times the parallel efficiency measured here with every core (the
ideal, efficiency 1, is given too), plus the checks. Caveats, also written to the results: the files
are in the page cache (just written), so this measures decoding and not the disk; generated frames
have fewer details than real ones and their PNGs are smaller, so real files decode somewhat slower.

Usage: ``python bench/validate_throughput.py [--pairs 24] [--out bench/results]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from loader_throughput import machine  # the same machine record as the loader benchmark

from dacs_uda.data import synth
from dacs_uda.data.formats import FORMATS
from dacs_uda.data.manifest import build_manifest, io_processes
from dacs_uda.data.prepare import prepare_domain
from dacs_uda.data.validate import quiet_great_expectations, validate_dataset
from dacs_uda.utils.io import write_json, write_text

SEED = 1
GPU_MACHINE_CORES = 16
FULL_PAIRS = {"gta5": 24966, "cityscapes": 3475}  # official counts: GTA5 train, Cityscapes train + val
FULL_SPLITS = {"gta5": {"train": 24966}, "cityscapes": {"train": 2975, "val": 500}}
DOMAIN = {"gta5": "source", "cityscapes": "target"}


def write_fixture(root: Path, pairs: int, workers: int) -> dict[str, Path]:
    """``pairs`` GTA5 and Cityscapes pairs at their released sizes under ``root``."""
    roots = {"gta5": root / "gta5", "cityscapes": root / "cityscapes"}
    synth.generate_source(roots["gta5"], SEED, pairs, FORMATS["gta5"].native_size, workers)
    synth.generate_target(
        roots["cityscapes"], SEED, {"train": pairs}, FORMATS["cityscapes"].native_size, workers
    )
    return roots


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def full_size_manifest(manifest: pd.DataFrame, fmt: str) -> pd.DataFrame:
    """``manifest`` repeated to the full dataset's splits, every path made unique (as on disk)."""
    rows = []
    for split, count in FULL_SPLITS[fmt].items():
        repeated = manifest.iloc[[i % len(manifest) for i in range(count)]].copy()
        repeated["split"] = split
        for column in ("image", "label"):
            repeated[column] = [f"{split}/{i}/{p}" for i, p in enumerate(repeated[column])]
        rows.append(repeated)
    return pd.concat(rows, ignore_index=True)


def mean_mib(paths: pd.Series) -> float:
    """Mean size of the files at ``paths``, in MiB."""
    return round(sum(os.path.getsize(p) for p in paths) / len(paths) / 2**20, 3)


def rate(files: int, seconds: float, processes: int) -> dict[str, Any]:
    return {
        "processes": processes,
        "files": files,
        "seconds": round(seconds, 3),
        "files_per_s": round(files / seconds, 2),
        "files_per_s_per_process": round(files / seconds / processes, 2),
    }


def measure(fmt: str, root: Path, out: Path, all_cores: int) -> dict[str, Any]:
    """Decode, checks and prepare of one dataset, with 1 process and with ``all_cores``."""
    size = FORMATS[fmt].official_resize
    decode, prepare, manifest = [], [], pd.DataFrame()
    for processes in sorted({1, all_cores}):
        manifest, seconds = timed(build_manifest, fmt, root, processes)
        decode.append(rate(2 * len(manifest), seconds, processes))
        _, seconds = timed(prepare_domain, manifest, fmt, out / f"{fmt}-{processes}", size, processes)
        prepare.append(rate(2 * len(manifest), seconds, processes))
    full = full_size_manifest(manifest, fmt)
    result, checks_s = timed(validate_dataset, DOMAIN[fmt], fmt, root, full, FULL_SPLITS[fmt], True)
    assert result.success, f"the full-size {fmt} manifest must pass: {result.bad_files()[:3]}"
    return {
        "format": fmt,
        "size": list(FORMATS[fmt].native_size),
        "resize": list(size),
        "pairs": len(manifest),
        "mean_image_mib": mean_mib(manifest["image"]),
        "mean_label_mib": mean_mib(manifest["label"]),
        "decode": decode,
        "prepare": prepare,
        "checks_rows": len(full),
        "checks_seconds": round(checks_s, 2),
    }


def projection(dataset: dict[str, Any]) -> dict[str, Any]:
    """Minutes for the full dataset on the GPU machine: ideal scaling and the efficiency measured here."""
    fmt = dataset["format"]
    files = 2 * FULL_PAIRS[fmt]
    out: dict[str, Any] = {"pairs": FULL_PAIRS[fmt], "cores": GPU_MACHINE_CORES}
    for stage in ("decode", "prepare"):
        one, every = dataset[stage][0], dataset[stage][-1]
        efficiency = every["files_per_s_per_process"] / one["files_per_s_per_process"]
        ideal = files / (one["files_per_s_per_process"] * GPU_MACHINE_CORES)
        out[stage] = {
            "efficiency_measured": round(efficiency, 2),
            "minutes_ideal": round(ideal / 60, 1),
            "minutes_at_measured_efficiency": round(ideal / min(efficiency, 1.0) / 60, 1),
        }
    checks_min = dataset["checks_seconds"] / 60
    out["validate_minutes"] = round(out["decode"]["minutes_at_measured_efficiency"] + checks_min, 1)
    return out


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# validate and prepare throughput at the real frame sizes",
        "",
        f"Measured {report['date']} on {m['cpu']} ({m['cores_visible']} cores visible, "
        f"{m['memory_gib']} GiB, no GPU; shared with other jobs: load average "
        f"{m['load_average_1min_at_start']} at the start, {report['load_average_1min_at_end']} at the end; "
        f"Pillow {m['pillow']}, torch {m['torch']}, commit {m['git_revision']}). "
        f"{report['pairs']} generated pairs per dataset. Produced by `{report['command']}`.",
        "",
        "| dataset | stage | processes | files | s | files/s | files/s per process |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for d in report["datasets"]:
        name = (
            f"{FORMATS[d['format']].title} {d['size'][0]}x{d['size'][1]} "
            f"(images {d['mean_image_mib']} MiB, labels {d['mean_label_mib']} MiB)"
        )
        for stage, label in (
            ("decode", "validate: decode"),
            ("prepare", f"prepare -> {d['resize'][0]}x{d['resize'][1]}"),
        ):
            for r in d[stage]:
                lines.append(
                    f"| {name} | {label} | {r['processes']} | {r['files']} | {r['seconds']} | "
                    f"{r['files_per_s']} | {r['files_per_s_per_process']} |"
                )
    lines += [
        "",
        "Great Expectations checks over the manifest repeated to the full row count (one process): "
        + "; ".join(
            f"{d['format']} {d['checks_rows']} rows {d['checks_seconds']} s" for d in report["datasets"]
        )
        + ".",
        "",
        f"## Projection: full datasets on the {GPU_MACHINE_CORES}-core GPU machine",
        "",
        "Per-process rate with one process here x 16 cores; 'measured efficiency' also divides by the "
        "parallel efficiency measured here with every core (capped at 1).",
        "",
        "| dataset | pairs | validate decode, ideal (min) | at measured efficiency (min) | "
        "validate total with checks (min) | prepare, ideal (min) | at measured efficiency (min) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d in report["datasets"]:
        p = d["projection"]
        lines.append(
            f"| {FORMATS[d['format']].title} | {p['pairs']} | {p['decode']['minutes_ideal']} | "
            f"{p['decode']['minutes_at_measured_efficiency']} | {p['validate_minutes']} | "
            f"{p['prepare']['minutes_ideal']} | {p['prepare']['minutes_at_measured_efficiency']} |"
        )
    lines += ["", "Caveats:", ""] + [f"* {c}" for c in report["caveats"]]
    return "\n".join(lines) + "\n"


CAVEATS = (
    "The files are in the page cache (just written): this measures hashing and decoding, not the disk. "
    "GTA5 is tens of GB of PNGs (the provider's page); read from disk at a few hundred MB/s, reading "
    "alone takes minutes, so the disk may bound the stage before the cores do.",
    "Generated frames are not real ones: their PNGs (mean sizes in the table) compress and decode "
    "differently from the real files, so the real rate may differ either way.",
    "The measured efficiency is that of every core of this machine while other jobs ran on it (see the "
    "load average): when the load exceeds the cores, the second process competes with those jobs and "
    "the efficiency, hence the projection 'at measured efficiency', is pessimistic. The projection was "
    "not run on the 16-core machine.",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=24, help="pairs per dataset (default 24)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    quiet_great_expectations()
    all_cores = io_processes(0)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"python bench/validate_throughput.py --pairs {args.pairs}",
        "machine": machine(),
        "pairs": args.pairs,
        "datasets": [],
        "caveats": list(CAVEATS),
    }
    with tempfile.TemporaryDirectory(prefix="validate-bench-") as tmp:
        roots = write_fixture(Path(tmp) / "raw", args.pairs, all_cores)
        for fmt, root in roots.items():
            dataset = measure(fmt, root, Path(tmp) / "prepared", all_cores)
            dataset["projection"] = projection(dataset)
            report["datasets"].append(dataset)
    report["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    write_json(args.out / "validate_throughput.json", report)
    write_text(args.out / "validate_throughput.md", markdown(report))
    print(markdown(report))  # noqa: T201 - a benchmark script's result goes to the terminal
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
