"""One DACS training step, composed from the pure functions of this package.

Order as in the official loop: source loss -> teacher pseudo-labels on the un-augmented target
crops -> class mix (image, label, pixel weight) -> colour jitter and blur of the mixed images ->
mixed loss weighted by lambda -> one backward and optimiser step -> EMA update of the teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dacs_uda.config import AdaptConfig
from dacs_uda.dacs.augment import color_jitter, gaussian_blur
from dacs_uda.dacs.ema import ema_alpha, ema_update_
from dacs_uda.dacs.losses import weighted_cross_entropy
from dacs_uda.dacs.mixing import class_mask, mix
from dacs_uda.dacs.pseudo import confident_fraction, pixel_weights, pseudo_labels
from dacs_uda.labels import IGNORE_INDEX
from dacs_uda.models.deeplabv2 import upsample_logits
from dacs_uda.pretrain import supervised_loss


@dataclass(frozen=True)
class StepStats:
    loss_source: float
    loss_mix: float
    confident: float  # lambda: fraction of confident teacher pixels


@dataclass(frozen=True)
class Batch:
    source_images: torch.Tensor
    source_labels: torch.Tensor
    target_images: torch.Tensor


def mixed_sample(
    batch: Batch, teacher: torch.nn.Module, cfg: AdaptConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Build the augmented mixed images, their labels and pixel weights; also return lambda."""
    with torch.no_grad():
        labels_t, confidence = pseudo_labels(teacher(batch.target_images), batch.target_images.shape[-2:])
    lam = confident_fraction(confidence, cfg.pseudo_threshold)
    mask = class_mask(batch.source_labels, generator, ignore_index=IGNORE_INDEX)
    images = mix(mask, batch.source_images, batch.target_images)
    images = color_jitter(images, generator, p=cfg.jitter_p, strength=cfg.jitter_strength)
    images = gaussian_blur(images, generator, p=cfg.blur_p, sigma_range=tuple(cfg.blur_sigma))
    return images, mix(mask, batch.source_labels, labels_t), pixel_weights(mask, lam), lam


def dacs_step(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    cfg: AdaptConfig,
    step: int,
    generator: torch.Generator,
) -> StepStats:
    """One optimiser step of ``cfg.method`` ('dacs' or 'source_only'), then the teacher's EMA update."""
    loss_source = supervised_loss(student, batch.source_images, batch.source_labels)
    loss_mix, lam = torch.zeros(()), torch.zeros(())
    if cfg.method == "dacs":
        images, labels, weights, lam = mixed_sample(batch, teacher, cfg, generator)
        logits = upsample_logits(student(images), labels.shape[-2:])
        loss_mix = weighted_cross_entropy(logits, labels, weights, ignore_index=IGNORE_INDEX)
    optimizer.zero_grad(set_to_none=True)
    (loss_source + cfg.mix_weight * loss_mix).backward()
    optimizer.step()
    ema_update_(teacher, student, ema_alpha(step, cfg.ema_alpha))
    return StepStats(loss_source.item(), loss_mix.item(), float(lam))
