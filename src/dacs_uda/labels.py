"""Cityscapes label definitions shared by every dataset, model and report.

GTA5 labels carry Cityscapes label ids, so one table maps both to the 19 training ids.
Every id outside the table becomes ``IGNORE_INDEX`` (the official DACS loaders do the same).
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255
NUM_CLASSES = 19

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

# Cityscapes labelId of each training id, in training-id order.
TRAIN_ID_TO_LABEL_ID: tuple[int, ...] = (
    7,
    8,
    11,
    12,
    13,
    17,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    26,
    27,
    28,
    31,
    32,
    33,
)

# Official Cityscapes colours (cityscapesscripts/helpers/labels.py), in training-id order.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

# Cityscapes void label ids used by the generator and accepted by validation.
LABEL_ID_UNLABELED = 0
LABEL_ID_EGO_VEHICLE = 1
LABEL_ID_RECTIFICATION_BORDER = 2
LABEL_ID_OUT_OF_ROI = 3
MAX_LABEL_ID = 33  # labelIds run 0..33 (license plate, -1, never appears in label images)

# SYNTHIA evaluation subsets (training ids): 16 classes drop terrain, truck and train; 13 classes
# ("mIoU*") also drop wall, fence and pole (dacs_official.md §10.3).
SYNTHIA_16 = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
SYNTHIA_13 = (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)

# SYNTHIA-RAND-CITYSCAPES class id of each training id, in training-id order (official DACS
# ``synthia_dataset.py`` table, dacs_official.md §10.2). Terrain (16), truck (18) and train (20) never
# occur in SYNTHIA labels; ids 0 (void), 13 (parking-slot), 14 (road-work) and 22 (lane-marking) are
# ignored, as in DACS (some other code bases map lane-marking and parking-slot to road).
TRAIN_ID_TO_SYNTHIA_ID: tuple[int, ...] = (3, 4, 2, 21, 5, 7, 15, 9, 6, 16, 1, 10, 17, 8, 18, 19, 20, 12, 11)
MAX_SYNTHIA_ID = 22  # SYNTHIA-RAND-CITYSCAPES class ids run 0..22


def label_id_to_train_id_lut() -> np.ndarray:
    """Return a 256-entry uint8 lookup table: Cityscapes labelId -> training id (255 = ignore)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for train_id, label_id in enumerate(TRAIN_ID_TO_LABEL_ID):
        lut[label_id] = train_id
    return lut


def train_id_to_label_id_lut() -> np.ndarray:
    """Return a 256-entry uint8 lookup table: training id -> Cityscapes labelId (ignore -> 0, unlabeled)."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[:NUM_CLASSES] = TRAIN_ID_TO_LABEL_ID
    return lut


def synthia_id_to_train_id_lut() -> np.ndarray:
    """Return a 65536-entry uint8 lookup table: SYNTHIA class id -> training id (255 = ignore)."""
    lut = np.full(1 << 16, IGNORE_INDEX, dtype=np.uint8)
    for train_id, synthia_id in enumerate(TRAIN_ID_TO_SYNTHIA_ID):
        lut[synthia_id] = train_id
    return lut


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """Colour an HxW map of training ids with the Cityscapes palette (ignore -> black)."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:NUM_CLASSES] = PALETTE
    return table[train_ids]


def cityscapes_palette_bytes() -> list[int]:
    """Palette for 'P'-mode PNGs whose indices are Cityscapes labelIds (the GTA5 label encoding)."""
    lut = train_id_to_label_id_lut()
    flat = [0] * (256 * 3)
    for train_id in range(NUM_CLASSES):
        label_id = int(lut[train_id])
        flat[3 * label_id : 3 * label_id + 3] = PALETTE[train_id]
    return flat
