"""Small dataset trees in each official layout and encoding, for the real-data tests.

* GTA5: ``images/NNNNN.png`` RGB and ``labels/NNNNN.png`` **palette** PNGs whose indices are
  Cityscapes label ids (the palette colours differ from the indices, as in the release).
* SYNTHIA-RAND-CITYSCAPES: ``RGB/NNNNNNN.png`` and ``GT/LABELS/NNNNNNN.png``: **16-bit RGB** PNGs with
  the SYNTHIA class id in the first channel and an instance id (often > 255) in the second.
* Cityscapes: ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` and
  ``gtFine/<split>/<city>/..._gtFine_{labelIds,color,instanceIds}.png`` + ``..._gtFine_polygons.json``,
  plus the ``test`` split (images only) and the top-level ``README`` / ``license.txt`` of the archives.

Frames come from the embedded scene generator, so labels are realistic street layouts.

Trees as users have them, too: :func:`daformer_convert` adds what DAFormer's (mmseg's, for
Cityscapes) ``tools/convert_datasets/{gta,synthia,cityscapes}.py`` write in place, and
:func:`cityscapes_dacs_tree` lays Cityscapes out as the official DACS code reads it.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from dacs_uda import labels as L
from dacs_uda.data import synth
from dacs_uda.data.formats import FORMATS, read_label_ids, to_train_ids, write_png16

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


# Where each converter finds the labels it converts, and how it picks them: GTA5 and SYNTHIA take
# every `<digit>.png` in the label folder; Cityscapes every `_gtFine_polygons.json` (its label file
# is rendered from it: here from the fixture's labelIds, which hold the same classes).
CONVERTED_LABELS = {
    "gta5": ("labels", "*[0-9].png", ".png"),
    "synthia": ("GT/LABELS", "*[0-9].png", ".png"),
    "cityscapes": ("gtFine", "*/*/*_gtFine_polygons.json", "_polygons.json"),
}
CONVERTER_STATS = ("sample_class_stats.json", "sample_class_stats_dict.json", "samples_with_class.json")


def _source_label(found: Path, fmt: str) -> Path:
    """The label the converter reads for ``found`` (Cityscapes: the labelIds beside the polygons)."""
    if fmt == "cityscapes":
        return found.with_name(found.name.replace("_polygons.json", "_labelIds.png"))
    return found


def daformer_convert(root: Path, fmt: str) -> list[Path]:
    """Write what DAFormer's converter for ``fmt`` writes into ``root`` in place; return the new files.

    Beside each label ``X.png`` (Cityscapes ``..._gtFine_polygons.json``) an 8-bit training-id label
    ``X_labelTrainIds.png`` (``..._gtFine_labelTrainIds.png``), 255 = ignore; in the root the three
    class-statistics files (Cityscapes: of the train split only) and, for Cityscapes, the
    ``{train,val,test}.txt`` lists of frame stems.
    """
    folder, pattern, suffix = CONVERTED_LABELS[fmt]
    encoding = FORMATS[fmt].label_encoding
    stats: list[dict[str, object]] = []
    written = []
    for found in sorted((root / folder).glob(pattern)):
        train_ids = to_train_ids(read_label_ids(_source_label(found, fmt), encoding), encoding)
        out = found.with_name(found.name[: -len(suffix)] + "_labelTrainIds.png")
        Image.fromarray(train_ids, "L").save(out)
        written.append(out)
        if fmt != "cityscapes" or "/train/" in out.as_posix():
            classes, pixels = np.unique(train_ids[train_ids != 255], return_counts=True)
            stats.append({**{str(c): int(n) for c, n in zip(classes, pixels, strict=True)}, "file": str(out)})
    by_file = {str(entry["file"]): {k: v for k, v in entry.items() if k != "file"} for entry in stats}
    with_class: dict[str, list[list[object]]] = {}
    for file, counts in by_file.items():
        for c, n in counts.items():
            with_class.setdefault(c, []).append([file, n])
    for name, content in zip(CONVERTER_STATS, (stats, by_file, with_class), strict=True):
        (root / name).write_text(json.dumps(content, indent=2))
        written.append(root / name)
    if fmt == "cityscapes":
        for split in ("train", "val", "test"):
            stems = sorted(
                p.name[: -len("_gtFine_polygons.json")]
                for p in (root / "gtFine" / split).glob("*/*_gtFine_polygons.json")
            )
            (root / f"{split}.txt").write_text("".join(f"{stem}\n" for stem in stems))
            written.append(root / f"{split}.txt")
    return written


def cityscapes_dacs_tree(root: Path, counts: dict[str, int] | None = None) -> Path:
    """A Cityscapes tree as the official DACS code reads it: each zip extracted into a folder of its
    name, ``leftImg8bit_trainvaltest/{leftImg8bit,README,license.txt}`` and the same for gtFine."""
    official = cityscapes_tree(root.with_name(root.name + "-official"), counts)
    for top in ("leftImg8bit", "gtFine"):
        zip_folder = root / f"{top}_trainvaltest"
        zip_folder.mkdir(parents=True)
        shutil.copytree(official / top, zip_folder / top)
        for name in ("README", "license.txt"):
            shutil.copy(official / name, zip_folder / name)
    shutil.rmtree(official)
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
