"""The embedded benchmark: deterministic, in the official encodings, covering all 19 classes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dacs_uda import labels as L
from dacs_uda.data import synth

CITYSCAPES_IMAGE = re.compile(r"leftImg8bit/(train|val)/([a-z]+)/\2_\d{6}_\d{6}_leftImg8bit\.png$")
CITYSCAPES_LABEL = re.compile(r"gtFine/(train|val)/([a-z]+)/\2_\d{6}_\d{6}_gtFine_labelIds\.png$")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("embedded")
    synth.generate_source(root / "source", seed=3, count=6, size=(96, 54), workers=1)
    synth.generate_target(root / "target", seed=3, counts={"train": 4, "val": 3}, size=(96, 48), workers=1)
    return root


def test_gta5_layout_and_palette_encoding(tree: Path) -> None:
    images = sorted(p.name for p in (tree / "source" / "images").iterdir())
    assert images == [f"{i:05d}.png" for i in range(1, 7)]
    label = Image.open(tree / "source" / "labels" / "00001.png")
    assert label.mode == "P"  # GTA5 labels: palette PNGs whose indices are Cityscapes label ids
    ids = np.asarray(label)
    assert set(np.unique(ids)) <= set(L.TRAIN_ID_TO_LABEL_ID) | {L.LABEL_ID_UNLABELED}
    palette = label.getpalette()
    road = L.TRAIN_ID_TO_LABEL_ID[0]
    assert tuple(palette[3 * road : 3 * road + 3]) == L.PALETTE[0]
    assert Image.open(tree / "source" / "images" / "00001.png").mode == "RGB"


def test_cityscapes_layout_names(tree: Path) -> None:
    images = sorted(
        str(p.relative_to(tree / "target")) for p in (tree / "target" / "leftImg8bit").rglob("*.png")
    )
    labels = sorted(str(p.relative_to(tree / "target")) for p in (tree / "target").rglob("*_labelIds.png"))
    assert len(images) == 7 and len(labels) == 7
    assert all(CITYSCAPES_IMAGE.search(p) for p in images)
    assert all(CITYSCAPES_LABEL.search(p) for p in labels)
    assert {CITYSCAPES_IMAGE.search(p).group(2) for p in images if "/val/" in p} <= set(
        synth.CITYSCAPES_CITIES["val"]
    )
    label = Image.open(tree / "target" / labels[0])
    assert label.mode == "L" and label.size == (96, 48)
    assert L.LABEL_ID_EGO_VEHICLE in np.unique(np.asarray(label))  # the camera domain sees its own hood


def test_same_seed_same_bytes_regardless_of_workers(tmp_path: Path) -> None:
    synth.generate_source(tmp_path / "a", seed=1, count=4, size=(64, 36), workers=1)
    synth.generate_source(tmp_path / "b", seed=1, count=4, size=(64, 36), workers=2)
    synth.generate_source(tmp_path / "c", seed=2, count=4, size=(64, 36), workers=1)
    for sub in ("images", "labels"):
        for name in ("00001.png", "00004.png"):
            a = (tmp_path / "a" / sub / name).read_bytes()
            assert a == (tmp_path / "b" / sub / name).read_bytes()
            assert a != (tmp_path / "c" / sub / name).read_bytes()


def _class_frequencies(domain: str, frames: int) -> np.ndarray:
    lut = L.label_id_to_train_id_lut()
    counts = np.zeros(L.NUM_CLASSES)
    for i in range(frames):
        _, ids = synth.render_scene(domain, 128, 64, synth.frame_rng(0, domain, "train", i))
        train_ids = lut[ids]
        counts += np.bincount(train_ids[train_ids < L.NUM_CLASSES], minlength=L.NUM_CLASSES)
    return counts / counts.sum()


@pytest.mark.parametrize("domain", ["source", "target"])
def test_all_classes_long_tailed(domain: str) -> None:
    freq = _class_frequencies(domain, 120)
    assert (freq > 0).all(), [L.CLASS_NAMES[c] for c in np.flatnonzero(freq == 0)]
    common = freq[[synth.ROAD, synth.BUILDING, synth.SKY]].min()
    rare = freq[[synth.TRAIN, synth.MOTORCYCLE, synth.BICYCLE, synth.RIDER]].max()
    assert common > 10 * rare


def test_domains_differ_in_appearance_and_layout() -> None:
    src_img, src_lab = synth.render_scene("source", 128, 64, synth.frame_rng(0, "source", "train", 0))
    tgt_img, tgt_lab = synth.render_scene("target", 128, 64, synth.frame_rng(0, "target", "train", 0))
    lut = L.label_id_to_train_id_lut()
    sky_src = src_img[lut[src_lab] == synth.SKY].mean(0)
    sky_tgt = tgt_img[lut[tgt_lab] == synth.SKY].mean(0)
    assert np.abs(sky_src - sky_tgt).max() > 30  # a palette shift, not just noise
    person_ratio = (
        _class_frequencies("target", 60)[synth.PERSON] / _class_frequencies("source", 60)[synth.PERSON]
    )
    assert person_ratio > 1.3  # the camera domain has more pedestrians
