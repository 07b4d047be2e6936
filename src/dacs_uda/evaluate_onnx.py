"""ONNX evaluation: the exported models' mIoU on target val, measured, not assumed.

The PyTorch checkpoint that was exported (``export.checkpoint``), its ONNX model (``export.onnx``) and
the float16 copy (``export.fp16_onnx``) go through the evaluation loop of :mod:`dacs_uda.evaluate`
(same loader, protocol and confusion matrix) on the same batches. Recorded per ONNX model: mIoU
(19/16/13 classes), the mIoU difference to PyTorch, max and mean |Δ logit| and the argmax agreement
over every val pixel. The stage fails (exit 1) when the float32 model's mIoU differs from PyTorch's
by more than ``export.max_miou_diff`` points or its argmax agreement is under
``export.min_argmax_agreement``, or the float16 model's agreement is under
``export.fp16_min_argmax_agreement``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from dacs_uda.config import ExportConfig
from dacs_uda.labels import SYNTHIA_13, SYNTHIA_16
from dacs_uda.metrics import ConfusionMatrix

log = logging.getLogger(__name__)

REFERENCE = "pytorch"


class ParityTracker:
    """Batch hook: logit differences and argmax agreement of every backend against ``reference``."""

    def __init__(self, reference: str = REFERENCE) -> None:
        self.reference = reference
        self.max_abs: dict[str, float] = {}
        self.sum_abs: dict[str, float] = {}
        self.agree: dict[str, int] = {}
        self.total: dict[str, int] = {}  # pixels compared
        self.logits: dict[str, int] = {}  # logits compared

    def __call__(self, batch: dict, logits: dict[str, torch.Tensor], preds: dict) -> None:
        ref = logits[self.reference].double()
        ref_ids = ref.argmax(1)
        for name, out in logits.items():
            if name == self.reference:
                continue
            diff = (out.double() - ref).abs()
            self.max_abs[name] = max(self.max_abs.get(name, 0.0), float(diff.max()))
            self.sum_abs[name] = self.sum_abs.get(name, 0.0) + float(diff.sum())
            self.agree[name] = self.agree.get(name, 0) + int((out.argmax(1) == ref_ids).sum())
            self.total[name] = self.total.get(name, 0) + ref_ids.numel()
            self.logits[name] = self.logits.get(name, 0) + out.numel()

    def result(self, name: str) -> dict[str, float]:
        """max and mean |Δ logit| and the argmax agreement of ``name`` over everything seen."""
        return {
            "max_abs_diff": self.max_abs[name],
            "mean_abs_diff": self.sum_abs[name] / max(self.logits[name], 1),
            "argmax_agreement": self.agree[name] / max(self.total[name], 1),
        }


def miou_summary(matrix: ConfusionMatrix) -> dict[str, float]:
    """mIoU over 19/16/13 classes in points (unrounded: differences are taken from these)."""
    return {
        "mIoU": 100 * matrix.miou(),
        "mIoU16": 100 * matrix.miou(SYNTHIA_16),
        "mIoU13": 100 * matrix.miou(SYNTHIA_13),
    }


def compare(
    matrices: dict[str, ConfusionMatrix], tracker: ParityTracker, cfg: ExportConfig
) -> dict[str, Any]:
    """The metrics of ``evaluate_onnx``: each model's mIoU, the differences and the verdicts."""
    reference = miou_summary(matrices[REFERENCE])
    metrics: dict[str, Any] = {REFERENCE: {k: round(v, 4) for k, v in reference.items()}}
    passed = True
    for name, min_agreement, max_diff in (
        ("onnx", cfg.min_argmax_agreement, cfg.max_miou_diff),
        ("onnx_fp16", cfg.fp16_min_argmax_agreement, None),  # recorded, gated on agreement only
    ):
        summary = miou_summary(matrices[name])
        diff = summary["mIoU"] - reference["mIoU"]
        parity = tracker.result(name)
        ok = parity["argmax_agreement"] >= min_agreement and (max_diff is None or abs(diff) <= max_diff)
        passed &= ok
        metrics[name] = {
            **{k: round(v, 4) for k, v in summary.items()},
            "miou_diff": round(diff, 4),
            **parity,
            "pass": ok,
        }
    metrics["max_miou_diff"] = cfg.max_miou_diff
    metrics["pass"] = passed
    return metrics
