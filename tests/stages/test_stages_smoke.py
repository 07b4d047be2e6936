"""Every stage's main() on tiny generated data, in pipeline order, asserting on what it writes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from dacs_uda.config import load_params, params_hash
from dacs_uda.export import read_metadata
from dacs_uda.lineage import LINEAGE_KEYS, UNKNOWN
from dacs_uda.models.checkpoint import load_checkpoint
from dacs_uda.stages import data as data_stage
from dacs_uda.stages import evaluate, evaluate_onnx, export, prepare, train, validate
from dacs_uda.train.loop import fit
from dacs_uda.train.tasks import adaptation_task
from dacs_uda.utils.seed import seed_everything

# Every metrics file a stage writes: numbers only (the run's lineage is recorded once, in its report).
METRICS_FILES = ("validation", "pretrain", "oracle", "adapt", "eval", "export", "eval_onnx")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the whole pipeline once in a temporary project and share the results."""
    from tests.conftest import tiny_params, write_params

    root = tmp_path_factory.mktemp("project")
    write_params(root, tiny_params())
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert data_stage.main() == 0
        assert validate.main() == 0
        assert prepare.main() == 0
        for section in ("pretrain", "oracle", "adapt"):
            assert train.main(["--section", section]) == 0
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
    ckpt = load_checkpoint(project / f"models/trained/{section}.pt")
    assert ckpt["step"] == 3 and ckpt["lineage"]["params_hash"]
    metrics = read_json(project / f"metrics/{section}.json")
    assert math.isfinite(metrics["train/loss"])
    rows = list(csv.DictReader((project / f"metrics/{section}_curve.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]


def test_adapt_stage_keeps_a_distinct_ema_teacher(project: Path) -> None:
    ckpt = load_checkpoint(project / "models/trained/adapt.pt")
    student, teacher = ckpt["model"], ckpt["ema_model"]
    assert any(not torch.equal(student[k], teacher[k]) for k in student if k.endswith("weight"))
    source = load_checkpoint(project / "models/trained/pretrain.pt")["model"]
    assert any(not torch.equal(student[k], source[k]) for k in student if k.endswith("weight"))
    metrics = read_json(project / "metrics/adapt.json")
    assert 0.0 <= metrics["train/confident"] <= 1.0 and metrics["train/loss_mix"] > 0


def test_evaluate_reports_every_model(project: Path) -> None:
    metrics = read_json(project / "metrics/eval.json")
    assert set(metrics) == {"source_only", "dacs", "oracle"}
    for result in metrics.values():
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


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict | list):
        return [leaf for v in (value.values() if isinstance(value, dict) else value) for leaf in _leaves(v)]
    return [value]


@pytest.mark.parametrize("name", METRICS_FILES)
def test_every_metrics_file_holds_numbers_only(project: Path, name: str) -> None:
    """`dvc exp show` shows params and results on one screen: no lineage copied into metrics files."""
    leaves = _leaves(read_json(project / f"metrics/{name}.json"))
    assert leaves and all(isinstance(v, bool | int | float) for v in leaves), leaves


def test_the_run_lineage_is_recorded_once_and_complete(project: Path) -> None:
    lineage = read_json(project / "reports/lineage.json")
    assert tuple(lineage) == LINEAGE_KEYS
    assert all(value not in ("", None) for value in lineage.values()), lineage
    assert lineage["data_version"] != UNKNOWN and len(lineage["data_version"]) == 16
    params = load_params(project / "params.yaml")
    assert lineage["params_hash"] == params_hash(params)
    assert (lineage["seed"], lineage["data_seed"], lineage["data_pair"]) == (0, 0, "embedded")


def test_one_data_version_across_validation_checkpoints_and_onnx(project: Path) -> None:
    """validate hashes the raw files, later stages read the hashes from the prepared manifests:
    the same dataset gives the same version everywhere."""
    version = read_json(project / "reports/lineage.json")["data_version"]
    assert f"`{version}`" in (project / "reports/validation.md").read_text()
    for section in ("pretrain", "oracle", "adapt"):
        assert load_checkpoint(project / f"models/trained/{section}.pt")["lineage"]["data_version"] == version
    for onnx_file in ("dacs.onnx", "dacs_fp16.onnx"):
        onnx_lineage = json.loads(read_metadata(project / "models" / onnx_file)["lineage"])
        assert onnx_lineage == load_checkpoint(project / "models/trained/adapt.pt")["lineage"]


def _adapt_weights(num_workers: int) -> dict[str, torch.Tensor]:
    params = load_params()
    params.data.num_workers = num_workers
    seed_everything(params.seed, params.deterministic)
    task = adaptation_task(params, torch.device("cpu"))
    state = Path(f"workers-{num_workers}.pt")  # a fresh state: train from step 0, not the stage's
    state.unlink(missing_ok=True)
    fit(task, torch.device("cpu"), params.adapt.log_every, params.train, state, params_hash(params))
    return task.model.state_dict()


def test_adapt_is_bit_reproducible_whatever_the_loader_workers(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loader workers pre-fetch crop keys ahead of training: with keyed streams nothing else moves."""
    monkeypatch.chdir(project)
    stage = load_checkpoint(project / "models/trained/adapt.pt")["model"]  # the stage's own run, 0 workers
    for workers in (0, 2):
        weights = _adapt_weights(workers)
        different = [k for k in stage if not torch.equal(stage[k], weights[k])]
        assert not different, f"num_workers={workers}: {len(different)} tensors differ, e.g. {different[:3]}"
