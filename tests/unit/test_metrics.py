"""Exact-value tests of the confusion matrix and IoU on hand-counted examples."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from dacs_uda.labels import IGNORE_INDEX
from dacs_uda.metrics import ConfusionMatrix

# A 3-class example, counted by hand. The last pixel is ignored (gt 255) whatever is predicted.
GT = [0, 0, 0, 1, 1, 2, 2, 2, IGNORE_INDEX]
PRED = [0, 0, 1, 1, 2, 2, 2, 0, 1]
# matrix[gt, pred]
EXPECTED = [
    [2, 1, 0],
    [0, 1, 1],
    [1, 0, 2],
]
# IoU = tp / (row + col - tp): class 0: 2/(3+3-2), class 1: 1/(2+2-1), class 2: 2/(3+3-2)
EXPECTED_IOU = [Fraction(1, 2), Fraction(1, 3), Fraction(1, 2)]
EXPECTED_MIOU = Fraction(4, 9)


def _cm(
    gt: list[int], pred: list[int], num_classes: int = 3, dtype: torch.dtype = torch.int64
) -> ConfusionMatrix:
    cm = ConfusionMatrix(num_classes)
    cm.update(torch.tensor(gt, dtype=dtype), torch.tensor(pred, dtype=torch.int64))
    return cm


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8])
def test_counts_exact(dtype: torch.dtype) -> None:
    cm = _cm(GT, PRED, dtype=dtype)
    assert cm.matrix.dtype == torch.int64
    assert cm.matrix.tolist() == EXPECTED
    assert int(cm.matrix.sum()) == len(GT) - 1  # the ignore pixel is not counted


def test_iou_and_miou_exact() -> None:
    cm = _cm(GT, PRED)
    iou = cm.iou()
    assert iou.dtype == torch.float64
    for got, want in zip(iou.tolist(), EXPECTED_IOU, strict=True):
        assert got == pytest.approx(float(want), abs=1e-15)
    assert cm.miou() == pytest.approx(float(EXPECTED_MIOU), abs=1e-15)


def test_shape_does_not_matter() -> None:
    gt = torch.tensor(GT[:8]).reshape(2, 2, 2)
    pred = torch.tensor(PRED[:8]).reshape(2, 2, 2)
    cm = ConfusionMatrix(3)
    cm.update(gt, pred)
    assert cm.matrix.tolist() == EXPECTED


def test_ignore_label_is_skipped_whatever_the_prediction() -> None:
    cm = ConfusionMatrix(3)
    cm.update(
        torch.full((4, 4), IGNORE_INDEX),
        torch.randint(0, 3, (4, 4), generator=torch.Generator().manual_seed(0)),
    )
    assert cm.matrix.sum() == 0
    assert all(math.isnan(v) for v in cm.iou().tolist())
    cm.update(torch.tensor([IGNORE_INDEX, 1, IGNORE_INDEX]), torch.tensor([0, 1, 2]))
    assert cm.matrix.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_accumulation_equals_one_update_on_concatenation() -> None:
    gen = torch.Generator().manual_seed(0)
    a_gt, b_gt = torch.randint(0, 5, (3, 7, 9), generator=gen), torch.randint(0, 5, (2, 7, 9), generator=gen)
    a_gt[0, :2] = IGNORE_INDEX
    a_pred, b_pred = (
        torch.randint(0, 5, (3, 7, 9), generator=gen),
        torch.randint(0, 5, (2, 7, 9), generator=gen),
    )
    two = ConfusionMatrix(5)
    two.update(a_gt, a_pred)
    two.update(b_gt, b_pred)
    one = ConfusionMatrix(5)
    one.update(torch.cat([a_gt, b_gt]), torch.cat([a_pred, b_pred]))
    assert torch.equal(two.matrix, one.matrix)
    assert int(one.matrix.sum()) == 5 * 7 * 9 - 2 * 9
    assert torch.equal(two.iou(), one.iou())


def test_class_absent_from_gt_and_pred_is_nan_and_skipped() -> None:
    cm = _cm(GT, PRED, num_classes=4)  # class 3 never occurs
    iou = cm.iou().tolist()
    assert math.isnan(iou[3])
    assert iou[:3] == pytest.approx([float(v) for v in EXPECTED_IOU])
    assert cm.miou() == pytest.approx(float(EXPECTED_MIOU), abs=1e-15)  # mean over 3 classes, not 4


def test_class_only_predicted_has_zero_iou() -> None:
    cm = _cm([0, 0, 1, 1], [0, 2, 1, 1])  # class 2 is predicted but absent from the gt: a false positive
    iou = cm.iou().tolist()
    assert iou == pytest.approx([0.5, 1.0, 0.0])
    assert cm.miou() == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        ((0, 2), Fraction(1, 2)),
        ((1,), Fraction(1, 3)),
        ((0, 1), Fraction(5, 12)),
        ((1, 3), Fraction(1, 3)),  # class 3 is NaN: skipped
        ((0, 1, 2, 3), Fraction(4, 9)),
    ],
)
def test_subset_miou(classes: tuple[int, ...], expected: Fraction) -> None:
    cm = _cm(GT, PRED, num_classes=4)
    assert cm.miou(classes=classes) == pytest.approx(float(expected), abs=1e-15)


def test_never_predicted_exact() -> None:
    # class 2 in gt, never predicted; class 3 predicted but not in gt; class 4 nowhere.
    cm = _cm([0, 1, 2, 2, 0], [0, 1, 1, 3, 0], num_classes=5)
    assert cm.never_predicted() == [2]
    assert _cm(GT, PRED).never_predicted() == []
    # two conflated classes, returned in class order
    assert _cm([3, 1, 0, 1], [0, 0, 0, 0], num_classes=4).never_predicted() == [1, 3]
