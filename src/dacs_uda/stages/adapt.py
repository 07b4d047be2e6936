"""Stage ``adapt``: DACS (or one of the paper's ablations, ``adapt.method``) on labelled source and
unlabelled target crops.

The student starts from the ``pretrain`` checkpoint (``adapt.init: pretrained``) or from ``model.init``
(``adapt.init: model``: scratch, ImageNet, or the COCO DeepLab file as in the official code); the
EMA teacher starts as a copy of the student. Writes ``adapt.checkpoint`` (student and teacher),
``adapt.curve`` and ``adapt.metrics``, and the resume state ``<train.resume_dir>/adapt.pt``; the student
is what gets evaluated and exported.
"""

from __future__ import annotations

import logging

from dacs_uda.config import load_params
from dacs_uda.data.version import prepared_data_version
from dacs_uda.lineage import lineage
from dacs_uda.train.loop import train_stage
from dacs_uda.train.tasks import adaptation_task
from dacs_uda.utils.device import pick_device
from dacs_uda.utils.logging import setup_logging
from dacs_uda.utils.seed import seed_everything

log = logging.getLogger(__name__)


def main() -> int:
    setup_logging()
    params = load_params()
    seed_everything(params.seed, params.deterministic)
    device = pick_device()
    task = adaptation_task(params, device)
    log.info("adapt: %s, init %s, fidelity %s", params.adapt.method, params.adapt.init, params.adapt.fidelity)
    train_stage(params, "adapt", task, device, lineage(params, prepared_data_version(params)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
