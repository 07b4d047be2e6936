"""Stage ``pretrain`` (and ``oracle``): supervised training on one domain's labelled crops.

``python -m dacs_uda.stages.pretrain`` trains on the source domain (the source-only baseline and
DACS's starting point); ``--section oracle`` trains on *target* labels, the supervised upper bound that
measures how large the domain gap is. Writes ``<section>.checkpoint``, ``.curve`` and ``.metrics``, and
the resume state ``<train.resume_dir>/<section>.pt`` (a rerun after a crash continues from it).
"""

from __future__ import annotations

import argparse
import logging

from dacs_uda.config import load_params
from dacs_uda.data.version import prepared_data_version
from dacs_uda.lineage import lineage
from dacs_uda.train.loop import train_stage
from dacs_uda.train.tasks import supervised_task
from dacs_uda.utils.device import pick_device
from dacs_uda.utils.logging import setup_logging
from dacs_uda.utils.seed import seed_everything

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=("pretrain", "oracle"), default="pretrain")
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params()
    seed_everything(params.seed, params.deterministic)
    device = pick_device()
    task = supervised_task(params, args.section, device)
    train_stage(params, args.section, task, device, lineage(params, prepared_data_version(params)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
