"""One adaptation step, composed from the pure functions of this package.

Order as in the official DACS loop: source loss -> teacher pseudo-labels on the un-augmented target
crops -> mixing (image, label, pixel weight) -> colour jitter and blur of the mixed images -> mixed
loss weighted by lambda (:func:`dacs_loss`) -> one backward and optimiser step (the training loop's) ->
EMA update of the teacher (:func:`update_teacher`).

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

``adapt.mic`` adds masked image consistency to any method but ``source_only`` (:mod:`dacs_uda.dacs.mic`):
the student also sees the block-masked target crops and learns the teacher's pseudo-labels of the same
teacher pass, lambda-weighted; its draws come from a sub-stream of the step's generators.

``adapt.fd`` adds the thing-class feature distance to any method (:mod:`dacs_uda.dacs.fd`): the source
pass's bottleneck features against those of a frozen copy of the initial model; it draws nothing.

Randomness comes from a :class:`~dacs_uda.utils.rng.StepRandom`: sample ``b`` of the batch draws its
mask and augmentation from ``rng.samples[b]``, the official once-per-batch augmentation decisions come
from ``rng.batch``. Nothing here copies a value from the device to the host.

Over several processes (DDP), each holds an equal share of the global batch, with the generators of
its samples' global indices; the batch-wide statistics (lambda, the alignment mean, the source loss's
valid-pixel count) go through ``rank_mean``, so every rank sees the global batch's values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from dacs_uda.config import AdaptConfig
from dacs_uda.dacs.augment import color_jitter, gaussian_blur
from dacs_uda.dacs.ema import ema_alpha, ema_update_
from dacs_uda.dacs.fd import FeatureTap, feature_distance
from dacs_uda.dacs.losses import supervised_loss, weighted_cross_entropy
from dacs_uda.dacs.mic import block_mask, mask_images
from dacs_uda.dacs.mixing import class_mask, cutmix_mask, mix
from dacs_uda.dacs.pseudo import (
    Alignment,
    align_distribution,
    class_mean,
    confident_fraction,
    pixel_weights,
    teacher_probabilities,
    update_running_mean,
)
from dacs_uda.labels import IGNORE_INDEX
from dacs_uda.models.deeplabv2 import DeepLabV2, upsample_logits
from dacs_uda.utils.dist import RankMean, local
from dacs_uda.utils.rng import StepRandom, substream


@dataclass(frozen=True)
class Batch:
    source_images: torch.Tensor
    source_labels: torch.Tensor
    target_images: torch.Tensor


@dataclass(frozen=True)
class Sample:
    """An unsupervised training sample: images, (pseudo-)labels, per-pixel loss weights and lambda."""

    images: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    lam: torch.Tensor


def teacher_predictions(
    teacher: torch.nn.Module,
    images: torch.Tensor,
    cfg: AdaptConfig,
    alignment: Alignment | None,
    rank_mean: RankMean = local,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels and confidences of the teacher, distribution-aligned for ``dist_align``."""
    height, width = images.shape[-2:]
    with torch.no_grad():
        probs = teacher_probabilities(teacher(images), (height, width))
    if cfg.method == "dist_align" and alignment is not None:
        alignment.running = update_running_mean(
            class_mean(probs, rank_mean) if alignment.running is None else alignment.running,
            probs,
            cfg.da_momentum,
            rank_mean,
        )
        probs = align_distribution(probs, alignment.prior, alignment.running)
    confidence, labels = probs.max(dim=1)
    return labels, confidence


def _cross_domain_sample(
    batch: Batch,
    labels_t: torch.Tensor,
    conf_t: torch.Tensor,
    cfg: AdaptConfig,
    rng: StepRandom,
    rank_mean: RankMean,
) -> Sample:
    """Source pixels (a class mask, or a CutMix box) pasted onto the target crops (``dacs``, ``cutmix``)."""
    if cfg.method == "cutmix":
        height, width = labels_t.shape[-2:]
        mask = cutmix_mask(height, width, rng.samples, area=cfg.cutmix_area, device=labels_t.device)
    else:
        # official: the ignore label counts as a class and can be pasted (a quirk of the official code)
        mask = class_mask(
            batch.source_labels,
            rng.samples,
            ignore_index=IGNORE_INDEX,
            include_ignore=cfg.fidelity == "official",
        )
    lam = confident_fraction(conf_t, cfg.pseudo_threshold, rank_mean)
    images = mix(mask, batch.source_images, batch.target_images)
    return Sample(images, mix(mask, batch.source_labels, labels_t), pixel_weights(mask, lam), lam)


def _target_target_sample(
    images_t: torch.Tensor,
    labels_t: torch.Tensor,
    conf_t: torch.Tensor,
    cfg: AdaptConfig,
    rng: StepRandom,
    rank_mean: RankMean,
) -> Sample:
    """Naive ClassMix (``classmix``): each target crop mixed with its neighbour in the batch.

    Mixed sample ``b`` pastes the chosen classes of crop ``b`` (mask from its pseudo-label, drawn from
    ``rng.samples[b]``) onto crop ``b - 1`` (cyclically). Neighbouring samples are thus coupled: unlike
    the other methods, a slice of the batch does not give the matching slice of the full-batch result,
    and a batch split over processes mixes within each rank's share.
    """
    mask = class_mask(labels_t, rng.samples, ignore_index=IGNORE_INDEX)
    images = mix(mask, images_t, images_t.roll(1, 0))
    labels = mix(mask, labels_t, labels_t.roll(1, 0))
    lam = confident_fraction(mix(mask, conf_t, conf_t.roll(1, 0)), cfg.pseudo_threshold, rank_mean)
    return Sample(images, labels, lam.expand_as(conf_t), lam)


def _strong_augment(images: torch.Tensor, cfg: AdaptConfig, rng: StepRandom) -> torch.Tensor:
    """Colour jitter, then blur; official fidelity takes one decision per batch for each."""
    per_image = cfg.fidelity != "official"
    images = color_jitter(images, rng, p=cfg.jitter_p, strength=cfg.jitter_strength, per_image=per_image)
    low, high = cfg.blur_sigma
    return gaussian_blur(images, rng, p=cfg.blur_p, sigma_range=(low, high), per_image=per_image)


def method_sample(
    batch: Batch,
    labels_t: torch.Tensor,
    conf_t: torch.Tensor,
    cfg: AdaptConfig,
    rng: StepRandom,
    rank_mean: RankMean = local,
) -> Sample:
    """``cfg.method``'s sample, given the teacher's pseudo-labels and confidences of the target crops
    (:func:`teacher_predictions`).

    ``rng.samples`` holds one generator per sample (masks, per-image augmentation); ``rng.batch`` serves
    the official per-batch augmentation decisions. ``rank_mean`` makes lambda that of the global batch
    (identity in one process).
    """
    if cfg.method in ("dacs", "dist_align", "cutmix"):
        sample = _cross_domain_sample(batch, labels_t, conf_t, cfg, rng, rank_mean)
    elif cfg.method == "classmix":
        sample = _target_target_sample(batch.target_images, labels_t, conf_t, cfg, rng, rank_mean)
    else:  # pseudo_label: self-training on the target crop itself
        lam = confident_fraction(conf_t, cfg.pseudo_threshold, rank_mean)
        # lambda on every pixel; a broadcast view, as the loss only reads it
        sample = Sample(batch.target_images, labels_t, lam.expand_as(conf_t), lam)
    return replace(sample, images=_strong_augment(sample.images, cfg, rng))


def masked_consistency_loss(
    student: torch.nn.Module,
    target_images: torch.Tensor,
    labels_t: torch.Tensor,
    conf_t: torch.Tensor,
    cfg: AdaptConfig,
    rng: StepRandom,
    rank_mean: RankMean = local,
) -> torch.Tensor:
    """MIC: the student's loss on block-masked target crops against the teacher's pseudo-labels
    ``labels_t`` of the unmasked crops, every pixel weighted by lambda of their confidences ``conf_t``.

    Draws come from the ``mic`` sub-stream of ``rng``, the mask before the augmentation, so switching
    MIC (or its ``augment``) on shifts no other draw of the step.
    """
    mic_rng = substream(rng, "mic")
    height, width = labels_t.shape[-2:]
    visible = block_mask(
        height,
        width,
        mic_rng.samples,
        block_size=cfg.mic.block_size,
        mask_ratio=cfg.mic.mask_ratio,
        device=target_images.device,
    )
    images = _strong_augment(target_images, cfg, mic_rng) if cfg.mic.augment else target_images
    # masked after the augmentation, as MIC does: hidden pixels stay exactly the mean colour
    logits = upsample_logits(student(mask_images(images, visible)), (height, width))
    lam = confident_fraction(conf_t, cfg.pseudo_threshold, rank_mean)
    return weighted_cross_entropy(logits, labels_t, lam.expand_as(conf_t), ignore_index=IGNORE_INDEX)


def dacs_loss(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    batch: Batch,
    cfg: AdaptConfig,
    rng: StepRandom,
    alignment: Alignment | None = None,
    rank_mean: RankMean = local,
    frozen: DeepLabV2 | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one step of ``cfg.method``: ``loss_source + cfg.mix_weight * loss_mix``, plus
    ``cfg.mic.weight * loss_mic`` with ``cfg.mic.enabled`` (:func:`masked_consistency_loss`).

    Args:
        student: Trained model (its two forward passes, three with MIC, build the returned loss's graph).
        teacher: EMA model producing the pseudo-labels (no graph).
        batch: Source crops with labels and target crops.
        cfg: Adaptation settings.
        rng: The step's generators, one per sample of ``batch`` in ``rng.samples``.
        alignment: Distribution-alignment state (``dist_align``), updated in place.
        rank_mean: Mean over the ranks of the batch-wide statistics; :func:`~dacs_uda.utils.dist.local`
            in a single process. Each rank's loss is scaled so that DDP's mean of the ranks' gradients
            is the gradient of the global batch's loss.
        frozen: With ``cfg.fd.enabled``, the frozen initial model (:func:`~dacs_uda.dacs.fd.frozen_copy`):
            ``cfg.fd.weight * loss_fd`` (:func:`~dacs_uda.dacs.fd.feature_distance`) joins the loss.

    Returns:
        ``(loss, stats)``: the 0-dim total loss, and detached 0-dim tensors on the loss's device
        ``loss_source``, ``loss_mix`` and ``confident`` (lambda; both 0 for ``source_only``), and
        ``loss_mic`` with ``cfg.mic.enabled``, ``loss_fd`` (before its weight) with ``cfg.fd.enabled``.
    """
    tap = _feature_tap(student, cfg, frozen)
    loss_source = supervised_loss(
        student if tap is None else tap, batch.source_images, batch.source_labels, rank_mean
    )
    loss_mix = lam = loss_source.new_zeros(())
    loss_mic: torch.Tensor | None = None
    if cfg.method != "source_only":
        # one teacher pass serves the method's sample and MIC
        labels_t, conf_t = teacher_predictions(teacher, batch.target_images, cfg, alignment, rank_mean)
        sample = method_sample(batch, labels_t, conf_t, cfg, rng, rank_mean)
        height, width = sample.labels.shape[-2:]
        logits = upsample_logits(student(sample.images), (height, width))
        loss_mix = weighted_cross_entropy(logits, sample.labels, sample.weights, ignore_index=IGNORE_INDEX)
        lam = sample.lam
        if cfg.mic.enabled:
            loss_mic = masked_consistency_loss(
                student, batch.target_images, labels_t, conf_t, cfg, rng, rank_mean
            )
    stats = {"loss_source": loss_source.detach(), "loss_mix": loss_mix.detach(), "confident": lam.detach()}
    loss = loss_source + cfg.mix_weight * loss_mix
    if loss_mic is not None:
        stats["loss_mic"] = loss_mic.detach()
        loss = loss + cfg.mic.weight * loss_mic
    if tap is not None:
        assert frozen is not None and tap.features is not None  # _feature_tap's check; the source pass
        loss_fd = feature_distance(
            tap.features, frozen, batch.source_images, batch.source_labels, cfg.fd, rank_mean
        )
        stats["loss_fd"] = loss_fd.detach()
        loss = loss + cfg.fd.weight * loss_fd
    return loss, stats


def _feature_tap(student: torch.nn.Module, cfg: AdaptConfig, frozen: DeepLabV2 | None) -> FeatureTap | None:
    """With ``cfg.fd.enabled``, the student's source pass keeping its features for FD (else None)."""
    if not cfg.fd.enabled:
        return None
    if frozen is None:
        raise ValueError("adapt.fd.enabled: dacs_loss needs `frozen`, the initial model (fd.frozen_copy)")
    return FeatureTap(student)


def update_teacher(teacher: torch.nn.Module, student: torch.nn.Module, cfg: AdaptConfig, step: int) -> None:
    """EMA update of the teacher after the optimiser step of 0-based iteration ``step``."""
    # official: parameters only (the teacher normalises with target-batch statistics); clean: the
    # teacher runs in eval mode on the student's running statistics.
    ema_update_(teacher, student, ema_alpha(step, cfg.ema_alpha), copy_buffers=cfg.fidelity == "clean")
