"""The exported ONNX models go through the evaluation loop: their mIoU is measured, not assumed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from dacs_uda.export import export_onnx, onnx_metadata
from dacs_uda.labels import NUM_CLASSES
from dacs_uda.models.deeplabv2 import FullResolution, build_model
from dacs_uda.stages import evaluate as evaluate_stage
from dacs_uda.stages import evaluate_onnx as evaluate_onnx_stage
from dacs_uda.stages import export as export_stage
from tests.conftest import write_params
from tests.eval.conftest import TINY, eval_params


@pytest.fixture
def exported(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(export_stage, "setup_logging", lambda: None)
    monkeypatch.setattr(evaluate_onnx_stage, "setup_logging", lambda: None)
    assert export_stage.main() == 0
    return workspace


@pytest.mark.parametrize("protocol", ["official", "full"])
def test_onnx_models_match_pytorch_on_val(exported: Path, protocol: str) -> None:
    write_params(exported, eval_params(protocol))
    assert evaluate_onnx_stage.main() == 0
    metrics = json.loads(Path("metrics/eval_onnx.json").read_text())
    assert metrics["pass"] is True and metrics["max_miou_diff"] == 0.1
    for name in ("onnx", "onnx_fp16"):
        result = metrics[name]
        assert abs(result["miou_diff"]) <= 0.1
        assert result["mIoU"] == pytest.approx(metrics["pytorch"]["mIoU"] + result["miou_diff"], abs=1e-3)
        assert set(result) >= {"mIoU16", "mIoU13", "max_abs_diff", "mean_abs_diff", "argmax_agreement"}
    assert metrics["onnx"]["argmax_agreement"] >= 0.999 and metrics["onnx"]["max_abs_diff"] < 1e-3
    assert metrics["onnx_fp16"]["argmax_agreement"] >= 0.99


def test_evaluate_stage_takes_onnx_entries(exported: Path) -> None:
    models = {"dacs": "models/dacs.pt", "dacs_onnx": "models/dacs.onnx", "dacs_fp16": "models/dacs_fp16.onnx"}
    write_params(exported, eval_params("full", models))
    assert evaluate_stage.main() == 0
    metrics = json.loads(Path("metrics/eval.json").read_text())
    assert metrics["dacs_onnx"]["mIoU"] == pytest.approx(metrics["dacs"]["mIoU"], abs=0.1)
    assert metrics["dacs_fp16"]["mIoU"] == pytest.approx(metrics["dacs"]["mIoU"], abs=0.5)


def test_stage_fails_when_the_onnx_model_is_another_model(exported: Path, caplog) -> None:
    torch.manual_seed(123)  # different weights from models/dacs.pt
    other = FullResolution(build_model(TINY)).eval()
    export_onnx(other, "models/dacs.onnx", 18, False, onnx_metadata(NUM_CLASSES, 18, False, {}), (32, 64))
    with caplog.at_level(logging.ERROR, logger="dacs_uda.evaluate_onnx"):
        assert evaluate_onnx_stage.main() == 1
    metrics = json.loads(Path("metrics/eval_onnx.json").read_text())
    assert metrics["pass"] is False and metrics["onnx"]["pass"] is False
    assert metrics["onnx"]["argmax_agreement"] < 0.999
    assert metrics["onnx_fp16"]["pass"] is True  # still the exported model's copy
    assert "does not reproduce PyTorch" in caplog.text
