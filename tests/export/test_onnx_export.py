"""ONNX export: validity, metadata, PyTorch/ONNX Runtime parity, the runtime wrapper and the stage itself."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
import yaml

from dacs_uda.config import Params, load_params
from dacs_uda.data.synth import cityscapes_paths, generate_target
from dacs_uda.data.version import prepared_data_version
from dacs_uda.export import cpu_session, export_onnx, onnx_metadata, parity, read_metadata
from dacs_uda.inference import OnnxSegmenter
from dacs_uda.labels import CLASS_NAMES, NUM_CLASSES
from dacs_uda.lineage import LINEAGE_KEYS, lineage
from dacs_uda.models.checkpoint import load_checkpoint, save_checkpoint
from dacs_uda.models.deeplabv2 import FullResolution, build_model
from dacs_uda.stages import export as export_stage
from dacs_uda.utils.image import normalize
from tests.conftest import tiny_model, tiny_params

TINY = tiny_model()
LINEAGE = {
    "git_revision": "abc123",
    "params_hash": "0123456789ab",
    "seed": 0,
    "data_seed": 0,
    "data_pair": "embedded",
    "data_version": "0123456789abcdef",
}


@pytest.fixture(scope="module")
def tiny_model() -> FullResolution:
    torch.manual_seed(0)
    return FullResolution(build_model(TINY)).eval()


@pytest.fixture(
    scope="module", params=[False, pytest.param(True, marks=pytest.mark.slow)], ids=["torchscript", "dynamo"]
)
def exported(request, tiny_model, tmp_path_factory) -> tuple[Path, bool]:
    dynamo = request.param
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(
        tiny_model, path, 18, dynamo, onnx_metadata(NUM_CLASSES, 18, dynamo, LINEAGE), example_size=(48, 64)
    )
    return path, dynamo


def random_images(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(batch, height, width, 3), dtype=np.uint8)
    return torch.stack([normalize(p) for p in pixels]).numpy()


def test_model_is_valid_with_dynamic_axes(exported):
    path, _ = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    [image], [logits] = proto.graph.input, proto.graph.output
    assert (image.name, logits.name) == ("image", "logits")
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) and d for d in (dims[0], dims[2], dims[3]))
    assert logits.type.tensor_type.shape.dim[1].dim_value == NUM_CLASSES


def test_metadata_round_trips(exported):
    path, dynamo = exported
    meta = read_metadata(path)
    assert json.loads(meta["class_names"]) == list(CLASS_NAMES)
    assert len(json.loads(meta["palette"])) == NUM_CLASSES
    norm = json.loads(meta["normalisation"])
    assert norm["channel_order"] == "BGR" and len(norm["mean"]) == 3 and norm["scale"] == 1.0
    assert (meta["input_name"], meta["output_name"], meta["num_classes"]) == ("image", "logits", "19")
    assert meta["opset"] == "18" and ("dynamo" in meta["exporter"]) == dynamo
    assert json.loads(meta["lineage"]) == LINEAGE


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [(48, 64), (57, 83)], ids=["48x64", "57x83"])
def test_parity_with_pytorch(exported, tiny_model, batch, size):
    path, _ = exported
    result = parity(tiny_model, cpu_session(path), random_images(batch, *size))
    assert (result["batch"], result["height"], result["width"]) == (batch, *size)
    assert result["max_abs_diff"] < 1e-3
    assert result["argmax_agreement"] >= 0.999


def test_segmenter_runs_on_cpu(exported, tiny_model):
    path, _ = exported
    segmenter = OnnxSegmenter(path)
    assert segmenter.provider == "CPUExecutionProvider"
    assert segmenter.class_names == list(CLASS_NAMES) and len(segmenter.palette) == NUM_CLASSES
    image = np.random.default_rng(1).integers(0, 256, size=(41, 67, 3), dtype=np.uint8)
    pred = segmenter.predict(image)
    assert pred.shape == (41, 67) and pred.dtype == np.uint8 and pred.max() < NUM_CLASSES
    with torch.no_grad():
        expected = tiny_model(normalize(image)[None]).argmax(1)[0].numpy()
    assert (pred == expected).mean() >= 0.999  # the metadata's normalisation is the training one
    with pytest.raises(ValueError, match="uint8"):
        segmenter.predict(image.astype(np.float32))


def test_exporter_opset_limits(tiny_model, tmp_path):
    meta = onnx_metadata(NUM_CLASSES, 21, False, LINEAGE)
    with pytest.raises(ValueError, match="stops at 20"):
        export_onnx(tiny_model, tmp_path / "m.onnx", 21, False, meta)
    assert not (tmp_path / "m.onnx").exists()


# --- the stage, end to end ---------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """A run folder with four generated target-val frames, their manifest and a checkpoint."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(export_stage, "setup_logging", lambda: None)  # keep pytest's log capture
    root = Path("data/raw/target")
    generate_target(root, 0, {"train": 1, "val": 4}, (64, 32), workers=1)
    rows = [("train", 0)] + [("val", i) for i in range(4)]
    records = []
    for split, index in rows:
        image, label, _ = cityscapes_paths(root, split, index)
        records.append({"split": split, "image": str(image), "label": str(label)})
    Path("data/prepared").mkdir(parents=True)  # the manifest export reads (stage prepare writes it)
    pd.DataFrame(records).to_csv("data/prepared/target.csv", index=False)
    params = stage_params()
    torch.manual_seed(0)
    run_lineage = lineage(params, prepared_data_version(params))
    save_checkpoint(params.export.checkpoint, build_model(params.model), params, run_lineage, step=0)
    return tmp_path


def stage_params(**export) -> Params:
    params = tiny_params(model=TINY)
    params.data.source.resize = params.data.target.resize = [64, 32]
    params.data.crop = [16, 16]
    params.export = dataclasses.replace(params.export, **export)
    Path("params.yaml").write_text(yaml.safe_dump(dataclasses.asdict(params), sort_keys=False))
    return params


def test_stage_writes_model_and_metrics(workspace):
    assert export_stage.main() == 0
    metrics = json.loads(Path("metrics/export.json").read_text())
    assert metrics["pass"] is True and metrics["max_abs_diff"] < 1e-3 and metrics["argmax_agreement"] >= 0.999
    assert [(r["batch"], r["height"], r["width"]) for r in metrics["per_size"]] == [(4, 32, 64), (4, 25, 49)]
    assert metrics["model_size_bytes"] == Path("models/dacs.onnx").stat().st_size
    assert metrics["opset"] == 18
    metadata = read_metadata("models/dacs.onnx")
    assert metadata["exporter"] == "torch.onnx-torchscript"
    lineage = json.loads(metadata["lineage"])
    assert set(lineage) == set(LINEAGE_KEYS)
    assert lineage == load_checkpoint(load_params().export.checkpoint)["lineage"]
    assert OnnxSegmenter("models/dacs.onnx").predict(np.zeros((32, 64, 3), np.uint8)).shape == (32, 64)


def test_stage_fails_when_parity_fails(workspace, caplog):
    stage_params(parity_atol=1e-12)
    with caplog.at_level(logging.ERROR, logger="dacs_uda.export"):
        assert export_stage.main() == 1
    metrics = json.loads(Path("metrics/export.json").read_text())
    assert metrics["max_abs_diff"] > 1e-12, (
        "ONNX Runtime matched PyTorch bit for bit: this case needs another trigger"
    )
    assert metrics["pass"] is False
    assert not Path("models/dacs.onnx").exists()  # a model that fails parity is not published
    assert "parity failed" in caplog.text
