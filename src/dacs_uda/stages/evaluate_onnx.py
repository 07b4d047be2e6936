"""Stage ``evaluate_onnx``: the exported models' mIoU on target val against the checkpoint they came
from (:mod:`dacs_uda.evaluate_onnx`), written to ``export.eval_metrics``. Exit 1 when the float32
model's mIoU or either model's argmax agreement misses its limit.
"""

from __future__ import annotations

import logging

from dacs_uda.config import load_params
from dacs_uda.evaluate import evaluate_backends, onnx_backend, torch_backend, val_loader
from dacs_uda.evaluate_onnx import REFERENCE, ParityTracker, compare
from dacs_uda.inference import OnnxSegmenter
from dacs_uda.models.checkpoint import load_model
from dacs_uda.utils.device import pick_device
from dacs_uda.utils.io import write_json
from dacs_uda.utils.logging import setup_logging

log = logging.getLogger(__name__)


def main() -> int:
    setup_logging()
    params = load_params()
    cfg, device = params.export, pick_device()
    backends = {
        REFERENCE: torch_backend(load_model(cfg.checkpoint)[0].to(device)),
        "onnx": onnx_backend(OnnxSegmenter(cfg.onnx)),
        "onnx_fp16": onnx_backend(OnnxSegmenter(cfg.fp16_onnx)),
    }
    tracker = ParityTracker()
    title = f"evaluate ONNX ({params.evaluate.protocol})"
    metrics = compare(evaluate_backends(backends, val_loader(params), device, tracker, title), tracker, cfg)
    write_json(cfg.eval_metrics, metrics)
    for name in ("onnx", "onnx_fp16"):
        m, ref = metrics[name], metrics[REFERENCE]["mIoU"]
        log.info(
            "%s: mIoU %.2f vs PyTorch %.2f (Δ %+.4f), argmax agreement %.6f, max |Δ logit| %.3g",
            name, m["mIoU"], ref, m["miou_diff"], m["argmax_agreement"], m["max_abs_diff"],
        )  # fmt: skip
    if not metrics["pass"]:
        log.error(
            "the exported model does not reproduce PyTorch on target val (limits: |Δ mIoU| <= %g, "
            "argmax agreement >= %g, fp16 >= %g); see %s",
            cfg.max_miou_diff, cfg.min_argmax_agreement, cfg.fp16_min_argmax_agreement, cfg.eval_metrics,
        )  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
