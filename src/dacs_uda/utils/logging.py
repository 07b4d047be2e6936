"""One logging set-up for every stage, CLI and flow."""

from __future__ import annotations

import logging
import os


def setup_logging(level: str | int | None = None) -> None:
    """Configure the root logger once; ``DACS_LOG_LEVEL`` overrides the default INFO."""
    level = level or os.environ.get("DACS_LOG_LEVEL", "INFO")
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
