"""ONNX export: checkpoint -> self-describing ONNX model, gated by PyTorch/ONNX Runtime parity.

The ``export`` stage (:mod:`dacs_uda.stages.export`) runs it. The ONNX file takes one input,
``image`` (float32 N x 3 x H x W, normalised as in :func:`dacs_uda.utils.image.normalize`), and returns
``logits`` (N x C x H x W) at the input resolution; batch, height and width are dynamic. Its
``metadata_props`` carry everything a consumer needs (class names, palette, normalisation) and where
the weights came from (lineage).

The model only lands at ``params.export.onnx`` if it matches PyTorch on real target-val images at two
spatial sizes; the numbers go to ``params.export.metrics`` either way. A float16 copy for GPU deployment
(float32 input and output, float16 weights and arithmetic inside) goes to ``params.export.fp16_onnx``
under a looser gate (argmax agreement only: fp16 logits differ from fp32 ones by design).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from dacs_uda.config import Params
from dacs_uda.data.datasets import load_pair, manifest_path, read_manifest
from dacs_uda.labels import CLASS_NAMES, PALETTE, TRAIN_ID_TO_LABEL_ID
from dacs_uda.utils.image import IMG_MEAN_BGR, normalize
from dacs_uda.utils.io import atomic_path, write_json

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
PARITY_IMAGES = 8  # first N target-val images
PARITY_SECOND_SCALE = 0.75  # second size: 3/4 of the resize, made odd (not a multiple of the stride)
LEGACY_MAX_OPSET = 20  # the TorchScript exporter stops at opset 20 in torch 2.14
DYNAMO_MIN_OPSET = 18  # the dynamo exporter emits opset >= 18


class ParityError(RuntimeError):
    """The ONNX model does not reproduce the PyTorch model within the configured tolerances."""


def exporter_name(dynamo: bool) -> str:
    """The name recorded in metadata and metrics for the exporter ``dynamo`` selects."""
    return "torch.onnx-dynamo" if dynamo else "torch.onnx-torchscript"


def onnx_metadata(
    num_classes: int,
    opset: int,
    dynamo: bool,
    source_lineage: dict[str, Any],
    eval_size: list[int] | tuple[int, int] | None = None,
    precision: str = "fp32",
) -> dict[str, str]:
    """The ``metadata_props`` that make the ONNX file self-describing.

    Args:
        num_classes: Number of output channels of the model.
        opset: The ai.onnx opset the model is exported with.
        dynamo: Which exporter is used (recorded, not acted on).
        source_lineage: The weights' lineage (:func:`model_lineage`: git revision, params hash, seeds,
            data pair and version), stored whole as JSON under ``lineage``.
        eval_size: (W, H) the model is evaluated at (``data.target.resize``); ``dacs-uda predict
            --resize auto`` scales images to its height.
        precision: ``fp32`` or ``fp16`` (weights and arithmetic; input and output stay float32).

    Returns:
        String keys to string values (JSON for structured values).
    """
    if num_classes != len(CLASS_NAMES):
        raise ValueError(f"the model has {num_classes} classes but the label set has {len(CLASS_NAMES)}")
    normalisation = {
        "formula": "x = (pixel[channel_order] - mean) * scale",
        "channel_order": "BGR",
        "mean": list(IMG_MEAN_BGR),
        "scale": 1.0,
        "pixel_range": [0, 255],
        "layout": "NCHW",
        "dtype": "float32",
    }
    meta = {
        "class_names": json.dumps(list(CLASS_NAMES)),
        "palette": json.dumps([list(color) for color in PALETTE]),
        "label_ids": json.dumps(list(TRAIN_ID_TO_LABEL_ID)),
        "normalisation": json.dumps(normalisation),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "num_classes": str(num_classes),
        "precision": precision,
        "exporter": exporter_name(dynamo),
        "opset": str(opset),
        "torch_version": torch.__version__,
        "git_revision": str(source_lineage.get("git_revision", "unknown")),
        "params_hash": str(source_lineage.get("params_hash", "unknown")),
        "lineage": json.dumps(source_lineage, sort_keys=True),
    }
    if eval_size is not None:
        meta["eval_size"] = json.dumps([int(v) for v in eval_size])
    return meta


def export_onnx(
    model: nn.Module,
    path: str | Path,
    opset: int,
    dynamo: bool,
    metadata: dict[str, str],
    example_size: tuple[int, int] = (128, 256),
) -> None:
    """Export ``model`` to ``path`` atomically, with dynamic batch/height/width, and check the result.

    Args:
        model: Returns logits at the input resolution (e.g. a :class:`FullResolution` wrapper).
        path: Where the ``.onnx`` file goes (written atomically, weights embedded).
        opset: The ai.onnx opset version.
        dynamo: ``True`` for the ``torch.export``-based exporter, ``False`` for the TorchScript one.
        metadata: Written to the model's ``metadata_props``.
        example_size: (H, W) of the example input that is traced.

    Raises:
        ValueError: The opset is out of the chosen exporter's range.
        onnx.checker.ValidationError: The exported model is not valid ONNX.
    """
    if dynamo and opset < DYNAMO_MIN_OPSET:
        raise ValueError(f"export.opset {opset}: the dynamo exporter needs opset >= {DYNAMO_MIN_OPSET}")
    if not dynamo and opset > LEGACY_MAX_OPSET:
        raise ValueError(
            f"export.opset {opset}: the TorchScript exporter (dynamo: false) stops at {LEGACY_MAX_OPSET}"
        )
    model = model.eval()
    # Batch 2 and a size that is not 1: torch.export would specialise a dimension of size 1.
    example = torch.randn(2, 3, *example_size, generator=torch.Generator().manual_seed(0))
    with atomic_path(path) as tmp, torch.no_grad():
        if dynamo:
            batch, height, width = (torch.export.Dim(name) for name in ("batch", "height", "width"))
            program = torch.onnx.export(
                model, (example,), None, dynamo=True, opset_version=opset, verbose=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch, 2: height, 3: width},),
            )  # fmt: skip
            assert program is not None  # dynamo=True always returns the program
            proto = program.model_proto
        else:
            axes = {0: "batch", 2: "height", 3: "width"}
            with warnings.catch_warnings():
                # Chosen in params.yaml: the exporter's own deprecation notices add nothing here.
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    model, (example,), str(tmp), dynamo=False, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                )  # fmt: skip
            proto = onnx.load(str(tmp))
            # The TorchScript exporter loses the (static) class count after Resize; restore it.
            channels = proto.graph.output[0].type.tensor_type.shape.dim[1]
            if not channels.HasField("dim_value"):
                channels.dim_value = int(model(example[:1]).shape[1])
        del proto.metadata_props[:]
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    size = Path(path).stat().st_size
    logger.info("exported %s (%s, opset %d, %d bytes)", Path(path).name, exporter_name(dynamo), opset, size)


def convert_fp16(source: str | Path, path: str | Path) -> None:
    """Write a float16 copy of the ONNX model ``source`` to ``path`` (atomically), and check it.

    Weights and arithmetic become float16; the ``image`` input and ``logits`` output stay float32, so
    callers do not change. The final Resize is converted too: onnxconverter-common keeps block-listed
    ops in float32 with casts around them, and for an op that produces a graph output those casts
    leave the output float16 despite ``keep_io_types``.
    """
    from onnxconverter_common import float16

    proto = onnx.load(str(source))
    block = [op for op in float16.DEFAULT_OP_BLOCK_LIST if op != "Resize"]
    with warnings.catch_warnings():
        # It warns for every weight outside the float16 range that it clamps; parity below is the check.
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(proto, keep_io_types=True, op_block_list=block)
    for prop in half.metadata_props:
        if prop.key == "precision":
            prop.value = "fp16"
    types = [v.type.tensor_type.elem_type for v in (*half.graph.input, *half.graph.output)]
    if any(t != onnx.TensorProto.FLOAT for t in types):
        raise ValueError(f"the fp16 model's input/output are not float32 (element types {types})")
    onnx.checker.check_model(half, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save(half, str(tmp))
    logger.info("fp16 copy %s (%d bytes)", Path(path).name, Path(path).stat().st_size)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (without loading the weights)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in proto.metadata_props}


def cpu_session(path: str | Path) -> ort.InferenceSession:
    """An ONNX Runtime session on the CPU (the parity reference is the CPU PyTorch model)."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def parity_sizes(resize: list[int]) -> list[tuple[int, int]]:
    """The (W, H) sizes the parity check runs at: the target resize and a smaller, odd second size."""
    w, h = resize
    second = (int(w * PARITY_SECOND_SCALE) | 1, int(h * PARITY_SECOND_SCALE) | 1)
    return [(w, h), second]


def load_images(manifest: str | Path, size: tuple[int, int], limit: int = PARITY_IMAGES) -> np.ndarray:
    """The first ``limit`` target-val images resized to ``size`` (W, H), normalised: float32 N x 3 x H x W."""
    rows = read_manifest(manifest, "val").head(limit)
    batch = [normalize(load_pair(image, None, size)[0]) for image in rows["image"]]
    return torch.stack(batch).numpy()


def parity(model: nn.Module, session: ort.InferenceSession, images: np.ndarray) -> dict[str, Any]:
    """Compare PyTorch and ONNX Runtime logits on one batch.

    Args:
        model: The PyTorch model that was exported (eval mode, full-resolution logits).
        session: An ONNX Runtime session over the exported model.
        images: float32 N x 3 x H x W, normalised.

    Returns:
        ``batch``, ``height``, ``width``, ``max_abs_diff``, ``mean_abs_diff`` (over all logits) and
        ``argmax_agreement`` (fraction of pixels with the same predicted class).
    """
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
    if actual.shape != expected.shape:
        raise ParityError(f"ONNX output shape {actual.shape} != PyTorch output shape {expected.shape}")
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    n, _, h, w = images.shape
    return {
        "batch": int(n),
        "height": int(h),
        "width": int(w),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "argmax_agreement": float((actual.argmax(1) == expected.argmax(1)).mean()),
    }


def summarise(results: list[dict[str, Any]], atol: float, min_agreement: float) -> dict[str, Any]:
    """Worst case over the parity batches, the thresholds and the verdict."""
    max_diff = max(r["max_abs_diff"] for r in results)
    agreement = min(r["argmax_agreement"] for r in results)
    return {
        "max_abs_diff": max_diff,
        "mean_abs_diff": float(np.mean([r["mean_abs_diff"] for r in results])),
        "argmax_agreement": agreement,
        "parity_atol": atol,
        "min_argmax_agreement": min_agreement,
        "pass": bool(max_diff <= atol and agreement >= min_agreement),
        "per_size": results,
    }


def export_and_verify(model: nn.Module, params: Params, source_lineage: dict[str, Any]) -> dict[str, Any]:
    """Export, check parity and write the metrics; publish the ONNX file only if parity holds.

    Returns:
        The metrics written to ``params.export.metrics``.

    Raises:
        ParityError: Parity failed (the metrics are written, the ONNX file is not).
    """
    cfg = params.export
    manifest = manifest_path(params, "target")
    batches = [load_images(manifest, size) for size in parity_sizes(params.data.target.resize)]
    with torch.no_grad():
        num_classes = int(model(torch.zeros(1, 3, 32, 32)).shape[1])
    resize = params.data.target.resize
    metadata = onnx_metadata(num_classes, cfg.opset, cfg.dynamo, source_lineage, eval_size=resize)
    with atomic_path(cfg.onnx) as staged, atomic_path(cfg.fp16_onnx) as staged_fp16:
        start = time.perf_counter()
        export_onnx(model, staged, cfg.opset, cfg.dynamo, metadata, example_size=(resize[1], resize[0]))
        seconds = time.perf_counter() - start
        session = cpu_session(staged)
        summary = summarise(
            [parity(model, session, b) for b in batches], cfg.parity_atol, cfg.min_argmax_agreement
        )
        convert_fp16(staged, staged_fp16)
        # float16 logits differ from float32 ones by design: only the predicted classes are gated.
        session = cpu_session(staged_fp16)
        half = summarise([parity(model, session, b) for b in batches], np.inf, 0.0)
        half["min_argmax_agreement"] = cfg.fp16_min_argmax_agreement
        half["pass"] = bool(half["argmax_agreement"] >= cfg.fp16_min_argmax_agreement)
        del half["parity_atol"], half["per_size"]
        metrics = {
            "pass": bool(summary.pop("pass") and half["pass"]),
            **summary,
            "model_size_bytes": staged.stat().st_size,
            "opset": cfg.opset,
            "export_seconds": round(seconds, 3),
            "fp16": {**half, "model_size_bytes": staged_fp16.stat().st_size},
        }  # exporter and versions travel inside the ONNX file
        write_json(cfg.metrics, metrics)
        if not metrics["pass"]:
            raise ParityError(
                f"ONNX/PyTorch parity failed: max |Δ logit| {metrics['max_abs_diff']:.3g} "
                f"(limit {cfg.parity_atol:g}), argmax agreement {metrics['argmax_agreement']:.6f} "
                f"(minimum {cfg.min_argmax_agreement:g}), fp16 argmax agreement "
                f"{half['argmax_agreement']:.6f} (minimum {cfg.fp16_min_argmax_agreement:g}); "
                f"{cfg.onnx} and {cfg.fp16_onnx} were not written, see {cfg.metrics}"
            )
    return metrics


def model_lineage(checkpoint_lineage: dict[str, Any] | None, run_lineage: dict[str, Any]) -> dict[str, Any]:
    """The lineage the ONNX file carries: the checkpoint's (where the weights came from).

    A checkpoint written before a lineage key existed (e.g. ``data_version``) gets it from this run,
    so the ONNX file always names the code, params, seed and data (the retrain flow requires them).
    """
    return {**run_lineage, **(checkpoint_lineage or {})}
