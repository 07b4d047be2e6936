"""Loader throughput before and after the ``prepare`` stage, on full-size frames.

*Before*: every training sample decodes the full-size PNGs (GTA5-like 1914x1052, SYNTHIA-like
1280x760 with 16-bit labels, Cityscapes-like 2048x1024) and resizes them to the official size
(1280x720 / 1024x512), as the official DACS loaders do every step. *After*: the same samples read
from the prepared cache (already at that size, labels as 8-bit ids). Both go through the project's
``SegmentationDataset`` with a random 512x512 crop, one process, so the numbers are per-core costs.

Frames come from the embedded scene generator at the official sizes, written in each official
encoding (GTA5 palette labels, SYNTHIA 16-bit labels, Cityscapes 8-bit label ids).

Usage: ``python bench/loader_throughput.py [--frames 6] [--samples 24] [--out bench/results]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import PIL
import torch
from PIL import Image

from dacs_uda import labels as L
from dacs_uda.data import synth
from dacs_uda.data.datasets import SegmentationDataset
from dacs_uda.data.formats import FORMATS, write_png16
from dacs_uda.data.prepare import prepare_domain
from dacs_uda.utils.io import write_json, write_text

CROP = (512, 512)
_TO_SYNTHIA = np.zeros(256, dtype=np.uint16)
for _t, _l in enumerate(L.TRAIN_ID_TO_LABEL_ID):
    _TO_SYNTHIA[_l] = L.TRAIN_ID_TO_SYNTHIA_ID[_t]


def write_frames(fmt: str, root: Path, count: int) -> pd.DataFrame:
    """``count`` full-size frames of ``fmt`` in its official encoding; return their manifest rows."""
    width, height = FORMATS[fmt].native_size
    domain = "target" if fmt == "cityscapes" else "source"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        image, label_ids = synth.render_scene(domain, width, height, synth.frame_rng(1, domain, "train", i))
        image_path, label_path = root / "images" / f"{i:05d}.png", root / "labels" / f"{i:05d}.png"
        Image.fromarray(image).save(image_path)
        if fmt == "gta5":
            label = Image.fromarray(label_ids, "P")
            label.putpalette(L.cityscapes_palette_bytes())
            label.save(label_path)
        elif fmt == "synthia":
            ids = _TO_SYNTHIA[label_ids]
            write_png16(label_path, np.stack([ids, ids * 7, np.zeros_like(ids)], -1))
        else:
            Image.fromarray(label_ids, "L").save(label_path)
        rows.append(
            {
                "split": "train",
                "image": str(image_path),
                "label": str(label_path),
                "label_encoding": FORMATS[fmt].label_encoding,
            }
        )
    return pd.DataFrame(rows)


def images_per_second(rows: pd.DataFrame, size: tuple[int, int], samples: int) -> float:
    """Samples per second through ``SegmentationDataset`` with a random crop (after one warm-up)."""
    dataset = SegmentationDataset(rows, size, CROP)
    gen = torch.Generator().manual_seed(0)
    keys = [
        (i % len(rows), int(torch.randint(0, size[1] - CROP[0] + 1, (1,), generator=gen)),
         int(torch.randint(0, size[0] - CROP[1] + 1, (1,), generator=gen)))
        for i in range(samples)
    ]  # fmt: skip
    dataset[keys[0]]
    start = time.perf_counter()
    for key in keys:
        dataset[key]
    return samples / (time.perf_counter() - start)


def machine() -> dict[str, object]:
    cpu = platform.processor()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores_visible": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=6, help="frames per dataset")
    parser.add_argument("--samples", type=int, default=24, help="timed samples per measurement")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    info = machine()  # before the work, so the load average is the other jobs'
    results = []
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        for fmt in ("gta5", "synthia", "cityscapes"):
            spec = FORMATS[fmt]
            size = spec.official_resize
            start = time.perf_counter()
            raw = write_frames(fmt, Path(tmp) / fmt / "raw", args.frames)
            generated = time.perf_counter() - start
            before = images_per_second(raw, size, args.samples)
            start = time.perf_counter()
            prepared, _ = prepare_domain(raw, fmt, Path(tmp) / fmt / "prepared", size, workers=1)
            prepare_s = (time.perf_counter() - start) / len(raw)
            after = images_per_second(prepared, size, args.samples)
            row = {
                "dataset": spec.title,
                "raw_size": list(spec.native_size),
                "resize": list(size),
                "crop": list(CROP),
                "before_images_per_s": round(before, 2),
                "after_images_per_s": round(after, 2),
                "speedup": round(after / before, 2),
                "prepare_s_per_pair_once": round(prepare_s, 3),
                "frames": args.frames,
                "samples": args.samples,
                "generate_s": round(generated, 1),
            }
            results.append(row)
            print(json.dumps(row))
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "results": results,
    }
    write_json(args.out / "loader_throughput.json", report)
    m = report["machine"]
    lines = [
        "# Loader throughput: decode + resize per step (before) vs the prepared cache (after)",
        "",
        f"Measured {report['date']} on {m['cpu']} ({m['cores_visible']} cores visible, shared with other "
        f"jobs: load average {m['load_average_1min_at_start']} at the start, so expect noise; torch "
        f"{m['torch']}, Pillow {m['pillow']}). One process, `SegmentationDataset` with a random "
        f"{CROP[0]}x{CROP[1]} crop; {args.frames} generated frames per dataset, {args.samples} timed samples "
        "each. Produced by `python bench/loader_throughput.py`.",
        "",
        "| dataset | raw size | resize | before (img/s) | after (img/s) | speed-up | prepare once (s/pair) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        raw, size = "x".join(map(str, r["raw_size"])), "x".join(map(str, r["resize"]))
        lines.append(
            f"| {r['dataset']} | {raw} | {size} | {r['before_images_per_s']} | {r['after_images_per_s']} | "
            f"{r['speedup']}x | {r['prepare_s_per_pair_once']} |"
        )
    write_text(args.out / "loader_throughput.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
