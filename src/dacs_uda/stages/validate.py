"""Stage ``validate``: check both datasets before anything trains on them.

Reads ``params.yaml`` (``data.*``) and the dataset roots ``data.source.root`` and
``data.target.root``. Writes ``<data.manifests>/source.csv`` and ``target.csv`` (only when *both*
datasets pass, so later stages never see a half-valid dataset), ``reports/validation.md`` (what
failed, which files, how to fix; the data version) and ``metrics/validation.json`` (numbers only).
With ``data.on_bad_pair: skip`` the pairs that fail a per-pair check are dropped (and listed) instead,
up to ``data.max_bad_fraction`` of a dataset. On failure it exits 1 and ``dvc repro`` stops. The
checks are :mod:`dacs_uda.data.validate`'s, the writing :mod:`dacs_uda.data.report`'s.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dacs_uda.config import ConfigError, load_params
from dacs_uda.data.report import failure_message, write_outputs
from dacs_uda.data.validate import quiet_great_expectations, validate_data, validated_data_version
from dacs_uda.utils.logging import setup_logging

log = logging.getLogger(__name__)

REPORT_PATH = Path("reports/validation.md")
METRICS_PATH = Path("metrics/validation.json")


def main() -> int:
    """Run the stage; exit code 1 when the data (or the params pointing at it) is not valid."""
    setup_logging()
    quiet_great_expectations()
    start = time.perf_counter()
    try:
        params = load_params()
        results = validate_data(params.data)
    except (ConfigError, FileNotFoundError) as err:
        log.error("validate: %s", err)
        return 1
    version = validated_data_version(results)
    if not write_outputs(results, params.data.manifests, REPORT_PATH, METRICS_PATH, version):
        log.error("%s", failure_message(results, REPORT_PATH))
        return 1
    rows = ", ".join(f"{r.name} {len(r.manifest)}" for r in results)
    seconds = time.perf_counter() - start
    log.info("validation passed (%s rows) in %.1f s; data version %s", rows, seconds, version)
    log.info("manifests in %s, report %s", params.data.manifests, REPORT_PATH)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
