"""Tests of colour jitter (kornia 0.3.0 semantics) and Gaussian blur on normalised BGR batches."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from dacs_uda.dacs import augment
from dacs_uda.dacs.augment import blur_kernel_size, color_jitter, gaussian_blur
from dacs_uda.utils.image import IMG_MEAN_BGR, denormalize, normalize
from dacs_uda.utils.rng import StepRandom, keyed_generator, step_random

MEAN = torch.tensor(IMG_MEAN_BGR).view(1, 3, 1, 1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rng(batch: int, seed: int = 0) -> StepRandom:
    """Fresh generators of a step for ``batch`` samples, as the training loop makes them."""
    return step_random(seed, "augment", 0, range(batch))


def _images(batch: int = 4, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Normalised BGR batch made from random uint8 RGB images, as the data loaders produce."""
    rng = np.random.default_rng(seed)
    return torch.stack(
        [normalize(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(batch)]
    )


def _changed(before: torch.Tensor, after: torch.Tensor) -> list[bool]:
    return [not torch.equal(b, a) for b, a in zip(before, after, strict=True)]


# --- HSV helpers and single ops -------------------------------------------------------------------------


def test_hsv_matches_colorsys_and_round_trips() -> None:
    rgb = torch.rand(2, 3, 5, 5, generator=_gen())
    rgb[0, :, 0, 0] = 0.4  # grey pixel: hue and saturation 0
    rgb[0, :, 0, 1] = 0.0  # black pixel
    hsv = augment._rgb_to_hsv(rgb)
    for b, y, x in [(0, 0, 0), (0, 0, 1), (0, 2, 3), (1, 4, 4), (1, 1, 0)]:
        expected = colorsys.rgb_to_hsv(*rgb[b, :, y, x].tolist())
        torch.testing.assert_close(hsv[b, :, y, x], torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(augment._hsv_to_rgb(hsv), rgb)


def test_brightness_adds_factor_minus_one_and_clamps() -> None:
    rgb = torch.tensor([0.5, 0.9, 0.1]).view(1, 3, 1, 1)
    out = augment._adjust_brightness(rgb, torch.tensor([1.2]))
    torch.testing.assert_close(out.flatten(), torch.tensor([0.7, 1.0, 0.3]))
    out = augment._adjust_brightness(rgb, torch.tensor([0.8]))
    torch.testing.assert_close(out.flatten(), torch.tensor([0.3, 0.7, 0.0]))


def test_contrast_multiplies_and_clamps() -> None:
    rgb = torch.tensor([0.5, 0.9, 0.1]).view(1, 3, 1, 1)
    out = augment._adjust_contrast(rgb, torch.tensor([1.2]))
    torch.testing.assert_close(out.flatten(), torch.tensor([0.6, 1.0, 0.12]))


def test_saturation_scales_hsv_saturation() -> None:
    rgb = torch.tensor([0.8, 0.4, 0.2]).view(1, 3, 1, 1)  # H = 1/18 turn, S = 0.75, V = 0.8
    torch.testing.assert_close(
        augment._adjust_saturation(rgb, torch.tensor([0.0])).flatten(), torch.full((3,), 0.8)
    )
    # S * 2 clamps to 1: the minimum channel drops to 0, the middle one keeps its hue position.
    out = augment._adjust_saturation(rgb, torch.tensor([2.0])).flatten()
    torch.testing.assert_close(out, torch.tensor([0.8, 0.8 * (1 - 2 / 3), 0.0]))


def test_hue_rotation_full_turn_is_identity_and_half_turn_complements() -> None:
    rgb = torch.rand(3, 3, 4, 4, generator=_gen(1))
    torch.testing.assert_close(augment._adjust_hue(rgb, torch.ones(3)), rgb)
    torch.testing.assert_close(augment._adjust_hue(rgb, -torch.ones(3)), rgb)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(
        augment._adjust_hue(red, torch.tensor([0.5])).flatten(), torch.tensor([0.0, 1.0, 1.0])
    )


# --- color_jitter -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_image", [True, False])
def test_color_jitter_p0_is_bit_exact_identity(per_image: bool) -> None:
    images = _images()
    out = color_jitter(images, _rng(4), p=0.0, strength=0.25, per_image=per_image)
    assert torch.equal(out, images) and out is not images


def test_color_jitter_strength0_round_trips() -> None:
    images = _images()
    out = color_jitter(images, _rng(4), p=1.0, strength=0.0)
    torch.testing.assert_close(out, images, rtol=0, atol=1e-4)


def test_color_jitter_per_image_vs_shared_decisions() -> None:
    images = _images(batch=16)
    per_image_patterns, shared_patterns = set(), set()
    for seed in range(6):
        changed = _changed(images, color_jitter(images, _rng(16, seed), p=0.5, strength=0.25))
        # Each image's first draw is its decision: selected iff u < p; the others are bit-identical.
        assert changed == [bool(torch.rand(1, generator=g) < 0.5) for g in _rng(16, seed).samples]
        per_image_patterns.add(tuple(changed))
        shared = _changed(images, color_jitter(images, _rng(16, seed), p=0.5, strength=0.25, per_image=False))
        # One decision for the batch, the first draw of the batch generator.
        assert shared == [bool(torch.rand(1, generator=_rng(16, seed).batch) < 0.5)] * 16
        shared_patterns.add(tuple(shared))
    assert any(0 < sum(pattern) < 16 for pattern in per_image_patterns)
    assert shared_patterns == {(True,) * 16, (False,) * 16}


def test_color_jitter_deterministic_and_seed_dependent() -> None:
    images = _images()
    first = color_jitter(images, _rng(4, seed=3), p=1.0, strength=0.25)
    assert torch.equal(first, color_jitter(images, _rng(4, seed=3), p=1.0, strength=0.25))
    assert not torch.equal(first, color_jitter(images, _rng(4, seed=4), p=1.0, strength=0.25))


def test_color_jitter_output_range_and_grey_stays_grey() -> None:
    images = _images(batch=6)
    images[0] = normalize(np.full((8, 8, 3), 90, dtype=np.uint8))
    out = color_jitter(images, _rng(6), p=1.0, strength=0.5)
    rgb = ((out + MEAN) / 255.0).flip(1)  # undo the normalisation without denormalize's clamp
    assert rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5
    grey = denormalize(out[0])
    torch.testing.assert_close(grey[0], grey[1])
    torch.testing.assert_close(grey[1], grey[2])


@pytest.mark.parametrize("per_image", [True, False])
def test_color_jitter_grey_image_exact_value_from_documented_draws(per_image: bool) -> None:
    # On a grey image only brightness and contrast act (saturation 0, hue undefined); replay the documented
    # draws of each image (its decision if per image, then 8 uniforms: 4 factors, 4 order keys) and apply
    # the two ops by hand, in the drawn order.
    grey = normalize(np.full((4, 4, 3), 128, dtype=np.uint8))[None].expand(3, 3, 4, 4)
    out = color_jitter(grey, _rng(3, seed=11), p=1.0, strength=0.25, per_image=per_image)
    for image, replay in zip(out, _rng(3, seed=11).samples, strict=True):
        level = 128 / 255
        if per_image:
            torch.rand(1, generator=replay)  # the decision
        draws = torch.rand(8, generator=replay)
        brightness, contrast = (1.0 + 0.25 * (2.0 * draws[:2] - 1.0)).tolist()
        for op in draws[4:].argsort().tolist():
            if op == 0:
                level = min(max(level + brightness - 1.0, 0.0), 1.0)
            elif op == 1:
                level = min(max(level * contrast, 0.0), 1.0)
        torch.testing.assert_close(denormalize(image), torch.full((3, 4, 4), level), rtol=0, atol=1e-6)


def test_color_jitter_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        color_jitter(_images(), _rng(4), p=1.5, strength=0.25)
    with pytest.raises(ValueError):
        color_jitter(_images(), _rng(4), p=0.5, strength=-0.1)
    with pytest.raises(ValueError):
        color_jitter(_images(), _rng(3), p=0.5, strength=0.25)  # one generator per image


# --- Gaussian blur --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "size"), [(512, 51), (1024, 103), (100, 9), (128, 13), (30, 3), (10, 1), (1, 1)]
)
def test_blur_kernel_size(length: int, size: int) -> None:
    assert blur_kernel_size(length) == size


def test_blur_kernel_always_odd_and_fits_reflect_padding() -> None:
    for length in range(1, 3000):
        size = blur_kernel_size(length)
        assert size % 2 == 1 and size <= 2 * length - 1


def test_blur_impulse_response_is_normalised_gaussian() -> None:
    sigma = 1.0
    image = torch.zeros(1, 1, 64, 64)
    image[0, 0, 32, 32] = 1.0
    out = gaussian_blur(image, _rng(1), p=1.0, sigma_range=(sigma, sigma))
    taps = torch.arange(7.0) - 3  # blur_kernel_size(64) = 7
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    expected = torch.zeros(64, 64)
    expected[29:36, 29:36] = kernel[:, None] * kernel[None, :]
    torch.testing.assert_close(out[0, 0], expected)


def test_blur_rectangular_image_uses_per_axis_kernels() -> None:
    image = torch.zeros(1, 1, 40, 100)
    image[0, 0, 20, 50] = 1.0
    out = gaussian_blur(image, _rng(1), p=1.0, sigma_range=(5.0, 5.0))[0, 0]
    support = out > 0
    assert support.any(dim=1).sum() == blur_kernel_size(40)  # 3 rows
    assert support.any(dim=0).sum() == blur_kernel_size(100)  # 9 columns


@pytest.mark.parametrize("per_image", [True, False])
def test_blur_p0_is_bit_exact_identity(per_image: bool) -> None:
    images = _images()
    assert torch.equal(
        gaussian_blur(images, _rng(4), p=0.0, sigma_range=(0.15, 1.15), per_image=per_image), images
    )


def test_blur_constant_image_stays_constant_and_sum_roughly_preserved() -> None:
    constant = torch.full((2, 3, 32, 48), -104.0)
    out = gaussian_blur(constant, _rng(2), p=1.0, sigma_range=(0.15, 1.15))
    torch.testing.assert_close(out, constant)
    smooth = torch.rand(2, 3, 64, 64, generator=_gen(2)) + 1.0
    blurred = gaussian_blur(smooth, _rng(2), p=1.0, sigma_range=(1.15, 1.15))
    torch.testing.assert_close(blurred.sum(dim=(2, 3)), smooth.sum(dim=(2, 3)), rtol=5e-3, atol=0)
    assert blurred.std() < smooth.std()  # it does smooth


def test_blur_decisions_and_determinism() -> None:
    images = _images(batch=12, size=40)  # blur_kernel_size(20) would be 1: a no-op
    out = gaussian_blur(images, _rng(12, seed=9), p=0.5, sigma_range=(0.5, 1.15))
    expected = [bool(torch.rand(1, generator=g) < 0.5) for g in _rng(12, seed=9).samples]
    assert _changed(images, out) == expected
    assert torch.equal(out, gaussian_blur(images, _rng(12, seed=9), p=0.5, sigma_range=(0.5, 1.15)))
    shared = gaussian_blur(images, _rng(12, seed=9), p=1.0, sigma_range=(0.5, 1.15), per_image=False)
    assert all(_changed(images, shared))


@pytest.mark.parametrize("per_image", [True, False])
def test_blur_sigma_matches_documented_draws(per_image: bool) -> None:
    # An impulse blurred with sigma peaks at k0 ** 2, k0 the centre tap of the normalised 7-tap kernel.
    image = torch.zeros(1, 1, 64, 64)
    image[0, 0, 32, 32] = 1.0
    out = gaussian_blur(
        image.expand(3, 1, 64, 64), _rng(3, 5), p=1.0, sigma_range=(0.5, 1.5), per_image=per_image
    )
    for peak, replay in zip(out[:, 0, 32, 32], _rng(3, 5).samples, strict=True):
        if per_image:
            torch.rand(1, generator=replay)  # the decision
        sigma = 0.5 + 1.0 * torch.rand(1, generator=replay)
        kernel = torch.exp(-((torch.arange(7.0) - 3) ** 2) / (2 * sigma**2))
        torch.testing.assert_close(peak, (kernel[3] / kernel.sum()) ** 2)


def test_blur_sigma_drawn_per_image() -> None:
    image = torch.zeros(1, 1, 64, 64)
    image[0, 0, 32, 32] = 1.0
    out = gaussian_blur(image.expand(4, 1, 64, 64), _rng(4), p=1.0, sigma_range=(0.15, 1.15))
    peaks = out[:, 0, 32, 32]
    assert len(set(peaks.tolist())) == 4
    assert math.isclose(float(out.sum()), 4.0, rel_tol=1e-5)


def test_blur_rejects_bad_sigma_range() -> None:
    with pytest.raises(ValueError):
        gaussian_blur(_images(), _rng(4), p=1.0, sigma_range=(0.0, 1.0))
    with pytest.raises(ValueError):
        gaussian_blur(_images(), _rng(5), p=1.0, sigma_range=(0.15, 1.15))  # one generator per image


# --- per-sample randomness: a slice of the batch gives the slice of the result ------------------------


def _augmenters() -> dict[str, Callable[[torch.Tensor, StepRandom, bool], torch.Tensor]]:
    """Both augmentations at probabilities where some images are selected and some are not."""
    return {
        "jitter": lambda x, rng, per_image: color_jitter(x, rng, p=0.5, strength=0.25, per_image=per_image),
        "blur": lambda x, rng, per_image: gaussian_blur(
            x, rng, p=0.5, sigma_range=(0.15, 1.15), per_image=per_image
        ),
    }


@pytest.mark.parametrize("kind", ["jitter", "blur"])
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize(("start", "stop"), [(0, 3), (2, 5), (5, 6)])
def test_augmentation_of_a_slice_is_the_slice_of_the_augmentation(
    kind: str, per_image: bool, start: int, stop: int
) -> None:
    augment_fn = _augmenters()[kind]
    images = _images(batch=6, size=40)  # blur_kernel_size(40) = 3: blurring changes the image
    for seed in range(4):  # seeds whose batch decision goes either way
        full = augment_fn(images, _rng(6, seed), per_image)
        fresh = _rng(6, seed)
        part = StepRandom(batch=fresh.batch, samples=fresh.samples[start:stop])
        assert torch.equal(augment_fn(images[start:stop], part, per_image), full[start:stop])


@pytest.mark.parametrize("kind", ["jitter", "blur"])
@pytest.mark.parametrize("per_image", [True, False])
def test_an_image_augmentation_ignores_the_other_images_generators(kind: str, per_image: bool) -> None:
    augment_fn = _augmenters()[kind]
    images = _images(batch=5, size=40)
    seed = next(s for s in range(20) if torch.rand(1, generator=_rng(5, s).batch) < 0.5)  # batch selected
    full = augment_fn(images, _rng(5, seed), per_image)
    own_changed = 0
    for replaced in range(5):
        rng = _rng(5, seed)
        samples = list(rng.samples)
        samples[replaced] = keyed_generator(99, "another stream", replaced)
        out = augment_fn(images, StepRandom(batch=rng.batch, samples=tuple(samples)), per_image)
        kept = [b for b in range(5) if b != replaced]
        assert torch.equal(out[kept], full[kept])
        own_changed += not torch.equal(out[replaced], full[replaced])
    assert own_changed > 0  # the replaced generator does drive its own image
