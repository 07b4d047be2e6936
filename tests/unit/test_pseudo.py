"""Exact-value tests of pseudo-labels, the confidence weight and distribution alignment."""

from __future__ import annotations

import math

import torch

from dacs_uda.dacs.pseudo import (
    align_distribution,
    class_mean,
    confident_fraction,
    pixel_weights,
    pseudo_labels,
    update_running_mean,
)


def test_pseudo_labels_known_softmax() -> None:
    # Pixel 0: logits (0, ln 3, 0) -> softmax (1/5, 3/5, 1/5); pixel 1: (ln 4, 0, ln 5) -> (4/10, 1/10, 5/10).
    logits = torch.tensor([[[[0.0, math.log(4)]], [[math.log(3), 0.0]], [[0.0, math.log(5)]]]])
    labels, confidence = pseudo_labels(logits, (1, 2))
    assert labels.dtype == torch.long and confidence.dtype == torch.float32
    assert torch.equal(labels, torch.tensor([[[1, 2]]]))
    torch.testing.assert_close(confidence, torch.tensor([[[0.6, 0.5]]]))


def test_pseudo_labels_bilinear_align_corners_upsampling() -> None:
    # Class 1 logit goes -1 -> 3 left to right; at 3 columns with align_corners the middle is exactly 1.
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = torch.tensor([[-1.0, 3.0], [-1.0, 3.0]])
    labels, confidence = pseudo_labels(logits, (3, 3))
    assert labels.shape == (1, 3, 3)
    assert torch.equal(labels[0], torch.tensor([[0, 1, 1]] * 3))
    expected = torch.tensor([1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-3))])
    torch.testing.assert_close(confidence[0], expected.expand(3, 3))


def test_pseudo_labels_build_no_graph() -> None:
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    labels, confidence = pseudo_labels(logits * 2.0, (6, 6))
    assert not confidence.requires_grad and confidence.grad_fn is None
    assert labels.shape == confidence.shape == (2, 6, 6)


def test_confident_fraction_is_inclusive_and_batch_wide() -> None:
    confidence = torch.tensor([[[0.5, 0.968, 0.99, 0.1]], [[0.97, 0.2, 0.3, 0.9679]]])
    lam = confident_fraction(confidence, 0.968)
    assert lam.dim() == 0 and lam.dtype == torch.float32
    assert lam.item() == 0.375  # 3 of 8 pixels, 0.968 itself counts


def test_pixel_weights_exact() -> None:
    mask = torch.tensor([[[True, False], [False, False]], [[False, True], [True, True]]])
    weights = pixel_weights(mask, 0.25)
    assert weights.dtype == torch.float32
    assert torch.equal(weights, torch.tensor([[[1.0, 0.25], [0.25, 0.25]], [[0.25, 1.0], [1.0, 1.0]]]))
    assert torch.equal(pixel_weights(mask, torch.tensor(0.25)), weights)


def test_align_distribution_exact() -> None:
    # q = (0.2, 0.8), p = (0.5, 0.5), p~ = (0.25, 0.75): q * p / p~ = (0.4, 0.8 * 2/3) -> (3/7, 4/7).
    probs = torch.tensor([0.2, 0.8]).view(1, 2, 1, 1)
    aligned = align_distribution(probs, torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(aligned.flatten(), torch.tensor([3 / 7, 4 / 7]))


def test_align_distribution_sums_to_one() -> None:
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 5, 3, 4, generator=generator), dim=1)
    prior = torch.softmax(torch.randn(5, generator=generator), dim=0)
    running = torch.softmax(torch.randn(5, generator=generator), dim=0)
    aligned = align_distribution(probs, prior, running)
    assert aligned.shape == probs.shape
    torch.testing.assert_close(aligned.sum(dim=1), torch.ones(2, 3, 4))


def test_align_distribution_identity_when_prior_equals_running_mean() -> None:
    probs = torch.softmax(torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(1)), dim=1)
    prior = torch.tensor([0.2, 0.3, 0.5])
    torch.testing.assert_close(align_distribution(probs, prior, prior.clone()), probs)


def test_update_running_mean_exact_and_pure() -> None:
    running = torch.tensor([0.5, 0.5])
    # Mean over batch and pixels: class 0 -> (0.1 + 0.3 + 0.2 + 0.2) / 4 = 0.2.
    probs = torch.tensor([[[[0.1, 0.3]], [[0.9, 0.7]]], [[[0.2, 0.2]], [[0.8, 0.8]]]])
    updated = update_running_mean(running, probs, momentum=0.9)
    torch.testing.assert_close(updated, torch.tensor([0.47, 0.53]))
    assert torch.equal(running, torch.tensor([0.5, 0.5]))


def test_lambda_over_ranks_is_the_fraction_of_the_global_batch() -> None:
    # 3 of 4 pixels confident on rank 0, 1 of 4 on rank 1: each rank's lambda is the batch's 0.5.
    confidence = torch.tensor([[[0.99, 0.97], [0.968, 0.5]], [[0.99, 0.1], [0.2, 0.3]]])
    local = [confident_fraction(confidence[i : i + 1], 0.968) for i in range(2)]
    both = lambda value: (local[0] + local[1]) / 2  # noqa: E731 - what the all-reduce gives each rank
    for i in range(2):
        assert confident_fraction(confidence[i : i + 1], 0.968, both).item() == 0.5
    assert confident_fraction(confidence, 0.968).item() == 0.5


def test_running_mean_over_ranks_takes_the_global_batch_mean() -> None:
    # Class 0 has mean 0.2 on rank 0 and 0.6 on rank 1: the batch mean is 0.4, on both ranks.
    probs = torch.tensor([[[[0.1, 0.3]], [[0.9, 0.7]]], [[[0.6, 0.6]], [[0.4, 0.4]]]])
    local = [class_mean(probs[i : i + 1]) for i in range(2)]
    both = lambda value: (local[0] + local[1]) / 2  # noqa: E731 - what the all-reduce gives each rank
    running = torch.tensor([0.5, 0.5])
    for i in range(2):
        updated = update_running_mean(running, probs[i : i + 1], momentum=0.9, rank_mean=both)
        torch.testing.assert_close(updated, torch.tensor([0.49, 0.51]))
    torch.testing.assert_close(update_running_mean(running, probs, 0.9), torch.tensor([0.49, 0.51]))
