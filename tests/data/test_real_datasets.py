"""Validation of the real dataset layouts on fixture trees (official layouts and encodings).

Each bad input gets the right outcome: a fatal failure naming the file, or, for the known defects of
the real GTA5 release (size mismatch, missing pair), a warning that lists the file, with every valid
row kept.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dacs_uda.config import compose_params
from dacs_uda.data import report, validate
from dacs_uda.data.formats import write_png16
from dacs_uda.data.manifest import build_manifest, missing_layout
from tests.data import fixtures

COUNTS = {"gta5": {"train": 6}, "synthia": {"train": 6}, "cityscapes": fixtures.CITYSCAPES_COUNTS}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real")
    fixtures.gta5_tree(root / "gta5")
    fixtures.synthia_tree(root / "synthia")
    fixtures.cityscapes_tree(root / "cityscapes")
    return root


@pytest.fixture
def trees(pristine: Path, tmp_path: Path) -> Path:
    shutil.copytree(pristine, tmp_path / "real")
    return tmp_path / "real"


def run(trees: Path, fmt: str, expected: dict[str, int] | None = None) -> validate.DatasetResult:
    manifest = build_manifest(fmt, trees / fmt, workers=1)
    return validate.validate_dataset(
        "source" if fmt != "cityscapes" else "target",
        fmt,
        trees / fmt,
        manifest,
        expected or COUNTS[fmt],
        known_defects=True,
    )


@pytest.mark.parametrize(
    ("fmt", "label_mode", "encoding"),
    [
        ("gta5", "P", "cityscapes_label_id"),
        ("synthia", "16-bit RGB", "synthia_id"),
        ("cityscapes", "L", "cityscapes_label_id"),
    ],
)
def test_official_layouts_validate(trees: Path, fmt: str, label_mode: str, encoding: str) -> None:
    assert missing_layout(fmt, trees / fmt) == []
    result = run(trees, fmt)
    assert result.success and result.bad_files() == [] and result.warning_files() == []
    manifest = result.manifest
    assert manifest["split"].value_counts().to_dict() == COUNTS[fmt]
    assert set(manifest["label_mode"]) == {label_mode}
    assert set(manifest["label_encoding"]) == {encoding}
    assert len(result.passed_rows()) == len(manifest)


def test_synthia_rows_pair_rgb_with_gt_labels_and_read_16_bit_ids(trees: Path) -> None:
    manifest = build_manifest("synthia", trees / "synthia", workers=1)
    first = manifest.iloc[0]
    assert first["image"].endswith("RGB/0000000.png")
    assert first["label"].endswith("GT/LABELS/0000000.png")
    ids = [int(v) for v in first["label_values"].split()]
    assert max(ids) <= 22 and 22 in ids  # class ids, not the instance ids of the second channel


def test_cityscapes_other_files_and_test_split_are_ignored(trees: Path) -> None:
    manifest = build_manifest("cityscapes", trees / "cityscapes", workers=1)
    assert set(manifest["split"]) == {"train", "val"}
    assert all(p.endswith("_gtFine_labelIds.png") for p in manifest["label"])


def test_official_counts_apply_unless_params_override_them(trees: Path) -> None:
    data = compose_params(["dataset=synthia_cityscapes"]).data
    data.source.root, data.target.root = str(trees / "synthia"), str(trees / "cityscapes")
    assert data.source.counts is None and data.target.counts is None
    assert validate.expected_counts(data, "source") == {"train": 9400}
    assert validate.expected_counts(data, "target") == {"train": 2975, "val": 500}
    result = run(trees, "synthia", validate.expected_counts(data, "source"))
    assert not result.success
    (check,) = [c for c in result.checks if not c.success]
    assert check.check == "rows in train" and check.detail == "observed 6, expected 9400"
    message = report.failure_message([result], Path("reports/validation.md"))
    assert "rows in train (observed 6, expected 9400)" in message
    assert "data.<domain>.counts" in check.fix
    data.source.counts = {"train": 6}
    assert validate.expected_counts(data, "source") == {"train": 6}


# --- bad inputs: each breaker damages one file and returns (format, culprit, check) ------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_gta5_image(trees: Path) -> tuple[str, Path, str]:
    path = trees / "gta5" / "images" / "00003.png"
    _truncate(path)
    return "gta5", path, "image readable"


def corrupt_synthia_label(trees: Path) -> tuple[str, Path, str]:
    path = trees / "synthia" / "GT" / "LABELS" / "0000002.png"
    _truncate(path)
    return "synthia", path, "label readable"


def corrupt_cityscapes_label(trees: Path) -> tuple[str, Path, str]:
    path = next((trees / "cityscapes" / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return "cityscapes", path, "label readable"


def missing_synthia_label(trees: Path) -> tuple[str, Path, str]:
    (trees / "synthia" / "GT" / "LABELS" / "0000004.png").unlink()
    return "synthia", trees / "synthia" / "RGB" / "0000004.png", "label present"


def missing_cityscapes_label(trees: Path) -> tuple[str, Path, str]:
    label = sorted((trees / "cityscapes" / "gtFine" / "train").rglob("*_gtFine_labelIds.png"))[1]
    label.unlink()
    image = Path(str(label).replace("gtFine", "leftImg8bit", 1).replace("_gtFine_labelIds", "_leftImg8bit"))
    return "cityscapes", image, "label present"


def synthia_size_mismatch(trees: Path) -> tuple[str, Path, str]:
    path = trees / "synthia" / "GT" / "LABELS" / "0000001.png"
    write_png16(path, np.full((10, 12, 3), 3, dtype=np.uint16))
    return "synthia", trees / "synthia" / "RGB" / "0000001.png", "image width == label width"


def cityscapes_size_mismatch(trees: Path) -> tuple[str, Path, str]:
    image = sorted((trees / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"))[0]
    Image.open(image).resize((32, 16)).save(image)
    return "cityscapes", image, "image width == label width"


def unknown_gta5_id(trees: Path) -> tuple[str, Path, str]:
    path = trees / "gta5" / "labels" / "00005.png"
    ids = np.asarray(Image.open(path)).copy()
    ids[0, :3] = 200
    fixtures.gta5_label(path, ids)
    return "gta5", path, "label ids in 0..33"


def unknown_synthia_id(trees: Path) -> tuple[str, Path, str]:
    path = trees / "synthia" / "GT" / "LABELS" / "0000003.png"
    fixtures.synthia_label(path, np.full(fixtures.SYNTHIA_SIZE[::-1], 40, dtype=np.uint16))
    return "synthia", path, "label ids in 0..22"


def unknown_cityscapes_id(trees: Path) -> tuple[str, Path, str]:
    path = sorted((trees / "cityscapes" / "gtFine" / "train").rglob("*_gtFine_labelIds.png"))[2]
    ids = np.asarray(Image.open(path)).copy()
    ids[-1, -1] = 34
    Image.fromarray(ids, "L").save(path)
    return "cityscapes", path, "label ids in 0..33"


def eight_bit_synthia_label(trees: Path) -> tuple[str, Path, str]:
    path = trees / "synthia" / "GT" / "LABELS" / "0000005.png"
    Image.fromarray(np.full(fixtures.SYNTHIA_SIZE[::-1], 3, np.uint8), "L").save(path)
    return "synthia", path, "label is a 16-bit PNG"


FATAL = [
    corrupt_gta5_image,
    corrupt_synthia_label,
    corrupt_cityscapes_label,
    missing_synthia_label,
    missing_cityscapes_label,
    synthia_size_mismatch,
    cityscapes_size_mismatch,
    unknown_gta5_id,
    unknown_synthia_id,
    unknown_cityscapes_id,
    eight_bit_synthia_label,
]


@pytest.mark.parametrize("breaker", FATAL)
def test_bad_input_fails_and_names_its_file(
    trees: Path, breaker: Callable[[Path], tuple[str, Path, str]]
) -> None:
    fmt, culprit, check = breaker(trees)
    result = run(trees, fmt)
    assert not result.success
    assert check in {c.check for c in result.checks if c.fatal}
    assert [file for file, _, _ in result.bad_files()] == [str(culprit)]
    assert str(culprit) in report.failure_message([result], Path("reports/validation.md"))
    assert str(culprit) in report.render_report([result], "data/manifests")
    # every other row is still there, untouched
    assert len(result.passed_rows()) == len(result.manifest) - 1


def test_problem_descriptions_are_specific(trees: Path) -> None:
    unknown_synthia_id(trees)
    eight_bit_synthia_label(trees)
    problems = {p for _, p, _ in run(trees, "synthia").bad_files()}
    assert "label ids outside 0..22: 40" in problems
    assert any(p.startswith("label is a 8-bit L PNG, expected 16-bit") for p in problems)


def test_gta5_known_defects_are_warnings_with_the_list(trees: Path) -> None:
    gta = trees / "gta5"
    (gta / "labels" / "00002.png").unlink()  # missing pair: image without label
    (gta / "images" / "00004.png").unlink()  # missing pair: orphan label
    mismatched = gta / "labels" / "00006.png"
    fixtures.gta5_label(mismatched, np.asarray(Image.open(mismatched).resize((60, 33), Image.NEAREST)))
    result = run(trees, "gta5")
    assert result.success and result.bad_files() == []
    warned = {file: (problem, outcome) for file, problem, outcome in result.warning_files()}
    assert set(warned) == {
        str(gta / "images" / "00002.png"),
        str(gta / "labels" / "00004.png"),
        str(gta / "images" / "00006.png"),
    }
    assert warned[str(gta / "images" / "00002.png")] == (
        "label missing (image without label)",
        validate.DROPPED,
    )
    assert warned[str(gta / "images" / "00006.png")][1] == validate.KEPT_RESIZED
    rows = result.passed_rows()
    assert sorted(Path(p).name for p in rows["image"]) == ["00001.png", "00003.png", "00005.png", "00006.png"]
    kept = rows[rows["image"].str.endswith("00006.png")].iloc[0]
    assert kept["warning"].startswith("image 64x35 but label 60x33")
    summary = report.summarize([result])["source"]
    assert summary["warning_files"] == 3 and summary["manifest_rows"] == 4
    assert (
        summary["warnings"]["label present"] == 1 and summary["warnings"]["image width == label width"] == 1
    )
    assert set(summary["failures"].values()) == {0}
    text = report.render_report([result], "data/manifests")
    assert "Warnings: known defects of the official GTA5 data (3 files)" in text
    assert str(gta / "labels" / "00004.png") in text and "PASS" in text


def test_gta5_defects_stay_fatal_for_the_generated_pair(trees: Path) -> None:
    (trees / "gta5" / "labels" / "00002.png").unlink()
    manifest = build_manifest("gta5", trees / "gta5", workers=1)
    result = validate.validate_dataset("source", "gta5", trees / "gta5", manifest, {"train": 6})
    assert not result.success and "label present" in {c.check for c in result.checks if c.fatal}
