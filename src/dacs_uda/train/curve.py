"""Learning curves as CSV files that ``dvc plots`` renders."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from dacs_uda.utils.io import atomic_path


class CurveLogger:
    """Averages per-step values over ``every`` steps and keeps one row per window.

    Values may be 0-dim tensors on any device: they are summed as tensors and read back to the host
    only when a window closes, so logging adds no synchronisation to the steps in between.
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self.rows: list[dict[str, float]] = []
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
        return row

    def state_dict(self) -> dict[str, Any]:
        """Rows and the open window, for a resumed run to continue the same curve."""
        return {"rows": list(self.rows), "sums": dict(self._sums), "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows, self._sums, self._count = list(state["rows"]), dict(state["sums"]), int(state["count"])

    def write(self, path: str | Path) -> None:
        """Write the rows as CSV, atomically."""
        with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
            if self.rows:
                writer = csv.DictWriter(fh, fieldnames=list(self.rows[0]))
                writer.writeheader()
                writer.writerows(self.rows)
