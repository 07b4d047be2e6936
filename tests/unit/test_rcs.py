"""Rare class sampling (``adapt.rcs``): class statistics, P(c), eligible frames, keyed draws, crops."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dacs_uda.config import ConfigError, RcsConfig
from dacs_uda.data.rcs import (
    RareClassSampler,
    RarePlan,
    class_frequencies,
    class_pixel_counts,
    class_probabilities,
    draw_class_and_frame,
    eligible_frames,
    rare_class_crop,
    rare_plan,
    read_class_pixels,
    write_class_pixels,
)
from dacs_uda.data.transforms import random_crop_box
from dacs_uda.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from dacs_uda.utils.rng import keyed_generator

CFG = RcsConfig(enabled=True, temperature=0.01, min_pixels=2, min_crop_ratio=0.5, max_crop_tries=10)


def pixels_of(*frames: dict[int, int]) -> np.ndarray:
    """Frames x classes counts from {class: pixels} per frame."""
    out = np.zeros((len(frames), NUM_CLASSES), dtype=np.int64)
    for row, counts in enumerate(frames):
        for cls, n in counts.items():
            out[row, cls] = n
    return out


def test_class_pixel_counts_skip_ignored_pixels() -> None:
    label = np.array([[0, 0, 18], [IGNORE_INDEX, 5, 0]], dtype=np.uint8)
    counts = class_pixel_counts(label)
    assert counts.dtype == np.int64 and counts.shape == (NUM_CLASSES,)
    assert counts.tolist() == [3, 0, 0, 0, 0, 1] + [0] * 12 + [1]


def test_frequencies_are_shares_of_all_labelled_pixels() -> None:
    pixels = pixels_of({0: 6, 1: 1}, {1: 1})
    expected = np.zeros(NUM_CLASSES)
    expected[:2] = [0.75, 0.25]
    np.testing.assert_array_equal(class_frequencies(pixels), expected)
    with pytest.raises(ValueError, match="no frame has a labelled pixel"):
        class_frequencies(pixels_of({}, {}))


def test_a_frame_counts_for_a_class_only_above_min_pixels() -> None:
    frames = eligible_frames(pixels_of({0: 3, 4: 2}, {0: 2, 4: 5}, {4: 3}), min_pixels=2)
    assert frames[0] == (0,) and frames[4] == (1, 2)
    assert all(frames[c] == () for c in range(NUM_CLASSES) if c not in (0, 4))


def test_probabilities_are_the_softmax_of_one_minus_frequency_over_temperature() -> None:
    # f = (0.75, 0.25): logits (1 - f) / 0.5 = (0.5, 1.5), so P = (1, e) / (1 + e)
    pixels = pixels_of({0: 6, 1: 1}, {1: 1})
    p = class_probabilities(class_frequencies(pixels), eligible_frames(pixels, 0), temperature=0.5)
    assert p.dtype == torch.float64
    torch.testing.assert_close(
        p[:2], torch.tensor([1 / (1 + math.e), math.e / (1 + math.e)], dtype=torch.float64)
    )
    assert p[2:].tolist() == [0.0] * (NUM_CLASSES - 2)  # absent from every frame: never drawn


def test_a_class_without_an_eligible_frame_gets_zero_and_the_rest_renormalise() -> None:
    # class 1 is present (f = 0.25) but no frame holds more than 1 pixel of it
    pixels = pixels_of({0: 3, 1: 1}, {2: 0})
    p = class_probabilities(class_frequencies(pixels), eligible_frames(pixels, 1), temperature=0.01)
    assert p[0].item() == 1.0 and p[1:].sum().item() == 0.0


def test_no_eligible_frame_at_all_names_the_key_to_lower() -> None:
    pixels = pixels_of({0: 3}, {1: 2})
    with pytest.raises(ValueError, match=r"adapt\.rcs\.min_pixels"):
        class_probabilities(class_frequencies(pixels), eligible_frames(pixels, 3), temperature=0.01)


def test_rare_plan_uses_the_config() -> None:
    plan = rare_plan(pixels_of({0: 30, 1: 3}, {0: 30, 2: 2}), CFG)
    assert plan.frames[1] == (0,) and plan.frames[2] == () and plan.frames[0] == (0, 1)
    assert plan.min_crop_pixels == 1.0 and plan.max_crop_tries == 10
    assert plan.probabilities[1] > 0.99 and plan.probabilities[2] == 0  # rare class 1 dominates at T 0.01


def test_draws_only_eligible_frames_of_classes_with_probability() -> None:
    probabilities = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    probabilities[[3, 7]] = torch.tensor([0.5, 0.5], dtype=torch.float64)
    frames = tuple((4, 9) if c == 3 else (2,) if c == 7 else (0, 1) for c in range(NUM_CLASSES))
    plan = RarePlan(probabilities, frames, min_crop_pixels=0, max_crop_tries=1)
    draws = [draw_class_and_frame(plan, keyed_generator(0, "t", i)) for i in range(200)]
    assert set(draws) == {(3, 4), (3, 9), (7, 2)}
    assert draws == [draw_class_and_frame(plan, keyed_generator(0, "t", i)) for i in range(200)]


def test_crop_is_redrawn_until_it_holds_enough_of_the_class() -> None:
    label = np.zeros((4, 4), dtype=np.uint8)
    label[:2, :2] = 5  # only the (0, 0) window of 9 holds all 4 pixels of class 5
    corners = {rare_class_crop(label, 5, (2, 2), 3, 200, keyed_generator(1, "c", i)) for i in range(20)}
    assert corners == {(0, 0)}
    # 4 px are needed, (0, 0) is the only way: the first try's corner changes from draw to draw
    first_tries = {random_crop_box(4, 4, (2, 2), keyed_generator(1, "c", i)) for i in range(20)}
    assert len(first_tries) > 1


def test_crop_keeps_the_last_try_when_no_window_holds_enough() -> None:
    label = np.zeros((6, 8), dtype=np.uint8)  # class 9 absent: every try fails
    gen = keyed_generator(2, "c")
    tries = [random_crop_box(6, 8, (3, 4), gen) for _ in range(7)]
    assert rare_class_crop(label, 9, (3, 4), 0, 7, keyed_generator(2, "c")) == tries[-1]
    assert rare_class_crop(label, 9, (3, 4), 0, 1, keyed_generator(2, "c")) == tries[0]


def test_the_first_crop_that_holds_enough_is_kept() -> None:
    label = np.full((6, 8), 5, dtype=np.uint8)  # every window holds 12 px of class 5 > 11
    gen = keyed_generator(3, "c")
    tries = [random_crop_box(6, 8, (3, 4), gen) for _ in range(10)]
    assert rare_class_crop(label, 5, (3, 4), 11, 10, keyed_generator(3, "c")) == tries[0]
    # "more than": 12 px do not satisfy a threshold of 12, so all 10 tries fail
    assert rare_class_crop(label, 5, (3, 4), 12, 10, keyed_generator(3, "c")) == tries[-1] != tries[0]


def test_sampler_draws_class_frame_and_crop_from_one_generator() -> None:
    labels = {0: np.zeros((4, 4), dtype=np.uint8), 1: np.zeros((4, 4), dtype=np.uint8)}
    labels[1][2:, 2:] = 12
    plan = rare_plan(np.stack([class_pixel_counts(labels[i]) for i in (0, 1)]), CFG)
    sampler = RareClassSampler(
        dataclasses.replace(plan, min_crop_pixels=3, max_crop_tries=100), labels.__getitem__
    )
    keys = {sampler.draw((2, 2), keyed_generator(0, "s", i)) for i in range(30)}
    # rider (12, 4 px) is far rarer than road (12 px + 16 px): P(rider) ~ 1; its only frame and window
    assert keys == {(1, 2, 2)}


def test_class_pixels_file_round_trips_in_the_order_asked(tmp_path: Path) -> None:
    path = tmp_path / "source_class_pixels.csv"
    pixels = pixels_of({0: 5, 18: 1}, {3: 2})
    write_class_pixels(path, ["a.png", "b.png"], pixels)
    assert path.read_text().splitlines()[0] == "label," + ",".join(CLASS_NAMES)
    np.testing.assert_array_equal(read_class_pixels(path, ["b.png", "a.png"]), pixels[::-1])
    with pytest.raises(ValueError, match=r"no counts for 1 frames, e\.g\. c\.png; run `dvc repro prepare`"):
        read_class_pixels(path, ["a.png", "c.png"])
    with pytest.raises(FileNotFoundError, match="dvc repro prepare"):
        read_class_pixels(tmp_path / "missing.csv", ["a.png"])
    path.write_text("label,road\na.png,3\n")
    with pytest.raises(ValueError, match="not label \\+ the 19 classes"):
        read_class_pixels(path, ["a.png"])


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"temperature": 0.0}, "adapt.rcs.temperature"),
        ({"min_pixels": -1}, "adapt.rcs.min_pixels"),
        ({"min_crop_ratio": -0.5}, "adapt.rcs.min_crop_ratio"),
        ({"max_crop_tries": 0}, "adapt.rcs.max_crop_tries"),
    ],
)
def test_config_rejects_out_of_range_values(change: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"`{key}`"):
        dataclasses.replace(CFG, **change)
