"""The float16 ONNX copy for GPU deployment: structure, metadata, and that it still segments alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from dacs_uda.export import convert_fp16, cpu_session, export_onnx, onnx_metadata, parity, read_metadata
from dacs_uda.inference import OnnxSegmenter
from dacs_uda.labels import NUM_CLASSES, TRAIN_ID_TO_LABEL_ID
from dacs_uda.models.deeplabv2 import FullResolution, build_model
from tests.export.test_onnx_export import LINEAGE, TINY, random_images


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[FullResolution, Path, Path]:
    torch.manual_seed(0)
    model = FullResolution(build_model(TINY)).eval()
    folder = tmp_path_factory.mktemp("fp16")
    fp32, fp16 = folder / "m.onnx", folder / "m_fp16.onnx"
    meta = onnx_metadata(NUM_CLASSES, 18, False, LINEAGE, eval_size=[64, 32])
    export_onnx(model, fp32, 18, False, meta, example_size=(32, 64))
    convert_fp16(fp32, fp16)
    return model, fp32, fp16


def test_fp16_model_is_valid_half_precision_inside_float32_outside(models) -> None:
    _, fp32, fp16 = models
    proto = onnx.load(str(fp16))
    onnx.checker.check_model(proto, full_check=True)
    io = [v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)]
    assert io == [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT]
    weights = [t for t in proto.graph.initializer if t.dims and np.prod(t.dims) > 16]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs  # the float16 weights feed the convolutions directly (no cast back to float32)
    casts_to_float = [
        n for n in proto.graph.node if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT
    ]
    assert len(casts_to_float) <= 2  # at most the output (and a shape computation), not around every op
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3]  # dynamic batch, height, width survive the conversion


def test_fp16_metadata_travels_and_says_fp16(models) -> None:
    _, fp32, fp16 = models
    meta32, meta16 = read_metadata(fp32), read_metadata(fp16)
    assert meta32["precision"] == "fp32" and meta16["precision"] == "fp16"
    assert {k: v for k, v in meta16.items() if k != "precision"} == {
        k: v for k, v in meta32.items() if k != "precision"
    }
    assert (
        meta16["git_revision"] == LINEAGE["git_revision"] and meta16["params_hash"] == LINEAGE["params_hash"]
    )
    assert json.loads(meta16["eval_size"]) == [64, 32]
    assert json.loads(meta16["label_ids"]) == list(TRAIN_ID_TO_LABEL_ID)


def test_fp16_runs_on_cpu_onnxruntime_close_to_pytorch(models) -> None:
    """ONNX Runtime's CPU provider runs the float16 graph: parity is measured here, not only on a GPU."""
    model, _, fp16 = models
    result = parity(model, cpu_session(fp16), random_images(2, 40, 72))
    assert result["argmax_agreement"] >= 0.99
    assert 0 < result["max_abs_diff"] < 0.5  # float16 rounding, not a different model
    segmenter = OnnxSegmenter(fp16)
    logits = segmenter.predict_logits(random_images(1, 33, 47))
    assert logits.dtype == np.float32 and logits.shape == (1, NUM_CLASSES, 33, 47)
