"""The ``prepare`` stage: resize once into a cache, labels as 8-bit Cityscapes ids, resumable, atomic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dacs_uda.config import load_params
from dacs_uda.data import prepare
from dacs_uda.data.datasets import SegmentationDataset, domain_batches, manifest_path, read_manifest
from dacs_uda.data.formats import FORMATS, read_label_ids, to_train_ids
from dacs_uda.data.manifest import build_manifest, io_processes
from dacs_uda.data.rcs import class_pixel_counts, class_pixels_path, read_class_pixels
from dacs_uda.labels import IGNORE_INDEX, NUM_CLASSES
from tests.data import fixtures

SIZE = (32, 18)


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    fixtures.gta5_tree(root / "gta5", count=4)
    fixtures.synthia_tree(root / "synthia", count=4)
    fixtures.cityscapes_tree(root / "cityscapes", counts={"train": 2, "val": 2})
    return root


def rows_of(trees: Path, fmt: str) -> pd.DataFrame:
    return build_manifest(fmt, trees / fmt, workers=1)


def expected_train_ids(raw_label: str, fmt: str, size: tuple[int, int]) -> np.ndarray:
    encoding = FORMATS[fmt].label_encoding
    train_ids = to_train_ids(read_label_ids(raw_label, encoding), encoding)
    return np.asarray(Image.fromarray(train_ids, "L").resize(size, Image.NEAREST))


@pytest.mark.parametrize("fmt", ["gta5", "synthia", "cityscapes"])
def test_prepared_pairs_match_the_official_recipe(trees: Path, tmp_path: Path, fmt: str) -> None:
    rows = rows_of(trees, fmt)
    out, stats = prepare.prepare_domain(rows, fmt, tmp_path / fmt, SIZE, workers=1)
    assert tuple(out.columns) == prepare.PREPARED_COLUMNS
    assert stats.rows == stats.written == len(rows) and stats.reused == 0
    assert set(out["label_encoding"]) == {"cityscapes_label_id"}
    assert out["raw_image"].tolist() == rows["image"].tolist()
    for row in out.itertuples():
        with Image.open(row.image) as image, Image.open(row.label) as label:
            assert image.size == label.size == SIZE
            assert image.mode == "RGB" and label.mode == "L"
            with Image.open(row.raw_image) as raw:
                reference = raw.convert("RGB").resize(SIZE, FORMATS[fmt].image_resample)
            np.testing.assert_array_equal(np.asarray(image), np.asarray(reference))
            prepared_ids = to_train_ids(np.asarray(label), "cityscapes_label_id")
        np.testing.assert_array_equal(prepared_ids, expected_train_ids(row.raw_label, fmt, SIZE))


@pytest.mark.parametrize("fmt", ["gta5", "synthia"])
def test_process_pool_prepares_the_same_bytes_as_one_process(trees: Path, tmp_path: Path, fmt: str) -> None:
    rows = rows_of(trees, fmt)
    serial, _ = prepare.prepare_domain(rows, fmt, tmp_path / "serial", SIZE, workers=1)
    pooled, _ = prepare.prepare_domain(rows, fmt, tmp_path / "pooled", SIZE, workers=2)
    for column in ("image", "label"):
        for one, two in zip(serial[column], pooled[column], strict=True):
            assert Path(one).relative_to(tmp_path / "serial") == Path(two).relative_to(tmp_path / "pooled")
            assert Path(one).read_bytes() == Path(two).read_bytes()
    same = [c for c in prepare.PREPARED_COLUMNS if c not in ("image", "label")]
    pd.testing.assert_frame_equal(serial[same], pooled[same])


def test_io_workers_zero_means_one_process_per_usable_core() -> None:
    assert io_processes(0) == len(os.sched_getaffinity(0)) and io_processes(3) == 3


def test_synthia_ignored_classes_stay_ignored(trees: Path, tmp_path: Path) -> None:
    out, _ = prepare.prepare_domain(rows_of(trees, "synthia"), "synthia", tmp_path, (64, 38), workers=1)
    raw = read_label_ids(out["raw_label"].iloc[0], "synthia_id")
    prepared = np.asarray(Image.open(out["label"].iloc[0]))
    assert (raw == 22).any()
    assert (prepared[raw == 22] == 0).all()  # lane-marking -> "unlabeled" -> ignored in training
    assert (prepared[raw == 3] == 7).all()  # road -> Cityscapes road


def test_same_size_images_are_copied_byte_for_byte(trees: Path, tmp_path: Path) -> None:
    out, _ = prepare.prepare_domain(
        rows_of(trees, "cityscapes"), "cityscapes", tmp_path, fixtures.CITYSCAPES_SIZE, workers=1
    )
    for prepared, raw in zip(out["image"], out["raw_image"], strict=True):
        assert Path(prepared).read_bytes() == Path(raw).read_bytes()


def test_rerun_reuses_everything_and_redoes_only_what_changed(trees: Path, tmp_path: Path) -> None:
    rows = rows_of(trees, "gta5")
    out, _ = prepare.prepare_domain(rows, "gta5", tmp_path, SIZE, workers=2)
    before = {p: os.stat(p).st_mtime_ns for p in out["image"].tolist() + out["label"].tolist()}
    again, stats = prepare.prepare_domain(rows, "gta5", tmp_path, SIZE, workers=2)
    assert stats.written == 0 and stats.reused == len(rows)
    assert again.equals(out)
    assert {p: os.stat(p).st_mtime_ns for p in before} == before
    Path(out["label"].iloc[1]).unlink()
    _, stats = prepare.prepare_domain(rows, "gta5", tmp_path, SIZE, workers=1)
    assert stats.written == 1 and stats.reused == len(rows) - 1
    _, stats = prepare.prepare_domain(rows, "gta5", tmp_path, (24, 14), workers=1)  # new recipe
    assert stats.written == len(rows)


def test_interrupted_run_keeps_what_was_done_and_names_the_failures(
    trees: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = rows_of(trees, "gta5")
    real = prepare.prepare_one

    def flaky(job: prepare.Job) -> str:
        if job.key == "train/00003":
            # a crash mid-write leaves only a temporary (atomic_path's folder beside the target),
            # never a file under the final name
            out = Path(job.image_out)
            (out.parent / f".{out.name}.crashed").mkdir(parents=True, exist_ok=True)
            (out.parent / f".{out.name}.crashed" / out.name).write_bytes(b"half")
            return "OSError: disk full"
        return real(job)

    monkeypatch.setattr(prepare, "prepare_one", flaky)
    with pytest.raises(
        prepare.PrepareError, match=r"1 gta5 pairs could not be prepared: .*00003\.png.*disk full"
    ):
        prepare.prepare_domain(rows, "gta5", tmp_path, SIZE, workers=1)
    assert not (tmp_path / "images" / "train" / "00003.png").exists()
    monkeypatch.setattr(prepare, "prepare_one", real)
    out, stats = prepare.prepare_domain(rows, "gta5", tmp_path, SIZE, workers=1)
    assert stats.written == 1 and stats.reused == len(rows) - 1
    assert stats.removed == 1  # the temporary file (and its folder)
    assert sorted(p.name for p in (tmp_path / "images" / "train").iterdir()) == [
        f"{i:05d}.png" for i in range(1, 5)
    ]


def test_rows_that_disappear_are_removed_from_the_cache(trees: Path, tmp_path: Path) -> None:
    rows = rows_of(trees, "synthia")
    prepare.prepare_domain(rows, "synthia", tmp_path, SIZE, workers=1)
    out, stats = prepare.prepare_domain(rows.iloc[:2], "synthia", tmp_path, SIZE, workers=1)
    assert stats.removed == 4 and len(out) == 2
    assert sorted(p.name for p in (tmp_path / "labels" / "train").iterdir()) == ["0000000.png", "0000001.png"]


def test_training_reads_prepared_labels_as_train_ids(trees: Path, tmp_path: Path) -> None:
    out, _ = prepare.prepare_domain(rows_of(trees, "synthia"), "synthia", tmp_path / "p", SIZE, workers=1)
    path = tmp_path / "source.csv"
    out.to_csv(path, index=False)
    rows = read_manifest(path, split="train")
    item = SegmentationDataset(rows, SIZE)[0]
    expected = expected_train_ids(out["raw_label"].iloc[0], "synthia", SIZE)
    np.testing.assert_array_equal(item["label"].numpy(), expected)
    # the raw 16-bit manifest gives the same training ids through the SYNTHIA encoding
    raw = rows_of(trees, "synthia")
    np.testing.assert_array_equal(SegmentationDataset(raw, SIZE)[0]["label"].numpy(), expected)


def test_unknown_label_encoding_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "source.csv"
    pd.DataFrame({"split": ["train"], "image": ["a"], "label": ["b"], "label_encoding": ["rgb"]}).to_csv(
        path, index=False
    )
    with pytest.raises(ValueError, match="unknown label_encoding"):
        read_manifest(path)


def test_class_pixels_are_counted_as_training_reads_the_labels(trees: Path, tmp_path: Path) -> None:
    out, _ = prepare.prepare_domain(rows_of(trees, "gta5"), "gta5", tmp_path, SIZE, workers=1)
    labels = out["label"].tolist()
    serial = prepare.count_class_pixels(labels, SIZE, workers=1)
    np.testing.assert_array_equal(prepare.count_class_pixels(labels, SIZE, workers=2), serial)
    assert serial.shape == (4, NUM_CLASSES) and serial.dtype == np.int64
    for row, raw in zip(serial, out["raw_label"], strict=True):
        ids = expected_train_ids(raw, "gta5", SIZE)
        assert row.tolist() == [int((ids == c).sum()) for c in range(NUM_CLASSES)]
        assert row.sum() == (ids != IGNORE_INDEX).sum() > 0
    assert prepare.count_class_pixels([], SIZE).shape == (0, NUM_CLASSES)


def test_prepare_stage_writes_the_class_pixels_that_rare_class_sampling_reads(in_tmp_project: Path) -> None:
    from dacs_uda.stages import data as data_stage
    from dacs_uda.stages import prepare as prepare_stage
    from dacs_uda.stages import validate

    assert data_stage.main() == 0 and validate.main() == 0 and prepare_stage.main() == 0
    params = load_params()
    rows = read_manifest(manifest_path(params, "source"))
    path = class_pixels_path(params.data.prepared, "source")
    assert path == Path("data/prepared/source_class_pixels.csv") and (in_tmp_project / path).is_file()
    pixels = read_class_pixels(path, rows["label"].tolist())
    dataset = SegmentationDataset(rows, tuple(params.data.source.resize))
    for index, row in enumerate(pixels):
        np.testing.assert_array_equal(row, class_pixel_counts(dataset.label(index)))
    params.adapt.rcs.enabled = True
    batch = next(domain_batches(params, "adapt", "source", 2))
    assert batch["label"].shape == (2, *params.data.crop)
    path.unlink()  # the adaptation's source crops need the counts; pretraining's do not
    assert next(domain_batches(params, "pretrain", "source", 2))["label"].shape == batch["label"].shape
    with pytest.raises(FileNotFoundError, match="source_class_pixels.csv not found.*dvc repro prepare"):
        domain_batches(params, "adapt", "source", 2)
