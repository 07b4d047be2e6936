"""Stage ``prepare``: resize every validated pair once into a cache that training reads.

Reads ``params.yaml`` (``data.*``) and the validated manifests ``<data.manifests>/source.csv`` and
``target.csv`` (stage ``validate``). Writes, under ``data.prepared``, the resized images and 8-bit
label-id PNGs of each domain, its ``index.json`` (what a rerun may reuse) and the prepared manifests
``source.csv`` and ``target.csv`` that training, evaluation and export read. Exit code 1, naming the
files, when something cannot be prepared. The work is :mod:`dacs_uda.data.prepare`'s.
"""

from __future__ import annotations

import logging
import time

from dacs_uda.config import ConfigError, load_params
from dacs_uda.data.prepare import PrepareError, prepare_data
from dacs_uda.utils.logging import setup_logging

log = logging.getLogger(__name__)


def main() -> int:
    """Run the stage; exit code 1 (naming the files) when something cannot be prepared."""
    setup_logging()
    start = time.perf_counter()
    try:
        params = load_params()
        stats = prepare_data(params)
    except (ConfigError, FileNotFoundError, ValueError, PrepareError) as err:
        log.error("prepare: %s", err)
        return 1
    seconds = time.perf_counter() - start
    written = sum(s.written for s in stats.values())
    log.info(
        "prepare done in %.1f s: %d pairs written (%.1f pairs/s), %d reused; manifests in %s",
        seconds,
        written,
        written / max(seconds, 1e-9),
        sum(s.reused for s in stats.values()),
        params.data.prepared,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
