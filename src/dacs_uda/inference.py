"""Segmentation with an exported ONNX model (see :mod:`dacs_uda.export`), no PyTorch needed.

The ONNX file is self-describing: class names, palette and the input normalisation come from its
metadata, so :class:`OnnxSegmenter` only needs the file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

logger = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build offers it (``onnxruntime-gpu``), with the CPU as fallback."""
    available = ort.get_available_providers()
    return [CUDA_PROVIDER, CPU_PROVIDER] if CUDA_PROVIDER in available else [CPU_PROVIDER]


class OnnxSegmenter:
    """Runs an ONNX model written by the ``export`` stage.

    Attributes:
        provider: The execution provider that actually runs the model (ONNX Runtime falls back to the
            CPU when CUDA is requested but cannot start).
        class_names: Class name of each training id.
        palette: RGB colour of each training id.
        normalisation: How uint8 RGB pixels become the model input (channel order, mean, scale).
    """

    def __init__(self, model_path: str | Path, providers: list[str] | None = None) -> None:
        """Open ``model_path`` with ``providers`` (default: :func:`default_providers`)."""
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path} not found: run `dvc repro export` to write it")
        requested = list(providers) if providers is not None else default_providers()
        self.session = ort.InferenceSession(str(model_path), providers=requested)
        self.provider: str = self.session.get_providers()[0]
        if self.provider != requested[0]:
            logger.warning("%s is not usable here; running on %s", requested[0], self.provider)
        logger.info("%s: running on %s", model_path, self.provider)

        meta = self.session.get_modelmeta().custom_metadata_map
        missing = {"class_names", "palette", "normalisation"} - meta.keys()
        if missing:
            raise ValueError(
                f"{model_path} lacks metadata {sorted(missing)}: export it with `python -m dacs_uda.export`"
            )
        self.class_names: list[str] = json.loads(meta["class_names"])
        self.palette: list[tuple[int, int, int]] = [tuple(c) for c in json.loads(meta["palette"])]
        self.normalisation: dict = json.loads(meta["normalisation"])
        self.metadata: dict[str, str] = dict(meta)
        self.input_name = meta.get("input_name", self.session.get_inputs()[0].name)
        self.output_name = meta.get("output_name", self.session.get_outputs()[0].name)

        order = self.normalisation["channel_order"].upper()
        if sorted(order) != sorted("RGB"):
            raise ValueError(f"{model_path}: unsupported channel order {order!r}")
        self._channels = ["RGB".index(c) for c in order]
        self._mean = np.asarray(self.normalisation["mean"], dtype=np.float32)
        self._scale = np.float32(self.normalisation.get("scale", 1.0))

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB H x W x 3 -> float32 1 x 3 x H x W, normalised as the metadata says."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 H x W x 3 RGB image, got {image.dtype} {image.shape}")
        x = (image[..., self._channels].astype(np.float32) - self._mean) * self._scale
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        """float32 N x 3 x H x W (normalised) -> float32 N x C x H x W logits."""
        if images.dtype != np.float32 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected float32 N x 3 x H x W, got {images.dtype} {images.shape}")
        return self.session.run([self.output_name], {self.input_name: images})[0]

    def predict(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB H x W x 3 -> uint8 H x W training ids."""
        logits = self.predict_logits(self.preprocess(image))
        return logits[0].argmax(0).astype(np.uint8)
