"""Resize every validated pair once and cache it, so training never decodes a full-size PNG per step
(the library of the ``prepare`` stage).

Input: the validated manifests ``<data.manifests>/{source,target}.csv`` (stage ``validate``).
Output, under ``data.prepared``:

* ``<domain>/images/<split>/<stem>.png`` and ``<domain>/labels/<split>/<stem>.png``;
* ``<domain>.csv``: the manifest that training, evaluation and export read
  (:func:`dacs_uda.data.datasets.manifest_path`), with columns :data:`PREPARED_COLUMNS` (the raw
  files' content hashes included: they define the run's ``data_version``, :mod:`dacs_uda.data.version`);
* ``source_class_pixels.csv``: every source frame's pixels of each class at the prepared size, what
  rare class sampling draws by (:mod:`dacs_uda.data.rcs`), counted here once rather than at every
  training start.

Recipe (the official DACS loaders', done once instead of every step):

* image: RGB, resized to ``data.<domain>.resize`` with the format's filter (bicubic for GTA5 and
  SYNTHIA, bilinear for Cityscapes); an image already at that size is copied byte for byte;
* label: nearest-neighbour resize, written as an **8-bit PNG of Cityscapes label ids** for every
  dataset (GTA5 palette indices and Cityscapes label ids are kept; SYNTHIA's 16-bit class ids go
  through the training-id table to the matching Cityscapes id, ignored ids to 0 "unlabeled"). So
  training does one thing for every dataset: label id -> training id with one 256-entry table.

Resumable and atomic: every file is written under a temporary name and renamed
(:func:`dacs_uda.utils.io.atomic_path`), so a half-written file never counts; ``<domain>/index.json``
records the recipe and the source file (size, mtime) each output came from, and a rerun keeps every
output whose record still matches and whose PNG header has the right size. Outputs no longer in the
manifest, and temporaries an interrupted run left behind, are removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from dacs_uda.config import DOMAINS, Params
from dacs_uda.data.datasets import load_label, manifest_path, read_manifest
from dacs_uda.data.formats import (
    CITYSCAPES_LABEL_ID,
    FORMATS,
    SYNTHIA_ID,
    png_header,
    read_label_ids,
    to_train_ids,
)
from dacs_uda.data.manifest import io_processes
from dacs_uda.data.rcs import class_pixel_counts, class_pixels_path, write_class_pixels
from dacs_uda.labels import NUM_CLASSES, train_id_to_label_id_lut
from dacs_uda.utils.io import atomic_path, write_text

log = logging.getLogger(__name__)

RECIPE_VERSION = 1
PNG_COMPRESS_LEVEL = 1  # fast to write; decoding speed barely depends on the level
INDEX_NAME = "index.json"
SAVE_INDEX_EVERY = 256  # completed files between index checkpoints (what an interruption can lose)
PREPARED_COLUMNS = (
    "split", "image", "label", "label_encoding", "width", "height", "raw_image", "raw_label", "warning",
    "raw_image_sha256", "raw_label_sha256",
)  # fmt: skip
_RESAMPLE_NAMES: dict[int, str] = {
    Image.Resampling.BICUBIC: "bicubic",
    Image.Resampling.BILINEAR: "bilinear",
    Image.Resampling.NEAREST: "nearest",
}


class PrepareError(RuntimeError):
    """Some files could not be prepared (the message names them)."""


@dataclass(frozen=True)
class Job:
    """One pair to prepare: where it comes from, where it goes, and how."""

    key: str  # "<split>/<stem>", unique within a domain
    image: str
    label: str
    image_out: str
    label_out: str
    size: tuple[int, int]  # W, H
    resample: int
    encoding: str  # label encoding of the source label


def recipe(fmt: str, size: tuple[int, int]) -> dict[str, Any]:
    """Everything that decides the content of a prepared file (a change invalidates the cache)."""
    return {
        "version": RECIPE_VERSION,
        "format": fmt,
        "size": list(size),
        "image": _RESAMPLE_NAMES[FORMATS[fmt].image_resample],
        "label": "nearest",
        "label_encoding": CITYSCAPES_LABEL_ID,
    }


def _save_png(img: Image.Image, path: Path) -> None:
    """Write ``img`` as PNG, atomically."""
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _copy(src: str, path: Path) -> None:
    """Copy ``src`` byte for byte to ``path``, atomically."""
    with atomic_path(path) as tmp:
        shutil.copyfile(src, tmp)


_TO_LABEL_ID = train_id_to_label_id_lut()


def prepared_label_ids(path: str, encoding: str) -> np.ndarray:
    """The label as 8-bit Cityscapes label ids (the prepared encoding)."""
    ids = read_label_ids(path, encoding)
    if encoding == SYNTHIA_ID:
        return _TO_LABEL_ID[to_train_ids(ids, SYNTHIA_ID)]  # ignore (255) -> 0, "unlabeled"
    return ids.astype(np.uint8, copy=False)


def prepare_one(job: Job) -> str:
    """Prepare one pair; return "" or the error (never raises, so one bad file cannot stop the rest)."""
    try:
        with Image.open(job.image) as img:
            if img.size == job.size and img.mode == "RGB" and img.format == "PNG":
                image = None
            else:
                image = img.convert("RGB")
        if image is None:
            _copy(job.image, Path(job.image_out))
        else:
            if image.size != job.size:
                image = image.resize(job.size, job.resample)
            _save_png(image, Path(job.image_out))
        label = Image.fromarray(prepared_label_ids(job.label, job.encoding), "L")
        if label.size != job.size:
            label = label.resize(job.size, Image.Resampling.NEAREST)
        _save_png(label, Path(job.label_out))
        return ""
    except Exception as err:  # noqa: BLE001 - reported with the file name by the caller
        return f"{type(err).__name__}: {err}"


def _stat(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _output_ok(path: str, size: tuple[int, int]) -> bool:
    try:
        width, height, _, _ = png_header(path)
    except (OSError, ValueError):
        return False
    return (width, height) == size


def _load_index(folder: Path, wanted: dict[str, Any]) -> dict[str, Any]:
    """The index of ``folder`` if it was written with the same recipe, else an empty one."""
    try:
        index = json.loads((folder / INDEX_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return index.get("files", {}) if index.get("recipe") == wanted else {}


def _save_index(folder: Path, wanted: dict[str, Any], files: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / INDEX_NAME, json.dumps({"recipe": wanted, "files": files}, sort_keys=True) + "\n")


def _jobs(rows: pd.DataFrame, fmt: str, folder: Path, size: tuple[int, int]) -> list[Job]:
    spec = FORMATS[fmt]
    jobs, seen = [], set()
    for split, image, label in zip(rows["split"], rows["image"], rows["label"], strict=True):
        stem = Path(image).stem
        key = f"{split}/{stem}"
        if key in seen:
            raise PrepareError(f"two {fmt} rows would both be prepared as {key}: {image}")
        seen.add(key)
        jobs.append(
            Job(
                key=key,
                image=str(image),
                label=str(label),
                image_out=str(folder / "images" / split / f"{stem}.png"),
                label_out=str(folder / "labels" / split / f"{stem}.png"),
                size=size,
                resample=spec.image_resample,
                encoding=spec.label_encoding,
            )
        )
    return jobs


def _remove_stale(folder: Path, jobs: list[Job]) -> int:
    """Delete the files under ``folder``'s images/labels that no job produces; return how many.

    That includes the temporaries of an interrupted run (:func:`~dacs_uda.utils.io.atomic_path`
    folders beside their target); folders left empty are removed too.
    """
    keep = {os.path.abspath(p) for job in jobs for p in (job.image_out, job.label_out)}
    removed = 0
    for sub in ("images", "labels"):
        top = folder / sub
        # Deepest first, so a folder is looked at after everything in it.
        for path in sorted(top.rglob("*"), reverse=True) if top.is_dir() else []:
            if path.is_dir() and not path.is_symlink():
                if not any(path.iterdir()):
                    path.rmdir()
            elif os.path.abspath(path) not in keep:
                path.unlink()
                removed += 1
    return removed


def _text_column(rows: pd.DataFrame, column: str) -> list[str]:
    """``rows[column]`` as strings, "" where empty or when the manifest has no such column."""
    values = rows[column] if column in rows.columns else [""] * len(rows)
    return [v if isinstance(v, str) else "" for v in values]


@dataclass
class DomainStats:
    rows: int
    written: int
    reused: int
    removed: int
    seconds: float


def prepare_domain(
    rows: pd.DataFrame, fmt: str, folder: str | Path, size: tuple[int, int], workers: int = 2
) -> tuple[pd.DataFrame, DomainStats]:
    """Prepare every row of a validated manifest into ``folder``.

    Args:
        rows: Validated manifest (columns ``split``, ``image``, ``label``; optional ``warning``).
        fmt: Dataset format of the rows.
        folder: Output folder of this domain (``<data.prepared>/<domain>``).
        size: (W, H) to resize to.
        workers: Processes (``<= 1``: in this process).

    Returns:
        The prepared manifest (columns :data:`PREPARED_COLUMNS`) and what was done.

    Raises:
        PrepareError: Some files could not be prepared; the message names them. Everything that was
            prepared is kept (and recorded), so a rerun only redoes the failures.
    """
    start = time.perf_counter()
    folder = Path(folder)
    size = (int(size[0]), int(size[1]))  # a params list works too
    wanted = recipe(fmt, size)
    jobs = _jobs(rows, fmt, folder, size)
    previous = _load_index(folder, wanted)
    files: dict[str, Any] = {}
    todo: list[Job] = []
    for job in jobs:
        sources = _stat(job.image) + _stat(job.label)
        if (
            previous.get(job.key) == sources
            and _output_ok(job.image_out, job.size)
            and _output_ok(job.label_out, job.size)
        ):
            files[job.key] = sources
        else:
            todo.append(job)
    reused = len(jobs) - len(todo)
    failures: list[str] = []
    progress = tqdm(total=len(todo), desc=f"prepare {fmt} -> {folder}", unit="pair", mininterval=2.0)

    def consume(results: Iterable[str]) -> None:
        for done, (job, error) in enumerate(zip(todo, results, strict=True), start=1):
            if error:
                failures.append(f"{job.image} / {job.label}: {error}")
            else:
                files[job.key] = _stat(job.image) + _stat(job.label)
            progress.update()
            if done % SAVE_INDEX_EVERY == 0:
                _save_index(folder, wanted, files)

    try:
        if workers <= 1 or len(todo) < 2:
            consume(map(prepare_one, todo))
        else:
            chunk = max(1, min(16, len(todo) // (workers * 8)))
            with ProcessPoolExecutor(max_workers=workers) as pool:
                consume(pool.map(prepare_one, todo, chunksize=chunk))
    finally:
        progress.close()
        _save_index(folder, wanted, files)
    if failures:
        more = f" ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        shown = "; ".join(failures[:20]) + more
        raise PrepareError(f"{len(failures)} {fmt} pairs could not be prepared: {shown}")
    removed = _remove_stale(folder, jobs)
    warnings = _text_column(rows, "warning")
    prepared = pd.DataFrame(
        {
            "split": [job.key.split("/", 1)[0] for job in jobs],
            "image": [job.image_out for job in jobs],
            "label": [job.label_out for job in jobs],
            "label_encoding": CITYSCAPES_LABEL_ID,
            "width": size[0],
            "height": size[1],
            "raw_image": [job.image for job in jobs],
            "raw_label": [job.label for job in jobs],
            "warning": warnings,
            # The raw files' content hashes, from validate: the data version (dacs_uda.data.version).
            "raw_image_sha256": _text_column(rows, "image_sha256"),
            "raw_label_sha256": _text_column(rows, "label_sha256"),
        },
        columns=list(PREPARED_COLUMNS),
    )
    stats = DomainStats(len(jobs), len(todo), reused, removed, time.perf_counter() - start)
    return prepared, stats


def _frame_class_pixels(label: str, size: tuple[int, int]) -> np.ndarray:
    return class_pixel_counts(load_label(label, size))


def count_class_pixels(labels: list[str], size: tuple[int, int], workers: int = 2) -> np.ndarray:
    """Pixels of each class (frames x classes, int64) in prepared ``labels`` at ``size`` (W, H), read as
    training reads them, over ``workers`` processes (``<= 1``: in this process)."""
    count = partial(_frame_class_pixels, size=size)
    if workers <= 1 or len(labels) < 2:
        rows = list(map(count, labels))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(count, labels, chunksize=max(1, min(64, len(labels) // (workers * 8)))))
    return np.stack(rows) if rows else np.zeros((0, NUM_CLASSES), dtype=np.int64)


def prepare_data(params: Params) -> dict[str, DomainStats]:
    """Prepare both domains (``data.io_workers`` processes) and write their manifests and the source
    frames' class pixel counts (each atomically, after all files are done)."""
    workers = io_processes(params.data.io_workers)
    out: dict[str, DomainStats] = {}
    manifests: dict[str, pd.DataFrame] = {}
    for domain in DOMAINS:
        cfg = getattr(params.data, domain)
        rows = read_manifest(Path(params.data.manifests) / f"{domain}.csv")
        folder = Path(params.data.prepared) / domain
        size = (cfg.resize[0], cfg.resize[1])
        manifests[domain], out[domain] = prepare_domain(rows, cfg.format, folder, size, workers)
        log.info("prepared %s (%s): %s", domain, cfg.format, asdict(out[domain]))
    start = time.perf_counter()
    labels = manifests["source"]["label"].tolist()
    pixels = count_class_pixels(labels, (params.data.source.resize[0], params.data.source.resize[1]), workers)
    stats_path = class_pixels_path(params.data.prepared, "source")
    write_class_pixels(stats_path, labels, pixels)
    log.info(
        "class pixels of %d source frames in %s (%.1f s)",
        len(labels),
        stats_path,
        time.perf_counter() - start,
    )
    for domain, frame in manifests.items():
        write_text(manifest_path(params, domain), frame.to_csv(index=False))
    return out
