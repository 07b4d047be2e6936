"""Stage ``adapt``: DACS on labelled source and unlabelled target crops.

The student starts from the ``pretrain`` checkpoint (``adapt.init: pretrained``) or from scratch;
the EMA teacher starts as a copy of the student. The student is what gets evaluated and exported.
"""

from __future__ import annotations

import logging
import time

import torch
from tqdm import tqdm

from dacs_uda.config import Params, load_params
from dacs_uda.dacs.ema import make_teacher
from dacs_uda.dacs.step import Alignment, Batch, dacs_step
from dacs_uda.data.datasets import infinite_loader, load_pair, manifest_path, read_manifest
from dacs_uda.labels import NUM_CLASSES
from dacs_uda.models.deeplabv2 import DeepLabV2, build_model
from dacs_uda.optim import build_optimizer, set_lr
from dacs_uda.pretrain import domain_batches, pick_device
from dacs_uda.utils.checkpoint import load_checkpoint, save_checkpoint
from dacs_uda.utils.curve import CurveLogger
from dacs_uda.utils.io import write_json
from dacs_uda.utils.lineage import lineage, with_lineage
from dacs_uda.utils.logging import setup_logging
from dacs_uda.utils.seed import seed_everything

log = logging.getLogger(__name__)


def initial_student(params: Params, device: torch.device) -> DeepLabV2:
    """A fresh model, or the source-pretrained one."""
    model = build_model(params.model)
    if params.adapt.init == "pretrained":
        model.load_state_dict(load_checkpoint(params.pretrain.checkpoint)["model"])
    return model.to(device).train()


def class_prior(params: Params, domain: str) -> torch.Tensor:
    """Pixel frequency of each class in ``domain``'s training labels (the distribution-alignment prior)."""
    rows = read_manifest(manifest_path(params, domain), split="train")
    size = getattr(params.data, domain).resize
    counts = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    for image, label in zip(rows["image"], rows["label"], strict=True):
        train_ids = torch.from_numpy(load_pair(image, label, size)[1]).long().flatten()
        counts += torch.bincount(train_ids[train_ids < NUM_CLASSES], minlength=NUM_CLASSES)
    return (counts / counts.sum()).float()


def make_alignment(params: Params, device: torch.device) -> Alignment | None:
    """The ``dist_align`` prior: target labels (the paper's oracle ablation) or source labels (estimate)."""
    if params.adapt.method != "dist_align":
        return None
    domain = "target" if params.adapt.da_prior == "target_labels" else "source"
    return Alignment(prior=class_prior(params, domain).to(device))


def run_adaptation(params: Params, generator: torch.Generator, device: torch.device):
    """Run ``adapt.optim.iterations`` steps of ``adapt.method``; return student, teacher, optimiser, curve."""
    cfg = params.adapt
    student = initial_student(params, device)
    # official: the teacher's BN normalises with target-batch statistics (train mode); clean: eval mode.
    teacher = make_teacher(student).train(cfg.fidelity == "official")
    alignment = make_alignment(params, device)
    optimizer = build_optimizer(student, cfg.optim)
    source = domain_batches(params, "source", cfg.optim.batch_size, generator)
    target_rows = read_manifest(manifest_path(params, "target"), split="train")
    target = infinite_loader(
        target_rows,
        params.data.target.resize,
        params.data.crop,
        cfg.optim.batch_size,
        generator,
        params.data.num_workers,
        with_labels=False,
    )
    curve = CurveLogger(cfg.log_every)
    progress = tqdm(range(cfg.optim.iterations), desc=f"adapt ({cfg.method})", unit="step", mininterval=5.0)
    for step in progress:
        lr = set_lr(optimizer, cfg.optim, step)
        src, tgt = next(source), next(target)
        batch = Batch(src["image"].to(device), src["label"].to(device), tgt["image"].to(device))
        stats = dacs_step(student, teacher, optimizer, batch, cfg, step, generator, alignment)
        row = curve.add(
            step,
            {
                "loss_source": stats.loss_source,
                "loss_mix": stats.loss_mix,
                "confident": stats.confident,
                "lr": lr,
            },
        )
        if row:
            progress.set_postfix(
                src=f"{row['loss_source']:.3f}", mix=f"{row['loss_mix']:.3f}", conf=f"{row['confident']:.2f}"
            )
    return student, teacher, optimizer, curve


def main() -> int:
    setup_logging()
    params = load_params()
    cfg = params.adapt
    generator = seed_everything(params.seed, params.deterministic)
    device = pick_device()
    log.info("adapt: %s, %d steps, init %s, device %s", cfg.method, cfg.optim.iterations, cfg.init, device)
    start = time.perf_counter()
    student, teacher, optimizer, curve = run_adaptation(params, generator, device)
    seconds = time.perf_counter() - start
    save_checkpoint(
        cfg.checkpoint,
        student,
        params,
        step=cfg.optim.iterations,
        ema_model=teacher,
        optimizer=optimizer,
        generator=generator,
    )
    curve.write(cfg.curve)
    final = curve.rows[-1] if curve.rows else {}
    metrics = {
        **{f"train/{k}": v for k, v in final.items() if k != "step"},
        "steps": cfg.optim.iterations,
        "seconds": round(seconds, 1),
    }
    write_json(cfg.metrics, with_lineage(metrics, lineage(params)))
    log.info("adapt: wrote %s (%.0f s)", cfg.checkpoint, seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
