"""Rare Class Sampling (RCS): source frames drawn by class, rare classes more often (DAFormer,
Hoyer et al., CVPR 2022, §3.3; ``../shared/reference/uda_anchors.md`` §1.2).

Class ``c`` is drawn with P(c) = softmax((1 - f_c) / T) over the classes that have at least one
*eligible* frame (more than ``min_pixels`` pixels of ``c``), ``f_c`` being ``c``'s share of all
labelled source pixels; then a frame eligible for ``c``, uniformly; then up to ``max_crop_tries``
random crops, keeping the first that holds more than ``min_crop_ratio * min_pixels`` pixels of ``c``
(else the last one; DAFormer draws one more, unchecked, crop). A class that no frame holds enough of
gets P = 0, where DAFormer stops with an assertion.

The per-frame class pixel counts are computed once, by the ``prepare`` stage, at the prepared size
(:func:`class_pixels_path`); training only reads them. Every draw takes a keyed generator
(:mod:`dacs_uda.utils.rng`), so a sample's class, frame and crop depend on (seed, stream, step, global
index) only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dacs_uda.config import RcsConfig
from dacs_uda.data.transforms import random_crop_box
from dacs_uda.labels import CLASS_NAMES, NUM_CLASSES
from dacs_uda.utils.io import write_text

LABEL_COLUMN = "label"


def class_pixels_path(prepared: str | Path, domain: str) -> Path:
    """The per-frame class pixel counts of ``domain`` that ``prepare`` writes under ``data.prepared``."""
    return Path(prepared) / f"{domain}_class_pixels.csv"


def class_pixel_counts(train_ids: np.ndarray) -> np.ndarray:
    """Pixels of each of the :data:`NUM_CLASSES` training classes in a label of training ids
    (ignored pixels not counted), as int64."""
    ids = train_ids.ravel()
    return np.bincount(ids[ids < NUM_CLASSES], minlength=NUM_CLASSES).astype(np.int64)


def write_class_pixels(path: str | Path, labels: Sequence[str], pixels: np.ndarray) -> None:
    """Write one row per label file (its path, then its pixels of every class), atomically."""
    frame = pd.DataFrame(pixels, columns=list(CLASS_NAMES))
    frame.insert(0, LABEL_COLUMN, list(labels))
    write_text(path, frame.to_csv(index=False))


def read_class_pixels(path: str | Path, labels: Sequence[str]) -> np.ndarray:
    """The class pixel counts of ``labels`` (frames x classes, int64), in their order.

    Raises:
        FileNotFoundError: ``path`` is missing.
        ValueError: It has other classes, or lacks some of ``labels``.
    """
    rerun = "run `dvc repro prepare` (or `python -m dacs_uda.stages.prepare`) to rebuild it"
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: rare class sampling needs it; {rerun}")
    table = pd.read_csv(path)
    if list(table.columns) != [LABEL_COLUMN, *CLASS_NAMES]:
        raise ValueError(f"{path}: columns {list(table.columns)} are not label + the 19 classes; {rerun}")
    table = table.set_index(LABEL_COLUMN)
    missing = [label for label in labels if label not in table.index]
    if missing:
        raise ValueError(f"{path} has no counts for {len(missing)} frames, e.g. {missing[0]}; {rerun}")
    return table.loc[list(labels)].to_numpy(dtype=np.int64)


def class_frequencies(pixels: np.ndarray) -> np.ndarray:
    """f_c: each class's share of all labelled pixels of the frames (``pixels``: frames x classes)."""
    totals = pixels.sum(axis=0, dtype=np.float64)
    if totals.sum() == 0:
        raise ValueError("no frame has a labelled pixel: rare class sampling has nothing to sample")
    return totals / totals.sum()


def eligible_frames(pixels: np.ndarray, min_pixels: int) -> tuple[tuple[int, ...], ...]:
    """For each class, the frames holding more than ``min_pixels`` pixels of it."""
    return tuple(tuple(np.flatnonzero(column > min_pixels).tolist()) for column in pixels.T)


def class_probabilities(
    frequencies: np.ndarray, frames: Sequence[Sequence[int]], temperature: float
) -> torch.Tensor:
    """P(c) = softmax((1 - f_c) / T) over the classes with an eligible frame, 0 for the others (float64)."""
    logits = torch.from_numpy((1.0 - frequencies) / temperature)
    has_frame = torch.tensor([len(f) > 0 for f in frames])
    if not has_frame.any():
        raise ValueError("no frame holds more than adapt.rcs.min_pixels pixels of any class: lower it")
    return torch.softmax(logits.masked_fill(~has_frame, -torch.inf), dim=0)


@dataclass(frozen=True)
class RarePlan:
    """What rare class sampling draws from: P(c), each class's eligible frames, the crop rule."""

    probabilities: torch.Tensor  # float64, one per class
    frames: tuple[tuple[int, ...], ...]  # per class: indices of its eligible frames
    min_crop_pixels: float  # a crop keeps the class if it holds more pixels of it than this
    max_crop_tries: int


def rare_plan(pixels: np.ndarray, cfg: RcsConfig) -> RarePlan:
    """The plan of ``adapt.rcs`` over frames with class pixel counts ``pixels`` (frames x classes)."""
    frames = eligible_frames(pixels, cfg.min_pixels)
    probabilities = class_probabilities(class_frequencies(pixels), frames, cfg.temperature)
    return RarePlan(probabilities, frames, cfg.min_crop_ratio * cfg.min_pixels, cfg.max_crop_tries)


def draw_class_and_frame(plan: RarePlan, generator: torch.Generator) -> tuple[int, int]:
    """A class from P(c), then one of its eligible frames uniformly: (class, frame)."""
    cls = int(torch.multinomial(plan.probabilities, 1, generator=generator))
    choices = plan.frames[cls]
    return cls, choices[int(torch.randint(len(choices), (1,), generator=generator))]


def rare_class_crop(
    label: np.ndarray,
    cls: int,
    crop: tuple[int, int],
    min_crop_pixels: float,
    max_tries: int,
    generator: torch.Generator,
) -> tuple[int, int]:
    """Corner (y, x) of the first of up to ``max_tries`` random ``crop`` (H, W) windows of ``label``
    holding more than ``min_crop_pixels`` pixels of ``cls``; the last window if none does."""
    height, width = label.shape
    y, x = random_crop_box(height, width, crop, generator)
    for _ in range(max_tries - 1):
        if np.count_nonzero(label[y : y + crop[0], x : x + crop[1]] == cls) > min_crop_pixels:
            break
        y, x = random_crop_box(height, width, crop, generator)
    return y, x


@dataclass(frozen=True)
class RareClassSampler:
    """Draws (frame, y, x) keys by rare class sampling; ``label`` reads a frame's training ids."""

    plan: RarePlan
    label: Callable[[int], np.ndarray]

    def draw(self, crop: tuple[int, int], generator: torch.Generator) -> tuple[int, int, int]:
        """Class, frame and crop of one sample, all from ``generator``: (frame, y, x)."""
        cls, frame = draw_class_and_frame(self.plan, generator)
        y, x = rare_class_crop(
            self.label(frame), cls, crop, self.plan.min_crop_pixels, self.plan.max_crop_tries, generator
        )
        return frame, y, x
