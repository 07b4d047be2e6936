"""Exact-value tests of the pixel-wise weighted cross-entropy of the mixed images."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dacs_uda.dacs.losses import weighted_cross_entropy


def test_weighted_cross_entropy_hand_computed_with_ignore_in_denominator() -> None:
    # Four pixels, two classes; logits (class 0, class 1) per pixel.
    logits = torch.tensor([[[[0.0, math.log(3), 5.0, math.log(3)]], [[0.0, 0.0, -5.0, 0.0]]]])
    labels = torch.tensor([[[0, 1, 255, 0]]])
    weights = torch.tensor([[[1.0, 0.5, 1.0, 0.25]]])
    # CE: -log(1/2) = ln 2; -log(1/4) = ln 4; ignored -> 0; -log(3/4) = ln(4/3). Denominator: all 4 pixels.
    expected = (math.log(2) + 0.5 * math.log(4) + 0.0 + 0.25 * math.log(4 / 3)) / 4
    loss = weighted_cross_entropy(logits, labels, weights)
    assert loss.dim() == 0
    torch.testing.assert_close(loss, torch.tensor(expected))


def test_unit_weights_without_ignore_equal_plain_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 19, 3, 5, generator=generator)
    labels = torch.randint(0, 19, (2, 3, 5), generator=generator)
    loss = weighted_cross_entropy(logits, labels, torch.ones(2, 3, 5))
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))


def test_all_ignored_gives_zero_and_custom_ignore_index() -> None:
    logits = torch.randn(1, 3, 2, 2)
    assert weighted_cross_entropy(logits, torch.full((1, 2, 2), 255), torch.ones(1, 2, 2)).item() == 0.0
    labels = torch.tensor([[[0, 7], [7, 7]]])
    expected = F.cross_entropy(logits[..., :1, :1], labels[..., :1, :1]) / 4
    torch.testing.assert_close(
        weighted_cross_entropy(logits, labels, torch.ones(1, 2, 2), ignore_index=7), expected
    )


def test_gradient_flows_to_logits_only_where_weighted() -> None:
    logits = torch.zeros(1, 2, 1, 2, requires_grad=True)
    weighted_cross_entropy(logits, torch.tensor([[[0, 1]]]), torch.tensor([[[0.0, 1.0]]])).backward()
    assert torch.equal(logits.grad[..., 0], torch.zeros(1, 2, 1))
    assert logits.grad[..., 1].abs().sum() > 0
