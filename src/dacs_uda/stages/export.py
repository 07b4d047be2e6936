"""Stage ``export``: ``export.checkpoint``'s student -> ``export.onnx`` and its float16 copy
``export.fp16_onnx``, written only when ONNX Runtime reproduces PyTorch (:mod:`dacs_uda.export`);
the parity numbers go to ``export.metrics`` either way. Exit 1 when parity fails.
"""

from __future__ import annotations

import logging

from dacs_uda.config import load_params
from dacs_uda.data.version import prepared_data_version
from dacs_uda.export import ParityError, export_and_verify, model_lineage
from dacs_uda.lineage import lineage
from dacs_uda.models.checkpoint import load_model
from dacs_uda.models.deeplabv2 import FullResolution
from dacs_uda.utils.logging import setup_logging

log = logging.getLogger(__name__)


def main() -> int:
    setup_logging()
    for noisy in ("onnxscript", "onnx_ir"):  # the dynamo exporter's optimiser logs every pass at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    params = load_params()
    model, ckpt = load_model(params.export.checkpoint, "model")
    log.info("loaded %s (step %s)", params.export.checkpoint, ckpt.get("step"))
    source_lineage = model_lineage(ckpt.get("lineage"), lineage(params, prepared_data_version(params)))
    try:
        metrics = export_and_verify(FullResolution(model).eval(), params, source_lineage)
    except ParityError as err:
        log.error("%s", err)
        return 1
    log.info(
        "parity ok: max |Δ logit| %.3g, mean %.3g, argmax agreement %.6f -> %s",
        metrics["max_abs_diff"], metrics["mean_abs_diff"], metrics["argmax_agreement"], params.export.onnx,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
