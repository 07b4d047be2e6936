"""The adaptation step: each method's sample, the fidelity switch, and one step lowering the loss."""

from __future__ import annotations

import copy

import pytest
import torch

from dacs_uda.config import AdaptConfig, ModelConfig
from dacs_uda.dacs.ema import make_teacher
from dacs_uda.dacs.losses import weighted_cross_entropy
from dacs_uda.dacs.step import Alignment, Batch, dacs_step, unsupervised_sample
from dacs_uda.models.deeplabv2 import build_model, upsample_logits
from dacs_uda.optim import build_optimizer
from dacs_uda.pretrain import supervised_loss

H = W = 32


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


def no_aug(**kwargs) -> AdaptConfig:
    return AdaptConfig(jitter_p=0.0, blur_p=0.0, **kwargs)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_dacs_sample_pastes_source_truth_over_pseudo_labels(batch_size: int) -> None:
    batch = make_batch(batch_size)
    sample = unsupervised_sample(
        batch, ConstantTeacher(margin=1.0), no_aug(fidelity="clean"), torch.Generator().manual_seed(1)
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
    sample = unsupervised_sample(make_batch(2), ConstantTeacher(margin=10.0), no_aug(), torch.Generator())
    assert float(sample.lam) == 1.0  # a margin of 10 gives confidence > 0.968 everywhere
    assert torch.equal(sample.weights, torch.ones_like(sample.weights))


def test_official_fidelity_can_paste_the_ignore_label() -> None:
    batch = make_batch(1)
    picked_void = False
    for seed in range(20):
        sample = unsupervised_sample(
            batch, ConstantTeacher(), no_aug(fidelity="official"), torch.Generator().manual_seed(seed)
        )
        picked_void |= bool((sample.labels == 255).any())
    assert picked_void  # with 3 values {0, 13, 255} the official mask picks 2, sometimes 255


def test_lambda_weights_target_pixels() -> None:
    sample = unsupervised_sample(make_batch(2), ConstantTeacher(margin=1.0), no_aug(), torch.Generator())
    assert float(sample.lam) == 0.0  # a margin of 1 over 19 classes is far from 0.968
    assert set(sample.weights.unique().tolist()) == {0.0, 1.0}


def test_cutmix_pastes_a_box_of_the_requested_area() -> None:
    sample = unsupervised_sample(
        make_batch(2), ConstantTeacher(margin=1.0), no_aug(method="cutmix"), torch.Generator().manual_seed(3)
    )
    pasted = sample.weights == 1.0
    assert pasted.sum(dim=(1, 2)).tolist() == [round(H * 0.5**0.5) * round(W * 0.5**0.5)] * 2


def test_classmix_mixes_target_with_target() -> None:
    batch = make_batch(3)
    sample = unsupervised_sample(batch, ConstantTeacher(), no_aug(method="classmix"), torch.Generator())
    # Only target pixels are used: every mixed pixel comes from one of the target crops.
    from_this = sample.images == batch.target_images
    from_next = sample.images == batch.target_images.roll(1, 0)
    assert (from_this | from_next).all() and not (sample.images == batch.source_images).any()
    assert (sample.labels == 2).all()  # pseudo-labels on both sides
    assert torch.equal(sample.weights, torch.full_like(sample.weights, float(sample.lam)))


def test_pseudo_label_uses_the_target_crop_unmixed() -> None:
    batch = make_batch(2)
    sample = unsupervised_sample(batch, ConstantTeacher(), no_aug(method="pseudo_label"), torch.Generator())
    assert torch.equal(sample.images, batch.target_images) and (sample.labels == 2).all()


def test_distribution_alignment_shifts_pseudo_labels_towards_the_prior() -> None:
    prior = torch.full((19,), 0.001)
    prior[5] = 1.0 - 18 * 0.001
    alignment = Alignment(prior=prior)
    sample = unsupervised_sample(
        make_batch(2), ConstantTeacher(margin=2.0), no_aug(method="dist_align"), torch.Generator(), alignment
    )
    unaligned = unsupervised_sample(
        make_batch(2), ConstantTeacher(margin=2.0), no_aug(method="dacs"), torch.Generator()
    )
    target_part = sample.weights != 1.0
    assert (unaligned.labels[target_part] == 2).all()
    assert (sample.labels[target_part] == 5).all()  # q * p / p~ favours the prior's dominant class
    assert alignment.running is not None and torch.allclose(alignment.running.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("per_batch", [True, False])
def test_official_fidelity_shares_augmentation_decisions(per_batch: bool) -> None:
    cfg = AdaptConfig(
        method="pseudo_label", jitter_p=0.5, blur_p=0.0, fidelity="official" if per_batch else "clean"
    )
    batch = make_batch(8)
    uniform = []
    for seed in range(10):
        sample = unsupervised_sample(batch, ConstantTeacher(), cfg, torch.Generator().manual_seed(seed))
        changed = [not torch.equal(sample.images[b], batch.target_images[b]) for b in range(8)]
        uniform.append(len(set(changed)) == 1)  # all 8 images got the same decision
    # one decision per batch (official) vs one per image (clean: all-equal has probability 2/256)
    assert all(uniform) if per_batch else not any(uniform)


def total_loss(student, batch: Batch, sample, cfg: AdaptConfig) -> float:
    with torch.no_grad():
        mixed = upsample_logits(student(sample.images), sample.labels.shape[-2:])
        loss = supervised_loss(student, batch.source_images, batch.source_labels)
        return float(loss + cfg.mix_weight * weighted_cross_entropy(mixed, sample.labels, sample.weights))


@pytest.mark.parametrize(
    "method", ["dacs", "cutmix", "classmix", "pseudo_label", "dist_align", "source_only"]
)
def test_one_step_lowers_the_loss_on_a_fixed_batch(method: str) -> None:
    torch.manual_seed(0)
    student = build_model(ModelConfig(width=4, aspp_dilations=[1, 2])).train()
    teacher = make_teacher(student).train()
    cfg = AdaptConfig(
        method=method, fidelity="official", pseudo_threshold=0.0
    )  # lambda = 1: every term counts
    cfg.optim.lr = 1e-3
    optimizer = build_optimizer(student, cfg.optim)
    batch, gen = make_batch(2), torch.Generator().manual_seed(5)
    alignment = Alignment(prior=torch.full((19,), 1 / 19)) if method == "dist_align" else None
    state = gen.get_state()
    sample = unsupervised_sample(batch, teacher, cfg, gen, copy.deepcopy(alignment))
    before = total_loss(student, batch, sample, cfg)
    gen.set_state(state)
    stats = dacs_step(student, teacher, optimizer, batch, cfg, 0, gen, alignment)
    after = total_loss(student, batch, sample, cfg)
    assert after < before
    assert (stats.loss_mix == 0.0) == (method == "source_only")


def test_clean_fidelity_teacher_takes_the_students_running_statistics() -> None:
    student = build_model(ModelConfig(width=4, aspp_dilations=[1, 2])).train()
    teacher = make_teacher(student).eval()
    cfg = no_aug(fidelity="clean")
    dacs_step(student, teacher, build_optimizer(student, cfg.optim), make_batch(2), cfg, 3, torch.Generator())
    assert torch.equal(teacher.bn1.running_mean, student.bn1.running_mean)
    official = no_aug(fidelity="official")
    teacher_official = make_teacher(student).train()
    before = teacher_official.bn1.running_mean.clone()
    dacs_step(
        student,
        teacher_official,
        build_optimizer(student, official.optim),
        make_batch(2),
        official,
        3,
        torch.Generator(),
    )
    assert not torch.equal(teacher_official.bn1.running_mean, student.bn1.running_mean)
    assert not torch.equal(teacher_official.bn1.running_mean, before)  # its own target-batch statistics
