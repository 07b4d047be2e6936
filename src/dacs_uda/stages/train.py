"""Stage ``train@<section>``: one training stage of ``runs`` (dvc.yaml's ``train`` foreach).

* ``--section pretrain``: supervised training on the labelled source crops (the source-only baseline,
  and the model DACS starts from with ``adapt.init: pretrained``);
* ``--section oracle``: supervised training on *target* labels, the upper bound that measures the
  domain gap (not UDA);
* ``--section adapt``: DACS, or one of the paper's baselines and ablations (``adapt.method``); the
  EMA teacher starts as a copy of the student; the student is what gets evaluated and exported.

Writes ``<train.checkpoint_dir>/<section>.pt``, ``metrics/<section>.json``, the learning and
validation curves ``metrics/<section>_{curve,validation}.csv`` (rewritten while it runs) and the resume
state ``<train.resume_dir>/<section>.pt`` (a rerun after a crash continues from it).

Several GPUs: ``torchrun --nproc-per-node N -m dacs_uda.stages.train --section adapt`` (DDP,
``<section>.optim.batch_size`` stays the global batch; rank 0 writes the outputs), or
``DACS_NPROC_PER_NODE=N dvc exp run``, which reruns this stage under torchrun.
"""

from __future__ import annotations

import argparse
import logging
import subprocess

from dacs_uda.config import TRAIN_SECTIONS, load_params
from dacs_uda.data.version import prepared_data_version
from dacs_uda.lineage import lineage
from dacs_uda.train.loop import train_stage
from dacs_uda.train.tasks import adaptation_task, supervised_task
from dacs_uda.utils.dist import process_group, torchrun_command
from dacs_uda.utils.logging import setup_logging
from dacs_uda.utils.seed import seed_everything

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=TRAIN_SECTIONS, required=True)
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params()
    if (command := torchrun_command(__spec__.name, ["--section", args.section])) is not None:
        log.info("%s: rerunning under torchrun: %s", args.section, " ".join(command))
        return subprocess.call(command)
    with process_group() as ranks:
        seed_everything(params.seed, params.deterministic)
        device = ranks.device()
        if args.section == "adapt":
            task = adaptation_task(params, device, ranks)
        else:
            task = supervised_task(params, args.section, device, ranks)
        train_stage(params, args.section, task, device, lineage(params, prepared_data_version(params)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
