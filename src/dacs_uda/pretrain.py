"""Stage ``pretrain`` (and ``oracle``): supervised training on one domain's labelled crops.

``python -m dacs_uda.pretrain`` trains on the source domain (the source-only baseline and DACS's
starting point); ``--section oracle`` trains on *target* labels, the supervised upper bound that
measures how large the domain gap is.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dacs_uda.config import Params, TrainConfig, load_params
from dacs_uda.data.datasets import infinite_loader, manifest_path, read_manifest
from dacs_uda.labels import IGNORE_INDEX
from dacs_uda.models.deeplabv2 import DeepLabV2, build_model, upsample_logits
from dacs_uda.optim import build_optimizer, set_lr
from dacs_uda.utils.checkpoint import save_checkpoint
from dacs_uda.utils.curve import CurveLogger
from dacs_uda.utils.io import write_json
from dacs_uda.utils.lineage import lineage, with_lineage
from dacs_uda.utils.logging import setup_logging
from dacs_uda.utils.seed import seed_everything

log = logging.getLogger(__name__)


def supervised_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of upsampled logits, averaged over non-ignored pixels (official ``CrossEntropy2d``)."""
    logits = upsample_logits(model(images), labels.shape[-2:])
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def domain_batches(params: Params, domain: str, batch_size: int, generator: torch.Generator):
    """Endless labelled training crops of ``domain`` ('source' or 'target')."""
    rows = read_manifest(manifest_path(params, domain), split="train")
    size = getattr(params.data, domain).resize
    return infinite_loader(rows, size, params.data.crop, batch_size, generator, params.data.num_workers)


def train_supervised(
    params: Params, cfg: TrainConfig, generator: torch.Generator, device: torch.device
) -> tuple[DeepLabV2, torch.optim.Optimizer, CurveLogger]:
    """Train a fresh model on ``cfg.domain`` for ``cfg.optim.iterations`` SGD steps."""
    model = build_model(params.model).to(device).train()
    optimizer = build_optimizer(model, cfg.optim)
    batches = domain_batches(params, cfg.domain, cfg.optim.batch_size, generator)
    curve = CurveLogger(cfg.log_every)
    progress = tqdm(range(cfg.optim.iterations), desc=f"train on {cfg.domain}", unit="step", mininterval=5.0)
    for step in progress:
        lr = set_lr(optimizer, cfg.optim, step)
        batch = next(batches)
        loss = supervised_loss(model, batch["image"].to(device), batch["label"].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        row = curve.add(step, {"loss": loss.item(), "lr": lr})
        if row:
            progress.set_postfix(loss=f"{row['loss']:.3f}")
    return model, optimizer, curve


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=("pretrain", "oracle"), default="pretrain")
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params()
    cfg: TrainConfig = getattr(params, args.section)
    generator = seed_everything(params.seed, params.deterministic)
    device = pick_device()
    log.info("%s: %d steps on %s data, device %s", args.section, cfg.optim.iterations, cfg.domain, device)
    start = time.perf_counter()
    model, optimizer, curve = train_supervised(params, cfg, generator, device)
    seconds = time.perf_counter() - start
    save_checkpoint(
        cfg.checkpoint, model, params, step=cfg.optim.iterations, optimizer=optimizer, generator=generator
    )
    curve.write(cfg.curve)
    final = curve.rows[-1] if curve.rows else {}
    metrics = {"train/loss": final.get("loss"), "steps": cfg.optim.iterations, "seconds": round(seconds, 1)}
    write_json(cfg.metrics, with_lineage(metrics, lineage(params)))
    log.info("%s: wrote %s (%.0f s)", args.section, cfg.checkpoint, seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
