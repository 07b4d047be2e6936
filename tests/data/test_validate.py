"""The ``validate`` stage: the GE suite passes on good trees and names the file behind each breakage."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dacs_uda import labels
from dacs_uda.data import report, synth, validate
from dacs_uda.data.manifest import MANIFEST_COLUMNS, build_manifest
from dacs_uda.stages import validate as validate_stage
from tests.conftest import tiny_params, write_params

SOURCE_SIZE, TARGET_SIZE = (64, 36), (64, 32)
EXPECTED = {"source": {"train": 6}, "target": {"train": 4, "val": 2}}
FORMATS = {"source": "gta5", "target": "cityscapes"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 source frames (GTA5 layout) and 4 + 2 target frames (Cityscapes layout), generated once."""
    root = tmp_path_factory.mktemp("raw")
    synth.generate_source(root / "source", seed=0, count=6, size=SOURCE_SIZE, workers=1)
    synth.generate_target(root / "target", seed=0, counts=EXPECTED["target"], size=TARGET_SIZE, workers=1)
    return root


@pytest.fixture
def raw(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the trees that a test may break."""
    shutil.copytree(pristine, tmp_path / "raw")
    return tmp_path / "raw"


def run(raw: Path, name: str, expected: dict[str, int] | None = None) -> validate.DatasetResult:
    """Manifest + suite for one domain of ``raw``."""
    manifest = build_manifest(FORMATS[name], raw / name, workers=1)
    return validate.validate_dataset(name, FORMATS[name], raw / name, manifest, expected or EXPECTED[name])


def failed(result: validate.DatasetResult) -> set[str]:
    return {c.check for c in result.checks if not c.success}


def test_good_trees_pass(raw: Path) -> None:
    results = [run(raw, "source"), run(raw, "target")]
    assert all(r.success for r in results)
    assert [c.check for c in results[1].checks][-2:] == ["rows in train", "rows in val"]
    assert all(r.bad_files() == [] for r in results)
    summary = report.summarize(results)
    assert summary["success"] is True
    assert summary["target"]["rows_per_split"] == {"train": 4, "val": 2}
    assert set(summary["source"]["failures"].values()) == {0}


# Each breaker damages one file of a good tree and returns (domain, file to blame, check that fails).
def truncated_image(raw: Path) -> tuple[str, Path, str]:
    path = raw / "source" / "images" / "00003.png"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "source", path, "image readable"


def missing_label(raw: Path) -> tuple[str, Path, str]:
    (raw / "source" / "labels" / "00002.png").unlink()
    return "source", raw / "source" / "images" / "00002.png", "label present"


def orphan_label(raw: Path) -> tuple[str, Path, str]:
    image, label, _ = synth.cityscapes_paths(raw / "target", "val", 1)
    image.unlink()
    return "target", label, "image present"


def size_mismatch(raw: Path) -> tuple[str, Path, str]:
    image, label, _ = synth.cityscapes_paths(raw / "target", "train", 2)
    Image.open(label).resize((32, 16), Image.NEAREST).save(label)
    return "target", image, "image width == label width"


def unknown_label_id(raw: Path) -> tuple[str, Path, str]:
    path = raw / "source" / "labels" / "00004.png"
    ids = np.asarray(Image.open(path)).copy()
    ids[:4, :4] = 200
    label = Image.fromarray(ids, mode="P")
    label.putpalette(labels.cityscapes_palette_bytes())
    label.save(path)
    return "source", path, "label ids in 0..33"


def rgb_label(raw: Path) -> tuple[str, Path, str]:
    _, path, _ = synth.cityscapes_paths(raw / "target", "train", 0)
    Image.open(path).convert("RGB").save(path)
    return "target", path, "label mode P or L"


def grey_image(raw: Path) -> tuple[str, Path, str]:
    path = raw / "source" / "images" / "00006.png"
    Image.open(path).convert("L").save(path)
    return "source", path, "image is RGB(A)"


@pytest.mark.parametrize(
    "breaker",
    [truncated_image, missing_label, orphan_label, size_mismatch, unknown_label_id, rgb_label, grey_image],
)
def test_each_breakage_names_its_file(raw: Path, breaker: Callable[[Path], tuple[str, Path, str]]) -> None:
    name, culprit, check = breaker(raw)
    result = run(raw, name)
    assert not result.success
    assert check in failed(result)
    assert [file for file, _, _ in result.bad_files()] == [str(culprit)]
    assert str(culprit) in report.render_report([result], "data/manifests")
    assert str(culprit) in report.failure_message([result], validate_stage.REPORT_PATH)
    assert len(result.passed_rows()) == len(result.manifest) - 1


def test_problems_are_described(raw: Path) -> None:
    size_mismatch(raw)
    unknown_label_id(raw)
    truncated_image(raw)
    problems = {p for r in (run(raw, "source"), run(raw, "target")) for _, p, _ in r.bad_files()}
    assert "label ids outside 0..33: 200" in problems
    assert any(p.startswith("image 64x32 but label 32x16") for p in problems)
    assert any(p.startswith("image unreadable") and "truncated" in p for p in problems)


def test_wrong_split_count_fails_without_bad_files(raw: Path) -> None:
    image, label, _ = synth.cityscapes_paths(raw / "target", "val", 0)
    image.unlink()
    label.unlink()
    result = run(raw, "target")
    assert failed(result) == {"rows in val"}
    assert result.bad_files() == []
    (check,) = [c for c in result.checks if c.check == "rows in val"]
    assert check.detail == "observed 1, expected 2"
    assert "rows in val" in report.failure_message([result], validate_stage.REPORT_PATH)


def test_expected_counts_follow_the_params() -> None:
    data = tiny_params().data
    data.embedded = replace(data.embedded, n_source=5, n_target_train=3, n_target_val=2)
    assert validate.expected_counts(data, "source") == {"train": 5}
    assert validate.expected_counts(data, "target") == {"train": 3, "val": 2}
    assert validate.OFFICIAL_COUNTS == {
        "gta5": {"train": 24966},
        "synthia": {"train": 9400},
        "cityscapes": {"train": 2975, "val": 500},
    }


def test_duplicate_rows_and_unknown_splits_fail(raw: Path) -> None:
    manifest = build_manifest("gta5", raw / "source", workers=1)
    extra = manifest.iloc[[0]].assign(split="test")
    manifest = pd.concat([manifest, extra], ignore_index=True)
    result = validate.validate_dataset("source", "gta5", raw / "source", manifest, {"train": 6})
    assert failed(result) == {"unique image paths", "known splits"}


def test_write_outputs_writes_no_manifest_on_failure(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    good = run(raw, "source")
    missing_label(raw)
    bad = run(raw, "target", {"train": 4, "val": 3})
    assert report.write_outputs([good, bad], "data/manifests", "out/report.md", "out/metrics.json") is False
    assert not Path("data/manifests").exists()
    metrics = json.loads(Path("out/metrics.json").read_text())
    assert metrics["success"] is False and metrics["source"]["success"] is True
    assert metrics["target"]["failures"]["rows in val"] == 1
    assert "FAIL" in Path("out/report.md").read_text()


def numbers_only(value: object) -> bool:
    """Whether a metrics tree holds numbers (and booleans) only: no lineage, no text."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and numbers_only(v) for k, v in value.items())
    return isinstance(value, int | float)


def test_metrics_hold_numbers_only_and_the_report_states_the_data_version(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    results = [run(raw, "source"), run(raw, "target")]
    version = validate.validated_data_version(results)
    assert len(version) == 16
    assert report.write_outputs(results, "data/manifests", "r.md", "m.json", version) is True
    metrics = json.loads(Path("m.json").read_text())
    assert numbers_only(metrics) and "lineage" not in metrics
    assert f"`{version}`" in Path("r.md").read_text()
    assert sorted(p.name for p in Path("data/manifests").iterdir()) == ["source.csv", "target.csv"]


# --- the stage end to end ---------------------------------------------------------------------------


def stage_params(folder: Path) -> None:
    """A params.yaml for the fixture trees under ``folder/raw`` (relative roots, as in the repo)."""
    params = tiny_params()
    data = params.data
    data.source = replace(data.source, format="gta5", root="raw/source", resize=list(SOURCE_SIZE))
    data.target = replace(data.target, format="cityscapes", root="raw/target", resize=list(TARGET_SIZE))
    data.crop, data.manifests = [32, 32], "data/manifests"
    data.embedded = replace(
        data.embedded,
        n_source=6,
        n_target_train=4,
        n_target_val=2,
        source_size=list(SOURCE_SIZE),
        target_size=list(TARGET_SIZE),
    )
    write_params(folder, params)


@pytest.fixture
def stage(raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path`` as the repository root: params.yaml, raw/, and the stage's logging left to pytest."""
    stage_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(validate_stage, "setup_logging", lambda *args, **kwargs: None)
    return tmp_path


def test_main_writes_manifests_report_and_metrics(stage: Path) -> None:
    assert validate_stage.main() == 0
    source = pd.read_csv("data/manifests/source.csv", keep_default_na=False)
    target = pd.read_csv("data/manifests/target.csv", keep_default_na=False)
    assert tuple(source.columns) == tuple(target.columns) == MANIFEST_COLUMNS
    assert source["split"].value_counts().to_dict() == {"train": 6}
    assert target["split"].value_counts().to_dict() == {"train": 4, "val": 2}
    assert source["image"].iloc[0] == "raw/source/images/00001.png"
    assert all(Path(p).is_file() for p in target["image"].tolist() + target["label"].tolist())
    metrics = json.loads(Path("metrics/validation.json").read_text())
    assert metrics["success"] is True and metrics["target"]["rows_per_split"] == {"train": 4, "val": 2}
    assert numbers_only(metrics)  # lineage is recorded once per run, not in the metrics
    assert "PASS" in Path("reports/validation.md").read_text()


def test_main_fails_and_keeps_the_previous_manifests(stage: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert validate_stage.main() == 0
    before = {p.name: p.read_bytes() for p in Path("data/manifests").glob("*.csv")}
    # The source stays valid: its manifest must not be rewritten while the target is broken.
    image, _, _ = synth.cityscapes_paths(Path("raw/target"), "val", 1)
    image.write_bytes(image.read_bytes()[:200])
    with caplog.at_level(logging.ERROR):
        assert validate_stage.main() == 1
    after = {p.name: p.read_bytes() for p in Path("data/manifests").glob("*.csv")}
    assert after == before and set(after) == {"source.csv", "target.csv"}
    assert str(image) in caplog.text and "reports/validation.md" in caplog.text
    report = Path("reports/validation.md").read_text()
    assert str(image) in report and "dvc repro -f data" in report
    assert json.loads(Path("metrics/validation.json").read_text())["success"] is False


def test_main_on_a_broken_tree_writes_no_manifest(stage: Path) -> None:
    unknown_label_id(Path("raw"))
    assert validate_stage.main() == 1
    assert not Path("data/manifests").exists()


def test_main_reports_a_missing_root(stage: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.rmtree("raw/target")
    with caplog.at_level(logging.ERROR):
        assert validate_stage.main() == 1
    assert "raw/target" in caplog.text and "params.yaml" in caplog.text
