"""Stage ``evaluate``: per-class IoU and mIoU of every trained model on target val.

Protocol (official DACS): the image is resized to ``data.target.resize`` (1024x512 for Cityscapes),
the logits are bilinearly upsampled to that size and compared with labels nearest-resized to the
same size; one dataset-level confusion matrix per model; the student weights are evaluated.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dacs_uda.config import Params, load_params
from dacs_uda.data.datasets import SegmentationDataset, read_manifest
from dacs_uda.data.transforms import denormalize
from dacs_uda.labels import CLASS_NAMES, NUM_CLASSES, SYNTHIA_13, SYNTHIA_16
from dacs_uda.metrics import ConfusionMatrix
from dacs_uda.models.deeplabv2 import upsample_logits
from dacs_uda.pretrain import pick_device
from dacs_uda.utils.checkpoint import load_model
from dacs_uda.utils.io import atomic_path, write_json
from dacs_uda.utils.logging import setup_logging
from dacs_uda.viz import grid, label_panel, save_png

log = logging.getLogger(__name__)


def val_loader(params: Params) -> DataLoader:
    rows = read_manifest(Path(params.data.manifests) / "target.csv", split="val")
    dataset = SegmentationDataset(rows, params.data.target.resize)
    return DataLoader(dataset, batch_size=params.evaluate.batch_size, num_workers=params.data.num_workers)


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Training ids at the input resolution."""
    return upsample_logits(model(images), images.shape[-2:]).argmax(1)


@torch.no_grad()
def confusion(model: torch.nn.Module, loader: DataLoader, device: torch.device, desc: str) -> ConfusionMatrix:
    """Accumulate the dataset-level confusion matrix on ``device``."""
    matrix = ConfusionMatrix(NUM_CLASSES, device)
    for batch in tqdm(loader, desc=desc, unit="batch", mininterval=5.0):
        matrix.update(batch["label"].to(device), predict(model, batch["image"].to(device)))
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


@torch.no_grad()
def sample_grid(
    models: dict[str, torch.nn.Module], loader: DataLoader, device: torch.device, count: int
) -> np.ndarray:
    """Rows of (image, ground truth, one prediction per model) for the first ``count`` val images."""
    batch = next(iter(loader))
    images, labels = batch["image"][:count].to(device), batch["label"][:count]
    preds = {name: predict(model, images).cpu().numpy().astype(np.uint8) for name, model in models.items()}
    rgb = (denormalize(images).permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)
    rows = [
        [rgb[i], label_panel(labels[i].numpy().astype(np.uint8))]
        + [label_panel(p[i]) for p in preds.values()]
        for i in range(len(rgb))
    ]
    return grid(rows, ["image", "ground truth", *preds])


def main() -> int:
    setup_logging()
    params = load_params()
    cfg, device = params.evaluate, pick_device()
    loader = val_loader(params)
    models, results = {}, {}
    for name, path in cfg.models.items():
        models[name] = load_model(path)[0].to(device)
        results[name] = summarize(confusion(models[name], loader, device, f"evaluate {name}"))
        log.info(
            "%s: mIoU %.2f on target val (%d classes never predicted)",
            name,
            results[name]["mIoU"],
            results[name]["never_predicted"],
        )
    write_json(cfg.metrics, {name: {k: v for k, v in r.items() if k != "iou"} for name, r in results.items()})
    write_per_class(cfg.per_class, results)
    if cfg.num_samples:
        save_png(
            Path(cfg.samples_dir) / "target_val.png", sample_grid(models, loader, device, cfg.num_samples)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
