"""Masked image consistency: the block mask, the masked image, the sub-stream it draws from, its params."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dacs_uda.config import ConfigError
from dacs_uda.dacs.mic import block_mask, mask_images, upsample_blocks
from dacs_uda.utils.rng import keyed_generator, step_random, substream
from tests.conftest import tiny_params

T, F = True, False


def generators(batch: int, seed: int = 0) -> tuple[torch.Generator, ...]:
    return step_random(seed, "mic-test", 0, range(batch)).samples


def test_blocks_become_square_pixel_blocks() -> None:
    kept = torch.tensor([[[T, F], [F, T]]])
    expected = torch.tensor([[[T, T, F, F], [T, T, F, F], [F, F, T, T], [F, F, T, T]]])
    assert torch.equal(upsample_blocks(kept, 4, 4), expected)


def test_blocks_that_do_not_divide_the_crop_take_the_nearest_block() -> None:
    # pixel j takes block floor(j * 3 / 4): 0, 0, 1, 2
    kept = torch.tensor([[[T, F, T]]])
    assert torch.equal(upsample_blocks(kept, 2, 4), torch.tensor([[[T, T, F, T], [T, T, F, T]]]))


def test_each_block_is_kept_when_its_draw_exceeds_the_ratio() -> None:
    # 32 x 48 crop, 8-px blocks: a 4 x 6 grid per sample, one torch.rand draw from the sample's generator
    mask = block_mask(32, 48, generators(2), block_size=8, mask_ratio=0.7)
    for b, generator in enumerate(generators(2)):
        kept = torch.rand((4, 6), generator=generator) > 0.7
        assert torch.equal(mask[b], kept.repeat_interleave(8, 0).repeat_interleave(8, 1))
    assert mask.shape == (2, 32, 48) and mask.dtype == torch.bool


def test_a_draw_equal_to_the_ratio_hides_its_block() -> None:
    first = float(torch.rand((1, 1), generator=generators(1)[0]))
    assert not block_mask(8, 8, generators(1), block_size=8, mask_ratio=first).any()
    assert block_mask(8, 8, generators(1), block_size=8, mask_ratio=first - 1e-6).all()


def test_ratio_is_the_share_of_hidden_blocks() -> None:
    # 1-px blocks: 10,000 independent blocks at ratio 0.7 (binomial std 0.0046)
    hidden = 1.0 - block_mask(100, 100, generators(1, 3), block_size=1, mask_ratio=0.7).float().mean()
    assert abs(float(hidden) - 0.7) < 0.015


def test_a_mask_covering_everything_leaves_the_mean_colour() -> None:
    images = torch.randn(2, 3, 16, 16)
    visible = block_mask(16, 16, generators(2), block_size=4, mask_ratio=1.0)
    assert not visible.any()
    assert torch.equal(mask_images(images, visible), torch.zeros_like(images))


def test_a_mask_covering_nothing_leaves_the_image() -> None:
    images = torch.randn(2, 3, 16, 16)
    visible = block_mask(16, 16, generators(2), block_size=4, mask_ratio=0.0)
    assert visible.all()
    assert torch.equal(mask_images(images, visible), images)


def test_masked_image_is_image_times_mask() -> None:
    images = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[-5.0, 6.0], [7.0, -8.0]]]])
    visible = torch.tensor([[[T, F], [F, T]]])
    expected = torch.tensor([[[[1.0, 0.0], [0.0, 4.0]], [[-5.0, 0.0], [0.0, -8.0]]]])
    assert torch.equal(mask_images(images, visible), expected)


@pytest.mark.parametrize(("height", "rows"), [(3, 1), (12, 2), (20, 2), (28, 4)])
def test_grid_rows_round_as_mic_does(height: int, rows: int) -> None:
    # round(H / 8) with Python rounding (12 / 8 = 1.5 -> 2, 20 / 8 = 2.5 -> 2), at least one block
    mask = block_mask(height, 8, generators(1), block_size=8, mask_ratio=0.5)
    kept = torch.rand((rows, 1), generator=generators(1)[0]) > 0.5
    assert torch.equal(mask[0], upsample_blocks(kept.unsqueeze(0), height, 8)[0])


def test_a_slice_of_the_generators_gives_the_slice_of_the_mask() -> None:
    full = block_mask(16, 16, generators(4), block_size=4, mask_ratio=0.7)
    part = block_mask(16, 16, generators(4)[1:3], block_size=4, mask_ratio=0.7)
    assert torch.equal(part, full[1:3])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_size": 0, "mask_ratio": 0.7}, "block_size"),
        ({"block_size": 4, "mask_ratio": 1.5}, "mask_ratio"),
    ],
)
def test_block_mask_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        block_mask(8, 8, generators(1), **kwargs)


def test_mask_images_rejects_a_mask_of_another_size() -> None:
    with pytest.raises(ValueError, match="must be the"):
        mask_images(torch.zeros(1, 3, 8, 8), torch.ones(1, 4, 8, dtype=torch.bool))


def test_substream_is_keyed_per_sample_and_leaves_the_parent_untouched() -> None:
    parent = step_random(0, "adapt/step", 3, [0, 1, 2])
    sub = substream(parent, "mic")
    # its own keyed seeds: generator i of the sub-stream is keyed by (parent seed of i, "mic")
    expected = keyed_generator(parent.samples[1].initial_seed(), "mic")
    assert torch.equal(torch.rand(3, generator=sub.samples[1]), torch.rand(3, generator=expected))
    # drawing from the sub-stream shifts no draw of the parent
    fresh = step_random(0, "adapt/step", 3, [0, 1, 2])
    assert all(
        torch.equal(torch.rand(2, generator=a), torch.rand(2, generator=b))
        for a, b in zip(parent.samples, fresh.samples, strict=True)
    )
    # per sample: the sub-stream of a shard is the shard of the sub-stream
    shard = substream(step_random(0, "adapt/step", 3, [2]), "mic").samples[0]
    again = substream(step_random(0, "adapt/step", 3, [0, 1, 2]), "mic").samples[2]
    assert torch.equal(torch.rand(2, generator=shard), torch.rand(2, generator=again))


ADAPT = tiny_params().adapt


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"block_size": 0}, "adapt.mic.block_size"),
        ({"mask_ratio": 1.1}, "adapt.mic.mask_ratio"),
        ({"mask_ratio": -0.1}, "adapt.mic.mask_ratio"),
        ({"weight": -1.0}, "adapt.mic.weight"),
    ],
)
def test_params_out_of_range_are_rejected_by_key(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"`{key}`"):
        replace(ADAPT, mic=replace(ADAPT.mic, **changes))


def test_mic_needs_a_method_with_a_teacher() -> None:
    with pytest.raises(ConfigError, match="`adapt.mic.enabled` needs a teacher"):
        replace(ADAPT, method="source_only", mic=replace(ADAPT.mic, enabled=True))
    replace(ADAPT, method="source_only")  # off: fine


def test_defaults_are_off_with_mic_constants_scaled_to_the_embedded_crops() -> None:
    assert ADAPT.mic.enabled is False
    # MIC: 32-px blocks on 512 crops (1/16 of the side); the embedded crops are 128 px
    assert (ADAPT.mic.block_size, ADAPT.mic.mask_ratio, ADAPT.mic.weight, ADAPT.mic.augment) == (
        8,
        0.7,
        1.0,
        True,
    )
