"""Evaluation: per-class IoU and mIoU of every trained model on target val.

Two protocols (``evaluate.protocol``); in both the image is resized to ``data.target.resize`` (1024x512
for Cityscapes), single scale, no flipping, and the logits are bilinearly upsampled to the input size
(``align_corners=True``, as the official code):

* ``official`` (DACS, ``evaluateUDA.py``): labels nearest-resized to the input size (512x1024).
* ``full``: the logits are upsampled once more, to the native label size (2048x1024 for Cityscapes),
  and compared with the labels as they are on disk. This is what the Cityscapes benchmark scores.

One dataset-level confusion matrix per model, accumulated on the device; IoU as the official
Cityscapes scripts compute it (see :mod:`dacs_uda.metrics`). The same loop evaluates any *backend*
(a PyTorch checkpoint or an exported ONNX model, see :mod:`dacs_uda.evaluate_onnx`), so an exported
model's mIoU is measured the same way as its checkpoint's.

An entry of ``evaluate.models`` that ends in ``.onnx`` is evaluated through ONNX Runtime.

Predictions of the models in ``evaluate.save_predictions`` are written in Cityscapes format at the
resolution they were scored at: ``<predictions_dir>/<model>/labelIds/<frame>.png`` (Cityscapes label
ids; under ``full`` the files ``cityscapesscripts`` evaluates) and ``<model>/color/<frame>.png``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dacs_uda.config import Params
from dacs_uda.data.datasets import load_pair, loader_workers, manifest_path, read_manifest
from dacs_uda.inference import OnnxSegmenter
from dacs_uda.labels import (
    CLASS_NAMES,
    NUM_CLASSES,
    SYNTHIA_13,
    SYNTHIA_16,
    colorize,
    label_id_to_train_id_lut,
    train_id_to_label_id_lut,
)
from dacs_uda.metrics import ConfusionMatrix
from dacs_uda.models.checkpoint import load_model
from dacs_uda.models.deeplabv2 import FullResolution, upsample_logits
from dacs_uda.utils.image import as_size, denormalize, normalize
from dacs_uda.utils.io import atomic_path
from dacs_uda.viz import grid, label_panel

log = logging.getLogger(__name__)

# Normalised images N x 3 x H x W on the device -> logits N x C x H x W at the input resolution.
Backend = Callable[[torch.Tensor], torch.Tensor]
# Called once per batch with the batch and each backend's logits and predictions (training ids).
BatchHook = Callable[[dict[str, Any], dict[str, torch.Tensor], dict[str, list[torch.Tensor]]], None]

_TO_TRAIN_ID = label_id_to_train_id_lut()
_TO_LABEL_ID = train_id_to_label_id_lut()


def load_label(path: str | Path, size: tuple[int, int] | None) -> np.ndarray:
    """Cityscapes label ids on disk -> training ids, nearest-resized to ``size`` (W, H) or native (None)."""
    with Image.open(path) as lab:
        # GTA5 labels are palette PNGs: the indices (not the colours) are the label ids.
        label = lab.copy() if lab.mode in ("P", "L") else lab.convert("L")
    if size is not None and label.size != as_size(size):
        label = label.resize(as_size(size), Image.Resampling.NEAREST)
    return _TO_TRAIN_ID[np.asarray(label, dtype=np.uint8)]


class EvalDataset(Dataset):
    """Val images resized to ``input_size`` (W, H) and labels at ``label_size`` (W, H; None: native)."""

    def __init__(
        self, manifest: pd.DataFrame, input_size: tuple[int, int], label_size: tuple[int, int] | None
    ) -> None:
        self.images, self.labels = manifest["image"].tolist(), manifest["label"].tolist()
        self.input_size = as_size(input_size)
        self.label_size = None if label_size is None else as_size(label_size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, _ = load_pair(self.images[index], None, self.input_size)
        label = load_label(self.labels[index], self.label_size)
        return {
            "image": normalize(image),
            "label": torch.from_numpy(label).long(),
            "path": self.images[index],
        }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the images; keep labels as a list (native label sizes may differ between frames)."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "label": [s["label"] for s in samples],
        "path": [s["path"] for s in samples],
    }


def label_size_for(protocol: str, resize: list[int]) -> tuple[int, int] | None:
    """The (W, H) labels are compared at: the input size (official) or native (full, None)."""
    if protocol == "official":
        return (int(resize[0]), int(resize[1]))
    if protocol == "full":
        return None
    raise ValueError(f"unknown evaluation protocol {protocol!r}: use 'official' or 'full'")


def spread_rows(rows: pd.DataFrame, count: int) -> pd.DataFrame:
    """At most ``count`` rows evenly spaced over ``rows`` (0: all of them), always the same ones.

    Evenly spaced rather than the first ``count``: manifests are sorted by city, so a prefix would
    validate on one city only.
    """
    if count == 0 or count >= len(rows):
        return rows
    positions = np.linspace(0, len(rows) - 1, count).round().astype(int)
    return rows.iloc[positions].reset_index(drop=True)


def val_loader(params: Params, protocol: str | None = None, images: int = 0) -> DataLoader:
    """Target val under ``protocol`` (default ``params.evaluate.protocol``), at most ``images`` (0: all)."""
    protocol = protocol or params.evaluate.protocol
    rows = spread_rows(read_manifest(manifest_path(params, "target"), split="val"), images)
    if protocol == "full":
        if "raw_label" in rows:
            rows = rows.assign(label=rows["raw_label"])  # native-size labels (prepared ones are resized)
        else:
            log.warning("the manifest has no raw_label column: protocol full scores the prepared labels")
    resize = params.data.target.resize
    dataset = EvalDataset(rows, as_size(resize), label_size_for(protocol, resize))
    return DataLoader(
        dataset,
        batch_size=params.evaluate.batch_size,
        num_workers=loader_workers(params.data.num_workers),
        collate_fn=collate,
    )


def onnx_backend(segmenter: OnnxSegmenter) -> Backend:
    """An exported ONNX model (logits at the input resolution) as a backend, through ONNX Runtime."""

    def run(images: torch.Tensor) -> torch.Tensor:
        logits = segmenter.predict_logits(images.detach().cpu().numpy().astype(np.float32, copy=False))
        return torch.from_numpy(logits).to(images.device)

    return run


def load_backend(path: str | Path, device: torch.device) -> Backend:
    """A ``.onnx`` file (ONNX Runtime, CUDA when available) or a checkpoint (PyTorch on ``device``)."""
    if Path(path).suffix == ".onnx":
        return onnx_backend(OnnxSegmenter(path))
    return torch_backend(load_model(path)[0].to(device))


def torch_backend(model: torch.nn.Module) -> Backend:
    """A PyTorch segmentation model (logits at 1/8) as a backend: logits at the input resolution."""
    full = FullResolution(model).eval()

    @torch.no_grad()
    def run(images: torch.Tensor) -> torch.Tensor:
        return full(images)

    return run


@torch.no_grad()
def predict_labels(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Training ids at ``size`` (H, W): logits bilinearly upsampled first if they are smaller."""
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = upsample_logits(logits, size)
    return logits.argmax(1)


@torch.no_grad()
def evaluate_backends(
    backends: dict[str, Backend],
    loader: DataLoader,
    device: torch.device,
    on_batch: BatchHook | None = None,
    desc: str = "evaluate",
) -> dict[str, ConfusionMatrix]:
    """One pass over ``loader``: a dataset-level confusion matrix per backend, kept on ``device``.

    Args:
        backends: Name -> backend; all of them see the same batches.
        loader: Batches from :func:`collate` (labels as a list of H x W training-id tensors).
        device: Where images, logits and matrices live.
        on_batch: Optional hook (writing predictions, comparing backends).
        desc: Progress-bar label.

    Returns:
        Name -> confusion matrix.
    """
    matrices = {name: ConfusionMatrix(NUM_CLASSES, device) for name in backends}
    for batch in tqdm(loader, desc=desc, unit="batch", mininterval=5.0):
        images = batch["image"].to(device)
        logits = {name: backend(images) for name, backend in backends.items()}
        labels = [label.to(device) for label in batch["label"]]
        preds: dict[str, list[torch.Tensor]] = {name: [] for name in backends}
        for i, label in enumerate(labels):  # per frame: native label sizes may differ
            for name, out in logits.items():
                pred = predict_labels(out[i : i + 1], tuple(label.shape))[0]
                matrices[name].update(label, pred)
                preds[name].append(pred)
        if on_batch is not None:
            on_batch(batch, logits, preds)
    return matrices


def frame_name(image_path: str | Path) -> str:
    """``frankfurt_000000_000019_leftImg8bit.png`` -> ``frankfurt_000000_000019`` (other names: the stem)."""
    return Path(image_path).stem.removesuffix("_leftImg8bit")


def write_prediction(folder: Path, name: str, train_ids: np.ndarray) -> None:
    """``folder/labelIds/<name>.png`` (Cityscapes label ids) and ``folder/color/<name>.png``."""
    for sub in ("labelIds", "color"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    train_ids = train_ids.astype(np.uint8)
    Image.fromarray(_TO_LABEL_ID[train_ids]).save(folder / "labelIds" / f"{name}.png")
    Image.fromarray(colorize(train_ids)).save(folder / "color" / f"{name}.png")


class PredictionWriter:
    """A :data:`BatchHook` that writes the predictions of ``models`` under ``root/<model>/``."""

    def __init__(self, root: Path, models: list[str]) -> None:
        self.root, self.models = Path(root), list(models)

    def __call__(self, batch: dict[str, Any], logits: dict, preds: dict[str, list[torch.Tensor]]) -> None:
        for model in self.models:
            for path, pred in zip(batch["path"], preds[model], strict=True):
                write_prediction(self.root / model, frame_name(path), pred.cpu().numpy())


def confusion_from_files(
    pairs: list[tuple[str | Path, str | Path]], device: torch.device | str = "cpu"
) -> ConfusionMatrix:
    """Score Cityscapes-format prediction files: (prediction, ground truth) label-id PNGs of equal size.

    Both are mapped from Cityscapes label ids to training ids; a prediction outside the 19 classes
    counts as a miss of the ground-truth class, as in ``cityscapesscripts``.
    """
    matrix = ConfusionMatrix(NUM_CLASSES, device)
    for pred_path, gt_path in pairs:
        pred, gt = load_label(pred_path, None), load_label(gt_path, None)
        if pred.shape != gt.shape:
            raise ValueError(f"{pred_path} is {pred.shape[::-1]} but {gt_path} is {gt.shape[::-1]} (W x H)")
        matrix.update(torch.from_numpy(gt).to(device), torch.from_numpy(pred).to(device))
    return matrix


def summarize(matrix: ConfusionMatrix) -> dict:
    """mIoU (19 classes and the SYNTHIA 16/13 subsets), per-class IoU, classes never predicted."""
    iou = matrix.iou().tolist()
    return {
        "mIoU": round(100 * matrix.miou(), 2),
        "mIoU16": round(100 * matrix.miou(SYNTHIA_16), 2),
        "mIoU13": round(100 * matrix.miou(SYNTHIA_13), 2),
        "never_predicted": len(matrix.never_predicted()),
        "iou": {
            name: None if np.isnan(v) else round(100 * v, 2) for name, v in zip(CLASS_NAMES, iou, strict=True)
        },
    }


def write_per_class(path: str | Path, results: dict[str, dict]) -> None:
    """Long-format CSV (class, model, iou) for ``dvc plots``."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["class", "model", "iou"])
        for model, summary in results.items():
            for name, value in summary["iou"].items():
                writer.writerow([name, model, "" if value is None else value])


def confusion_rows(matrices: dict[str, ConfusionMatrix]) -> list[dict[str, Any]]:
    """One row per (model, actual, predicted): the share of the actual class's pixels, in percent."""
    rows = []
    for model, matrix in matrices.items():
        share = (100 * matrix.normalized()).cpu().tolist()
        for a, actual in enumerate(CLASS_NAMES):
            for p, predicted in enumerate(CLASS_NAMES):
                rows.append({"model": model, "actual": actual, "predicted": predicted, "share": share[a][p]})
    return rows


def write_confusion(path: str | Path, matrices: dict[str, ConfusionMatrix]) -> None:
    """Row-normalised confusion matrices as long CSV for the ``confusion_share`` plot template."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["model", "actual", "predicted", "share"])
        writer.writeheader()
        for row in confusion_rows(matrices):
            writer.writerow({**row, "share": round(row["share"], 3)})


@torch.no_grad()
def sample_grid(
    backends: dict[str, Backend], loader: DataLoader, device: torch.device, count: int
) -> np.ndarray:
    """Rows of (image, ground truth, one prediction per model) for the first ``count`` val images."""
    batch = next(iter(loader))
    images = batch["image"][:count].to(device)
    size = tuple(images.shape[-2:])
    labels = [resize_label(label, size) for label in batch["label"][:count]]
    preds = {name: run(images).argmax(1).cpu().numpy().astype(np.uint8) for name, run in backends.items()}
    rgb = (denormalize(images).permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)
    rows = [
        [rgb[i], label_panel(labels[i])] + [label_panel(p[i]) for p in preds.values()]
        for i in range(len(rgb))
    ]
    return grid(rows, ["image", "ground truth", *preds])


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A training-id label resized (nearest) to ``size`` (H, W) for the sample picture."""
    array = label.numpy().astype(np.uint8)
    if array.shape != tuple(size):
        array = np.asarray(Image.fromarray(array).resize(size[::-1], Image.Resampling.NEAREST))
    return array
