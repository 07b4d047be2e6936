"""Exact-value tests of the ClassMix / CutMix masks and of ``mix``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest
import torch

from dacs_uda.dacs.mixing import class_mask, cutmix_mask, mix
from dacs_uda.utils.rng import keyed_generator, step_random

IGNORE = 255


def _gens(batch: int, seed: int = 0) -> tuple[torch.Generator, ...]:
    """Fresh per-sample generators of a step, as the training loop makes them."""
    return step_random(seed, "mix", 0, range(batch)).samples


def _chosen_classes(label: torch.Tensor, mask: torch.Tensor) -> set[int]:
    """Classes fully covered by the mask; fails if a class is only partly covered."""
    chosen = set()
    for value in torch.unique(label).tolist():
        covered = mask[label == value]
        assert covered.all() or not covered.any(), f"class {value} partly masked"
        if covered.all():
            chosen.add(value)
    return chosen


def _striped(classes: list[int], height: int = 4, width: int = 24) -> torch.Tensor:
    """``[H, W]`` label of one-pixel vertical stripes cycling through ``classes`` (all present)."""
    assert width >= len(classes)
    columns = torch.tensor(classes).repeat(math.ceil(width / len(classes)))[:width]
    return columns.expand(height, width).clone()


def test_class_mask_picks_ceil_half_of_the_sample_classes() -> None:
    label = _striped([0, 3, 7, 11, 18])[None]
    mask = class_mask(label, _gens(1))
    assert mask.dtype == torch.bool and mask.shape == label.shape
    assert len(_chosen_classes(label[0], mask[0])) == 3  # ceil(5 / 2)


def test_class_mask_matches_documented_draw() -> None:
    labels = torch.stack([_striped([2, 5, 9, 13]), _striped([1, 4, 6])])
    mask = class_mask(labels, _gens(2, seed=7))
    for label, sample_mask, replay in zip(labels, mask, _gens(2, seed=7), strict=True):
        classes = torch.unique(label)
        picked = classes[torch.randperm(len(classes), generator=replay)[: math.ceil(len(classes) / 2)]]
        assert torch.equal(sample_mask, torch.isin(label, picked))


def test_class_mask_is_per_sample_not_batch_union() -> None:
    labels = torch.stack([_striped([0, 1]), _striped([2, 3, 4, 5])])
    for seed in range(20):
        mask = class_mask(labels, _gens(2, seed))
        first, second = _chosen_classes(labels[0], mask[0]), _chosen_classes(labels[1], mask[1])
        assert len(first) == 1 and first <= {0, 1}
        assert len(second) == 2 and second <= {2, 3, 4, 5}


def test_class_mask_never_picks_ignore_by_default() -> None:
    label = _striped([0, IGNORE, 4, 8])[None]
    for seed in range(30):
        mask = class_mask(label, _gens(1, seed))
        assert not mask[label == IGNORE].any()
        assert len(_chosen_classes(label[0], mask[0])) == 2  # ceil(3 / 2) of {0, 4, 8}


def test_class_mask_include_ignore_counts_and_can_pick_255() -> None:
    label = _striped([0, IGNORE, 4, 8])[None]
    picked_ignore = False
    for seed in range(30):
        mask = class_mask(label, _gens(1, seed), include_ignore=True)
        chosen = _chosen_classes(label[0], mask[0])
        assert len(chosen) == 2  # ceil(4 / 2) of {0, 4, 8, 255}
        picked_ignore |= IGNORE in chosen
    assert picked_ignore


def test_class_mask_single_class_is_all_true() -> None:
    label = torch.full((1, 3, 5), 6)
    assert class_mask(label, _gens(1)).all()


def test_class_mask_all_ignore() -> None:
    label = torch.full((2, 3, 5), IGNORE)
    assert not class_mask(label, _gens(2)).any()
    assert class_mask(label, _gens(2), include_ignore=True).all()


def test_class_mask_custom_ignore_index() -> None:
    label = torch.tensor([[[0, 0, 250, 250]]])
    mask = class_mask(label, _gens(1), ignore_index=250)
    assert torch.equal(mask, torch.tensor([[[True, True, False, False]]]))


@pytest.mark.parametrize("batch", [1, 4])
def test_class_mask_batch_sizes(batch: int) -> None:
    base = torch.arange(6).repeat_interleave(2).view(3, 4)
    labels = torch.stack([(base + b) % 6 for b in range(batch)])
    mask = class_mask(labels, _gens(batch))
    assert mask.shape == (batch, 3, 4)
    for label, sample_mask in zip(labels, mask, strict=True):
        assert len(_chosen_classes(label, sample_mask)) == 3
        assert sample_mask.sum() == 6  # 3 classes x 2 pixels


def test_class_mask_is_reproducible_and_seed_dependent() -> None:
    labels = torch.stack([_striped(list(range(10))), _striped([3, 5, 7, 9, 11, 13])])
    first = class_mask(labels, _gens(2, seed=123))
    assert torch.equal(first, class_mask(labels, _gens(2, seed=123)))
    assert any(not torch.equal(first, class_mask(labels, _gens(2, seed))) for seed in range(1, 10))


def test_class_mask_rejects_wrong_rank_and_generator_count() -> None:
    with pytest.raises(ValueError):
        class_mask(torch.zeros(4, 4, dtype=torch.long), _gens(4))
    with pytest.raises(ValueError):
        class_mask(torch.zeros(3, 4, 4, dtype=torch.long), _gens(2))


def test_cutmix_area_and_bounds() -> None:
    batch, height, width = 64, 10, 7
    mask = cutmix_mask(height, width, _gens(batch), area=0.5)
    assert mask.shape == (batch, height, width) and mask.dtype == torch.bool
    box_h, box_w = round(10 * math.sqrt(0.5)), round(7 * math.sqrt(0.5))  # 7, 5
    for sample in mask:
        rows, cols = sample.any(dim=1).nonzero().squeeze(1), sample.any(dim=0).nonzero().squeeze(1)
        # A full, unclipped rectangle: contiguous rows/columns of the expected size, fully filled.
        assert rows.numel() == box_h and cols.numel() == box_w
        assert rows[-1] - rows[0] == box_h - 1 and cols[-1] - cols[0] == box_w - 1
        assert sample.sum() == box_h * box_w
    corners = {(int(s.any(1).nonzero()[0]), int(s.any(0).nonzero()[0])) for s in mask}
    assert len(corners) > 1  # positions are random


def test_cutmix_extreme_areas_and_determinism() -> None:
    assert cutmix_mask(4, 6, _gens(2), area=1.0).all()
    assert not cutmix_mask(4, 6, _gens(2), area=0.0).any()
    assert torch.equal(cutmix_mask(9, 9, _gens(3, seed=5)), cutmix_mask(9, 9, _gens(3, seed=5)))
    with pytest.raises(ValueError):
        cutmix_mask(4, 4, _gens(1), area=1.5)


def test_cutmix_matches_documented_draw() -> None:
    height, width = 10, 7
    box_h, box_w = round(height * math.sqrt(0.5)), round(width * math.sqrt(0.5))
    mask = cutmix_mask(height, width, _gens(3, seed=2), area=0.5)
    for sample_mask, replay in zip(mask, _gens(3, seed=2), strict=True):
        top = int(torch.randint(0, height - box_h + 1, (1,), generator=replay))
        left = int(torch.randint(0, width - box_w + 1, (1,), generator=replay))
        expected = torch.zeros(height, width, dtype=torch.bool)
        expected[top : top + box_h, left : left + box_w] = True
        assert torch.equal(sample_mask, expected)


# --- per-sample randomness: a slice of the batch gives the slice of the result ------------------------


def _varied_labels(batch: int = 5) -> torch.Tensor:
    """Samples with different class sets (some with void), so their masks differ."""
    return torch.stack([_striped([b, b + 3, b + 7, IGNORE, 2 * b + 11][: 2 + b % 4]) for b in range(batch)])


def _mask_fns() -> dict[str, Callable[[int, int, Sequence[torch.Generator]], torch.Tensor]]:
    """Mask makers taking ``(start, stop, generators)`` and masking samples ``start:stop`` of one batch."""
    labels = _varied_labels()
    return {
        "class": lambda i, j, gens: class_mask(labels[i:j], gens),
        "class_with_ignore": lambda i, j, gens: class_mask(labels[i:j], gens, include_ignore=True),
        "cutmix": lambda i, j, gens: cutmix_mask(4, 24, gens, area=0.3),
    }


@pytest.mark.parametrize("kind", ["class", "class_with_ignore", "cutmix"])
@pytest.mark.parametrize(("start", "stop"), [(0, 2), (1, 4), (4, 5), (0, 5)])
def test_masks_of_a_slice_are_the_slice_of_the_masks(kind: str, start: int, stop: int) -> None:
    make = _mask_fns()[kind]
    full = make(0, 5, _gens(5, seed=3))
    assert torch.equal(make(start, stop, _gens(5, seed=3)[start:stop]), full[start:stop])


@pytest.mark.parametrize("kind", ["class", "class_with_ignore", "cutmix"])
def test_a_sample_mask_ignores_the_other_samples_generators(kind: str) -> None:
    make = _mask_fns()[kind]
    full = make(0, 5, _gens(5, seed=3))
    own_changed = 0
    for replaced in range(5):
        generators = list(_gens(5, seed=3))
        generators[replaced] = keyed_generator(99, "another stream", replaced)
        mask = make(0, 5, generators)
        kept = [b for b in range(5) if b != replaced]
        assert torch.equal(mask[kept], full[kept])
        own_changed += not torch.equal(mask[replaced], full[replaced])
    assert own_changed > 0  # the replaced generator does drive its own sample


def test_mix_all_true_and_all_false() -> None:
    source = torch.arange(24.0).view(2, 3, 2, 2)
    target = -source
    ones = torch.ones(2, 2, 2, dtype=torch.bool)
    assert torch.equal(mix(ones, source, target), source)
    assert torch.equal(mix(~ones, source, target), target)


def test_mix_hand_made_mask_on_images_labels_weights() -> None:
    mask = torch.tensor([[[True, False], [False, True]]])
    image_s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]])
    image_t = torch.zeros(1, 2, 2, 2)
    expected_image = torch.tensor([[[[1.0, 0.0], [0.0, 4.0]], [[5.0, 0.0], [0.0, 8.0]]]])
    assert torch.equal(mix(mask, image_s, image_t), expected_image)

    labels = mix(mask, torch.tensor([[[1, 2], [3, 255]]]), torch.tensor([[[9, 8], [7, 6]]]))
    assert labels.dtype == torch.long
    assert torch.equal(labels, torch.tensor([[[1, 8], [7, 255]]]))

    weights = mix(mask, torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.25))
    assert torch.equal(weights, torch.tensor([[[1.0, 0.25], [0.25, 1.0]]]))


def test_mix_rejects_mismatched_inputs() -> None:
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError):
        mix(mask, torch.ones(1, 2, 2), torch.ones(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        mix(mask, torch.ones(1, 2, 2), torch.ones(1, 1, 2, 2))
