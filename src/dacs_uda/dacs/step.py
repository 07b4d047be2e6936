"""One adaptation step, composed from the pure functions of this package.

Order as in the official DACS loop: source loss -> teacher pseudo-labels on the un-augmented target
crops -> mixing (image, label, pixel weight) -> colour jitter and blur of the mixed images -> mixed
loss weighted by lambda -> one backward and optimiser step -> EMA update of the teacher.

``adapt.method`` selects DACS or one of the paper's baselines and ablations; each builds the
"unsupervised" sample differently and shares everything else:

* ``dacs``: half of the classes of each source crop pasted onto a target crop (ClassMix across domains);
* ``cutmix``: a source box covering ``cutmix_area`` of a target crop (cross-domain CutMix);
* ``classmix``: the naive target-target ClassMix, the mask from the teacher's pseudo-label of one target
  crop, pseudo-labels on both sides, lambda from the mixed confidences;
* ``pseudo_label``: the target crop itself with its pseudo-labels (no mixing);
* ``dist_align``: DACS with pseudo-labels from distribution-aligned teacher probabilities
  (q~ = Normalize(q * p / p~), p a class prior, p~ the running mean of the teacher's predictions);
* ``source_only``: the source loss alone (equal-compute baseline for the adaptation stage).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dacs_uda.config import AdaptConfig
from dacs_uda.dacs.augment import color_jitter, gaussian_blur
from dacs_uda.dacs.ema import ema_alpha, ema_update_
from dacs_uda.dacs.losses import weighted_cross_entropy
from dacs_uda.dacs.mixing import class_mask, cutmix_mask, mix
from dacs_uda.dacs.pseudo import (
    align_distribution,
    confident_fraction,
    pixel_weights,
    teacher_probabilities,
    update_running_mean,
)
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


@dataclass
class Alignment:
    """Distribution-alignment state: the class prior p and the running mean p~ of teacher predictions."""

    prior: torch.Tensor
    running: torch.Tensor | None = None


@dataclass(frozen=True)
class Sample:
    """An unsupervised training sample: images, (pseudo-)labels, per-pixel loss weights and lambda."""

    images: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    lam: torch.Tensor


def teacher_predictions(
    teacher: torch.nn.Module, images: torch.Tensor, cfg: AdaptConfig, alignment: Alignment | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels and confidences of the teacher, distribution-aligned for ``dist_align``."""
    with torch.no_grad():
        probs = teacher_probabilities(teacher(images), images.shape[-2:])
    if cfg.method == "dist_align" and alignment is not None:
        alignment.running = update_running_mean(
            probs.mean(dim=(0, 2, 3)) if alignment.running is None else alignment.running,
            probs,
            cfg.da_momentum,
        )
        probs = align_distribution(probs, alignment.prior, alignment.running)
    confidence, labels = probs.max(dim=1)
    return labels, confidence


def unsupervised_sample(
    batch: Batch,
    teacher: torch.nn.Module,
    cfg: AdaptConfig,
    generator: torch.Generator,
    alignment: Alignment | None = None,
) -> Sample:
    """Build ``cfg.method``'s sample from the source crops and the teacher's view of the target crops."""
    official = cfg.fidelity == "official"
    labels_t, conf_t = teacher_predictions(teacher, batch.target_images, cfg, alignment)
    if cfg.method in ("dacs", "dist_align", "cutmix"):
        if cfg.method == "cutmix":
            b, h, w = labels_t.shape
            mask = cutmix_mask(b, h, w, generator, area=cfg.cutmix_area, device=labels_t.device)
        else:
            mask = class_mask(
                batch.source_labels, generator, ignore_index=IGNORE_INDEX, include_ignore=official
            )
        lam = confident_fraction(conf_t, cfg.pseudo_threshold)
        images = mix(mask, batch.source_images, batch.target_images)
        labels, weights = mix(mask, batch.source_labels, labels_t), pixel_weights(mask, lam)
    elif cfg.method == "classmix":
        # Naive ClassMix: each target crop mixed with the next one of the batch, pseudo-labels on both sides.
        mask = class_mask(labels_t, generator, ignore_index=IGNORE_INDEX)
        other = (batch.target_images.roll(1, 0), labels_t.roll(1, 0), conf_t.roll(1, 0))
        images, labels = mix(mask, batch.target_images, other[0]), mix(mask, labels_t, other[1])
        lam = confident_fraction(mix(mask, conf_t, other[2]), cfg.pseudo_threshold)
        weights = torch.full_like(conf_t, float(lam))
    else:  # pseudo_label: self-training on the target crop itself
        images, labels = batch.target_images, labels_t
        lam = confident_fraction(conf_t, cfg.pseudo_threshold)
        weights = torch.full_like(conf_t, float(lam))
    images = color_jitter(
        images, generator, p=cfg.jitter_p, strength=cfg.jitter_strength, per_image=not official
    )
    images = gaussian_blur(
        images, generator, p=cfg.blur_p, sigma_range=tuple(cfg.blur_sigma), per_image=not official
    )
    return Sample(images, labels, weights, lam)


def dacs_step(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    cfg: AdaptConfig,
    step: int,
    generator: torch.Generator,
    alignment: Alignment | None = None,
) -> StepStats:
    """One optimiser step of ``cfg.method``, then the teacher's EMA update."""
    loss_source = supervised_loss(student, batch.source_images, batch.source_labels)
    loss_mix, lam = torch.zeros(()), torch.zeros(())
    if cfg.method != "source_only":
        sample = unsupervised_sample(batch, teacher, cfg, generator, alignment)
        logits = upsample_logits(student(sample.images), sample.labels.shape[-2:])
        loss_mix = weighted_cross_entropy(logits, sample.labels, sample.weights, ignore_index=IGNORE_INDEX)
        lam = sample.lam
    optimizer.zero_grad(set_to_none=True)
    (loss_source + cfg.mix_weight * loss_mix).backward()
    optimizer.step()
    # official: parameters only (the teacher normalises with target-batch statistics); clean: the
    # teacher runs in eval mode on the student's running statistics.
    ema_update_(teacher, student, ema_alpha(step, cfg.ema_alpha), copy_buffers=cfg.fidelity == "clean")
    return StepStats(loss_source.item(), loss_mix.item(), float(lam))
