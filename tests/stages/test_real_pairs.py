"""Switching the data params to real roots: data (locate) -> validate -> prepare -> pretrain runs on
fixture trees in the official GTA5 / SYNTHIA / Cityscapes layouts; missing and broken data stop the
pipeline with messages that name the params keys and the files."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dacs_uda.config import DomainConfig
from dacs_uda.models.checkpoint import load_checkpoint
from dacs_uda.stages import data as acquire
from dacs_uda.stages import prepare, train, validate
from tests.conftest import tiny_params, write_params
from tests.data import fixtures

SOURCE_RESIZE = {"gta5": [48, 27], "synthia": [48, 28]}
TARGET_RESIZE = [48, 24]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    fixtures.gta5_tree(root / "gta5", count=6)
    fixtures.synthia_tree(root / "synthia", count=6)
    fixtures.cityscapes_tree(root / "cityscapes")
    return root


@pytest.fixture(autouse=True)
def quiet_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leave logging to pytest (the stages' own setup would replace caplog's handler)."""
    for module in (acquire, validate, prepare):
        monkeypatch.setattr(module, "setup_logging", lambda *args, **kwargs: None)


def real_project(folder: Path, datasets: Path, pair: str, **data) -> Path:
    """A project whose params point at the fixture trees (as a user would point at real copies)."""
    fmt = pair.split("_")[0]
    params = tiny_params()
    params.data.pair = pair
    params.data.source = DomainConfig(
        format=fmt, root=str(datasets / fmt), resize=SOURCE_RESIZE[fmt], counts={"train": 6}
    )
    params.data.target = DomainConfig(
        format="cityscapes",
        root=str(datasets / "cityscapes"),
        resize=TARGET_RESIZE,
        counts=dict(fixtures.CITYSCAPES_COUNTS),
    )
    params.data.crop = [16, 16]
    params.pretrain.optim.iterations = 2
    for key, value in data.items():
        setattr(params.data, key, value)
    write_params(folder, params)
    return folder


@pytest.mark.parametrize("pair", ["gta5_cityscapes", "synthia_cityscapes"])
def test_real_pair_runs_data_validate_prepare_pretrain(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pair: str
) -> None:
    monkeypatch.chdir(real_project(tmp_path, datasets, pair))
    before = sorted(p.relative_to(datasets) for p in datasets.rglob("*"))
    assert acquire.main() == 0
    assert Path("reports/embedded_samples.png").is_file()
    assert validate.main() == 0
    assert prepare.main() == 0
    assert train.main(["--section", "pretrain"]) == 0
    assert sorted(p.relative_to(datasets) for p in datasets.rglob("*")) == before  # read-only use
    source = pd.read_csv("data/prepared/source.csv")
    target = pd.read_csv("data/prepared/target.csv")
    assert len(source) == 6 and target["split"].value_counts().to_dict() == fixtures.CITYSCAPES_COUNTS
    with Image.open(source["image"].iloc[0]) as image, Image.open(target["label"].iloc[0]) as label:
        assert list(image.size) == SOURCE_RESIZE[pair.split("_")[0]] and list(label.size) == TARGET_RESIZE
    assert load_checkpoint("models/trained/pretrain.pt")["step"] == 2
    assert json.loads(Path("metrics/validation.json").read_text())["success"] is True


def test_missing_dataset_names_the_params_keys(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(real_project(tmp_path, datasets, "gta5_cityscapes"))
    params = Path("params.yaml").read_text().replace(str(datasets / "cityscapes"), "nowhere/cityscapes")
    Path("params.yaml").write_text(params)
    monkeypatch.delenv("CITYSCAPES_USERNAME", raising=False)
    monkeypatch.delenv("CITYSCAPES_PASSWORD", raising=False)
    with caplog.at_level(logging.ERROR):
        assert acquire.main() == 1
    for needle in (
        "Cityscapes not found",
        "`data.target.root`",
        "data.download: true",
        "CITYSCAPES_USERNAME",
    ):
        assert needle in caplog.text
    assert not Path("nowhere").exists()


def test_known_gta5_defects_warn_and_broken_target_stops_before_training(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(datasets, copy)
    (copy / "gta5" / "labels" / "00002.png").unlink()
    mismatched = copy / "gta5" / "labels" / "00005.png"
    fixtures.gta5_label(mismatched, np.asarray(Image.open(mismatched).resize((60, 33))))
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(real_project(project, copy, "gta5_cityscapes"))
    assert validate.main() == 0  # warnings only
    report = Path("reports/validation.md").read_text()
    assert "Warnings: reported problems of the GTA5 data (2 files)" in report
    assert str(copy / "gta5" / "images" / "00002.png") in report
    metrics = json.loads(Path("metrics/validation.json").read_text())
    assert metrics["source"]["warning_files"] == 2 and metrics["source"]["manifest_rows"] == 5
    assert prepare.main() == 0
    source = pd.read_csv("data/prepared/source.csv", keep_default_na=False)
    assert len(source) == 5 and source["warning"].str.startswith("image 64x35 but label 60x33").sum() == 1

    broken = sorted((copy / "cityscapes" / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))[0]
    broken.write_bytes(broken.read_bytes()[:100])
    shutil.rmtree("data/manifests")
    with caplog.at_level(logging.ERROR):
        assert validate.main() == 1
    assert str(broken) in caplog.text
    assert not Path("data/manifests").exists()
    with caplog.at_level(logging.ERROR):
        assert prepare.main() == 1  # nothing to prepare from: training cannot start
    assert "dvc repro validate" in caplog.text


def test_embedded_generator_never_replaces_a_real_dataset(
    datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(real_project(tmp_path, datasets, "gta5_cityscapes"))
    params = Path("params.yaml").read_text().replace("pair: gta5_cityscapes", "pair: embedded")
    Path("params.yaml").write_text(params)  # switched back, roots still at the real copies
    before = {p: p.stat().st_mtime_ns for p in datasets.rglob("*")}
    with caplog.at_level(logging.ERROR):
        assert acquire.main() == 1
    assert "`data.target.root`" in caplog.text and "would replace it" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in datasets.rglob("*")} == before
