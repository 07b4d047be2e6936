"""Pictures people would rather look at than read: sample grids of images, labels and predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dacs_uda.labels import colorize
from dacs_uda.utils.io import atomic_path


def grid(rows: list[list[np.ndarray]], titles: list[str] | None = None, pad: int = 2) -> np.ndarray:
    """Tile equally sized HxWx3 uint8 panels into one image, with optional column titles."""
    h, w = rows[0][0].shape[:2]
    head = 14 if titles else 0
    out = np.full((head + len(rows) * (h + pad), len(rows[0]) * (w + pad), 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            y, x = head + r * (h + pad), c * (w + pad)
            out[y : y + h, x : x + w] = panel
    if titles:
        canvas = Image.fromarray(out)
        draw = ImageDraw.Draw(canvas)
        for c, title in enumerate(titles):
            draw.text((c * (w + pad) + 3, 1), title, fill=(0, 0, 0))
        out = np.asarray(canvas)
    return out


def label_panel(train_ids: np.ndarray) -> np.ndarray:
    """Colourise training ids (ignore -> black)."""
    return colorize(train_ids)


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Save an RGB uint8 array as PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
