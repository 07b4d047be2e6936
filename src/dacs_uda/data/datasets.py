"""Datasets over manifests: the same classes read the embedded and the real data.

Training, evaluation and export read the *prepared* manifests (:func:`manifest_path`), written by
the ``prepare`` stage: images already at ``data.<domain>.resize`` and labels as 8-bit Cityscapes
label ids, whatever the dataset (SYNTHIA's 16-bit class ids are converted once, in ``prepare``).
Labels are mapped to the 19 training ids here, everything else to ``IGNORE_INDEX``.

The ``label_encoding`` column of a manifest says how its labels hold their ids
(:data:`dacs_uda.data.formats.LABEL_ENCODINGS`); a manifest without it holds Cityscapes label ids.
Files whose size differs from the requested size are still resized on load (bicubic / nearest).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from dacs_uda.config import DOMAINS, Params
from dacs_uda.data.formats import (
    CITYSCAPES_LABEL_ID,
    LABEL_ENCODINGS,
    SYNTHIA_ID,
    read_label_ids,
    to_train_ids,
)
from dacs_uda.data.rcs import (
    RareClassSampler,
    RarePlan,
    class_pixel_counts,
    class_pixels_path,
    rare_plan,
    read_class_pixels,
)
from dacs_uda.data.transforms import random_crop_box, resize_pair
from dacs_uda.labels import IGNORE_INDEX, NUM_CLASSES
from dacs_uda.utils.image import as_size, normalize
from dacs_uda.utils.rng import keyed_generator

# Batches each loader worker keeps decoded ahead (torch's default is 2): a 512x512 crop is 5 MiB (float
# image, int64 label), so a deeper queue costs little memory and evens out uneven read and decode times.
PREFETCH_BATCHES = 4


def manifest_path(params: Params, domain: str) -> Path:
    """The manifest training, evaluation and export read for ``domain``: the prepared one.

    Args:
        params: The run's :class:`~dacs_uda.config.Params`.
        domain: ``"source"`` or ``"target"``.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    return Path(params.data.prepared) / f"{domain}.csv"


def read_manifest(path: str | Path, split: str | None = None) -> pd.DataFrame:
    """Rows of a manifest CSV (optionally one split) with a clear error if it is missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run `dvc repro prepare` to build it (it runs `dvc repro validate` first)"
        )
    frame = pd.read_csv(path)
    encodings = set(frame["label_encoding"].dropna()) if "label_encoding" in frame else set()
    unknown = encodings - set(LABEL_ENCODINGS)
    if unknown:
        raise ValueError(f"{path}: unknown label_encoding {sorted(unknown)}; expected {LABEL_ENCODINGS}")
    if split is not None:
        frame = frame[frame["split"] == split]
    if frame.empty:
        raise ValueError(f"{path}: no rows for split {split!r}; check the dataset root in params.yaml")
    return frame.reset_index(drop=True)


def load_pair(
    image_path: str,
    label_path: str | None,
    size: tuple[int, int],
    label_encoding: str = CITYSCAPES_LABEL_ID,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode, resize to ``size`` (W, H) and map labels to training ids.

    Args:
        image_path: Image file.
        label_path: Label file, or None for images without labels.
        size: (W, H) to resize to (bicubic image, nearest label; no-op when already that size).
        label_encoding: How the label file holds its ids (:data:`~dacs_uda.data.formats.LABEL_ENCODINGS`).
    """
    with Image.open(image_path) as img:
        image, _ = resize_pair(img.convert("RGB"), None, size)
    train_ids = None if label_path is None else load_label(label_path, size, label_encoding)
    return np.asarray(image), train_ids


def load_label(
    label_path: str, size: tuple[int, int], label_encoding: str = CITYSCAPES_LABEL_ID
) -> np.ndarray:
    """The training ids of a label file, nearest-resized to ``size`` (W, H) (see :func:`load_pair`)."""
    if label_encoding == SYNTHIA_ID:
        # 16-bit ids: map first (every SYNTHIA id has a training id < 256), then resize.
        label = Image.fromarray(to_train_ids(read_label_ids(label_path, SYNTHIA_ID), SYNTHIA_ID), "L")
    else:
        with Image.open(label_path) as lab:
            # GTA5 labels are palette PNGs: the indices (not the colours) are the label ids.
            label = lab.copy() if lab.mode in ("P", "L") else lab.convert("L")
    size = as_size(size)
    if label.size != size:
        label = label.resize(size, Image.Resampling.NEAREST)
    ids = np.asarray(label, dtype=np.uint8)
    return ids.copy() if label_encoding == SYNTHIA_ID else to_train_ids(ids, label_encoding)


class SegmentationDataset(Dataset):
    """Image/label pairs from a manifest, resized to ``size`` (W, H).

    An index may be an ``int`` (whole image) or a ``(index, y, x)`` tuple from
    :class:`KeyedCropSampler`, which then cuts a ``crop`` (H, W) window at (y, x). Keeping the
    randomness in the sampler makes a run independent of the number of loader workers.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        size: tuple[int, int],
        crop: tuple[int, int] | None = None,
        with_labels: bool = True,
    ) -> None:
        self.images = manifest["image"].tolist()
        self.labels = manifest["label"].tolist() if with_labels else [None] * len(self.images)
        encodings = manifest["label_encoding"] if "label_encoding" in manifest else None
        self.encodings = (
            [e if isinstance(e, str) and e else CITYSCAPES_LABEL_ID for e in encodings.tolist()]
            if encodings is not None
            else [CITYSCAPES_LABEL_ID] * len(self.images)
        )
        self.size: tuple[int, int] = (size[0], size[1])
        self.crop = None if crop is None else (crop[0], crop[1])

    def __len__(self) -> int:
        return len(self.images)

    def label(self, index: int) -> np.ndarray:
        """The training ids of frame ``index`` at ``size`` (what rare class sampling crops by)."""
        label_path = self.labels[index]
        if label_path is None:
            raise ValueError(f"frame {index} ({self.images[index]}) has no label: this dataset has none")
        return load_label(label_path, self.size, self.encodings[index])

    def __getitem__(self, key: int | tuple[int, int, int]) -> dict[str, torch.Tensor | str]:
        index, y, x = (key, 0, 0) if isinstance(key, int) else key
        image, label = load_pair(self.images[index], self.labels[index], self.size, self.encodings[index])
        if label is None:
            label = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        if self.crop is not None and not isinstance(key, int):
            image = image[y : y + self.crop[0], x : x + self.crop[1]]
            label = label[y : y + self.crop[0], x : x + self.crop[1]]
        return {
            "image": normalize(image),
            "label": torch.from_numpy(np.ascontiguousarray(label)).long(),
            "name": Path(self.images[index]).name,
        }


class KeyedCropSampler(Sampler[tuple[int, int, int]]):
    """Endless ``(index, y, x)`` keys of one stream, each drawn from a generator keyed by its position.

    Sample ``i`` of step ``s`` sits at flat position ``p = s * batch_size + i``: its frame is entry
    ``p % length`` of epoch ``p // length``'s permutation (keyed by seed, stream and epoch) and its crop
    corner comes from a generator keyed by seed, stream, step and ``i``. No draw depends on when the key
    is asked for, so loader workers that pre-fetch keys, a resumed run starting at ``start_step`` and a
    batch split over processes all see the same crops. Crops use the official inclusive
    ``randint(0, W - w)`` bounds.

    ``batch_size`` is the global batch; ``shard`` (default: all of it) the global indices this process
    loads at every step, ``range(rank * b, (rank + 1) * b)`` for rank ``rank`` of a DDP run.

    With ``rare`` (rare class sampling, :mod:`dacs_uda.data.rcs`), each sample's class, frame and crop
    come instead from one generator keyed by seed, stream, ``"rcs"``, step and ``i``.
    """

    def __init__(
        self,
        length: int,
        size: tuple[int, int],
        crop: tuple[int, int],
        *,
        seed: int,
        stream: str,
        batch_size: int,
        start_step: int = 0,
        shard: range | None = None,
        rare: RareClassSampler | None = None,
    ) -> None:
        self.length, self.height, self.width = length, size[1], size[0]
        self.crop = (crop[0], crop[1])
        self.seed, self.stream, self.batch_size, self.start_step = seed, stream, batch_size, start_step
        self.shard = range(batch_size) if shard is None else shard
        if not self.shard or not set(self.shard) <= set(range(batch_size)):
            raise ValueError(f"shard {self.shard} is not a non-empty part of a batch of {batch_size}")
        self._epoch, self._order = -1, [0]
        self.rare = rare

    def _frame(self, position: int) -> int:
        epoch, offset = divmod(position, self.length)
        if epoch != self._epoch:
            gen = keyed_generator(self.seed, self.stream, "epoch", epoch)
            self._epoch, self._order = epoch, torch.randperm(self.length, generator=gen).tolist()
        return self._order[offset]

    def key(self, step: int, index: int) -> tuple[int, int, int]:
        """The key of sample ``index`` (its position in the global batch) at ``step``."""
        if self.rare is not None:
            return self.rare.draw(self.crop, keyed_generator(self.seed, self.stream, "rcs", step, index))
        gen = keyed_generator(self.seed, self.stream, "crop", step, index)
        y, x = random_crop_box(self.height, self.width, self.crop, gen)
        return self._frame(step * self.batch_size + index), y, x

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for step in itertools.count(self.start_step):
            for index in self.shard:
                yield self.key(step, index)


def loader_workers(setting: int, env: Mapping[str, str] = os.environ) -> int:
    """Loader processes for ``data.num_workers``; -1 (auto): with a GPU, one per CPU core that this
    node's training processes leave free (cores / processes - 1); without one, none, as training on the
    CPU uses every core. Every crop is keyed, so the count never changes a result."""
    if setting >= 0:
        return setting
    if not torch.cuda.is_available():
        return 0
    processes = int(env.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, (os.cpu_count() or 1) // processes - 1)


def infinite_loader(
    manifest: pd.DataFrame,
    size: tuple[int, int],
    crop: tuple[int, int],
    batch_size: int,
    sampler_key: tuple[int, str],
    num_workers: int = 0,
    with_labels: bool = True,
    start_step: int = 0,
    shard: range | None = None,
    rare: RarePlan | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches of random crops from ``start_step`` on; ``sampler_key`` is the (seed, stream) of
    :class:`KeyedCropSampler`, ``batch_size`` the global batch, ``shard`` this process's part of it,
    ``rare`` the rare class sampling plan over the manifest's rows (None: uniform frames and crops)."""
    dataset = SegmentationDataset(manifest, size, crop, with_labels)
    seed, stream = sampler_key
    sampler = KeyedCropSampler(
        len(dataset), size, crop, seed=seed, stream=stream, batch_size=batch_size, start_step=start_step,
        shard=shard, rare=None if rare is None else RareClassSampler(rare, dataset.label),
    )  # fmt: skip
    num_workers = loader_workers(num_workers)
    loader = DataLoader(
        dataset,
        batch_size=len(sampler.shard),
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        prefetch_factor=PREFETCH_BATCHES if num_workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
    )
    return iter(loader)


def domain_batches(
    params: Params,
    section: str,
    domain: str,
    batch_size: int,
    with_labels: bool = True,
    start_step: int = 0,
    shard: range | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless training crops of ``domain`` for the stage ``section`` from ``start_step`` on, in the
    stream ``section/domain``: the ``shard`` (default: all) of each global batch of ``batch_size``.
    The adaptation's source crops are drawn by rare class sampling when ``adapt.rcs.enabled``."""
    rows = read_manifest(manifest_path(params, domain), split="train")
    size = as_size(getattr(params.data, domain).resize)
    crop = as_size(params.data.crop)
    key = (params.seed, f"{section}/{domain}")
    rare = None
    if section == "adapt" and domain == "source" and params.adapt.rcs.enabled:
        pixels = read_class_pixels(class_pixels_path(params.data.prepared, domain), rows["label"].tolist())
        rare = rare_plan(pixels, params.adapt.rcs)
    return infinite_loader(
        rows, size, crop, batch_size, key, params.data.num_workers, with_labels, start_step, shard, rare
    )


def class_prior(params: Params, domain: str) -> torch.Tensor:
    """Pixel frequency of each class in ``domain``'s training labels (the distribution-alignment prior)."""
    rows = read_manifest(manifest_path(params, domain), split="train")
    size = as_size(getattr(params.data, domain).resize)
    counts = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    for label in rows["label"]:
        counts += torch.from_numpy(class_pixel_counts(load_label(label, size)))
    return (counts / counts.sum()).float()
