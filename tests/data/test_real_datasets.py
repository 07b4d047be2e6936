"""Validation of the real dataset layouts on fixture trees (official layouts and encodings).

Each bad input gets the right outcome: a fatal failure naming the file, or, for the reported problems
of the real GTA5 data (size mismatch, missing pair), a warning that lists the file, with every valid
row kept; with ``data.on_bad_pair: skip``, bad pairs are dropped and listed up to a share of the rows.
Trees as users have them (converted for DAFormer/mmseg, Cityscapes in the DACS layout) validate too.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dacs_uda.config import compose_params
from dacs_uda.data import acquire, report, validate
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


def run(
    trees: Path, fmt: str, expected: dict[str, int] | None = None, max_bad_fraction: float | None = None
) -> validate.DatasetResult:
    manifest = build_manifest(fmt, trees / fmt, workers=1)
    return validate.validate_dataset(
        "source" if fmt != "cityscapes" else "target",
        fmt,
        trees / fmt,
        manifest,
        expected or COUNTS[fmt],
        known_defects=True,
        max_bad_fraction=max_bad_fraction,
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
    assert "Warnings: reported problems of the GTA5 data (3 files)" in text
    assert str(gta / "labels" / "00004.png") in text and "PASS" in text


def test_gta5_defects_stay_fatal_for_the_generated_pair(trees: Path) -> None:
    (trees / "gta5" / "labels" / "00002.png").unlink()
    manifest = build_manifest("gta5", trees / "gta5", workers=1)
    result = validate.validate_dataset("source", "gta5", trees / "gta5", manifest, {"train": 6})
    assert not result.success and "label present" in {c.check for c in result.checks if c.fatal}


# --- trees as users have them -----------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "converted"), [("gta5", 6), ("synthia", 6), ("cityscapes", 6)])
def test_daformer_converted_trees_validate_like_the_originals(trees: Path, fmt: str, converted: int) -> None:
    original = build_manifest(fmt, trees / fmt, workers=1)
    written = fixtures.daformer_convert(trees / fmt, fmt)
    assert sum(p.name.endswith("_labelTrainIds.png") for p in written) == converted
    assert {p.name for p in written} >= set(fixtures.CONVERTER_STATS)
    result = run(trees, fmt)
    assert result.success and result.bad_files() == [] and result.warning_files() == []
    pd.testing.assert_frame_equal(result.manifest, original)  # not one converted file is picked up


def test_cityscapes_in_the_dacs_layout_validates(trees: Path, tmp_path: Path) -> None:
    root = fixtures.cityscapes_dacs_tree(tmp_path / "cityscapes")
    assert missing_layout("cityscapes", root) == []
    manifest = build_manifest("cityscapes", root, workers=1)
    result = validate.validate_dataset("target", "cityscapes", root, manifest, COUNTS["cityscapes"], True)
    assert result.success and len(result.passed_rows()) == 6
    official = build_manifest("cityscapes", trees / "cityscapes", workers=1)
    for column, top in (("image", "leftImg8bit"), ("label", "gtFine")):
        moved = [str(Path(p).relative_to(root / f"{top}_trainvaltest")) for p in manifest[column]]
        assert moved == [str(Path(p).relative_to(trees / "cityscapes")) for p in official[column]]
    assert manifest["label_sha256"].tolist() == official["label_sha256"].tolist()


def test_a_root_in_neither_layout_names_what_was_looked_for(trees: Path, tmp_path: Path) -> None:
    data = compose_params(["dataset=gta5_cityscapes"]).data
    data.source.root, data.target.root = str(trees / "gta5"), str(tmp_path / "cityscapes")
    (tmp_path / "cityscapes" / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(acquire.DataMissing) as raised:
        acquire.acquire_real(data)
    message = str(raised.value)
    assert (
        "looked for leftImg8bit/train/, leftImg8bit/val/, gtFine/train/, gtFine/val/ or "
        "leftImg8bit_trainvaltest/leftImg8bit/train/, leftImg8bit_trainvaltest/leftImg8bit/val/, "
        "gtFine_trainvaltest/gtFine/train/, gtFine_trainvaltest/gtFine/val/ "
        "(missing: leftImg8bit/val, gtFine/train, gtFine/val)"
    ) in message
    assert "  <root>/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n" in message
    assert "\nor\n  <root>/leftImg8bit_trainvaltest/leftImg8bit/{train,val}/" in message
    assert "gtFine_trainvaltest/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png" in message


# --- data.on_bad_pair: skip --------------------------------------------------------------------------


def _two_bad_synthia_pairs(trees: Path) -> set[str]:
    """A truncated label (0000002) and a missing one (0000004): the files that name the two pairs."""
    _, truncated, _ = corrupt_synthia_label(trees)
    _, lone_image, _ = missing_synthia_label(trees)
    return {str(truncated), str(lone_image)}


def test_skip_drops_bad_pairs_lists_them_and_keeps_the_rest(trees: Path) -> None:
    named = _two_bad_synthia_pairs(trees)
    result = run(trees, "synthia", max_bad_fraction=0.5)
    assert result.success and result.bad_files() == []
    assert {file for file, _, _ in result.skipped_files()} == named
    assert {outcome for _, _, outcome in result.skipped_files()} == {validate.SKIPPED}
    kept = sorted(Path(p).name for p in result.passed_rows()["image"])
    assert kept == ["0000000.png", "0000001.png", "0000003.png", "0000005.png"]
    (fraction,) = [c for c in result.checks if c.check == validate.BAD_FRACTION_CHECK]
    assert fraction.success and fraction.detail == "dropped 2 of 6 pairs, at most 3 allowed (0.5)"
    assert {c.check: c.kind for c in result.checks if not c.success} == {
        "label present": "skipped",
        "label readable": "skipped",
    }
    summary = report.summarize([result])["source"]
    assert summary["rows_per_split"] == {"train": 6}  # the count check counts the pairs on disk
    assert summary["skipped_pairs"] == 2
    assert summary["manifest_rows"] == 4 and set(summary["failures"].values()) == {0}
    text = report.render_report([result], "data/manifests")
    assert "The counts include 2 skipped pairs; 4 rows are kept." in text
    assert "### Skipped pairs (2, data.on_bad_pair: skip)" in text
    assert all(file in text for file in named)


def test_skip_still_fails_past_the_fraction_and_on_table_checks(trees: Path) -> None:
    named = _two_bad_synthia_pairs(trees)
    result = run(trees, "synthia", max_bad_fraction=0.2)  # 6 rows: at most 1 may go
    assert not result.success and {c.check for c in result.checks if c.fatal} == {validate.BAD_FRACTION_CHECK}
    assert {file for file, _, _ in result.skipped_files()} == named  # still listed, to fix them
    message = report.failure_message([result], Path("reports/validation.md"))
    assert "dropped 2 of 6 pairs, at most 1 allowed (0.2)" in message
    short = run(trees, "synthia", {"train": 7}, max_bad_fraction=0.5)
    assert {c.check for c in short.checks if c.fatal} == {"rows in train"}


def test_on_bad_pair_from_params_reaches_the_metrics(trees: Path, tmp_path: Path) -> None:
    named = _two_bad_synthia_pairs(trees)
    data = compose_params(["dataset=synthia_cityscapes"]).data
    data.source.root, data.target.root = str(trees / "synthia"), str(trees / "cityscapes")
    data.source.counts, data.target.counts = COUNTS["synthia"], COUNTS["cityscapes"]
    data.io_workers = 1
    assert not validate.validate_data(data)[0].success  # the default: fail
    data.on_bad_pair, data.max_bad_fraction = "skip", 0.4
    results = validate.validate_data(data)
    metrics = tmp_path / "validation.json"
    assert report.write_outputs(results, tmp_path / "manifests", tmp_path / "validation.md", metrics)
    written = json.loads(metrics.read_text())
    assert written["source"]["skipped_pairs"] == 2 and written["target"]["skipped_pairs"] == 0
    assert all(file in (tmp_path / "validation.md").read_text() for file in named)
    assert len(pd.read_csv(tmp_path / "manifests" / "source.csv")) == 4
