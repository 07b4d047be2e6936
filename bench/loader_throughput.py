"""Training-loader throughput at the paper's sizes: crops/s per core, where a crop's time goes, cache formats.

Fixture: ``--frames`` frames per domain from the embedded scene generator (:mod:`dacs_uda.data.synth`)
written at the official loader sizes, source 1280x720 in the GTA5 layout and target 1024x512 in the
Cityscapes layout, scanned into manifests as ``validate`` does (``build_manifest``) and cached by the
``prepare`` stage's own code (``prepare_data``), all in a temporary folder. Then:

1. **Loader.** 512x512 crops through the training loader (``domain_batches``: keyed crop sampler,
   ``SegmentationDataset``, ``DataLoader``), 2 crops per batch and domain as the adaptation stage reads
   them (target crops without labels), with 0, 1 and 2 worker processes: crops/s and crops/s per core.
2. **Where a crop's time goes** (one process, the same crops): PNG decode of the full frame (image, and
   label for source crops), label ids to training ids, crop and normalisation, collation.
3. **Cache formats** on the same frames and crops: reading one crop (image + label) from the PNGs the
   cache holds, from PNGs re-encoded at ``compress_level`` 0 and 1, from uncompressed ``.npy`` read whole,
   and from ``.npy`` memory-mapped (only the crop's rows are touched); bytes per frame.
4. **Projection** for the 16-core GPU machine: 15 loader workers at the per-core rate measured with one
   worker here, against the 4 crops per step the GPU consumes at a given step time, and whether that is
   at least 3x (issue 12).

The files are in the page cache (just written), so this measures decoding, not the disk.

Usage: ``python bench/loader_throughput.py [--frames 16] [--batches 24] [--samples 24] [--out bench/results]``
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL
import torch
from PIL import Image
from torch.utils.data import default_collate

from dacs_uda.config import DOMAINS, Params, compose_params
from dacs_uda.data import synth
from dacs_uda.data.datasets import (
    KeyedCropSampler,
    SegmentationDataset,
    domain_batches,
    manifest_path,
    read_manifest,
)
from dacs_uda.data.formats import to_train_ids
from dacs_uda.data.manifest import build_manifest
from dacs_uda.data.prepare import prepare_data
from dacs_uda.labels import IGNORE_INDEX
from dacs_uda.utils.image import as_size, normalize
from dacs_uda.utils.io import write_json, write_text

SEED = 1
WORKER_COUNTS = (0, 1, 2)
CROPS_PER_STEP = {"source": 2, "target": 2}  # the paper's batch: 2 source + 2 target crops
GPU_MACHINE_CORES = 16
GPU_LOADER_WORKERS = 15  # one core stays with the training process
HEADROOM = 3.0  # issue 12: the loader must offer at least 3x what the GPU consumes
FULL_DATASET_FRAMES = {"source": 24_966, "target": 2_975}  # GTA5; Cityscapes train: the cache's disk size
STEP_MS = {
    "fp32, measured on an H200 (bench/results/gpu_step.md)": 113.0,
    "issue-12 target (bench/train_step.py)": 25.0,
}
# Crop readers of the cache formats compared: (image file, label file or None, y, x, crop) -> arrays.
Reader = Callable[[str, str | None, int, int, tuple[int, int]], tuple[np.ndarray, np.ndarray | None]]


def git_revision() -> str:
    """The checkout's commit, ``+dirty`` when files differ from it, or ``unknown`` outside a repository."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    """The machine, its load and the software versions a benchmark result depends on."""
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
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "git_revision": git_revision(),
    }


def build_fixture(root: Path, frames: int, workers: int) -> Params:
    """Render, scan and prepare ``frames`` frames per domain under ``root``; the params that read them."""
    params = compose_params(
        [
            "dataset=gta5_cityscapes",
            f"data.source.root='{root / 'raw' / 'gta5'}'",
            f"data.target.root='{root / 'raw' / 'cityscapes'}'",
            f"data.manifests='{root / 'manifests'}'",
            f"data.prepared='{root / 'prepared'}'",
            f"data.io_workers={workers}",
        ]
    )
    source, target = params.data.source, params.data.target
    synth.generate_source(Path(source.root), SEED, frames, as_size(source.resize), workers)
    synth.generate_target(Path(target.root), SEED, {"train": frames}, as_size(target.resize), workers)
    for domain in DOMAINS:
        cfg = getattr(params.data, domain)
        rows = build_manifest(cfg.format, Path(cfg.root), workers)
        write_text(Path(params.data.manifests) / f"{domain}.csv", rows.to_csv(index=False))
    prepare_data(params)
    return params


def loader_rate(params: Params, domain: str, workers: int, batches: int, repeats: int) -> dict[str, Any]:
    """Crops/s of the training loader of ``domain`` with ``workers`` processes, after filling its pipeline:
    the best of ``repeats`` runs of ``batches`` batches (the least disturbed by the machine's other jobs)."""
    params = replace(params, data=replace(params.data, num_workers=workers))
    batch = CROPS_PER_STEP[domain]
    start = time.perf_counter()
    stream = domain_batches(params, "adapt", domain, batch, with_labels=domain == "source")
    for _ in range(1 + workers):  # worker start-up, and one batch in flight per worker
        next(stream)
    startup = time.perf_counter() - start
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            next(stream)
        rates.append(batches * batch / (time.perf_counter() - start))
    del stream  # stops the workers before the next measurement
    cores = max(1, workers)
    return {
        "domain": domain,
        "workers": workers,
        "cores_used": cores,
        "crops_per_repeat": batches * batch,
        "crops_per_s_repeats": [round(rate, 2) for rate in rates],
        "crops_per_s": round(max(rates), 2),
        "crops_per_s_per_core": round(max(rates) / cores, 2),
        "startup_s": round(startup, 2),
    }


def ms_per_call(fn: Callable[[Any], object], args: Iterable[Any], repeats: int) -> float:
    """Milliseconds per call of ``fn`` over ``args``: the lowest mean of ``repeats`` passes (after one
    untimed call), the pass least disturbed by the machine's other jobs."""
    args = list(args)
    fn(args[0])
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for arg in args:
            fn(arg)
        means.append(1000 * (time.perf_counter() - start) / len(args))
    return min(means)


@contextmanager
def worker_threads() -> Iterator[None]:
    """One torch thread inside the block, as in a ``DataLoader`` worker (which the loader uses)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def crop_keys(params: Params, domain: str, count: int) -> list[tuple[int, int, int]]:
    """The first ``count`` (frame, y, x) keys the adaptation stage's sampler draws for ``domain``."""
    rows = read_manifest(manifest_path(params, domain), split="train")
    size, crop = as_size(getattr(params.data, domain).resize), as_size(params.data.crop)
    sampler = KeyedCropSampler(
        len(rows), size, crop, seed=params.seed, stream=f"adapt/{domain}", batch_size=CROPS_PER_STEP[domain]
    )
    return list(itertools.islice(iter(sampler), count))


def decode_png(image: str, label: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The full frame's pixels (and label ids) as ``load_pair`` decodes them, without the id mapping."""
    with Image.open(image) as img:
        pixels = np.asarray(img.convert("RGB"))
    if label is None:
        return pixels, None
    with Image.open(label) as lab:
        return pixels, np.asarray(lab)


def timed_parts(
    image: str, label: str | None, encoding: str, y: int, x: int, crop: tuple[int, int]
) -> list[float]:
    """Seconds of each part of one dataset item (``SegmentationDataset.__getitem__``'s steps, in its order
    and with the library's functions): decode, label ids to training ids, crop and normalisation."""
    clock = [time.perf_counter()]
    pixels, ids = decode_png(image, label)
    clock.append(time.perf_counter())
    train_ids = (
        np.full(pixels.shape[:2], IGNORE_INDEX, np.uint8) if ids is None else to_train_ids(ids, encoding)
    )
    clock.append(time.perf_counter())
    window = (slice(y, y + crop[0]), slice(x, x + crop[1]))
    normalize(pixels[window])
    torch.from_numpy(np.ascontiguousarray(train_ids[window])).long()
    clock.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(clock)]


def phases(params: Params, domain: str, samples: int, repeats: int) -> dict[str, float]:
    """Milliseconds per crop of each part of the loader's work, in this process: every part timed in the
    same pass over the crops, the pass with the lowest total kept (so the parts add up).

    ``dataset_item`` times the library's own ``SegmentationDataset.__getitem__`` on the same crops, the
    check that the parts account for it. ``collate_uint8`` is the what-if of handing the crops over as
    uint8 (normalised on the GPU instead): collating the same crops before their conversion.
    """
    with_labels = domain == "source"
    rows = read_manifest(manifest_path(params, domain), split="train")
    size, crop = as_size(getattr(params.data, domain).resize), as_size(params.data.crop)
    dataset = SegmentationDataset(rows, size, crop, with_labels)
    keys = crop_keys(params, domain, samples)

    def parts(key: tuple[int, int, int]) -> list[float]:
        index, y, x = key
        return timed_parts(dataset.images[index], dataset.labels[index], dataset.encodings[index], y, x, crop)

    parts(keys[0])
    passes = [np.sum([parts(key) for key in keys], axis=0) * 1000 / len(keys) for _ in range(repeats)]
    decode, mapping, normalise = min(passes, key=lambda times: float(times.sum()))
    item = ms_per_call(dataset.__getitem__, keys, repeats)
    batch = CROPS_PER_STEP[domain]
    items = [dataset[key] for key in keys[:batch]]
    collate = ms_per_call(lambda _: default_collate(items), range(samples), repeats) / batch

    def uint8_item(key: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        pixels, ids = png_reader(dataset.images[key[0]], dataset.labels[key[0]], key[1], key[2], crop)
        out = {"image": torch.from_numpy(np.ascontiguousarray(pixels))}
        return out if ids is None else {**out, "label": torch.from_numpy(np.ascontiguousarray(ids))}

    raw = [uint8_item(key) for key in keys[:batch]]
    collate_u8 = ms_per_call(lambda _: default_collate(raw), range(samples), repeats) / batch
    return {
        "png_decode": round(float(decode), 2),
        "label_ids_to_train_ids": round(float(mapping), 2),
        "crop_and_normalise": round(float(normalise), 2),
        "collate": round(collate, 2),
        "total": round(float(decode + mapping + normalise) + collate, 2),
        "dataset_item": round(item, 2),
        "collate_uint8": round(collate_u8, 2),
    }


def png_reader(
    image: str, label: str | None, y: int, x: int, crop: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    pixels, ids = decode_png(image, label)
    window = (slice(y, y + crop[0]), slice(x, x + crop[1]))
    return pixels[window], None if ids is None else ids[window]


def npy_reader(mmap: bool) -> Reader:
    mode: Literal["r"] | None = "r" if mmap else None

    def read(
        image: str, label: str | None, y: int, x: int, crop: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        window = (slice(y, y + crop[0]), slice(x, x + crop[1]))
        pixels = np.array(np.load(image, mmap_mode=mode)[window])
        return pixels, None if label is None else np.array(np.load(label, mmap_mode=mode)[window])

    return read


# Cache formats compared with what ``prepare`` writes: name -> (suffix, PNG compress_level or None).
ALTERNATIVES = {
    "png, compress_level 0": ("png", 0),
    "png, compress_level 1": ("png", 1),
    "npy": ("npy", None),
}
AS_PREPARED = "png (as prepared)"
NPY_MMAP = "npy, memory-mapped"
UINT8 = "uint8 crops normalised on the GPU (what-if)"


def rewrite(
    image: str, label: str | None, folder: Path, suffix: str, level: int | None
) -> tuple[str, str | None]:
    """One prepared frame re-written as ``suffix`` files under ``folder``; the new (image, label) paths."""
    pixels, ids = decode_png(image, label)
    paths: list[str | None] = []
    for array, path in ((pixels, image), (ids, label)):
        if array is None or path is None:
            paths.append(None)
            continue
        # <domain>/{images,labels}/<split>/<stem>.png: images and labels share their stems
        out = folder / f"{Path(path).parents[1].name}_{Path(path).stem}.{suffix}"
        if level is None:
            np.save(out, np.ascontiguousarray(array))
        else:
            Image.fromarray(array).save(out, compress_level=level)
        paths.append(str(out))
    return image if paths[0] is None else paths[0], paths[1]


def read_ms(
    read: Reader,
    pairs: list[tuple[str, str | None]],
    keys: list[tuple[int, int, int]],
    crop: tuple[int, int],
    repeats: int,
) -> float:
    """Milliseconds per crop of ``read`` over the (frame, y, x) ``keys`` of the files ``pairs``."""

    def one(key: tuple[int, int, int]) -> object:
        image, label = pairs[key[0]]
        return read(image, label, key[1], key[2], crop)

    return ms_per_call(one, keys, repeats)


def cache_formats(
    params: Params, domain: str, samples: int, repeats: int, folder: Path
) -> list[dict[str, Any]]:
    """Read time per crop and bytes per frame of each cache format, on the same frames and crops."""
    rows = read_manifest(manifest_path(params, domain), split="train")
    labels = rows["label"].tolist() if domain == "source" else [None] * len(rows)
    files = {AS_PREPARED: list(zip(rows["image"], labels, strict=True))}
    for name, (suffix, level) in ALTERNATIVES.items():
        sub = folder / domain / suffix / str(level)
        sub.mkdir(parents=True)
        files[name] = [rewrite(image, label, sub, suffix, level) for image, label in files[AS_PREPARED]]
    files[NPY_MMAP] = files["npy"]
    readers: dict[str, Reader] = {"npy": npy_reader(mmap=False), NPY_MMAP: npy_reader(mmap=True)}
    crop = as_size(params.data.crop)
    keys = crop_keys(params, domain, samples)
    out = []
    for name, pairs in files.items():
        ms = read_ms(readers.get(name, png_reader), pairs, keys, crop, repeats)
        size = statistics.mean(sum(os.path.getsize(p) for p in pair if p) for pair in pairs)
        out.append(
            {
                "domain": domain,
                "format": name,
                "read_crop_ms": round(ms, 2),
                "mib_per_frame": round(size / 2**20, 2),
            }
        )
    return out


def projection(rates: list[dict[str, Any]], saved_ms: dict[str, float] | None = None) -> dict[str, Any]:
    """What 15 loader workers of the GPU machine offer at the per-core rate measured with one worker here,
    each crop ``saved_ms[domain]`` faster (a cache format's saving; the worker's own overhead stays),
    against what the GPU consumes at each step time."""
    saved = saved_ms or {}
    per_core = {
        r["domain"]: 1000 / (1000 / r["crops_per_s_per_core"] - saved.get(r["domain"], 0.0))
        for r in rates
        if r["workers"] == 1
    }
    core_s_per_step = sum(CROPS_PER_STEP[d] / per_core[d] for d in DOMAINS)
    crops_per_step = sum(CROPS_PER_STEP.values())
    available = GPU_LOADER_WORKERS * crops_per_step / core_s_per_step
    out: dict[str, Any] = {
        "mixed_crops_per_s_per_core": round(crops_per_step / core_s_per_step, 2),
        "crops_per_s_15_workers": round(available, 1),
        "step_times": [],
    }
    for label, ms in STEP_MS.items():
        needed = crops_per_step * 1000 / ms
        out["step_times"].append(
            {
                "step": label,
                "ms_per_step": ms,
                "gpu_crops_per_s": round(needed, 1),
                "headroom": round(available / needed, 2),
                "meets_3x": available / needed >= HEADROOM,
            }
        )
    return out


def crop_speedup(phase: dict[str, float], png_ms: float, read_ms: float, uint8: bool) -> float:
    """How much faster a whole crop gets with ``read_ms`` in place of the PNG read ``png_ms`` and, with
    ``uint8``, its uint8 crop collated in place of the float32 conversion and collation."""
    total = phase["total"]
    new = total - png_ms + read_ms
    if uint8:
        new -= phase["crop_and_normalise"] + phase["collate"] - phase["collate_uint8"]
    return round(total / new, 3)


def saved_ms(phase: dict[str, dict[str, float]], speedup: dict[str, float]) -> dict[str, float]:
    """Milliseconds a crop of each domain saves when it gets ``speedup[domain]`` times faster."""
    return {d: phase[d]["total"] * (1 - 1 / speedup[d]) for d in speedup}


def format_speedups(
    phase: dict[str, dict[str, float]], formats: list[dict[str, Any]], uint8: bool = False
) -> dict[str, dict[str, float]]:
    """Per format and domain: :func:`crop_speedup` of its cache read (and of a uint8 hand-over)."""
    png = {r["domain"]: r["read_crop_ms"] for r in formats if r["format"] == AS_PREPARED}
    out: dict[str, dict[str, float]] = {}
    for r in formats:
        d = r["domain"]
        out.setdefault(r["format"], {})[d] = crop_speedup(phase[d], png[d], r["read_crop_ms"], uint8)
    return out


def recommendation(report: dict[str, Any], best: str) -> list[str]:
    """What the numbers say about the cache format, in words (the Markdown's last section)."""
    phase, speedups = report["phases"], report["format_speedups"]
    reads = {(r["domain"], r["format"]): r for r in report["formats"]}
    share = {d: phase[d]["png_decode"] / phase[d]["total"] for d in DOMAINS}
    float_share = {
        d: (phase[d]["crop_and_normalise"] + phase[d]["collate"]) / phase[d]["total"] for d in DOMAINS
    }
    disk = {d: reads[d, best]["mib_per_frame"] * FULL_DATASET_FRAMES[d] / 2**10 for d in DOMAINS}
    verdicts = [
        f"{s['ms_per_step']} ms/step: {s['headroom']}x with {name}"
        for name, proj in report["projection"].items()
        for s in proj["step_times"]
    ]
    src, tgt = reads["source", best], reads["target", best]
    slow, fast = (
        min(report["projection"][name]["step_times"], key=lambda s: s["ms_per_step"])
        for name in (AS_PREPARED, best)
    )
    png_src, png_tgt = reads["source", AS_PREPARED], reads["target", AS_PREPARED]
    return [
        "## What dominates, and the recommendation",
        "",
        f"* PNG decoding of the whole frame is {share['source']:.0%} of a source crop and "
        f"{share['target']:.0%} of a target crop (section 2): the loader decodes 1280x720 (or 1024x512) "
        "pixels to use 512x512.",
        "* Mapping label ids to training ids runs on the whole frame too: "
        f"{phase['source']['label_ids_to_train_ids']} ms of a source crop; doing it after the crop, or "
        "caching training ids, would save most of it.",
        f"* Fastest cache read: {best}, {src['read_crop_ms']} ms per source crop against "
        f"{png_src['read_crop_ms']} ms from the PNG cache ({tgt['read_crop_ms']} against "
        f"{png_tgt['read_crop_ms']} ms for target crops): whole crops {speedups[best]['source']}x (source) "
        f"and {speedups[best]['target']}x (target) faster. Its cost is disk: {src['mib_per_frame']} and "
        f"{tgt['mib_per_frame']} MiB per frame, about {disk['source']:.0f} GiB for GTA5's "
        f"{FULL_DATASET_FRAMES['source']:,} frames and {disk['target']:.1f} GiB for Cityscapes' "
        f"{FULL_DATASET_FRAMES['target']:,} training frames.",
        f"* Converting the crop to float32 and collating it takes {float_share['source']:.0%} of a source "
        f"crop and {float_share['target']:.0%} of a target crop; collating the uint8 crops instead costs "
        f"{phase['source']['collate_uint8']} and {phase['target']['collate_uint8']} ms per crop. Handing "
        "uint8 crops to the GPU and normalising there would save most of that share (and copy 4x fewer "
        "bytes).",
        f"* Headroom on the GPU machine (section 4): {'; '.join(verdicts)}. Rendered frames decode faster "
        "than real ones, so the PNG figures are upper bounds.",
        f"* Recommendation for the 25 ms step: {best} as the prepared cache ({fast['headroom']}x the GPU's "
        f"need against {slow['headroom']}x from the PNG cache) if the disk above is acceptable; the "
        "embedded default, whose step is far slower, does not need it.",
    ]


def markdown(report: dict[str, Any]) -> str:
    m, fx = report["machine"], report["fixture"]
    source, target = ("x".join(map(str, fx[key])) for key in ("source_size", "target_size"))
    lines = [
        "# Training loader at the paper's sizes: throughput, cost of a crop, cache formats",
        "",
        f"Produced by `{report['command']}` on {report['date']} (git {m['git_revision']}). Machine: "
        f"{m['cpu']}, {m['cores_visible']} vCPUs, {m['memory_gib']} GiB, no GPU, **shared**: load average "
        f"{m['load_average_1min_at_start']} at the start and {report['load_average_1min_at_end']} at the end "
        "(other jobs took CPU time, so every rate here is a lower bound); "
        f"torch {m['torch']}, Pillow {m['pillow']}, numpy {m['numpy']}.",
        "",
        f"Fixture: {fx['frames']} source frames of {source} (GTA5 layout) and {fx['frames']} target "
        f"frames of {target} (Cityscapes layout) from the embedded scene generator, scanned by "
        f"`build_manifest` and cached by `prepare_data` (the `prepare` stage's code) in {fx['seconds']} s. "
        "Frames already at the "
        "loader size are copied into the cache as they are; labels are re-written as 8-bit PNGs "
        "(compress_level 1). Rendered scenes have flatter colours than game or camera frames, so their PNGs "
        "are smaller and decode faster than real ones: real data will be slower.",
        "",
        "## 1. The training loader (`domain_batches`), 512x512 crops, 2 per batch",
        "",
        "| domain | workers | cores used | crops/s, each pass | crops/s (best) | crops/s per core "
        "| start-up (s) |",
        "|---|---:|---:|---|---:|---:|---:|",
        *[
            f"| {r['domain']} | {r['workers']} | {r['cores_used']} | "
            f"{', '.join(map(str, r['crops_per_s_repeats']))} | {r['crops_per_s']} | "
            f"{r['crops_per_s_per_core']} | {r['startup_s']} |"
            for r in report["loader"]
        ],
        "",
        f"Each pass times {report['loader'][0]['crops_per_repeat']} crops after the workers have started and "
        "filled the pipeline; the best pass is the one the machine's other jobs disturbed least.",
        "",
        "Source crops carry labels; target crops do not (the adaptation stage reads them without). With 0 "
        "workers the training process loads (its torch ops may use both cores).",
        "",
        "## 2. Where a crop's time goes (one process, one torch thread as in a worker; ms per crop)",
        "",
        "| domain | PNG decode (full frame) | label ids to train ids | crop + normalise | collate | total "
        "| library item, for comparison | what-if: collate uint8 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {d} | {p['png_decode']} | {p['label_ids_to_train_ids']} | {p['crop_and_normalise']} | "
            f"{p['collate']} | {p['total']} | {p['dataset_item']} | {p['collate_uint8']} |"
            for d, p in report["phases"].items()
        ],
        "",
        "The parts of an item are timed in one pass over the crops (the pass with the lowest total of the "
        "repeats), calling the library's functions in `SegmentationDataset`'s order; *library item* times "
        "`SegmentationDataset.__getitem__` itself on the same crops. *Crop + normalise* turns the uint8 "
        "crop into float32 BGR minus the mean (and the label into int64); *collate* stacks a batch of those. "
        "The what-if column collates the uint8 crops instead, as a loader that normalises on the GPU would. "
        "The loader does no augmentation (jitter and blur run on the mixed batch in the training step).",
        "",
        "## 3. Cache formats, same frames and crops (one process, one torch thread)",
        "",
        "| domain | format | read one crop, image + label (ms) | MiB per frame | whole crop faster by |",
        "|---|---|---:|---:|---:|",
        *[
            f"| {r['domain']} | {r['format']} | {r['read_crop_ms']} | {r['mib_per_frame']} | "
            f"{report['format_speedups'][r['format']][r['domain']]}x |"
            for r in report["formats"]
        ],
        "",
        "*Whole crop faster by*: the total of section 2 over the same total with this format's read in "
        "place of the PNG read. Sections 2 and 3 ran a minute apart on a shared machine whose load varies, "
        "so compare rows within a section first; across sections the figures are rougher.",
        "",
        f"## 4. Projection for the GPU machine ({GPU_MACHINE_CORES} cores, "
        f"{GPU_LOADER_WORKERS} loader workers)",
        "",
        "Assumes the GPU machine's cores decode as fast as one core here with one worker (section 1) and "
        "that the workers scale linearly; each step needs 2 source + 2 target crops. Another cache takes the "
        "milliseconds it saves per crop in section 3 off the worker's time per crop; the rest of a worker's "
        "time (passing the batch to the training process) stays.",
        "",
        "| cache | crops/s per core (2 + 2) | crops/s, 15 workers | step | GPU needs (crops/s) | headroom "
        "| >= 3x |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for name, proj in report["projection"].items():
        for s in proj["step_times"]:
            lines.append(
                f"| {name} | {proj['mixed_crops_per_s_per_core']} | {proj['crops_per_s_15_workers']} | "
                f"{s['ms_per_step']} ms ({s['step']}) | {s['gpu_crops_per_s']} | {s['headroom']}x | "
                f"{'yes' if s['meets_3x'] else 'NO'} |"
            )
    return "\n".join([*lines, "", *report["recommendation"]]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16, help="frames per domain")
    parser.add_argument("--batches", type=int, default=24, help="timed batches per loader measurement")
    parser.add_argument("--samples", type=int, default=24, help="crops per phase and format measurement")
    parser.add_argument("--repeats", type=int, default=3, help="passes per measurement; the best is kept")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    info = machine()  # before the work, so the load average is the other jobs'
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        start = time.perf_counter()
        params = build_fixture(Path(tmp), args.frames, workers=2)
        fixture_s = time.perf_counter() - start
        loader = [
            loader_rate(params, d, w, args.batches, args.repeats) for d in DOMAINS for w in WORKER_COUNTS
        ]
        for row in loader:
            print(row)
        with worker_threads():
            phase = {d: phases(params, d, args.samples, args.repeats) for d in DOMAINS}
            folder = Path(tmp) / "formats"
            formats = [
                row for d in DOMAINS for row in cache_formats(params, d, args.samples, args.repeats, folder)
            ]
        print(phase, formats)
    speedups = format_speedups(phase, formats)
    best = max((f for f in speedups if f != AS_PREPARED), key=lambda f: min(speedups[f].values()))
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python bench/loader_throughput.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": info,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "fixture": {
            "frames": args.frames,
            "source_size": list(params.data.source.resize),
            "target_size": list(params.data.target.resize),
            "crop": list(params.data.crop),
            "seconds": round(fixture_s, 1),
        },
        "loader": loader,
        "phases": phase,
        "formats": formats,
        "format_speedups": speedups,
        "projection": {
            AS_PREPARED: projection(loader),
            best: projection(loader, saved_ms(phase, speedups[best])),
            f"{best} + {UINT8}": projection(
                loader, saved_ms(phase, format_speedups(phase, formats, uint8=True)[best])
            ),
        },
    }
    report["recommendation"] = recommendation(report, best)
    write_json(args.out / "loader_throughput.json", report)
    write_text(args.out / "loader_throughput.md", markdown(report))
    print(f"wrote {args.out}/loader_throughput.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
