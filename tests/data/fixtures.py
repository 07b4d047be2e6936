"""Small dataset trees in each official layout and encoding, for the real-data tests.

* GTA5: ``images/NNNNN.png`` RGB and ``labels/NNNNN.png`` **palette** PNGs whose indices are
  Cityscapes label ids (the palette colours differ from the indices, as in the release).
* SYNTHIA-RAND-CITYSCAPES: ``RGB/NNNNNNN.png`` and ``GT/LABELS/NNNNNNN.png``: **16-bit RGB** PNGs with
  the SYNTHIA class id in the first channel and an instance id (often > 255) in the second.
* Cityscapes: ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` and
  ``gtFine/<split>/<city>/..._gtFine_{labelIds,color,instanceIds}.png`` + ``..._gtFine_polygons.json``,
  plus the ``test`` split (images only) and the top-level ``README`` / ``license.txt`` of the archives.

Frames come from the embedded scene generator, so labels are realistic street layouts.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from dacs_uda import labels as L
from dacs_uda.data import synth
from dacs_uda.data.formats import write_png16

GTA5_SIZE = (64, 35)  # W, H: about the 1914x1052 aspect
SYNTHIA_SIZE = (64, 38)  # 1280x760 aspect
CITYSCAPES_SIZE = (64, 32)  # 2048x1024 aspect
CITYSCAPES_COUNTS = {"train": 4, "val": 2}

# Cityscapes label id -> SYNTHIA class id (via the training id; void -> 0).
_LABEL_TO_SYNTHIA = np.zeros(256, dtype=np.uint16)
for _train_id, _label_id in enumerate(L.TRAIN_ID_TO_LABEL_ID):
    _LABEL_TO_SYNTHIA[_label_id] = L.TRAIN_ID_TO_SYNTHIA_ID[_train_id]


def _frame(domain: str, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return synth.render_scene(domain, size[0], size[1], synth.frame_rng(0, domain, "train", index))


def gta5_label(path: Path, label_ids: np.ndarray) -> None:
    """A palette PNG whose indices are ``label_ids`` (the GTA5 encoding)."""
    label = Image.fromarray(label_ids.astype(np.uint8), "P")
    label.putpalette(L.cityscapes_palette_bytes())
    label.save(path)


def gta5_tree(root: Path, count: int = 6, size: tuple[int, int] = GTA5_SIZE) -> Path:
    """``count`` GTA5 frames (1-based, five digits) under ``root``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, label_ids = _frame("source", i, size)
        Image.fromarray(image).save(root / "images" / f"{i + 1:05d}.png")
        gta5_label(root / "labels" / f"{i + 1:05d}.png", label_ids)
    return root


def synthia_label(path: Path, synthia_ids: np.ndarray, seed: int = 0) -> None:
    """A 16-bit RGB PNG: class ids in channel 1, instance ids (up to 4000) in channel 2, zeros in 3."""
    rng = np.random.default_rng(seed)
    instances = rng.integers(0, 4000, synthia_ids.shape, dtype=np.uint16)
    write_png16(path, np.stack([synthia_ids.astype(np.uint16), instances, np.zeros_like(instances)], -1))


def synthia_ids_of(label_ids: np.ndarray) -> np.ndarray:
    """SYNTHIA class ids for a map of Cityscapes label ids, with some lane-marking (22) on the road."""
    ids = _LABEL_TO_SYNTHIA[label_ids].copy()
    road = np.argwhere(ids == 3)
    for y, x in road[:: max(1, len(road) // 12)]:
        ids[y, x] = 22  # lane-marking: a SYNTHIA class DACS ignores
    return ids


def synthia_tree(root: Path, count: int = 6, size: tuple[int, int] = SYNTHIA_SIZE) -> Path:
    """``count`` SYNTHIA-RAND-CITYSCAPES frames (seven digits, from 0) under ``root``."""
    (root / "RGB").mkdir(parents=True, exist_ok=True)
    (root / "GT" / "LABELS").mkdir(parents=True, exist_ok=True)
    (root / "GT" / "COLOR").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, label_ids = _frame("source", i, size)
        name = f"{i:07d}.png"
        Image.fromarray(image).save(root / "RGB" / name)
        synthia_label(root / "GT" / "LABELS" / name, synthia_ids_of(label_ids), seed=i)
        Image.fromarray(L.colorize(L.label_id_to_train_id_lut()[label_ids])).save(
            root / "GT" / "COLOR" / name
        )
    return root


def cityscapes_tree(
    root: Path, counts: dict[str, int] | None = None, size: tuple[int, int] = CITYSCAPES_SIZE
) -> Path:
    """A Cityscapes tree: train/val pairs with every gtFine file kind, a test split, README, license."""
    counts = counts or CITYSCAPES_COUNTS
    synth.generate_target(root, seed=0, counts=counts, size=size, workers=1)
    for split, count in counts.items():
        for i in range(count):
            _, label, _ = synth.cityscapes_paths(root, split, i)
            stem = label.name[: -len("_gtFine_labelIds.png")]
            ids = np.asarray(Image.open(label)).astype(np.uint16)
            write_png16(label.with_name(f"{stem}_gtFine_instanceIds.png"), ids * 1000)  # 16-bit grey
            polygons = {"imgHeight": size[1], "imgWidth": size[0], "objects": []}
            label.with_name(f"{stem}_gtFine_polygons.json").write_text(json.dumps(polygons))
    test_dir = root / "leftImg8bit" / "test" / "berlin"
    test_dir.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(test_dir / "berlin_000000_000019_leftImg8bit.png")
    (root / "README").write_text("The Cityscapes Dataset (fixture)\n")
    (root / "license.txt").write_text("fixture\n")
    return root


def zip_bytes(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    """A zip archive in memory with the given members (and symbolic-link members)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16) | 0
            zf.writestr(info, target)
    return buffer.getvalue()


def zip_tree(root: Path, prefix: str = "", only: str | None = None) -> bytes:
    """Zip every file under ``root`` (or under ``root/only``) with member names ``prefix + relative path``."""
    base = root / only if only else root
    members = {
        prefix + str(path.relative_to(root)).replace("\\", "/"): path.read_bytes()
        for path in sorted(base.rglob("*"))
        if path.is_file()
    }
    return zip_bytes(members)
