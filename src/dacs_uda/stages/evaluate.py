"""Stage ``evaluate``: per-class IoU and mIoU of every trained model (``evaluate.models``) on target val.

Writes ``evaluate.metrics`` (mIoU over 19/16/13 classes per model), the per-class IoU and confusion
plots, sample pictures, Cityscapes-format predictions, and the run's lineage (``evaluate.lineage``:
code revision, params hash, seeds, data version), recorded once per run instead of in every metrics
file. The protocols are described in :mod:`dacs_uda.evaluate`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dacs_uda.config import load_params
from dacs_uda.data.version import prepared_data_version
from dacs_uda.evaluate import (
    PredictionWriter,
    evaluate_backends,
    load_backend,
    sample_grid,
    summarize,
    val_loader,
    write_confusion,
    write_per_class,
)
from dacs_uda.lineage import lineage
from dacs_uda.utils.device import pick_device
from dacs_uda.utils.io import atomic_path, write_json
from dacs_uda.utils.logging import setup_logging
from dacs_uda.viz import save_png

log = logging.getLogger(__name__)


def main() -> int:
    setup_logging()
    params = load_params()
    cfg, device = params.evaluate, pick_device()
    loader = val_loader(params)
    backends = {name: load_backend(path, device) for name, path in cfg.models.items()}
    with atomic_path(cfg.predictions_dir) as staged:
        staged.mkdir(parents=True)
        writer = PredictionWriter(staged, cfg.save_predictions)
        matrices = evaluate_backends(backends, loader, device, writer, f"evaluate ({cfg.protocol})")
    results = {name: summarize(matrix) for name, matrix in matrices.items()}
    for name, r in results.items():
        log.info(
            "%s: mIoU %.2f (16: %.2f, 13: %.2f) on target val, %s protocol (%d classes never predicted)",
            name, r["mIoU"], r["mIoU16"], r["mIoU13"], cfg.protocol, r["never_predicted"],
        )  # fmt: skip
    write_json(cfg.metrics, {name: {k: v for k, v in r.items() if k != "iou"} for name, r in results.items()})
    write_json(cfg.lineage, lineage(params, prepared_data_version(params)))
    write_per_class(cfg.per_class, results)
    write_confusion(cfg.confusion, matrices)
    if cfg.num_samples:
        grid = sample_grid(backends, loader, device, cfg.num_samples)
        save_png(Path(cfg.samples_dir) / "target_val.png", grid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
