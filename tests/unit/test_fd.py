"""Thing-class feature distance (``adapt.fd``): label downscaling, the masked distance, the step's loss."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import pytest
import torch

from dacs_uda.config import AdaptConfig, ConfigError, compose_params, parse_params
from dacs_uda.dacs.ema import make_teacher
from dacs_uda.dacs.fd import (
    FeatureTap,
    downscale_labels,
    feature_distance,
    frozen_copy,
    masked_feature_distance,
    thing_mask,
)
from dacs_uda.dacs.step import Batch, dacs_loss
from dacs_uda.models.deeplabv2 import build_model
from dacs_uda.optim import build_optimizer
from dacs_uda.train.loop import optimizer_step
from dacs_uda.utils.rng import step_random
from tests.conftest import tiny_params

PARAMS = tiny_params()  # composed conf/ defaults, width-4 model
THINGS = PARAMS.adapt.fd.classes
V = 255  # void


pytestmark = pytest.mark.usefixtures("one_thread")


def with_fd(cfg: AdaptConfig, **changes) -> AdaptConfig:
    return replace(cfg, fd=replace(cfg.fd, enabled=True, **changes))


# ---------------------------------------------------------------- downscaling the label


def test_downscale_keeps_a_majority_of_at_least_the_ratio() -> None:
    labels = torch.tensor(
        [
            [13, 13, 11, 11],
            [13, 13, 11, V],
            [0, 0, V, V],
            [13, 13, V, 7],
        ]
    )[None]
    # windows: all car | 3/4 person (0.75 counts) | road 2/4, car 2/4 | void 3/4 (void wins, stays void)
    assert downscale_labels(labels, (2, 2), 0.75).tolist() == [[[13, 11], [V, V]]]
    # a lower ratio keeps the 2/4 window; ties go to the lower class id (torch.max's first maximum)
    assert downscale_labels(labels, (2, 2), 0.5).tolist() == [[[13, 11], [0, V]]]
    assert downscale_labels(labels, (2, 2), 1.0).tolist() == [[[13, V], [V, V]]]


def test_downscale_to_a_size_that_does_not_divide_uses_overlapping_windows() -> None:
    # 5 columns to 2: windows [0, 3) and [2, 5), as DeepLab's ceil-mode stride (512 -> 65) needs
    labels = torch.tensor([[6, 6, 6, 7, 7]]).expand(2, 5)[None]
    assert downscale_labels(labels, (1, 2), 0.75).tolist() == [[[6, V]]]  # 2/3 of 7 in [2, 5)
    assert downscale_labels(labels, (1, 2), 0.6).tolist() == [[[6, 7]]]


def test_downscale_of_the_same_size_is_the_label_and_a_void_frame_stays_void() -> None:
    labels = torch.tensor([[[0, 18], [V, 5]]])
    assert torch.equal(downscale_labels(labels, (2, 2), 0.75), labels)
    assert downscale_labels(torch.full((2, 8, 8), V), (1, 1), 0.75).tolist() == [[[V]], [[V]]]


def test_thing_mask_marks_the_listed_classes_only() -> None:
    labels = torch.tensor([[0, 6, 7, 10, 11, 18, V]])
    assert thing_mask(labels, THINGS).tolist() == [[False, True, True, False, True, True, False]]


# ---------------------------------------------------------------- the masked distance


def test_masked_distance_is_the_mean_l2_norm_over_the_masked_pixels() -> None:
    reference = torch.zeros(1, 2, 1, 3)
    features = torch.tensor([[[[3.0, 1.0, 100.0]], [[4.0, 0.0, 100.0]]]], requires_grad=True)
    mask = torch.tensor([[[True, True, False]]])
    distance = masked_feature_distance(features, reference, mask)
    assert distance.item() == 3.0  # (5 + 1) / 2; the unmasked pixel's 141 does not count
    distance.backward()
    # d/df of ||f|| / 2 is f / (2 ||f||); nothing reaches the unmasked pixel
    assert features.grad.flatten().tolist() == pytest.approx([0.3, 0.5, 0.0, 0.4, 0.0, 0.0], abs=1e-7)


@pytest.mark.parametrize(
    ("batch", "reference", "selected"),
    [
        (2, 0.0, False),  # no masked pixel: zero, not the NaN of an empty mean
        (1, 1.0, True),  # the student starts as the frozen model: the norm of a zero difference
    ],
    ids=["no_masked_pixel", "identical_features"],
)
def test_degenerate_distances_give_zero_and_zero_gradients_not_nan(
    batch: int, reference: float, selected: bool
) -> None:
    features = torch.ones(batch, 3, 2, 2, requires_grad=True)
    mask = torch.full((batch, 2, 2), selected)
    distance = masked_feature_distance(features, torch.full((batch, 3, 2, 2), reference), mask)
    distance.backward()
    assert distance.item() == 0.0 and torch.equal(features.grad, torch.zeros(batch, 3, 2, 2))


def test_the_ranks_distances_average_to_the_whole_batch_distance() -> None:
    gen = torch.Generator().manual_seed(0)
    features, reference = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[0, 0, :2] = True  # 2 pixels on rank 0, 5 on rank 1: unequal counts
    mask[1, 1:, 1:] = True
    mask[1, 0, 0] = True
    whole = masked_feature_distance(features, reference, mask)
    counts = mask.sum(dim=(1, 2))
    per_rank = [
        masked_feature_distance(
            features[r : r + 1], reference[r : r + 1], mask[r : r + 1], lambda t: counts.double().mean()
        )
        for r in (0, 1)
    ]
    assert torch.stack(per_rank).mean().item() == pytest.approx(whole.item(), rel=1e-6)
    # one rank without a thing pixel adds 0, not NaN
    empty = torch.zeros_like(mask[:1])
    alone = masked_feature_distance(features[:1], reference[:1], empty, lambda t: torch.tensor(2.5))
    assert alone.item() == 0.0


# ---------------------------------------------------------------- with the model


def test_frozen_copy_is_in_eval_mode_without_gradients_and_stays_put() -> None:
    model = build_model(PARAMS.model).train()
    frozen = frozen_copy(model)
    assert not frozen.training and all(not p.requires_grad for p in frozen.parameters())
    assert model.training  # the original is untouched
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    optimizer = build_optimizer(model, PARAMS.adapt.optim)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    optimizer_step(optimizer, model(images).square().mean())
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())


def test_feature_distance_of_the_frozen_model_itself_is_zero() -> None:
    model = build_model(PARAMS.model).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.full((2, 32, 32), 13)
    features = model.features(images)
    assert feature_distance(features, frozen_copy(model), images, labels, PARAMS.adapt.fd).item() == 0.0


def test_feature_distance_counts_only_thing_pixels() -> None:
    model = build_model(PARAMS.model).eval()
    images = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    shifted = model.features(images) + 1.0  # every channel off by 1: sqrt(C) per pixel
    channels = shifted.shape[1]
    stuff = torch.zeros(1, 32, 32, dtype=torch.long)  # road only
    cfg = PARAMS.adapt.fd
    assert feature_distance(shifted, frozen_copy(model), images, stuff, cfg).item() == 0.0
    things = stuff.clone()
    things[:, :, 16:] = 13  # car on the right half
    value = feature_distance(shifted, frozen_copy(model), images, things, cfg).item()
    assert value == pytest.approx(channels**0.5, rel=1e-5)


def test_feature_tap_returns_the_logits_and_keeps_the_same_pass_features() -> None:
    model = build_model(PARAMS.model).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    tap = FeatureTap(model)
    assert torch.equal(tap(images), model(images))
    assert tap.features is not None and torch.equal(tap.features, model.features(images))


# ---------------------------------------------------------------- in the adaptation step


def make_batch() -> Batch:
    gen = torch.Generator().manual_seed(0)
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[:, :, 16:] = 13  # car on the right half
    labels[:, :8] = V
    return Batch(
        torch.randn(2, 3, 32, 32, generator=gen) * 50, labels, torch.randn(2, 3, 32, 32, generator=gen) * 50
    )


@pytest.mark.parametrize("method", ["dacs", "source_only"])
def test_fd_adds_its_weighted_distance_and_changes_nothing_else(method: str) -> None:
    student = build_model(PARAMS.model).train()
    frozen = frozen_copy(student)
    teacher = make_teacher(student)
    torch.nn.init.normal_(student.layer4[0].conv3.weight)  # the student has moved away from its start
    cfg = replace(PARAMS.adapt, method=method)

    def run(cfg: AdaptConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rng = step_random(0, "adapt/step", 0, range(2))
        return dacs_loss(student, teacher, make_batch(), cfg, rng, frozen=frozen)

    off_loss, off_stats = run(cfg)
    on_loss, on_stats = run(with_fd(cfg, weight=0.5))
    loss_fd = on_stats.pop("loss_fd")
    assert loss_fd.item() > 0 and not loss_fd.requires_grad
    assert on_stats.keys() == off_stats.keys() and all(
        torch.equal(on_stats[k], off_stats[k]) for k in on_stats
    )
    assert on_loss.item() == pytest.approx((off_loss + 0.5 * loss_fd).item(), rel=1e-6)
    on_loss.backward()
    assert all(p.grad is None for p in frozen.parameters())


def test_fd_without_the_frozen_model_is_an_error() -> None:
    student = build_model(PARAMS.model).train()
    with pytest.raises(ValueError, match="adapt.fd.enabled.*frozen"):
        dacs_loss(
            student,
            make_teacher(student),
            make_batch(),
            with_fd(PARAMS.adapt),
            step_random(0, "a", 0, range(2)),
        )


# ---------------------------------------------------------------- params


def test_fd_defaults_are_daformers_and_off() -> None:
    fd = compose_params().adapt.fd
    assert (fd.enabled, fd.weight, fd.classes, fd.scale_min_ratio) == (
        False, 0.005, [6, 7, 11, 12, 13, 14, 15, 16, 17, 18], 0.75,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"weight": -0.1}, "adapt.fd.weight"),
        ({"classes": []}, "adapt.fd.classes"),
        ({"classes": [6, 6]}, "adapt.fd.classes"),
        ({"classes": [19]}, "adapt.fd.classes"),
        ({"scale_min_ratio": 0.0}, "adapt.fd.scale_min_ratio"),
        ({"scale_min_ratio": 1.5}, "adapt.fd.scale_min_ratio"),
    ],
)
def test_bad_fd_keys_are_rejected_by_name(changes: dict, key: str) -> None:
    raw = dataclasses.asdict(compose_params())
    raw["adapt"]["fd"].update(changes)
    with pytest.raises(ConfigError, match=f"`{key}`"):
        parse_params(raw)
