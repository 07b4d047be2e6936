"""The training tasks: what each training stage trains, from which data, with which loss.

Every random draw is keyed (:mod:`dacs_uda.utils.rng`): crops by the stream ``<section>/<domain>``,
the adaptation step's masks and augmentation by ``adapt/step``, each sample by its step and its
position in the global batch. Neither the loader's worker count nor a split of the batch over
processes changes a draw: each rank of a DDP run loads its share of the global indices
(:meth:`~dacs_uda.utils.dist.Ranks.shard`) and draws their masks and augmentation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dacs_uda.config import Params, TrainConfig, checkpoint_path
from dacs_uda.dacs.ema import make_teacher
from dacs_uda.dacs.fd import frozen_copy
from dacs_uda.dacs.losses import supervised_loss
from dacs_uda.dacs.pseudo import Alignment
from dacs_uda.dacs.step import Batch, dacs_loss, update_teacher
from dacs_uda.data.datasets import class_prior, domain_batches
from dacs_uda.models.checkpoint import load_checkpoint
from dacs_uda.models.deeplabv2 import DeepLabV2, build_model
from dacs_uda.optim import build_optimizer
from dacs_uda.train.loop import Tensors, TrainTask, prepare_module
from dacs_uda.utils.dist import SINGLE, Ranks, broadcast_buffers
from dacs_uda.utils.rng import step_random


def supervised_task(params: Params, section: str, device: torch.device, ranks: Ranks = SINGLE) -> TrainTask:
    """Train a fresh model on the labelled crops of ``params.<section>.domain`` (pretrain, oracle)."""
    cfg: TrainConfig = getattr(params, section)
    shard = ranks.shard(cfg.optim.batch_size, f"{section}.optim.batch_size")
    model = build_model(params.model).to(device).train()
    run = prepare_module(model, params.train, ranks, trained=True)

    def batches(start: int) -> Iterator[Tensors]:
        return domain_batches(
            params, section, cfg.domain, cfg.optim.batch_size, start_step=start, shard=shard
        )

    def loss(step: int, batch: Tensors) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        value = supervised_loss(run, batch["image"], batch["label"], ranks.mean)
        return value, {"loss": value.detach()}

    optimizer = build_optimizer(model, cfg.optim)
    return TrainTask(f"train on {cfg.domain}", model, optimizer, cfg.optim, batches, loss, ranks=ranks)


def initial_student(params: Params, device: torch.device) -> DeepLabV2:
    """The source-pretrained model (``adapt.init: pretrained``) or one built as ``model.init`` says."""
    model = build_model(params.model)
    if params.adapt.init == "pretrained":
        model.load_state_dict(load_checkpoint(checkpoint_path(params, "pretrain"))["model"])
    return model.to(device).train()


def make_alignment(params: Params, device: torch.device) -> Alignment | None:
    """The ``dist_align`` prior: target labels (the paper's oracle ablation) or source labels (estimate)."""
    if params.adapt.method != "dist_align":
        return None
    domain = "target" if params.adapt.da_prior == "target_labels" else "source"
    return Alignment(prior=class_prior(params, domain).to(device))


def paired_batches(
    params: Params, batch_size: int, start: int = 0, shard: range | None = None
) -> Iterator[Tensors]:
    """Endless (labelled source crops, unlabelled target crops) batches of the adaptation stage: the
    ``shard`` (default: all) of each global batch of ``batch_size``."""
    source = domain_batches(params, "adapt", "source", batch_size, start_step=start, shard=shard)
    target = domain_batches(
        params, "adapt", "target", batch_size, with_labels=False, start_step=start, shard=shard
    )
    for src, tgt in zip(source, target, strict=True):
        yield {"source_image": src["image"], "source_label": src["label"], "target_image": tgt["image"]}


def adaptation_task(params: Params, device: torch.device, ranks: Ranks = SINGLE) -> TrainTask:
    """``adapt.method`` (DACS or an ablation): student from ``adapt.init``, EMA teacher a copy of it.

    Over several processes the teacher is the same on every rank: its parameters follow the student's,
    which DDP keeps equal, and its BN statistics are the global batch's (``train.sync_bn``) or rank 0's.
    """
    cfg = params.adapt
    shard = ranks.shard(cfg.optim.batch_size, "adapt.optim.batch_size")
    student = initial_student(params, device)
    # before the copy: the teacher inherits the student's global-batch BN (official: it runs in train mode)
    student_run = prepare_module(student, params.train, ranks, trained=True)
    # official: the teacher's BN normalises with target-batch statistics (train mode); clean: eval mode.
    teacher = make_teacher(student).train(cfg.fidelity == "official")
    teacher_run = prepare_module(teacher, params.train, ranks)
    # adapt.fd's reference: the initial model in eval mode (as DAFormer's ImageNet model); neither
    # trained nor saved: a resumed run rebuilds it from adapt.init
    frozen = frozen_copy(student) if cfg.fd.enabled else None
    alignment = make_alignment(params, device)

    def loss(step: int, batch: Tensors) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rng = step_random(params.seed, "adapt/step", step, shard)
        crops = Batch(batch["source_image"], batch["source_label"], batch["target_image"])
        return dacs_loss(student_run, teacher_run, crops, cfg, rng, alignment, ranks.mean, frozen)

    def after_step(step: int) -> None:
        update_teacher(teacher, student, cfg, step)
        if not params.train.sync_bn:
            broadcast_buffers(teacher)  # each rank's BN saw only its own crops (a no-op in one process)

    def batches(start: int) -> Iterator[Tensors]:
        return paired_batches(params, cfg.optim.batch_size, start, shard)

    optimizer = build_optimizer(student, cfg.optim)
    extra = {} if alignment is None else {"alignment": alignment}
    return TrainTask(
        f"adapt ({cfg.method})", student, optimizer, cfg.optim, batches, loss, after_step, teacher, extra,
        ranks,
    )  # fmt: skip
