"""Label mappings against the official definitions: Cityscapes (cityscapesScripts ``labels.py``, which
GTA5 labels share) and SYNTHIA-RAND-CITYSCAPES (DACS ``synthia_dataset.py``), plus the eval subsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dacs_uda import labels as L
from dacs_uda.data.formats import (
    CITYSCAPES_LABEL_ID,
    SYNTHIA_ID,
    TRAIN_ID,
    read_label_ids,
    to_train_ids,
    write_png16,
)

# cityscapesScripts helpers/labels.py: (name, id, trainId, colour). License plate has id -1 and is
# never written into label images.
CITYSCAPES_LABELS = [
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
    ("license plate", -1, -1, (0, 0, 142)),
]

# SYNTHIA-RAND-CITYSCAPES class ids (SYNTHIA README names) -> DACS training id (None: ignored).
SYNTHIA_LABELS = [
    ("void", 0, None),
    ("sky", 1, 10),
    ("building", 2, 2),
    ("road", 3, 0),
    ("sidewalk", 4, 1),
    ("fence", 5, 4),
    ("vegetation", 6, 8),
    ("pole", 7, 5),
    ("car", 8, 13),
    ("traffic sign", 9, 7),
    ("pedestrian", 10, 11),
    ("bicycle", 11, 18),
    ("motorcycle", 12, 17),
    ("parking-slot", 13, None),
    ("road-work", 14, None),
    ("traffic light", 15, 6),
    ("terrain", 16, 9),
    ("rider", 17, 12),
    ("truck", 18, 14),
    ("bus", 19, 15),
    ("train", 20, 16),
    ("wall", 21, 3),
    ("lane-marking", 22, None),
]


def test_cityscapes_label_ids_map_to_the_official_train_ids() -> None:
    lut = L.label_id_to_train_id_lut()
    for name, label_id, train_id, _ in CITYSCAPES_LABELS:
        if label_id < 0:
            continue
        assert lut[label_id] == train_id, name
    official = {label_id for _, label_id, _, _ in CITYSCAPES_LABELS}
    assert all(lut[i] == L.IGNORE_INDEX for i in range(256) if i not in official)
    assert L.MAX_LABEL_ID == max(official)


def test_train_ids_names_and_colours_are_the_official_ones() -> None:
    trained = [(n, i, t, c) for n, i, t, c in CITYSCAPES_LABELS if 0 <= t < 255]
    trained.sort(key=lambda row: row[2])
    assert [t for _, _, t, _ in trained] == list(range(L.NUM_CLASSES))
    assert L.CLASS_NAMES == tuple(n for n, _, _, _ in trained)
    assert L.TRAIN_ID_TO_LABEL_ID == tuple(i for _, i, _, _ in trained)
    assert L.PALETTE == tuple(c for _, _, _, c in trained)


def test_synthia_ids_map_to_the_dacs_train_ids() -> None:
    lut = L.synthia_id_to_train_id_lut()
    for name, synthia_id, train_id in SYNTHIA_LABELS:
        assert lut[synthia_id] == (L.IGNORE_INDEX if train_id is None else train_id), name
        if train_id is not None:
            assert L.CLASS_NAMES[train_id].split()[-1] in name or name == "pedestrian", name
    assert (lut[23:] == L.IGNORE_INDEX).all()
    assert L.MAX_SYNTHIA_ID == 22
    # the three classes SYNTHIA never shows are exactly those the 16-class protocol drops
    assert {t for _, _, t in SYNTHIA_LABELS if t is not None} == set(range(19))
    assert set(range(19)) - set(L.SYNTHIA_16) == {
        L.CLASS_NAMES.index(c) for c in ("terrain", "truck", "train")
    }


def test_synthia_evaluation_subsets() -> None:
    assert len(L.SYNTHIA_16) == 16 and len(L.SYNTHIA_13) == 13
    assert set(L.SYNTHIA_13) < set(L.SYNTHIA_16)
    dropped = {L.CLASS_NAMES[i] for i in set(L.SYNTHIA_16) - set(L.SYNTHIA_13)}
    assert dropped == {"wall", "fence", "pole"}


def test_gta5_palette_label_gives_indices_not_colours(tmp_path: Path) -> None:
    ids = np.array([[7, 26, 0], [33, 255, 24]], dtype=np.uint8)
    path = tmp_path / "00001.png"
    label = Image.fromarray(ids, "P")
    label.putpalette(L.cityscapes_palette_bytes())
    label.save(path)
    np.testing.assert_array_equal(read_label_ids(path, CITYSCAPES_LABEL_ID), ids)
    np.testing.assert_array_equal(
        to_train_ids(read_label_ids(path, CITYSCAPES_LABEL_ID), CITYSCAPES_LABEL_ID),
        [[0, 13, 255], [18, 255, 11]],
    )


def test_synthia_16bit_label_reads_the_first_channel(tmp_path: Path) -> None:
    classes = np.array([[3, 4, 22], [8, 0, 21]], dtype=np.uint16)
    instances = np.array([[300, 65535, 1], [256, 7, 1000]], dtype=np.uint16)
    path = tmp_path / "0000000.png"
    write_png16(path, np.stack([classes, instances, np.zeros_like(classes)], -1))
    with Image.open(path) as img:  # what a plain Pillow read would give: truncated, wrong ids
        assert not np.array_equal(np.asarray(img)[..., 0], classes)
    np.testing.assert_array_equal(read_label_ids(path, SYNTHIA_ID), classes)
    np.testing.assert_array_equal(to_train_ids(classes, SYNTHIA_ID), [[0, 1, 255], [13, 255, 3]])


def test_train_id_encoding_is_the_identity_with_ignore() -> None:
    ids = np.array([0, 18, 19, 200, 255], dtype=np.uint8)
    np.testing.assert_array_equal(to_train_ids(ids, TRAIN_ID), [0, 18, 255, 255, 255])
    with pytest.raises(ValueError, match="unknown label encoding"):
        to_train_ids(ids, "rgb")
