"""Learning and validation curves as CSV files that ``dvc plots`` renders, and the latest values as the
metrics JSON that ``dvc exp show`` reads while a stage runs.

Every file is rewritten whole and atomically from the rows in memory, at each closed window and each
validation: a crash never leaves a torn file, and a run resumed from an earlier checkpoint rewrites
its files from the checkpoint's rows, dropping what the crashed run logged after it. The result is
byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dacs_uda.utils.io import atomic_path, write_json

# Curve columns that are not metrics of the model (the lr is a function of the step).
NOT_METRICS = ("step", "lr")


@dataclass(frozen=True)
class LiveFiles:
    """Where a training stage's curves and latest metrics go while it runs (``<section>.*`` paths)."""

    curve: str | Path
    validation: str | Path
    metrics: str | Path


def write_rows(path: str | Path, rows: list[dict[str, float]]) -> None:
    """Write ``rows`` as CSV with the first row's columns, atomically (an empty file for no rows)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        if rows:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def _latest(rows: list[dict[str, float]], prefix: str) -> dict[str, float]:
    last = rows[-1] if rows else {}
    return {f"{prefix}/{k}": v for k, v in last.items() if k not in NOT_METRICS and math.isfinite(v)}


class CurveLogger:
    """Averages per-step values over ``every`` steps and keeps one row per window, plus validation rows.

    Values may be 0-dim tensors on any device: they are summed as tensors and read back to the host
    only when a window closes, so logging adds no synchronisation to the steps in between. With
    ``files``, each closed window and each validation rewrites them (see the module docstring).
    """

    def __init__(self, every: int, files: LiveFiles | None = None) -> None:
        self.every, self.files = every, files
        self.rows: list[dict[str, float]] = []
        self.validation: list[dict[str, float]] = []
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0

    def add(self, step: int, values: dict[str, torch.Tensor | float]) -> dict[str, float] | None:
        """Add one step; return the averaged row when a window closes."""
        for key, value in values.items():
            value = torch.as_tensor(value).detach().double()
            self._sums[key] = self._sums[key] + value if key in self._sums else value
        self._count += 1
        if (step + 1) % self.every:
            return None
        row = {"step": step + 1, **{k: round(float(v) / self._count, 6) for k, v in self._sums.items()}}
        self.rows.append(row)
        self._sums, self._count = {}, 0
        self.flush()
        return row

    def add_validation(self, step: int, scores: dict[str, float]) -> dict[str, float]:
        """Record the ``scores`` of a validation (``Validator``) after ``step`` steps."""
        row = {"step": step, **scores}
        self.validation.append(row)
        self.flush()
        return row

    def metrics(self) -> dict[str, float]:
        """The latest finite value of each curve: ``train/<key>`` (last window), ``val/<key>`` (validation).

        Non-finite values (a diverged loss) stay in the CSV curves but not here: metrics files hold numbers.
        """
        return {**_latest(self.rows, "train"), **_latest(self.validation, "val")}

    def state_dict(self) -> dict[str, Any]:
        """Rows and the open window, for a resumed run to continue the same curves."""
        return {
            "rows": list(self.rows),
            "validation": list(self.validation),
            "sums": dict(self._sums),
            "count": self._count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (call :meth:`flush` after a resume: the files still hold the old run's)."""
        self.rows, self.validation = list(state["rows"]), list(state["validation"])
        self._sums, self._count = dict(state["sums"]), int(state["count"])

    def flush(self) -> None:
        """Rewrite ``files`` (if any) from the rows held: at each log and validation, and after a resume,
        where it drops what the interrupted run logged after its checkpoint."""
        if self.files is None:
            return
        steps = max([0] + [int(row["step"]) for row in self.rows[-1:] + self.validation[-1:]])
        write_rows(self.files.curve, self.rows)
        write_rows(self.files.validation, self.validation)
        write_json(self.files.metrics, {"steps": steps, **self.metrics()})
