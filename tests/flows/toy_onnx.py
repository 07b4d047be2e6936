"""A tiny ONNX model carrying a lineage, for the flow tests and the toy DVC stage (no pytest import)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper


def write_onnx(path: Path, lineage: dict[str, Any] | None) -> Path:
    """A one-node ONNX model whose ``metadata_props`` carry ``lineage`` as JSON (none if None)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph)
    if lineage is not None:
        model.metadata_props.add(key="lineage", value=json.dumps(lineage))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
