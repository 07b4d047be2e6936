"""Manifests: one row per image/label pair found under a dataset root by the official naming rules.

Every file is opened and fully decoded (``Image.load()``), so truncated or corrupt PNGs are found
here rather than in the middle of training. A bad file never stops the scan: its row records what
is wrong, and the ``validate`` stage decides (with Great Expectations) whether that is fatal.

Layouts:

* ``gta5``: ``images/NNNNN.png`` and ``labels/NNNNN.png``, paired by file name; all rows are ``train``.
* ``cityscapes``: ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` and
  ``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`` for the ``train`` and ``val`` splits (``test``
  has no public labels and is not used). Both folders may also sit one level down, as the official
  DACS code reads them: ``leftImg8bit_trainvaltest/leftImg8bit`` and ``gtFine_trainvaltest/gtFine``.
* ``synthia``: ``RGB/NNNNNNN.png`` and ``GT/LABELS/NNNNNNN.png`` (16-bit, class id in the first
  channel), paired by file name; all rows are ``train``.

Trees converted for DAFormer/mmseg keep their official files and gain derived ones: a
``<name>_labelTrainIds.png`` beside every label (GTA5 ``labels/``, SYNTHIA ``GT/LABELS/``, Cityscapes
``gtFine/``) and, in the root, ``sample_class_stats.json``, ``sample_class_stats_dict.json``,
``samples_with_class.json`` (and Cityscapes ``{train,val,test}.txt``). Only the official files are
paired: the derived ones are counted and ignored, so such a tree validates like the original.

The official facts of each format (counts, label encodings, sizes) live in :mod:`dacs_uda.data.formats`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from dacs_uda.data.formats import CITYSCAPES_LABEL_ID, FORMATS, SYNTHIA_ID, png_mode, read_label_ids
from dacs_uda.utils.io import file_sha256

log = logging.getLogger(__name__)

CITYSCAPES_SPLITS = ("train", "val")
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_LABEL_SUFFIX = "_gtFine_labelIds.png"

MANIFEST_COLUMNS = (
    "split", "image", "label",
    "image_width", "image_height", "image_mode",
    "label_width", "label_height", "label_mode", "label_values",
    "image_ok", "label_ok", "error", "warning", "label_encoding",
    "image_sha256", "label_sha256",
)  # fmt: skip
TEXT_COLUMNS = (
    "split",
    "image",
    "label",
    "error",
    "warning",
    "label_encoding",
    "image_sha256",
    "label_sha256",
)

# Written beside each label by DAFormer's/mmseg's converters (tools/convert_datasets): never a pair.
CONVERTED_LABEL_SUFFIX = "_labelTrainIds.png"

# Where Cityscapes' two folders (images, labels) may be: as the official zips extract, or one level
# down, as the official DACS code reads them.
CITYSCAPES_TOPS = (
    ("leftImg8bit", "gtFine"),
    ("leftImg8bit_trainvaltest/leftImg8bit", "gtFine_trainvaltest/gtFine"),
)

# The layouts a root of each format may have (the first is the official one): folders that must all
# exist under a root for it to count as a dataset of that format.
LAYOUT_DIRS: dict[str, tuple[tuple[str, ...], ...]] = {
    "gta5": (("images", "labels"),),
    "synthia": (("RGB", "GT/LABELS"),),
    "cityscapes": tuple(
        tuple(f"{top}/{split}" for top in tops for split in CITYSCAPES_SPLITS) for tops in CITYSCAPES_TOPS
    ),
}

# What each layout looks like, for error messages (same order as LAYOUT_DIRS).
EXPECTED_TREES: dict[str, tuple[str, ...]] = {
    "gta5": (
        "<root>/images/00001.png ... 24966.png (RGB)\n"
        "<root>/labels/00001.png ... 24966.png (palette PNGs of Cityscapes label ids)",
    ),
    "synthia": (
        "<root>/RGB/0000000.png ... 0009399.png (RGB)\n"
        "<root>/GT/LABELS/0000000.png ... 0009399.png (16-bit PNGs, class id in the first channel)",
    ),
    "cityscapes": tuple(
        f"<root>/{images}/{{train,val}}/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n"
        f"<root>/{labels}/{{train,val}}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png"
        for images, labels in CITYSCAPES_TOPS
    ),
}

# (split, image path or "", label path or "")
Pair = tuple[str, str, str]


def _official_pngs(folder: Path) -> dict[str, Path]:
    """``*.png`` in ``folder`` by name, without the converters' ``*_labelTrainIds.png`` (logged)."""
    found, converted = {}, 0
    for path in folder.glob("*.png"):
        if path.name.endswith(CONVERTED_LABEL_SUFFIX):
            converted += 1
        else:
            found[path.name] = path
    if converted:
        log.info(
            "%s: ignored %d converted *%s files (DAFormer/mmseg)", folder, converted, CONVERTED_LABEL_SUFFIX
        )
    return found


def _by_name_pairs(root: Path, image_dir: str, label_dir: str) -> list[Pair]:
    """Pair ``<image_dir>/X.png`` with ``<label_dir>/X.png`` by file name (all rows ``train``)."""
    images = _official_pngs(root / image_dir)
    labels = _official_pngs(root / label_dir)
    return [
        ("train", str(images.get(name, "")), str(labels.get(name, "")))
        for name in sorted(images.keys() | labels.keys())
    ]


def _cityscapes_side(folder: Path, suffix: str) -> dict[tuple[str, str], Path]:
    """Files ``<city>/<stem><suffix>`` under ``folder``, keyed by (city, stem)."""
    found = {}
    for path in folder.glob(f"*/*{suffix}"):
        found[(path.parent.name, path.name[: -len(suffix)])] = path
    return found


def _cityscapes_pairs(root: Path) -> list[Pair]:
    """Pair ``leftImg8bit`` frames with their ``gtFine`` label ids by (split, city, stem)."""
    image_top, label_top = CITYSCAPES_TOPS[layout_index("cityscapes", root)]
    pairs: list[Pair] = []
    for split in CITYSCAPES_SPLITS:
        images = _cityscapes_side(root / image_top / split, CITYSCAPES_IMAGE_SUFFIX)
        labels = _cityscapes_side(root / label_top / split, CITYSCAPES_LABEL_SUFFIX)
        for key in sorted(images.keys() | labels.keys()):
            pairs.append((split, str(images.get(key, "")), str(labels.get(key, ""))))
    return pairs


def find_pairs(fmt: str, root: Path) -> list[Pair]:
    """List (split, image, label) under ``root``; a side without its partner is ``""``.

    Args:
        fmt: Dataset layout, one of :data:`FORMATS`.
        root: Dataset root; paths are returned as ``root / ...`` (relative stays relative).

    Returns:
        Pairs sorted by split (official order) and file name.

    Raises:
        ValueError: ``fmt`` is not a known layout.
        FileNotFoundError: ``root`` is not a folder.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}: expected one of {tuple(FORMATS)}")
    if not Path(root).is_dir():
        raise FileNotFoundError(
            f"dataset root {root} ({fmt}) not found: run `dvc repro data` for the embedded pair, "
            "or check the dataset root in params.yaml"
        )
    if fmt == "gta5":
        return _by_name_pairs(Path(root), "images", "labels")
    if fmt == "synthia":
        return _by_name_pairs(Path(root), "RGB", "GT/LABELS")
    return _cityscapes_pairs(Path(root))


def _missing(root: str | Path, layout: tuple[str, ...]) -> list[str]:
    """The folders of ``layout`` that are not under ``root``."""
    return [sub for sub in layout if not (Path(root) / sub).is_dir()]


def layout_index(fmt: str, root: str | Path) -> int:
    """Which of ``fmt``'s layouts (:data:`LAYOUT_DIRS`) ``root`` has: the most complete, else the first."""
    layouts = LAYOUT_DIRS[fmt]
    return min(range(len(layouts)), key=lambda i: len(_missing(root, layouts[i])))


def missing_layout(fmt: str, root: str | Path) -> list[str]:
    """The folders missing under ``root`` from the layout of ``fmt`` it comes closest to (empty: complete)."""
    return _missing(root, LAYOUT_DIRS[fmt][layout_index(fmt, root)])


def layout_folders(fmt: str) -> str:
    """The folders of every layout of ``fmt`` (what a root is checked for), as "a/, b/ or c/, d/"."""
    return " or ".join(", ".join(f"{d}/" for d in layout) for layout in LAYOUT_DIRS[fmt])


def expected_layout(fmt: str) -> str:
    """Every layout a root of ``fmt`` may have, as an indented tree for error messages."""
    trees = ["  " + tree.replace("\n", "\n  ") for tree in EXPECTED_TREES[fmt]]
    return "\nor\n".join(trees)


def _values_text(array: np.ndarray) -> str:
    """Sorted unique values of an integer array as ``"0 7 26"``."""
    if array.dtype in (np.uint8, np.uint16):
        values = np.flatnonzero(np.bincount(array.ravel()))
    else:
        values = np.unique(array)
    return " ".join(str(v) for v in values.tolist())


def _label_values(img: Image.Image) -> str | None:
    """Sorted unique values of a single-band image as ``"0 7 26"`` (None for multi-band images)."""
    if len(img.getbands()) != 1:
        return None
    return _values_text(np.asarray(img))


def _inspect_png16_label(path: str, info: dict[str, Any]) -> None:
    """SYNTHIA labels: mode from the PNG header, values of the first channel (decoded losslessly)."""
    with Image.open(path) as img:  # size only: Pillow would truncate the 16-bit values
        info.update(width=img.width, height=img.height)
    info["mode"] = png_mode(path)
    info["values"] = _values_text(read_label_ids(path, SYNTHIA_ID))


def inspect_file(job: tuple[str, bool] | tuple[str, bool, str]) -> dict[str, Any]:
    """Open and fully decode one PNG; never raise.

    Args:
        job: (path, whether it is a label, and optionally the label encoding, by default Cityscapes
            label ids). Labels also get their sorted unique values.

    Returns:
        ``width``, ``height``, ``mode`` (from the header, None if unreadable), ``values`` (labels only),
        ``sha256`` of the file's bytes (the data version is built on it), ``ok`` (fully decoded) and
        ``error`` ("" if fine).
    """
    path, want_values, encoding = (*job, CITYSCAPES_LABEL_ID)[:3]
    info: dict[str, Any] = {
        "width": None,
        "height": None,
        "mode": None,
        "values": None,
        "sha256": "",
        "ok": False,
        "error": "",
    }
    try:
        info["sha256"] = file_sha256(path)  # the bytes go on to the page cache: decoding rereads them free
        if want_values and encoding == SYNTHIA_ID:
            _inspect_png16_label(path, info)
            info["ok"] = True
            return info
        with Image.open(path) as img:
            info.update(width=img.width, height=img.height, mode=img.mode)
            img.load()  # the header alone says nothing about a truncated file
            if want_values:
                info["values"] = _label_values(img)
        info["ok"] = True
    except Exception as err:  # noqa: BLE001 - any decoder failure is a finding, not a crash
        info["error"] = f"{type(err).__name__}: {err}"
    return info


def io_processes(setting: int) -> int:
    """Processes for decoding and preparing files: ``data.io_workers``, or with 0 one per usable core.

    The cores this process may run on (its affinity), not the machine's: a container or ``taskset``
    limit is respected.
    """
    return setting if setting > 0 else max(1, len(os.sched_getaffinity(0)))


def _inspect_all(jobs: list[tuple[str, bool, str]], workers: int, desc: str) -> list[dict[str, Any]]:
    """Run :func:`inspect_file` over ``jobs`` (in a process pool if ``workers > 1``), in order."""
    if workers <= 1 or len(jobs) < 2:
        results: Iterable[dict[str, Any]] = map(inspect_file, jobs)
        return list(tqdm(results, total=len(jobs), desc=desc, unit="file", mininterval=2.0))
    chunk = max(1, min(64, len(jobs) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(inspect_file, jobs, chunksize=chunk)
        return list(tqdm(results, total=len(jobs), desc=desc, unit="file", mininterval=2.0))


def _side(path: str, info: dict[str, Any] | None, kind: str, other: str) -> tuple[dict[str, Any], str]:
    """Manifest columns of one side of a pair, and its problem ("" if fine)."""
    if info is None:
        empty = {
            f"{kind}_width": None,
            f"{kind}_height": None,
            f"{kind}_mode": None,
            f"{kind}_ok": False,
            f"{kind}_sha256": "",
        }
        return empty, f"{kind} missing (no {kind} for {other})"
    columns = {
        f"{kind}_width": info["width"],
        f"{kind}_height": info["height"],
        f"{kind}_mode": info["mode"],
        f"{kind}_ok": info["ok"],
        f"{kind}_sha256": info["sha256"],
    }
    if kind == "label":
        columns["label_values"] = info["values"]
    return columns, "" if info["ok"] else f"{kind} unreadable: {info['error']}"


def _row(
    pair: Pair, image: dict[str, Any] | None, label: dict[str, Any] | None, encoding: str
) -> dict[str, Any]:
    """One manifest row from a pair and the inspection of its files."""
    split, image_path, label_path = pair
    row: dict[str, Any] = {
        "split": split,
        "image": image_path,
        "label": label_path,
        "label_values": None,
        "warning": "",
        "label_encoding": encoding,
    }
    image_cols, image_error = _side(image_path, image, "image", label_path)
    label_cols, label_error = _side(label_path, label, "label", image_path)
    row.update(image_cols)
    row.update(label_cols)
    row["error"] = "; ".join(e for e in (image_error, label_error) if e)
    return row


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a DataFrame with stable dtypes (nullable ints, strings, bools), even when empty."""
    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    for column in ("image_width", "image_height", "label_width", "label_height"):
        frame[column] = frame[column].astype("Int64")
    for column in ("image_ok", "label_ok"):
        frame[column] = frame[column].astype(bool)
    for column in TEXT_COLUMNS:
        frame[column] = frame[column].fillna("").astype(object)
    return frame


def build_manifest(fmt: str, root: Path, workers: int = 2) -> pd.DataFrame:
    """Scan a dataset root and decode every file.

    Args:
        fmt: Dataset layout, ``"gta5"``, ``"synthia"`` or ``"cityscapes"``.
        root: Dataset root. Paths in the manifest are built on it as given (relative stays relative).
        workers: Decoding processes (``<= 1``: decode in this process).

    Returns:
        One row per pair (or lone file) with the columns :data:`MANIFEST_COLUMNS`. A missing side has
        ``""`` as path, empty size/mode and ``*_ok`` False; ``error`` says what is wrong ("" if fine);
        ``warning`` is filled in by validation; ``label_encoding`` names how labels hold their ids.

    Raises:
        ValueError: ``fmt`` is not a known layout.
        FileNotFoundError: ``root`` is not a folder.
    """
    pairs = find_pairs(fmt, Path(root))
    encoding = FORMATS[fmt].label_encoding
    jobs = [
        (path, is_label, encoding)
        for _, image, label in pairs
        for path, is_label in ((image, False), (label, True))
        if path
    ]
    infos = {
        job[:2]: info
        for job, info in zip(jobs, _inspect_all(jobs, workers, f"decode {fmt} ({root})"), strict=True)
    }
    rows = [_row(p, infos.get((p[1], False)), infos.get((p[2], True)), encoding) for p in pairs]
    frame = _frame(rows)
    log.info(
        "%s manifest of %s: %d rows, %d with problems",
        fmt,
        root,
        len(frame),
        int((frame["error"] != "").sum()),
    )
    return frame
