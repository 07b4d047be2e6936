"""Every stage's main() on tiny generated data, in pipeline order, asserting on what it writes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from dacs_uda import adapt, evaluate, evaluate_onnx, export, pretrain
from dacs_uda.config import load_params, params_hash
from dacs_uda.data import acquire, prepare, validate
from dacs_uda.data.version import UNKNOWN
from dacs_uda.utils.checkpoint import load_checkpoint
from dacs_uda.utils.lineage import LINEAGE_KEYS

# Every metrics file a stage writes (each carries the lineage of the run that wrote it).
METRICS_FILES = ("validation", "pretrain", "oracle", "adapt", "eval", "export", "eval_onnx")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the whole pipeline once in a temporary project and share the results."""
    from tests.conftest import tiny_params, write_params

    root = tmp_path_factory.mktemp("project")
    write_params(root, tiny_params())
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert acquire.main() == 0
        assert validate.main() == 0
        assert prepare.main() == 0
        assert pretrain.main(["--section", "pretrain"]) == 0
        assert pretrain.main(["--section", "oracle"]) == 0
        assert adapt.main() == 0
        assert evaluate.main() == 0
        assert export.main() == 0
        assert evaluate_onnx.main() == 0
    return root


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_data_stage_writes_both_domains(project: Path) -> None:
    assert len(list((project / "data/raw/source/images").glob("*.png"))) == 8
    assert len(list((project / "data/raw/target/leftImg8bit/val").rglob("*.png"))) == 4
    assert (project / "reports/embedded_samples.png").stat().st_size > 0


def test_validate_writes_manifests(project: Path) -> None:
    source = pd.read_csv(project / "data/manifests/source.csv")
    target = pd.read_csv(project / "data/manifests/target.csv")
    assert len(source) == 8
    assert target["split"].value_counts().to_dict() == {"train": 6, "val": 4}


@pytest.mark.parametrize("section", ["pretrain", "oracle"])
def test_supervised_stages(project: Path, section: str) -> None:
    ckpt = load_checkpoint(project / f"models/{'source' if section == 'pretrain' else 'oracle'}.pt")
    assert ckpt["step"] == 3 and ckpt["lineage"]["params_hash"]
    metrics = read_json(project / f"metrics/{section}.json")
    assert math.isfinite(metrics["train/loss"])
    rows = list(csv.DictReader((project / f"metrics/{section}_curve.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]


def test_adapt_stage_keeps_a_distinct_ema_teacher(project: Path) -> None:
    ckpt = load_checkpoint(project / "models/dacs.pt")
    student, teacher = ckpt["model"], ckpt["ema_model"]
    assert any(not torch.equal(student[k], teacher[k]) for k in student if k.endswith("weight"))
    source = load_checkpoint(project / "models/source.pt")["model"]
    assert any(not torch.equal(student[k], source[k]) for k in student if k.endswith("weight"))
    metrics = read_json(project / "metrics/adapt.json")
    assert 0.0 <= metrics["train/confident"] <= 1.0 and metrics["train/loss_mix"] > 0


def test_evaluate_reports_every_model(project: Path) -> None:
    metrics = read_json(project / "metrics/eval.json")
    assert set(metrics) == {"lineage", "source_only", "dacs", "oracle"}
    models = {name: result for name, result in metrics.items() if "mIoU" in result}
    assert set(models) == {"source_only", "dacs", "oracle"}  # the contract: models hold "mIoU"
    for result in models.values():
        assert 0.0 <= result["mIoU"] <= 100.0
    rows = list(csv.DictReader((project / "metrics/per_class_iou.csv").open()))
    assert len(rows) == 3 * 19
    assert (project / "reports/samples/target_val.png").is_file()
    assert len(list(csv.DictReader((project / "metrics/confusion.csv").open()))) == 3 * 19 * 19
    assert len(list((project / "predictions/dacs/labelIds").glob("*.png"))) == 4


def test_export_stage_records_parity(project: Path) -> None:
    metrics = read_json(project / "metrics/export.json")
    assert metrics["pass"] is True and metrics["fp16"]["pass"] is True
    assert (project / "models/dacs.onnx").stat().st_size > 0
    assert (project / "models/dacs_fp16.onnx").stat().st_size > 0


def test_evaluate_onnx_measures_the_exported_models(project: Path) -> None:
    metrics = read_json(project / "metrics/eval_onnx.json")
    assert metrics["pass"] is True
    assert abs(metrics["onnx"]["miou_diff"]) <= 0.1 and metrics["onnx"]["argmax_agreement"] >= 0.999
    torch_miou = read_json(project / "metrics/eval.json")["dacs"]["mIoU"]
    assert metrics["pytorch"]["mIoU"] == pytest.approx(torch_miou, abs=0.005)  # the same evaluation


@pytest.mark.parametrize("name", METRICS_FILES)
def test_every_metrics_file_carries_complete_lineage(project: Path, name: str) -> None:
    lineage = read_json(project / f"metrics/{name}.json")["lineage"]
    assert tuple(lineage) == LINEAGE_KEYS
    assert all(value not in ("", None) for value in lineage.values()), lineage
    assert lineage["data_version"] != UNKNOWN and len(lineage["data_version"]) == 16
    params = load_params(project / "params.yaml")
    assert lineage["params_hash"] == params_hash(params)
    assert (lineage["seed"], lineage["data_seed"], lineage["data_pair"]) == (0, 0, "embedded")


def test_one_data_version_across_stages_checkpoints_and_onnx(project: Path) -> None:
    """validate hashes the raw files, later stages read the hashes from the prepared manifests:
    the same dataset gives the same version everywhere."""
    versions = {
        read_json(project / f"metrics/{name}.json")["lineage"]["data_version"] for name in METRICS_FILES
    }
    versions |= {
        load_checkpoint(project / f"models/{m}.pt")["lineage"]["data_version"] for m in ("source", "dacs")
    }
    for onnx_file in ("dacs.onnx", "dacs_fp16.onnx"):
        onnx_lineage = json.loads(export.read_metadata(project / "models" / onnx_file)["lineage"])
        assert all(onnx_lineage[k] not in ("", None) for k in ("git_revision", "params_hash", "seed"))
        assert onnx_lineage == load_checkpoint(project / "models/dacs.pt")["lineage"]
        versions.add(onnx_lineage["data_version"])
    assert len(versions) == 1


def test_adapt_is_bit_reproducible(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    params = load_params()
    first = adapt.run_adaptation(params, torch.Generator().manual_seed(7), torch.device("cpu"))[
        0
    ].state_dict()
    second = adapt.run_adaptation(params, torch.Generator().manual_seed(7), torch.device("cpu"))[
        0
    ].state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
