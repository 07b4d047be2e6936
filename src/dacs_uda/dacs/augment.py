"""Strong augmentation of the mixed images: colour jitter and Gaussian blur (DACS ``strongTransform``).

Both functions take and return normalised tensors (BGR minus ``IMG_MEAN_BGR``, not scaled; see
:mod:`dacs_uda.utils.image`) and process the whole batch at once. Their random numbers come from a
:class:`~dacs_uda.utils.rng.StepRandom`: image ``b`` draws only from ``rng.samples[b]``, and the one draw
made for the whole batch from ``rng.batch``, so the result for a slice of the batch, given the matching
slice of ``rng.samples`` (and the same ``rng.batch``), is that slice of the full result (a batch split over
processes draws the same numbers). The official code (vikolss/DACS ``utils/transformsgpu.py``) draws *one*
apply/skip decision per iteration for both mixed images; ``per_image=False`` reproduces that, while the
default ``per_image=True`` decides for every image independently. Images that are not selected come back
bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dacs_uda.utils.image import IMG_MEAN_BGR, denormalize
from dacs_uda.utils.rng import StepRandom

# Row ``i`` gives the (R, G, B) sources for hue sector ``i`` among the stacked candidates (value, falling,
# grey, rising) of the standard HSV -> RGB formula.
_SECTOR_SOURCES = ((0, 3, 2), (1, 0, 2), (2, 0, 3), (2, 1, 0), (3, 2, 0), (0, 2, 1))


def _to_normalised(rgb: Tensor) -> Tensor:
    """Inverse of ``denormalize``: RGB in ``[0, 1]`` -> BGR * 255 minus the Caffe mean."""
    mean = torch.tensor(IMG_MEAN_BGR, device=rgb.device, dtype=rgb.dtype).view(3, 1, 1)
    return rgb.flip(-3) * 255.0 - mean


def _rgb_to_hsv(rgb: Tensor) -> Tensor:
    """RGB in ``[0, 1]`` -> HSV, channels at dim -3; hue in turns ``[0, 1)``, the others in ``[0, 1]``."""
    value, brightest = rgb.max(dim=-3)
    delta = value - rgb.min(dim=-3).values
    saturation = torch.where(value > 0, delta / value.clamp_min(torch.finfo(rgb.dtype).tiny), 0.0)
    # Grey pixels (delta == 0) have no hue; a safe divisor avoids NaNs that torch.where would not hide.
    safe = torch.where(delta > 0, delta, 1.0)
    red, green, blue = rgb.unbind(dim=-3)
    sextant = torch.where(
        brightest == 0,
        torch.remainder((green - blue) / safe, 6.0),
        torch.where(brightest == 1, (blue - red) / safe + 2.0, (red - green) / safe + 4.0),
    )
    hue = torch.where(delta > 0, sextant / 6.0, 0.0)
    return torch.stack((hue, saturation, value), dim=-3)


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of :func:`_rgb_to_hsv`; any hue is accepted and taken modulo one turn."""
    hue, saturation, value = hsv.unbind(dim=-3)
    scaled = hue * 6.0
    floor = torch.floor(scaled)
    frac = scaled - floor
    sector = torch.remainder(floor, 6.0).long()
    grey = value * (1 - saturation)
    falling = value * (1 - saturation * frac)
    rising = value * (1 - saturation * (1 - frac))
    candidates = torch.stack((value, falling, grey, rising), dim=-3)
    table = torch.tensor(_SECTOR_SOURCES, device=hsv.device)
    return candidates.gather(-3, table[sector].movedim(-1, -3))


def _per_image(factor: Tensor) -> Tensor:
    return factor.view(-1, 1, 1, 1)


def _adjust_brightness(rgb: Tensor, factor: Tensor) -> Tensor:
    """kornia 0.3.0 brightness: add ``factor - 1``, clamp to ``[0, 1]``."""
    return (rgb + _per_image(factor - 1.0)).clamp(0.0, 1.0)


def _adjust_contrast(rgb: Tensor, factor: Tensor) -> Tensor:
    """kornia 0.3.0 contrast: multiply by ``factor`` (no blending with the mean), clamp to ``[0, 1]``."""
    return (rgb * _per_image(factor)).clamp(0.0, 1.0)


def _adjust_saturation(rgb: Tensor, factor: Tensor) -> Tensor:
    """kornia 0.3.0 saturation: HSV saturation times ``factor``, clamped to ``[0, 1]``."""
    hue, saturation, value = _rgb_to_hsv(rgb).unbind(dim=-3)
    saturation = (saturation * factor.view(-1, 1, 1)).clamp(0.0, 1.0)
    return _hsv_to_rgb(torch.stack((hue, saturation, value), dim=-3))


def _adjust_hue(rgb: Tensor, shift: Tensor) -> Tensor:
    """kornia 0.3.0 hue: rotate the hue by ``shift`` turns (``shift * 2 * pi`` radians), wrapping around."""
    hue, saturation, value = _rgb_to_hsv(rgb).unbind(dim=-3)
    hue = torch.remainder(hue + shift.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(torch.stack((hue, saturation, value), dim=-3))


# Index = op id used by the random order (kornia 0.3.0 order of the factors).
_JITTER_OPS: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (
    _adjust_brightness,
    _adjust_contrast,
    _adjust_saturation,
    _adjust_hue,
)


def _uniforms(generators: tuple[torch.Generator, ...], count: int) -> Tensor:
    """``[B, count]`` CPU uniforms: row ``b`` holds the next ``count`` draws of ``generators[b]``."""
    return torch.stack([torch.rand(count, generator=generator) for generator in generators])


def _apply_decisions(batch: int, rng: StepRandom, p: float, per_image: bool) -> Tensor:
    """``[batch]`` bool CPU tensor, True with probability ``p``: per image, or one draw shared by all.

    ``per_image``: one uniform from each ``rng.samples[b]``; otherwise one uniform from ``rng.batch``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if len(rng.samples) != batch:
        raise ValueError(f"need one generator per image: {batch} images, {len(rng.samples)} generators")
    draws = _uniforms(rng.samples, 1).squeeze(1) if per_image else torch.rand(1, generator=rng.batch)
    return (draws < p).expand(batch)


def color_jitter(
    images: Tensor, rng: StepRandom, *, p: float, strength: float, per_image: bool = True
) -> Tensor:
    """Colour jitter with the semantics of kornia 0.3.0 ``ColorJitter(s, s, s, s)`` as DACS used it.

    Each selected image gets brightness ``b ~ U(1-s, 1+s)`` (adds ``b - 1``), contrast ``c ~ U(1-s, 1+s)``
    (multiplies), saturation ``f ~ U(1-s, 1+s)`` (scales HSV saturation) and hue ``h ~ U(-s, s)`` (rotates
    the hue by ``h * 2 * pi``), each keeping values in ``[0, 1]``, applied in a random order per image.
    The official code uses ``p = 0.8`` and ``s = 0.25``.

    The ops run on RGB in ``[0, 1]`` obtained with ``denormalize`` (which clamps to ``[0, 1]``) and the
    result is re-normalised. The official code fed BGR to kornia, which treats channel 0 as red; the hue
    rotation then runs the other way round the colour circle, but as every factor distribution is
    symmetric, feeding real RGB (as here) does not change the augmentation distribution.

    Random draws, for every image whether selected or not (so each generator advances by the same amount
    for any ``p``): first the decision, one uniform ``u`` from ``rng.samples[b]`` per image if
    ``per_image``, else one from ``rng.batch`` for all (selected if ``u < p``); then, for each image ``b``,
    8 uniforms from ``rng.samples[b]`` (one ``torch.rand(8)``): the first 4 give its brightness, contrast,
    saturation and hue factors, the argsort of the last 4 its order of the four ops.

    Args:
        images: ``[B, 3, H, W]`` normalised BGR images.
        rng: The step's generators; ``rng.samples`` holds ``B`` of them.
        p: Probability of jittering an image (or the whole batch).
        strength: Jitter strength ``s >= 0`` shared by the four factors.
        per_image: Decide per image (True) or once for the batch (False, official).

    Returns:
        ``[B, 3, H, W]`` normalised BGR images; unselected images bit-identical to the input.
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    selected = _apply_decisions(images.shape[0], rng, p, per_image)
    draws = _uniforms(rng.samples, 8)
    centres = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(4, 1)
    factors = centres + strength * (2.0 * draws[:, :4].T - 1.0)
    order = draws[:, 4:].argsort(dim=1)

    rows = selected.nonzero().squeeze(1)
    if rows.numel() == 0:
        return images.clone()
    factors = factors[:, rows].to(device=images.device, dtype=images.dtype)
    order = order[rows]
    rgb = denormalize(images.index_select(0, rows.to(images.device)))
    # Step through the four positions; at each, every image gets the op its permutation puts there, and
    # images sharing an op are processed together.
    for position in range(4):
        for op_id, op in enumerate(_JITTER_OPS):
            group = (order[:, position] == op_id).nonzero().squeeze(1)
            if group.numel() == 0:
                continue
            group = group.to(images.device)
            rgb = rgb.index_copy(0, group, op(rgb.index_select(0, group), factors[op_id, group]))
    return images.index_copy(0, rows.to(images.device), _to_normalised(rgb))


def blur_kernel_size(length: int) -> int:
    """Official DACS blur kernel size for an image side: ``floor(ceil(0.1 L) - 0.5 + ceil(0.1 L) % 2)``.

    That is ``ceil(0.1 L)`` if odd, else one less: always odd, e.g. 51 for 512, 9 for 100, 1 up to 20.

    Args:
        length: Image side length in pixels.

    Returns:
        Odd kernel size.
    """
    rounded_up = math.ceil(0.1 * length)
    return math.floor(rounded_up - 0.5 + rounded_up % 2)


def _gaussian_kernels(sigmas: Tensor, size: int) -> Tensor:
    """``[N, size]`` normalised 1-D Gaussian kernels, one per sigma, centred on the middle tap."""
    taps = torch.arange(size, device=sigmas.device, dtype=sigmas.dtype) - (size - 1) / 2
    kernels = torch.exp(-(taps**2) / (2.0 * sigmas.view(-1, 1) ** 2))
    return kernels / kernels.sum(dim=1, keepdim=True)


def _blur_axis(images: Tensor, kernels: Tensor, dim: int) -> Tensor:
    """Convolve each image along ``dim`` (-2 rows, -1 columns) with its own kernel, reflect padding."""
    n, c, h, w = images.shape
    size = kernels.shape[1]
    radius = size // 2
    # One group per (image, channel): a single grouped conv applies every image's own kernel.
    shape = (n * c, 1, size, 1) if dim == -2 else (n * c, 1, 1, size)
    weight = kernels.repeat_interleave(c, dim=0).view(shape)
    padding = (0, 0, radius, radius) if dim == -2 else (radius, radius, 0, 0)
    padded = F.pad(images, padding, mode="reflect")
    return F.conv2d(padded.reshape(1, n * c, *padded.shape[-2:]), weight, groups=n * c).view(n, c, h, w)


def gaussian_blur(
    images: Tensor,
    rng: StepRandom,
    *,
    p: float,
    sigma_range: tuple[float, float],
    per_image: bool = True,
) -> Tensor:
    """Gaussian blur as in the official DACS ``gaussian_blur`` (kornia 0.3.0 ``GaussianBlur2d``).

    Each selected image is blurred with its own ``sigma ~ U(sigma_range)`` (official: ``p = 0.5``,
    ``(0.15, 1.15)``), a normalised separable kernel of ``blur_kernel_size(H)`` rows by
    ``blur_kernel_size(W)`` columns, and reflect padding; separable reflect-padded passes equal kornia's
    2-D reflect-padded convolution. Reflect padding needs a radius of at most ``L - 1`` on a side of ``L``
    pixels; ``blur_kernel_size(L) <= ceil(0.1 L) <= 2 L - 1`` for every ``L >= 1``, so the official sizes
    always fit and no kernel ever needs shrinking.
    Blurring is linear with a unit-sum kernel, so it commutes with the normalisation: it runs directly on
    the input, in any channel order or normalisation, as the official code does.

    Random draws, for every image whether selected or not: first the decision, one uniform ``u`` from
    ``rng.samples[b]`` per image if ``per_image``, else one from ``rng.batch`` for all (selected if
    ``u < p``); then, for each image ``b``, one uniform from ``rng.samples[b]`` for its sigma.

    Args:
        images: ``[B, C, H, W]`` images.
        rng: The step's generators; ``rng.samples`` holds ``B`` of them.
        p: Probability of blurring an image (or the whole batch).
        sigma_range: ``(low, high)`` of the uniform sigma distribution, ``0 < low <= high``.
        per_image: Decide per image (True) or once for the batch (False, official).

    Returns:
        ``[B, C, H, W]`` images; unselected images bit-identical to the input.
    """
    low, high = sigma_range
    if not 0.0 < low <= high:
        raise ValueError(f"sigma_range must satisfy 0 < low <= high, got {sigma_range}")
    batch, _, height, width = images.shape
    selected = _apply_decisions(batch, rng, p, per_image)
    sigmas = low + (high - low) * _uniforms(rng.samples, 1).squeeze(1)

    rows = selected.nonzero().squeeze(1)
    if rows.numel() == 0:
        return images.clone()
    rows_device = rows.to(images.device)
    sigmas = sigmas[rows].to(device=images.device, dtype=images.dtype)
    blurred = images.index_select(0, rows_device)
    for dim, length in ((-2, height), (-1, width)):
        blurred = _blur_axis(blurred, _gaussian_kernels(sigmas, blur_kernel_size(length)), dim)
    return images.index_copy(0, rows_device, blurred)
