"""Stage ``data``: make both datasets present in their official layouts.

Reads ``params.yaml`` (``data.*``). Writes the dataset roots ``data.source.root`` and
``data.target.root`` (the embedded pair is generated there; a real pair is only located, or, with
``data.download``, downloaded into ``data.downloads`` and extracted there) and
``reports/embedded_samples.png``, a few pairs of both domains. Exit code 1, with what to do, when a
real dataset is missing or cannot be fetched. The work is :mod:`dacs_uda.data.acquire`'s.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dacs_uda.config import ConfigError, load_params
from dacs_uda.data.acquire import acquire_data, sample_picture
from dacs_uda.data.archives import ArchiveError
from dacs_uda.data.download import DownloadError
from dacs_uda.utils.logging import setup_logging
from dacs_uda.viz import save_png

log = logging.getLogger(__name__)

SAMPLES_PNG = Path("reports/embedded_samples.png")


def main() -> int:
    """Run the stage; exit code 1 (with what to do) when a real dataset is missing or cannot be fetched."""
    setup_logging()
    start = time.perf_counter()
    try:
        cfg = load_params().data
        acquire_data(cfg)
        save_png(SAMPLES_PNG, sample_picture(cfg))
    except (ConfigError, DownloadError, ArchiveError) as err:
        log.error("data: %s", err)
        return 1
    seconds = time.perf_counter() - start
    log.info("%s pair ready: %s and %s (%.0f s)", cfg.pair, cfg.source.root, cfg.target.root, seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
