"""Manifests of tiny generated GTA5 / Cityscapes trees: pairing, decoding, and bad files recorded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from dacs_uda.data import synth
from dacs_uda.data.manifest import MANIFEST_COLUMNS, build_manifest, inspect_file

SOURCE_SIZE, TARGET_SIZE = (64, 36), (64, 32)
TARGET_COUNTS = {"train": 4, "val": 2}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 source frames (GTA5 layout) and 4 + 2 target frames (Cityscapes layout), generated once."""
    root = tmp_path_factory.mktemp("raw")
    synth.generate_source(root / "source", seed=0, count=6, size=SOURCE_SIZE, workers=1)
    synth.generate_target(root / "target", seed=0, counts=TARGET_COUNTS, size=TARGET_SIZE, workers=1)
    return root


@pytest.fixture
def raw(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the trees that a test may break."""
    shutil.copytree(pristine, tmp_path / "raw")
    return tmp_path / "raw"


def test_gta5_manifest_pairs_every_frame(raw: Path) -> None:
    frame = build_manifest("gta5", raw / "source", workers=1)
    assert tuple(frame.columns) == MANIFEST_COLUMNS
    assert len(frame) == 6 and set(frame["split"]) == {"train"}
    assert frame["image_ok"].all() and frame["label_ok"].all() and (frame["error"] == "").all()
    assert [Path(p).name for p in frame["image"]] == [Path(p).name for p in frame["label"]]
    assert frame["image"].iloc[0] == str(raw / "source" / "images" / "00001.png")
    assert set(frame["image_mode"]) == {"RGB"} and set(frame["label_mode"]) == {"P"}
    assert (frame["image_width"] == 64).all() and (frame["label_height"] == 36).all()
    for values in frame["label_values"]:
        ids = [int(v) for v in values.split()]
        assert ids == sorted(set(ids)) and max(ids) <= 33


def test_cityscapes_manifest_splits_and_naming(raw: Path) -> None:
    # Neither the colour labels nor a test split may be picked up.
    test_dir = raw / "target" / "leftImg8bit" / "test" / "berlin"
    test_dir.mkdir(parents=True)
    Image.new("RGB", TARGET_SIZE).save(test_dir / "berlin_000000_000019_leftImg8bit.png")
    frame = build_manifest("cityscapes", raw / "target", workers=1)
    assert frame["split"].value_counts().to_dict() == TARGET_COUNTS
    assert set(frame["label_mode"]) == {"L"} and frame["label_ok"].all()
    for image, label in zip(frame["image"], frame["label"], strict=True):
        assert image.endswith("_leftImg8bit.png") and label.endswith("_gtFine_labelIds.png")
        assert Path(image).name.replace("_leftImg8bit", "_gtFine_labelIds") == Path(label).name


def test_relative_root_gives_relative_paths(raw: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(raw)
    frame = build_manifest("gta5", Path("source"), workers=1)
    assert frame["image"].iloc[0] == "source/images/00001.png"
    assert all(Path(p).is_file() for p in frame["label"])


def test_process_pool_gives_the_same_manifest(raw: Path) -> None:
    inline = build_manifest("cityscapes", raw / "target", workers=1)
    pooled = build_manifest("cityscapes", raw / "target", workers=2)
    assert inline.equals(pooled)


def test_truncated_and_garbage_files_are_recorded_not_raised(raw: Path) -> None:
    truncated = raw / "source" / "images" / "00003.png"
    truncated.write_bytes(truncated.read_bytes()[:300])
    garbage = raw / "source" / "labels" / "00005.png"
    garbage.write_bytes(b"not a png at all")
    frame = build_manifest("gta5", raw / "source", workers=1).set_index("image", drop=False)
    bad_image = frame.loc[str(truncated)]
    assert not bad_image["image_ok"] and bad_image["label_ok"]
    assert bad_image["image_width"] == 64  # the header still decodes
    assert "image unreadable" in bad_image["error"] and "truncated" in bad_image["error"]
    bad_label = frame.loc[str(raw / "source" / "images" / "00005.png")]
    assert not bad_label["label_ok"] and bad_label["error"].startswith("label unreadable")
    assert (frame["error"] != "").sum() == 2


def test_missing_label_and_orphan_label_each_give_a_row(raw: Path) -> None:
    (raw / "source" / "labels" / "00002.png").unlink()
    (raw / "source" / "images" / "00004.png").unlink()
    frame = build_manifest("gta5", raw / "source", workers=1)
    assert len(frame) == 6
    no_label = frame[frame["label"] == ""].iloc[0]
    assert no_label["image"].endswith("00002.png") and not no_label["label_ok"]
    assert no_label["error"].startswith("label missing")
    orphan = frame[frame["image"] == ""].iloc[0]
    assert orphan["label"].endswith("00004.png") and orphan["label_ok"] and not orphan["image_ok"]
    assert orphan["error"].startswith("image missing")


def test_label_values_list_unknown_ids(tmp_path: Path) -> None:
    path = tmp_path / "label.png"
    Image.frombytes("L", (3, 1), bytes([7, 200, 7])).save(path)
    info = inspect_file((str(path), True))
    assert info["ok"] and info["values"] == "7 200" and info["mode"] == "L"


def test_bad_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="params.yaml"):
        build_manifest("gta5", tmp_path / "nowhere", workers=1)
    with pytest.raises(ValueError, match="cityscapes"):
        build_manifest("kitti", tmp_path, workers=1)


def test_empty_root_gives_an_empty_manifest_with_all_columns(tmp_path: Path) -> None:
    frame = build_manifest("cityscapes", tmp_path, workers=1)
    assert frame.empty and tuple(frame.columns) == MANIFEST_COLUMNS
