"""Cost of logging one closed window of the learning curve: the project's CurveLogger (atomic rewrite
of the curve CSV, the validation CSV and the metrics JSON) against DVCLive (append to TSVs, summary,
sync), after 32 and after 5,000 windows (250k steps logged every 50).

Why the training loop keeps CurveLogger rather than DVCLive: bench/results/curve_logging.md.
Needs `pip install dvclive` (not a dependency of the project). Run from the repository root:
`python bench/curve_logging.py`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from dacs_uda.train.curve import CurveLogger, LiveFiles

KEYS = ("loss_source", "loss_mix", "confident", "lr")


def seconds_per_window(windows: int, close: Callable[[int], None]) -> list[float]:
    out = []
    for window in range(windows):
        start = time.perf_counter()
        close(window)
        out.append(time.perf_counter() - start)
    return out


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(here)


def curve_logger(windows: int) -> list[float]:
    with scratch_dir() as root:
        logger = CurveLogger(1, LiveFiles(root / "curve.csv", root / "validation.csv", root / "metrics.json"))
        values = {key: torch.tensor(0.5) for key in KEYS}
        return seconds_per_window(windows, lambda w: logger.add(w, values))


def dvclive(windows: int) -> list[float]:
    from dvclive import Live

    logging.getLogger("dvclive").setLevel(logging.ERROR)
    with scratch_dir() as root:
        live = Live(str(root / "dvclive"), save_dvc_exp=False, dvcyaml=None, report=None)

        def close(window: int) -> None:
            live.step = window + 1
            for key in KEYS:
                live.log_metric(f"train/{key}", 0.5)
            live.make_summary()
            live.sync()

        return seconds_per_window(windows, close)


def summary(times: list[float]) -> str:
    last = sorted(times[-32:])
    return f"median {1e3 * statistics.median(last):.2f} ms, p90 {1e3 * last[int(0.9 * len(last))]:.2f} ms"


def main() -> None:
    for windows in (32, 5000):
        print(f"after {windows} windows: CurveLogger {summary(curve_logger(windows))}; "
              f"DVCLive {summary(dvclive(windows))}")  # fmt: skip


if __name__ == "__main__":
    main()
