"""Exact-value tests of the source loss and of the pixel-wise weighted cross-entropy of the mixed images."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dacs_uda.dacs.losses import supervised_loss, weighted_cross_entropy


class FixedLogits(torch.nn.Module):
    """A "model" whose logits ignore the input: one value per class, at a quarter of the input size."""

    def __init__(self, per_class: list[float]) -> None:
        super().__init__()
        self.per_class = torch.tensor(per_class)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        return self.per_class.view(1, -1, 1, 1).expand(b, -1, h // 4, w // 4)


def test_supervised_loss_averages_over_valid_pixels_only() -> None:
    # Logits (0, ln 3) everywhere after upsampling: CE is ln 4 for class 0 and ln(4/3) for class 1.
    labels = torch.tensor([[[0, 1, 255, 255], [1, 1, 255, 255], [0, 0, 0, 255], [1, 255, 255, 255]]])
    loss = supervised_loss(FixedLogits([0.0, math.log(3)]), torch.zeros(1, 3, 4, 4), labels)
    expected = (4 * math.log(4) + 4 * math.log(4 / 3)) / 8  # 8 labelled pixels, the 8 ignored ones left out
    torch.testing.assert_close(loss, torch.tensor(expected))


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


def test_rank_shares_of_the_source_loss_average_to_the_loss_of_the_whole_batch() -> None:
    # Two ranks hold one image each, with 3 and 1 labelled pixels. Each divides its sum by the mean
    # count over the ranks (2, what the all-reduce gives): the mean of the ranks' losses (and so DDP's
    # gradient average) is the loss of the whole batch; a per-rank mean would weigh the lone pixel 3x.
    labels = torch.tensor([[[0, 0], [1, 255]], [[1, 255], [255, 255]]])
    model, images = FixedLogits([0.0, math.log(3)]), torch.zeros(2, 3, 8, 8)
    mean_count = lambda count: torch.tensor(2.0)  # noqa: E731 - the all-reduced (3 + 1) / 2
    shares = [supervised_loss(model, images[i : i + 1], labels[i : i + 1], mean_count) for i in range(2)]
    whole = supervised_loss(model, images, labels)
    torch.testing.assert_close((shares[0] + shares[1]) / 2, whole)
    torch.testing.assert_close(whole, torch.tensor((2 * math.log(4) + 2 * math.log(4 / 3)) / 4))
    # a rank without a labelled pixel adds 0, not NaN
    none = supervised_loss(model, images[:1], torch.full((1, 2, 2), 255), mean_count)
    assert none.item() == 0.0
