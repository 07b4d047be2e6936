"""Segmentation with an exported ONNX model (see :mod:`dacs_uda.export`), no PyTorch needed.

The ONNX file is self-describing: class names, palette, Cityscapes label ids, the input normalisation
and the scale the model was evaluated at come from its metadata, so :class:`OnnxSegmenter` only needs
the file. :func:`segment_files` is what ``dacs-uda predict`` runs: any number of files and folders,
any image size and pixel format, one bad file never stops the batch.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps, UnidentifiedImageError

from dacs_uda.labels import TRAIN_ID_TO_LABEL_ID
from dacs_uda.viz import save_png

logger = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
PROVIDER_CHOICES = {"auto": None, "cpu": [CPU_PROVIDER], "cuda": [CUDA_PROVIDER, CPU_PROVIDER]}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # what a folder is searched for (explicit files may be any)
DEFAULT_MAX_PIXELS = 50_000_000  # decoded RGB ~150 MB; 50 MP covers every camera in common use
IGNORE_TRAIN_ID = 255


class ImageError(ValueError):
    """An input cannot be segmented: not an image, unreadable, corrupt or too large."""


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
        label_ids: Cityscapes label id of each training id.
        normalisation: How uint8 RGB pixels become the model input (channel order, mean, scale).
        eval_size: (W, H) the model was evaluated at (``data.target.resize``), or None if not recorded.
    """

    def __init__(self, model_path: str | Path, providers: list[str] | None = None) -> None:
        """Open ``model_path`` with ``providers`` (default: :func:`default_providers`)."""
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path} not found: run `dvc repro export` to write it")
        requested = list(providers) if providers is not None else default_providers()
        available = set(ort.get_available_providers())
        usable = [p for p in requested if p in available] or [CPU_PROVIDER]
        if usable[0] != requested[0]:
            logger.warning(
                "%s is not offered by this onnxruntime build (%s); install the `gpu` extra "
                "(onnxruntime-gpu) for CUDA",
                requested[0], ", ".join(sorted(available)),
            )  # fmt: skip
        self.session = ort.InferenceSession(str(model_path), providers=usable)
        self.provider: str = self.session.get_providers()[0]
        if self.provider != requested[0]:
            logger.warning("%s is not usable here; running on %s", requested[0], self.provider)
        logger.info("%s: running on %s", model_path, self.provider)

        meta = self.session.get_modelmeta().custom_metadata_map
        missing = {"class_names", "palette", "normalisation"} - meta.keys()
        if missing:
            raise ValueError(
                f"{model_path} lacks metadata {sorted(missing)}: export it with `dvc repro export`"
            )
        self.metadata: dict[str, str] = dict(meta)
        self.class_names: list[str] = json.loads(meta["class_names"])
        self.palette: list[tuple[int, int, int]] = [tuple(c) for c in json.loads(meta["palette"])]
        self.normalisation: dict = json.loads(meta["normalisation"])
        default_ids = (
            list(TRAIN_ID_TO_LABEL_ID) if len(self.class_names) == len(TRAIN_ID_TO_LABEL_ID) else None
        )
        self.label_ids: list[int] | None = (
            json.loads(meta["label_ids"]) if "label_ids" in meta else default_ids
        )
        self.eval_size: tuple[int, int] | None = (
            tuple(json.loads(meta["eval_size"])) if "eval_size" in meta else None
        )
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
        out = self.session.run([self.output_name], {self.input_name: images})[0]
        return out.astype(np.float32, copy=False)

    def model_size(self, width: int, height: int, resize: str | tuple[int, int] = "none") -> tuple[int, int]:
        """The (W, H) the model runs at for a ``width`` x ``height`` image.

        Args:
            resize: ``none`` (the image's own size), ``auto`` (scale to the height the model was
                evaluated at, keeping the aspect ratio: a 2048x1024 Cityscapes frame runs at 1024x512)
                or an explicit (W, H).
        """
        if isinstance(resize, tuple):
            return resize
        if resize == "none" or self.eval_size is None:
            return width, height
        if resize == "auto":
            target_h = self.eval_size[1]
            return max(1, round(width * target_h / height)), target_h
        raise ValueError(f"resize must be 'auto', 'none' or (W, H), got {resize!r}")

    def predict(self, image: np.ndarray, resize: str | tuple[int, int] = "none") -> np.ndarray:
        """uint8 RGB H x W x 3 -> uint8 H x W training ids, at the image's size.

        With a ``resize`` that changes the size, the model runs on the resized image and its logits are
        bilinearly resized back to the image's size before the argmax.
        """
        height, width = image.shape[:2]
        size = self.model_size(width, height, resize)
        if size == (width, height):
            return self.predict_logits(self.preprocess(image))[0].argmax(0).astype(np.uint8)
        small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
        logits = self.predict_logits(self.preprocess(small))[0]
        return resized_argmax(logits, (width, height))

    def colorize(self, train_ids: np.ndarray) -> np.ndarray:
        """H x W training ids -> H x W x 3 uint8 colours from the model's palette (ignore: black)."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: len(self.palette)] = self.palette
        return table[train_ids]

    def to_label_ids(self, train_ids: np.ndarray) -> np.ndarray:
        """Training ids -> Cityscapes label ids (ignore -> 0, unlabeled)."""
        if self.label_ids is None:
            raise ValueError("the model's metadata maps its classes to no Cityscapes label ids")
        table = np.zeros(256, dtype=np.uint8)
        table[: len(self.label_ids)] = self.label_ids
        return table[train_ids]


def resized_argmax(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """argmax over classes of C x h x w logits bilinearly resized to ``size`` (W, H), one class at a time.

    Keeps two H x W planes in memory instead of C: a 12-megapixel photo needs 100 MB, not 900 MB.
    """
    best = np.full((size[1], size[0]), -np.inf, dtype=np.float32)
    labels = np.zeros((size[1], size[0]), dtype=np.uint8)
    for c, plane in enumerate(logits):
        plane_image = Image.fromarray(np.ascontiguousarray(plane, np.float32))
        up = np.asarray(plane_image.resize(size, Image.Resampling.BILINEAR))
        better = up > best
        best[better], labels[better] = up[better], c
    return labels


# --- reading images ---------------------------------------------------------------------------------


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 RGB H x W x 3.

    Grayscale is repeated over the channels; 16-bit grayscale (``I;16``) is scaled to 8 bits; 32-bit
    integer (``I``) images are taken as 16-bit if any value exceeds 255; float (``F``) images as
    [0, 1] if their maximum is at most 1, else as [0, 255]. Alpha is dropped: the colour channels are
    segmented as they are, whatever the transparency.
    """
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image).astype(np.float64)
        peak = float(values.max()) if values.size else 0.0
        if mode.startswith("I;16") or (mode == "I" and peak > 255):
            values = values / 257.0  # 65535 -> 255
        elif mode == "F" and peak <= 1.0:
            values = values * 255.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL's advice for palette images with transparency
    return np.asarray(image.convert("RGB"))


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read ``path`` as uint8 RGB, applying its EXIF orientation.

    Raises:
        ImageError: Not an image, corrupt or truncated, or more than ``max_pixels`` pixels (checked
            from the header, before decoding).
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(
                    f"{width}x{height} = {width * height / 1e6:.1f} megapixels exceeds the limit of "
                    f"{max_pixels / 1e6:.1f} (raise --max-pixels if the machine has the memory)"
                )
            img.load()
            return to_rgb8(ImageOps.exif_transpose(img))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image file that Pillow can read") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"refused as a decompression bomb: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated data, bad chunks, unreadable file
        raise ImageError(f"corrupt or unreadable image: {err}") from None


# --- writing results --------------------------------------------------------------------------------


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    """Blend the colour map over the image: ``(1 - alpha) * image + alpha * colours``."""
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


OUTPUT_SUFFIXES = ("_labels.png", "_color.png", "_overlay.png")


def write_outputs(
    segmenter: OnnxSegmenter,
    stem: Path,
    image: np.ndarray,
    train_ids: np.ndarray,
    ids: str = "train",
    alpha: float = 0.5,
) -> list[Path]:
    """Write ``<stem>_labels.png`` (training or Cityscapes ids), ``_color.png`` and ``_overlay.png``."""
    labels = segmenter.to_label_ids(train_ids) if ids == "cityscapes" else train_ids
    colours = segmenter.colorize(train_ids)
    paths = [stem.with_name(stem.name + suffix) for suffix in OUTPUT_SUFFIXES]
    for path, array in zip(paths, (labels, colours, overlay(image, colours, alpha)), strict=True):
        save_png(path, array)
    return paths


# --- many files -------------------------------------------------------------------------------------


def collect_inputs(inputs: Iterable[str | Path]) -> tuple[list[tuple[Path, Path]], dict[Path, str]]:
    """Files and folders -> (image, output stem relative to the output folder), and missing inputs.

    A folder is searched recursively for ``.png``/``.jpg``/``.jpeg`` (any case) and its sub-folders are
    kept in the output; a file is taken as given, whatever its suffix. Two inputs that would share an
    output stem (``a.png`` and ``a.jpg``) get their suffix appended (``a_png``, ``a_jpg``).
    """
    found: list[tuple[Path, Path]] = []
    missing: dict[Path, str] = {}
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            found += [(p, p.relative_to(item).with_suffix("")) for p in files]
        elif item.is_file():
            found.append((item, Path(item.stem)))
        else:
            missing[item] = "no such file or folder"
    seen: dict[Path, Path] = {}
    unique: list[tuple[Path, Path]] = []
    counts = Counter(stem for _, stem in found)
    for path, stem in found:
        if counts[stem] > 1:
            stem = stem.with_name(f"{stem.name}_{path.suffix.lstrip('.').lower()}")
        if stem in seen:  # the same file given twice
            continue
        seen[stem] = path
        unique.append((path, stem))
    return unique, missing


@dataclass
class SegmentReport:
    """What :func:`segment_files` did."""

    provider: str
    written: dict[Path, list[Path]] = field(default_factory=dict)  # input -> its output files
    failed: dict[Path, str] = field(default_factory=dict)  # input -> why
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def segment_files(
    inputs: Iterable[str | Path],
    segmenter: OnnxSegmenter,
    out_dir: str | Path,
    *,
    ids: str = "train",
    resize: str | tuple[int, int] = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    alpha: float = 0.5,
    progress: bool = True,
) -> SegmentReport:
    """Segment every image in ``inputs`` (files and folders) and write three PNGs per image to ``out_dir``.

    Args:
        inputs: Image files and folders (searched recursively, see :func:`collect_inputs`).
        segmenter: The model.
        out_dir: Output folder (created); a folder's sub-folders are mirrored in it.
        ids: ``train`` (0-18, the model's classes) or ``cityscapes`` (label ids, as in ``gtFine``).
        resize: See :meth:`OnnxSegmenter.model_size`; the outputs are always at the image's size.
        max_pixels: Larger images are refused (before decoding) with an error.
        alpha: Weight of the colour map in the overlay.
        progress: Show a progress bar.

    Returns:
        A report; a file that fails is logged and listed in ``report.failed``, and the others go on.
    """
    from tqdm import tqdm

    if ids not in ("train", "cityscapes"):
        raise ValueError(f"ids must be 'train' or 'cityscapes', got {ids!r}")
    out_dir = Path(out_dir)
    jobs, missing = collect_inputs(inputs)
    report = SegmentReport(provider=segmenter.provider, failed=dict(missing))
    for path, why in missing.items():
        logger.error("%s: %s", path, why)
    start = time.perf_counter()
    for path, stem in tqdm(jobs, desc="predict", unit="image", disable=not progress):
        try:
            image = load_image(path, max_pixels)
            train_ids = segmenter.predict(image, resize)
            report.written[path] = write_outputs(segmenter, out_dir / stem, image, train_ids, ids, alpha)
        except MemoryError:
            report.failed[path] = "out of memory: lower --max-pixels or use --resize auto"
        except Exception as err:  # noqa: BLE001 - one bad file must not stop the batch; the reason is kept
            report.failed[path] = str(err) or type(err).__name__
        if path in report.failed:
            logger.error("%s: %s", path, report.failed[path])
    report.seconds = time.perf_counter() - start
    return report
