"""The adaptation step: each method's sample, the fidelity switch, and one step lowering the loss."""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace

import pytest
import torch

from dacs_uda.config import AdaptConfig
from dacs_uda.dacs.ema import make_teacher
from dacs_uda.dacs.losses import supervised_loss, weighted_cross_entropy
from dacs_uda.dacs.mic import block_mask
from dacs_uda.dacs.pseudo import Alignment
from dacs_uda.dacs.step import (
    Batch,
    Sample,
    dacs_loss,
    masked_consistency_loss,
    method_sample,
    teacher_predictions,
    update_teacher,
)
from dacs_uda.models.deeplabv2 import build_model, upsample_logits
from dacs_uda.optim import build_optimizer
from dacs_uda.train.loop import optimizer_step
from dacs_uda.utils.rng import StepRandom, step_random, substream
from tests.conftest import tiny_params

PARAMS = tiny_params()  # the composed conf/ defaults (method dacs, official fidelity), width-4 model
H = W = 32


def unsupervised_sample(batch, teacher, cfg, rng, alignment=None) -> Sample:
    """The method's sample as dacs_loss builds it: the teacher's view of the target crops, then
    :func:`method_sample`."""
    labels_t, conf_t = teacher_predictions(teacher, batch.target_images, cfg, alignment)
    return method_sample(batch, labels_t, conf_t, cfg, rng)


class ConstantTeacher(torch.nn.Module):
    """A teacher whose logits are fixed: class 2 everywhere, with a chosen margin."""

    def __init__(self, margin: float = 10.0, num_classes: int = 19) -> None:
        super().__init__()
        self.margin, self.num_classes = margin, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], self.num_classes, x.shape[2] // 8, x.shape[3] // 8)
        logits[:, 2] = self.margin
        return logits


def make_batch(batch_size: int, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.zeros(batch_size, H, W, dtype=torch.long)
    labels[:, :, W // 2 :] = 13  # car on the right half
    labels[:, : H // 4] = 255  # void strip on top
    return Batch(
        source_images=torch.randn(batch_size, 3, H, W, generator=gen) * 50,
        source_labels=labels,
        target_images=torch.randn(batch_size, 3, H, W, generator=gen) * 50,
    )


def rng(batch_size: int, seed: int = 0) -> StepRandom:
    """Fresh generators of one step, one per sample, as the training loop makes them."""
    return step_random(seed, "adapt", 0, range(batch_size))


def adapt_cfg(**changes) -> AdaptConfig:
    return replace(PARAMS.adapt, **changes)


def no_aug(**changes) -> AdaptConfig:
    return adapt_cfg(jitter_p=0.0, blur_p=0.0, **changes)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_dacs_sample_pastes_source_truth_over_pseudo_labels(batch_size: int) -> None:
    batch = make_batch(batch_size)
    sample = unsupervised_sample(
        batch, ConstantTeacher(margin=1.0), no_aug(fidelity="clean"), rng(batch_size, 1)
    )
    pasted = sample.weights == 1.0  # lambda = 0 here, so weight 1 marks exactly the pasted pixels
    assert torch.equal(sample.labels[pasted], batch.source_labels[pasted])
    assert (sample.labels[~pasted] == 2).all()  # the teacher's class elsewhere
    assert torch.equal(
        sample.images[pasted.unsqueeze(1).expand_as(sample.images)],
        batch.source_images[pasted.unsqueeze(1).expand_as(sample.images)],
    )
    # ceil(2/2) = 1 of the two real classes per image, never the void strip (clean fidelity)
    for b in range(batch_size):
        chosen = set(batch.source_labels[b][pasted[b]].unique().tolist())
        assert len(chosen) == 1 and 255 not in chosen


def test_confident_teacher_gives_lambda_one() -> None:
    sample = unsupervised_sample(make_batch(2), ConstantTeacher(margin=10.0), no_aug(), rng(2))
    assert float(sample.lam) == 1.0  # a margin of 10 gives confidence > 0.968 everywhere
    assert torch.equal(sample.weights, torch.ones_like(sample.weights))


def test_official_fidelity_can_paste_the_ignore_label() -> None:
    batch = make_batch(1)
    picked_void = False
    for seed in range(20):
        sample = unsupervised_sample(batch, ConstantTeacher(), no_aug(fidelity="official"), rng(1, seed))
        picked_void |= bool((sample.labels == 255).any())
    assert picked_void  # with 3 values {0, 13, 255} the official mask picks 2, sometimes 255


def test_lambda_weights_target_pixels() -> None:
    sample = unsupervised_sample(make_batch(2), ConstantTeacher(margin=1.0), no_aug(), rng(2))
    assert float(sample.lam) == 0.0  # a margin of 1 over 19 classes is far from 0.968
    assert set(sample.weights.unique().tolist()) == {0.0, 1.0}


def test_cutmix_pastes_a_box_of_the_requested_area() -> None:
    sample = unsupervised_sample(
        make_batch(2), ConstantTeacher(margin=1.0), no_aug(method="cutmix"), rng(2, 3)
    )
    pasted = sample.weights == 1.0
    assert pasted.sum(dim=(1, 2)).tolist() == [round(H * 0.5**0.5) * round(W * 0.5**0.5)] * 2


def test_classmix_mixes_target_with_target() -> None:
    batch = make_batch(3)
    sample = unsupervised_sample(batch, ConstantTeacher(), no_aug(method="classmix"), rng(3))
    # Only target pixels are used: every mixed pixel comes from one of the target crops.
    from_this = sample.images == batch.target_images
    from_next = sample.images == batch.target_images.roll(1, 0)
    assert (from_this | from_next).all() and not (sample.images == batch.source_images).any()
    assert (sample.labels == 2).all()  # pseudo-labels on both sides
    assert torch.equal(sample.weights, torch.full_like(sample.weights, float(sample.lam)))


def test_pseudo_label_uses_the_target_crop_unmixed() -> None:
    batch = make_batch(2)
    sample = unsupervised_sample(batch, ConstantTeacher(), no_aug(method="pseudo_label"), rng(2))
    assert torch.equal(sample.images, batch.target_images) and (sample.labels == 2).all()


def test_distribution_alignment_shifts_pseudo_labels_towards_the_prior() -> None:
    prior = torch.full((19,), 0.001)
    prior[5] = 1.0 - 18 * 0.001
    alignment = Alignment(prior=prior)
    sample = unsupervised_sample(
        make_batch(2), ConstantTeacher(margin=2.0), no_aug(method="dist_align"), rng(2), alignment
    )
    unaligned = unsupervised_sample(make_batch(2), ConstantTeacher(margin=2.0), no_aug(method="dacs"), rng(2))
    target_part = sample.weights != 1.0
    assert (unaligned.labels[target_part] == 2).all()
    assert (sample.labels[target_part] == 5).all()  # q * p / p~ favours the prior's dominant class
    assert alignment.running is not None and torch.allclose(alignment.running.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("per_batch", [True, False])
def test_official_fidelity_shares_augmentation_decisions(per_batch: bool) -> None:
    cfg = adapt_cfg(
        method="pseudo_label", jitter_p=0.5, blur_p=0.0, fidelity="official" if per_batch else "clean"
    )
    batch = make_batch(8)
    uniform = []
    for seed in range(10):
        sample = unsupervised_sample(batch, ConstantTeacher(), cfg, rng(8, seed))
        changed = [not torch.equal(sample.images[b], batch.target_images[b]) for b in range(8)]
        uniform.append(len(set(changed)) == 1)  # all 8 images got the same decision
    # one decision per batch (official) vs one per image (clean: all-equal has probability 2/256)
    assert all(uniform) if per_batch else not any(uniform)


@pytest.mark.parametrize("method", ["dacs", "cutmix", "pseudo_label", "dist_align"])
@pytest.mark.parametrize("fidelity", ["official", "clean"])
def test_a_slice_of_the_batch_gives_the_slice_of_the_sample(method: str, fidelity: str) -> None:
    # With a per-pixel teacher, every draw of sample b comes from rng.samples[b] (and the official per-batch
    # decisions from rng.batch): the images and labels of a slice are the slice of the full batch's.
    # (lambda, hence the weights, is a batch-wide statistic and is left out.)
    cfg = adapt_cfg(method=method, fidelity=fidelity, jitter_p=0.5, blur_p=0.5)
    batch = make_batch(4)
    full = unsupervised_sample(batch, ConstantTeacher(margin=1.0), cfg, rng(4, 2))
    fresh = rng(4, 2)
    part = unsupervised_sample(
        Batch(*(tensor[1:3] for tensor in vars(batch).values())),
        ConstantTeacher(margin=1.0),
        cfg,
        StepRandom(batch=fresh.batch, samples=fresh.samples[1:3]),
    )
    assert torch.equal(part.images, full.images[1:3]) and torch.equal(part.labels, full.labels[1:3])


def as_two_ranks(run, passes: int = 3) -> list:
    """``run(rank, rank_mean)`` for ranks 0 and 1 as two DDP processes run it: each ``rank_mean`` call
    returns the mean of both ranks' values at that call, as an all-reduce does.

    A pass records the values and answers with the previous pass's means; a value may depend on an
    earlier mean (lambda on the aligned probabilities), so passes repeat until the chain has settled.
    """
    seen: tuple[list, list] | None = None
    for _ in range(passes):
        record: tuple[list, list] = ([], [])
        results = [run(rank, _replay(rank, record, seen)) for rank in range(2)]
        seen = record
    return results


def _replay(rank: int, record: tuple[list, list], seen: tuple[list, list] | None):
    calls = itertools.count()

    def mean(value: torch.Tensor) -> torch.Tensor:
        record[rank].append(value)
        call = next(calls)
        return value if seen is None else (seen[0][call] + seen[1][call]) / 2

    return mean


@pytest.mark.parametrize("mic", [False, True])
@pytest.mark.parametrize("method", ["dacs", "cutmix", "pseudo_label", "dist_align"])
def test_the_ranks_losses_average_to_the_loss_of_the_whole_batch(method: str, mic: bool) -> None:
    # Two ranks hold half of a batch of 4 each, with their samples' generators; the valid-pixel count,
    # lambda and the alignment mean go through rank_mean. With per-sample networks (BN on running
    # statistics), the mean of their losses, which DDP's gradient average follows, is the batch's loss.
    torch.manual_seed(0)
    student, teacher = build_model(PARAMS.model).eval(), build_model(PARAMS.model).eval()
    cfg = with_mic(adapt_cfg(method=method, fidelity="official", jitter_p=0.5, blur_p=0.5), enabled=mic)
    batch, prior = make_batch(4), torch.full((19,), 1 / 19)

    def alignment() -> Alignment | None:
        return Alignment(prior=prior) if method == "dist_align" else None

    def run(rank: int, rank_mean) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        half = Batch(*(tensor[2 * rank : 2 * rank + 2] for tensor in vars(batch).values()))
        full = rng(4, 3)
        shard = StepRandom(batch=full.batch, samples=full.samples[2 * rank : 2 * rank + 2])
        with torch.no_grad():
            return dacs_loss(student, teacher, half, cfg, shard, alignment(), rank_mean)

    ranks = as_two_ranks(run)
    with torch.no_grad():
        whole, stats = dacs_loss(student, teacher, batch, cfg, rng(4, 3), alignment())
    torch.testing.assert_close((ranks[0][0] + ranks[1][0]) / 2, whole)
    assert 0.0 < stats["confident"] < 1.0  # a lambda that depends on which crops are counted
    for _, rank_stats in ranks:
        torch.testing.assert_close(rank_stats["confident"], stats["confident"])
    assert ("loss_mic" in stats) == mic


def total_loss(student, batch: Batch, sample: Sample, cfg: AdaptConfig) -> float:
    with torch.no_grad():
        mixed = upsample_logits(student(sample.images), sample.labels.shape[-2:])
        loss = supervised_loss(student, batch.source_images, batch.source_labels)
        return float(loss + cfg.mix_weight * weighted_cross_entropy(mixed, sample.labels, sample.weights))


def train_step(student, teacher, optimizer, batch: Batch, cfg: AdaptConfig, step: int, alignment=None):
    """One step composed as the training loop composes it; returns the loss statistics."""
    loss, stats = dacs_loss(student, teacher, batch, cfg, rng(batch.source_images.shape[0], 5), alignment)
    optimizer_step(optimizer, loss)
    update_teacher(teacher, student, cfg, step)
    return stats


@pytest.mark.parametrize(
    "method", ["dacs", "cutmix", "classmix", "pseudo_label", "dist_align", "source_only"]
)
def test_one_step_lowers_the_loss_on_a_fixed_batch(method: str) -> None:
    torch.manual_seed(0)
    student = build_model(PARAMS.model).train()
    teacher = make_teacher(student).train()
    # lambda = 1 (threshold 0): every term counts
    cfg = adapt_cfg(method=method, fidelity="official", pseudo_threshold=0.0)
    cfg = replace(cfg, optim=replace(cfg.optim, lr=1e-3))
    optimizer = build_optimizer(student, cfg.optim)
    batch = make_batch(2)
    alignment = Alignment(prior=torch.full((19,), 1 / 19)) if method == "dist_align" else None
    # the sample the step will see: same generators, a copy of the alignment state
    sample = unsupervised_sample(batch, teacher, cfg, rng(2, 5), copy.deepcopy(alignment))
    before = total_loss(student, batch, sample, cfg)
    stats = train_step(student, teacher, optimizer, batch, cfg, 0, alignment)
    after = total_loss(student, batch, sample, cfg)
    assert after < before
    assert (stats["loss_mix"] == 0.0) == (method == "source_only")


def test_dacs_loss_returns_the_weighted_total_and_detached_scalar_stats() -> None:
    torch.manual_seed(0)
    student = build_model(PARAMS.model).train()
    cfg = adapt_cfg(mix_weight=0.5)
    loss, stats = dacs_loss(student, make_teacher(student).train(), make_batch(2), cfg, rng(2))
    assert set(stats) == {"loss_source", "loss_mix", "confident"}
    assert all(value.dim() == 0 and not value.requires_grad for value in stats.values())
    assert loss.requires_grad
    torch.testing.assert_close(loss.detach(), stats["loss_source"] + 0.5 * stats["loss_mix"])


def _no_host_copy(*_args, **_kwargs):
    raise AssertionError("a tensor was turned into a Python value (a host sync on a GPU)")


@pytest.mark.parametrize("mic", [False, True])
@pytest.mark.parametrize("method", ["dacs", "cutmix", "classmix", "pseudo_label", "dist_align"])
def test_dacs_loss_turns_no_tensor_into_a_python_value(
    method: str, mic: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    student = build_model(PARAMS.model).train()
    teacher = make_teacher(student).train()
    alignment = Alignment(prior=torch.full((19,), 1 / 19)) if method == "dist_align" else None
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, _no_host_copy)
    cfg = with_mic(adapt_cfg(method=method), enabled=mic)
    dacs_loss(student, teacher, make_batch(2), cfg, rng(2), alignment)


@pytest.mark.parametrize(("step", "alpha"), [(0, 0.0), (1, 0.5), (500, 0.99)])
def test_update_teacher_follows_the_ema_schedule(step: int, alpha: float) -> None:
    student = build_model(PARAMS.model)
    teacher = make_teacher(student)
    with torch.no_grad():
        teacher.conv1.weight.zero_()
    update_teacher(teacher, student, adapt_cfg(ema_alpha=0.99), step)
    torch.testing.assert_close(teacher.conv1.weight, (1 - alpha) * student.conv1.weight)


def test_clean_fidelity_teacher_takes_the_students_running_statistics() -> None:
    student = build_model(PARAMS.model).train()
    teacher = make_teacher(student).eval()
    cfg = no_aug(fidelity="clean")
    train_step(student, teacher, build_optimizer(student, cfg.optim), make_batch(2), cfg, 3)
    assert torch.equal(teacher.bn1.running_mean, student.bn1.running_mean)
    official = no_aug(fidelity="official")
    teacher_official = make_teacher(student).train()
    before = teacher_official.bn1.running_mean.clone()
    train_step(
        student, teacher_official, build_optimizer(student, official.optim), make_batch(2), official, 3
    )
    assert not torch.equal(teacher_official.bn1.running_mean, student.bn1.running_mean)
    assert not torch.equal(teacher_official.bn1.running_mean, before)  # its own target-batch statistics


def with_mic(cfg: AdaptConfig, **changes) -> AdaptConfig:
    return replace(cfg, mic=replace(cfg.mic, **changes))


class Recording(torch.nn.Module):
    """A model that remembers the inputs of its forward passes."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x)
        return self.model(x)


def test_mic_trains_on_the_masked_crop_against_the_unmasked_pseudo_labels() -> None:
    torch.manual_seed(0)
    student = Recording(build_model(PARAMS.model).eval())
    batch, cfg = make_batch(2), with_mic(no_aug(), enabled=True, block_size=8, augment=False)
    labels_t, conf_t = teacher_predictions(ConstantTeacher(margin=10.0), batch.target_images, cfg, None)
    loss = masked_consistency_loss(student, batch.target_images, labels_t, conf_t, cfg, rng(2))
    visible = block_mask(H, W, substream(rng(2), "mic").samples, block_size=8, mask_ratio=0.7)
    assert 0 < int(visible.sum()) < visible.numel()
    (seen,) = student.inputs
    assert torch.equal(seen, batch.target_images * visible.unsqueeze(1))
    # lambda 1 (margin 10): the plain cross-entropy against class 2, the teacher's label everywhere
    with torch.no_grad():
        logits = upsample_logits(student.model(seen), (H, W))
    expected = torch.nn.functional.cross_entropy(logits, torch.full((2, H, W), 2))
    torch.testing.assert_close(loss, expected)


def test_mic_loss_is_weighted_by_lambda_of_the_unmasked_crop() -> None:
    torch.manual_seed(0)
    student = build_model(PARAMS.model).eval()
    batch, cfg = make_batch(2), with_mic(no_aug(), enabled=True)
    unsure = teacher_predictions(ConstantTeacher(margin=1.0), batch.target_images, cfg, None)
    with torch.no_grad():
        assert float(masked_consistency_loss(student, batch.target_images, *unsure, cfg, rng(2))) == 0.0
        sure = teacher_predictions(ConstantTeacher(margin=10.0), batch.target_images, cfg, None)
        assert float(masked_consistency_loss(student, batch.target_images, *sure, cfg, rng(2))) > 0.0


def test_mic_augments_the_crop_before_the_mask_from_its_own_stream() -> None:
    torch.manual_seed(0)
    student = Recording(build_model(PARAMS.model).eval())
    batch = make_batch(2)
    cfg = with_mic(adapt_cfg(jitter_p=1.0, blur_p=0.0, fidelity="clean"), enabled=True, augment=True)
    labels_t, conf_t = teacher_predictions(ConstantTeacher(), batch.target_images, cfg, None)
    masked_consistency_loss(student, batch.target_images, labels_t, conf_t, cfg, rng(2))
    (seen,) = student.inputs
    visible = block_mask(H, W, substream(rng(2), "mic").samples, block_size=8, mask_ratio=0.7)
    hidden = ~visible.unsqueeze(1).expand_as(seen)
    assert (seen[hidden] == 0).all()  # hidden pixels stay exactly the mean colour after the jitter
    assert not torch.equal(seen[~hidden], batch.target_images[~hidden])  # jittered where visible


@pytest.mark.parametrize("method", ["dacs", "cutmix", "classmix", "pseudo_label", "dist_align"])
def test_mic_adds_its_weighted_loss_and_changes_nothing_else(method: str) -> None:
    # The method's statistics are bit-identical with MIC on: no draw of the step is shifted, and the
    # teacher runs once (its pseudo-labels serve both losses).
    torch.manual_seed(0)
    student = build_model(PARAMS.model).train()
    teacher = Recording(make_teacher(student).train())
    prior = torch.full((19,), 1 / 19)

    def run(cfg: AdaptConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        alignment = Alignment(prior=prior) if method == "dist_align" else None
        return dacs_loss(student, teacher, make_batch(2), cfg, rng(2), alignment)

    cfg = adapt_cfg(method=method, pseudo_threshold=0.0)  # lambda 1: MIC's loss is not 0
    _, off = run(cfg)
    teacher.inputs.clear()
    loss, on = run(with_mic(cfg, enabled=True, weight=0.25))
    assert len(teacher.inputs) == 1
    assert set(on) == {*off, "loss_mic"} and all(torch.equal(on[k], off[k]) for k in off)
    assert float(on["loss_mic"]) > 0.0 and not on["loss_mic"].requires_grad
    total = on["loss_source"] + cfg.mix_weight * on["loss_mix"] + 0.25 * on["loss_mic"]
    torch.testing.assert_close(loss.detach(), total)


def test_one_step_with_mic_lowers_the_total_loss() -> None:
    torch.manual_seed(0)
    student = build_model(PARAMS.model).train()
    teacher = make_teacher(student).train()
    cfg = with_mic(adapt_cfg(fidelity="official", pseudo_threshold=0.0), enabled=True)
    cfg = replace(cfg, optim=replace(cfg.optim, lr=1e-3))
    batch = make_batch(2)
    # what the step will see: the same teacher pass and generators
    labels_t, conf_t = teacher_predictions(teacher, batch.target_images, cfg, None)
    sample = unsupervised_sample(batch, teacher, cfg, rng(2, 5))

    def total() -> float:
        with torch.no_grad():
            masked = masked_consistency_loss(student, batch.target_images, labels_t, conf_t, cfg, rng(2, 5))
            return total_loss(student, batch, sample, cfg) + cfg.mic.weight * float(masked)

    before = total()
    stats = train_step(student, teacher, build_optimizer(student, cfg.optim), batch, cfg, 0)
    assert total() < before and float(stats["loss_mic"]) > 0.0
