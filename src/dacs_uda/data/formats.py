"""The dataset formats: official facts the pipeline checks data against, and how each label is decoded.

Three layouts come from the real datasets (the embedded pair reuses two of them):

* ``gta5``: GTA5 ("Playing for Data"), ``images/NNNNN.png`` (RGB, 1914x1052 for most frames) and
  ``labels/NNNNN.png``: **palette PNGs whose indices are Cityscapes label ids**. 24,966 frames.
* ``synthia``: SYNTHIA-RAND-CITYSCAPES, ``RGB/NNNNNNN.png`` (1280x760) and ``GT/LABELS/NNNNNNN.png``:
  **16-bit PNGs holding the SYNTHIA class id in the first channel** (the instance id in the second).
  Pillow cannot read 16-bit multi-channel PNGs (it keeps the high byte), so they are decoded with
  ``torchvision.io.decode_png``. 9,400 frames.
* ``cityscapes``: ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` (2048x1024) and
  ``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`` (8-bit label ids). 2,975 train, 500 val.

Label encodings (the ``label_encoding`` manifest column):

* ``cityscapes_label_id``: 8-bit Cityscapes label ids 0..33 (GTA5, Cityscapes, and every *prepared*
  label, whatever the dataset: see :mod:`dacs_uda.data.prepare`).
* ``synthia_id``: 16-bit PNG, SYNTHIA class id 0..22 in the first channel.
* ``train_id``: 8-bit training ids 0..18, 255 = ignore.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dacs_uda import labels as L

CITYSCAPES_LABEL_ID = "cityscapes_label_id"
SYNTHIA_ID = "synthia_id"
TRAIN_ID = "train_id"
LABEL_ENCODINGS = (CITYSCAPES_LABEL_ID, SYNTHIA_ID, TRAIN_ID)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOR_TYPES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}

# Validation checks that only warn for a format: problems reported for copies of the real data that
# the official loader absorbs. GTA5: a few frames whose image and label sizes differ (the official
# loader's resize to 1280x720 aligns them) and missing pairs (one third-party report,
# bupt-ai-cz/IAST-ECCV2020 #2: 24,966 ids, 24,941 usable pairs; whether the release itself or that
# download lacks them is not known, and DACS's train.txt lists all 24,966). Rows with a missing side
# are left out of the manifest and listed.
GTA5_KNOWN_DEFECTS = frozenset(
    {"image present", "label present", "image width == label width", "image height == label height"}
)


@dataclass(frozen=True)
class DatasetFormat:
    """Official facts about one dataset layout."""

    name: str
    title: str
    counts: dict[str, int]  # official number of pairs per split
    label_encoding: str
    label_modes: tuple[str, ...]  # allowed values of the manifest's label_mode column
    label_mode_check: str  # name of that check in reports
    max_label_id: int
    image_resample: int  # PIL filter used when the images are resized (labels: always nearest)
    official_resize: tuple[int, int]  # W, H the DACS loaders resize to (SYNTHIA: see FORMATS)
    native_size: tuple[int, int]  # W, H of (most) frames as released
    warn_only: frozenset[str] = frozenset()


FORMATS: dict[str, DatasetFormat] = {
    "gta5": DatasetFormat(
        name="gta5",
        title="GTA5",
        counts={"train": 24966},
        label_encoding=CITYSCAPES_LABEL_ID,
        label_modes=("P", "L"),
        label_mode_check="label mode P or L",
        max_label_id=L.MAX_LABEL_ID,
        image_resample=Image.Resampling.BICUBIC,  # dacs_official.md §5.1
        official_resize=(1280, 720),
        native_size=(1914, 1052),
        warn_only=GTA5_KNOWN_DEFECTS,
    ),
    "synthia": DatasetFormat(
        name="synthia",
        title="SYNTHIA-RAND-CITYSCAPES",
        counts={"train": 9400},
        label_encoding=SYNTHIA_ID,
        label_modes=("16-bit RGB", "16-bit RGBA", "16-bit L"),
        label_mode_check="label is a 16-bit PNG",
        max_label_id=L.MAX_SYNTHIA_ID,
        image_resample=Image.Resampling.BICUBIC,  # dacs_official.md §5.4 (as GTA5)
        # Not an official size: DACS ships no SYNTHIA config. 1280x720 as its GTA5 code and the
        # DACS-derived CorDA SYNTHIA script; DAFormer-family configs use 1280x760 (dacs_official.md §5.4).
        official_resize=(1280, 720),
        native_size=(1280, 760),
    ),
    "cityscapes": DatasetFormat(
        name="cityscapes",
        title="Cityscapes",
        counts={"train": 2975, "val": 500},
        label_encoding=CITYSCAPES_LABEL_ID,
        label_modes=("P", "L"),
        label_mode_check="label mode P or L",
        max_label_id=L.MAX_LABEL_ID,
        image_resample=Image.Resampling.BILINEAR,  # dacs_official.md §5.2/§5.3 (PIL bilinear)
        official_resize=(1024, 512),
        native_size=(2048, 1024),
    ),
}


def png_header(path: str | Path) -> tuple[int, int, int, str]:
    """(width, height, bit depth, colour type as "L"/"RGB"/"P"/"LA"/"RGBA") from a PNG's IHDR chunk.

    Raises:
        ValueError: The file does not start with a PNG signature and IHDR chunk.
    """
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file")
    width, height, depth, color = struct.unpack(">IIBB", head[16:26])
    return width, height, depth, PNG_COLOR_TYPES.get(color, f"type {color}")


def png_mode(path: str | Path) -> str:
    """``"16-bit RGB"`` and the like: bit depth and colour type, as the SYNTHIA label check names them."""
    _, _, depth, color = png_header(path)
    return f"{depth}-bit {color}"


def read_png_channels(path: str | Path) -> np.ndarray:
    """Decode a PNG of any bit depth losslessly: C x H x W, uint8 or uint16.

    Pillow truncates 16-bit multi-channel PNGs to 8 bits; torchvision keeps all 16. (torchvision 0.29
    marks its image codecs deprecated in favour of TorchCodec; the project pins torchvision==0.29.1.)

    Raises:
        RuntimeError or ValueError: The file is not a complete, valid PNG.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        from torchvision.io import ImageReadMode, decode_png

    data = Path(path).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path}: not a PNG file")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        tensor = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED)
    return tensor.numpy()


def read_label_ids(path: str | Path, encoding: str) -> np.ndarray:
    """The label ids of one label file as an H x W array (uint8, or uint16 for SYNTHIA).

    Args:
        path: Label PNG.
        encoding: One of :data:`LABEL_ENCODINGS`.

    Raises:
        ValueError: Unknown encoding, or an 8-bit label that is not single-band (P or L).
    """
    if encoding == SYNTHIA_ID:
        return read_png_channels(path)[0]  # class id in the first channel, instance id in the second
    if encoding not in LABEL_ENCODINGS:
        raise ValueError(f"unknown label encoding {encoding!r}: expected one of {LABEL_ENCODINGS}")
    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise ValueError(f"{path}: label mode {img.mode}, expected P or L (8-bit ids)")
        # Palette PNGs (GTA5): the indices, not the colours, are the label ids.
        return np.array(img)


def train_id_lut(encoding: str) -> np.ndarray:
    """Lookup table from label ids of ``encoding`` to training ids (255 = ignore)."""
    if encoding == CITYSCAPES_LABEL_ID:
        return L.label_id_to_train_id_lut()
    if encoding == SYNTHIA_ID:
        return L.synthia_id_to_train_id_lut()
    if encoding == TRAIN_ID:
        lut = np.full(256, L.IGNORE_INDEX, dtype=np.uint8)
        lut[: L.NUM_CLASSES] = np.arange(L.NUM_CLASSES)
        return lut
    raise ValueError(f"unknown label encoding {encoding!r}: expected one of {LABEL_ENCODINGS}")


def to_train_ids(ids: np.ndarray, encoding: str) -> np.ndarray:
    """Map label ids of ``encoding`` to uint8 training ids (every id outside the table -> 255)."""
    lut = train_id_lut(encoding)
    if ids.dtype == np.uint16 and len(lut) == 256:
        return np.where(ids < 256, lut[np.minimum(ids, 255)], L.IGNORE_INDEX).astype(np.uint8)
    return lut[ids]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png16(array: np.ndarray) -> bytes:
    """Encode an H x W or H x W x C (C = 1, 3, 4) uint16 array as a 16-bit PNG (the SYNTHIA encoding).

    Pillow cannot write 16-bit colour PNGs; this writes the format directly (filter 0, zlib).
    """
    if array.dtype != np.uint16:
        raise ValueError(f"expected uint16, got {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    height, width, channels = array.shape
    color = {1: 0, 3: 2, 4: 6}.get(channels)
    if color is None:
        raise ValueError(f"expected 1, 3 or 4 channels, got {channels}")
    rows = np.ascontiguousarray(array.astype(">u2").reshape(height, width * channels)).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter byte 0
    header = struct.pack(">IIBBBBB", width, height, 16, color, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw, 6))
        + _png_chunk(b"IEND", b"")
    )


def write_png16(path: str | Path, array: np.ndarray) -> None:
    """Write :func:`encode_png16` of ``array`` to ``path``."""
    Path(path).write_bytes(encode_png16(array))
