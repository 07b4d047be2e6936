"""Curves and live metrics: exact rows, numbers only, atomic rewrites, identical files after a resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from dacs_uda.train.curve import CurveLogger, LiveFiles

STEPS, EVERY, EVAL_EVERY = 12, 2, 4


def files(root: Path) -> LiveFiles:
    return LiveFiles(root / "curve.csv", root / "validation.csv", root / "metrics.json")


def run(logger: CurveLogger, start: int, stop: int) -> None:
    """Steps ``start`` to ``stop`` of a fake stage: a loss of ``step`` and a validation every EVAL_EVERY."""
    for step in range(start, stop):
        logger.add(step, {"loss": torch.tensor(float(step)), "lr": 0.1})
        if (step + 1) % EVAL_EVERY == 0:
            logger.add_validation(step + 1, {"mIoU_student": float(step), "mIoU_teacher": step + 0.5})


def contents(live: LiveFiles) -> dict[str, bytes]:
    return {name: Path(path).read_bytes() for name, path in vars(live).items()}


def test_windows_validation_and_latest_metrics_are_written_at_each_log(tmp_path: Path) -> None:
    live = files(tmp_path)
    logger = CurveLogger(EVERY, live)
    run(logger, 0, 5)
    with open(live.curve) as fh:
        assert list(csv.DictReader(fh)) == [
            {"step": "2", "loss": "0.5", "lr": "0.1"},
            {"step": "4", "loss": "2.5", "lr": "0.1"},
        ]
    with open(live.validation) as fh:
        assert list(csv.DictReader(fh)) == [{"step": "4", "mIoU_student": "3.0", "mIoU_teacher": "3.5"}]
    # Step 5 opened a window that has not closed: the files show step 4, as dvc exp show would.
    metrics = {"steps": 4, "train/loss": 2.5, "val/mIoU_student": 3.0, "val/mIoU_teacher": 3.5}
    assert json.loads(Path(live.metrics).read_text()) == metrics
    assert logger.metrics() == {k: v for k, v in metrics.items() if k != "steps"}


def test_metrics_hold_only_finite_numbers(tmp_path: Path) -> None:
    live = files(tmp_path)
    logger = CurveLogger(1, live)
    logger.add(0, {"loss": torch.tensor(float("nan")), "confident": torch.tensor(0.25)})
    assert json.loads(Path(live.metrics).read_text()) == {"steps": 1, "train/confident": 0.25}
    assert "nan" in Path(live.curve).read_text()  # the curve still shows where it diverged


def test_resumed_run_rewrites_the_same_files_as_an_uninterrupted_one(tmp_path: Path) -> None:
    whole = files(tmp_path / "whole")
    run(CurveLogger(EVERY, whole), 0, STEPS)

    crashed = files(tmp_path / "crashed")
    logger = CurveLogger(EVERY, crashed)
    run(logger, 0, 5)  # checkpoint after step 5, with a window half open
    state = logger.state_dict()
    run(logger, 5, 10)  # logged past the checkpoint, then killed
    resumed = CurveLogger(EVERY, crashed)
    resumed.load_state_dict(state)
    resumed.flush()
    assert json.loads(Path(crashed.metrics).read_text())["steps"] == 4  # rewound at once
    run(resumed, 5, STEPS)
    assert contents(crashed) == contents(whole)


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path: Path, monkeypatch) -> None:
    live = files(tmp_path)
    logger = CurveLogger(1, live)
    logger.add(0, {"loss": 1.0})
    before = contents(live)

    def fail(*args, **kwargs) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(csv.DictWriter, "writerows", fail)
    with pytest.raises(OSError, match="disk full"):
        logger.add(1, {"loss": 2.0})
    assert contents(live) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.csv", "metrics.json", "validation.csv"]


def test_without_files_nothing_is_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    logger = CurveLogger(1)
    logger.add(0, {"loss": 1.0})
    logger.add_validation(1, {"mIoU_model": 5.0})
    logger.load_state_dict(logger.state_dict())
    logger.flush()
    assert list(tmp_path.iterdir()) == []  # the non-zero ranks of a DDP run: rows held, no files
