"""The committed ``.dvc/config`` and ``dvc.yaml``'s artifacts, read through DVC itself: Hydra composition
on, a default remote (a local folder beside the repository) that ``dvc push`` / ``dvc pull`` use, and the
exported ONNX models declared as model artifacts at their params paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config():
    with Repo(str(REPO)) as repo:
        return repo.config


def test_hydra_composes_params_yaml(config) -> None:
    assert config["hydra"]["enabled"] is True
    assert not {"config_dir", "config_name"} & set(config["hydra"])  # the defaults: conf/config.yaml


def test_default_remote_is_a_local_folder_beside_the_repository(config) -> None:
    name = config["core"]["remote"]
    # DVC resolves the url relative to .dvc/: one clone's remote is `../dacs-uda-remote`.
    assert Path(config["remote"][name]["url"]) == REPO.parent / "dacs-uda-remote"


# The exported models as DVC artifacts: name -> the params key of its path.
ARTIFACT_PATHS = {"dacs-onnx": "export.onnx", "dacs-onnx-fp16": "export.fp16_onnx"}


@pytest.fixture(scope="module")
def dvc_project():
    """The artifacts (paths resolved by DVC) and the metrics files the stages declare."""
    with Repo(str(REPO)) as repo:
        artifacts = repo.artifacts.read()["dvc.yaml"]
        metrics = {out.def_path for stage in repo.index.stages for out in stage.outs if out.metric}
    return artifacts, metrics


def dotted(node: dict, key: str) -> object:
    for part in key.split("."):
        node = node[part]
    return node


def test_artifacts_are_the_exported_models_at_their_params_paths(dvc_project) -> None:
    artifacts, _ = dvc_project
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["artifacts"]
    assert set(artifacts) == set(ARTIFACT_PATHS)
    for name, key in ARTIFACT_PATHS.items():
        assert raw[name]["path"] == f"${{{key}}}"  # templated: a params change moves the artifact too
        assert artifacts[name].path == dotted(params, key)
        assert artifacts[name].type == "model" and artifacts[name].desc
        assert {"onnx", "semantic-segmentation"} <= set(artifacts[name].labels)
    assert "fp32" in artifacts["dacs-onnx"].labels and "fp16" in artifacts["dacs-onnx-fp16"].labels


def test_artifact_metadata_names_metrics_the_pipeline_writes(dvc_project) -> None:
    artifacts, stage_metrics = dvc_project
    for name, artifact in artifacts.items():
        named = {entry["path"] for entry in artifact.meta["metrics"]}
        assert named == {"metrics/eval.json", "metrics/eval_onnx.json", "metrics/export.json"}, name
        for entry in artifact.meta["metrics"]:
            assert entry["path"] in stage_metrics, f"{name}: {entry['path']} is no stage's metrics file"
            written = json.loads((REPO / entry["path"]).read_text())
            for key in entry["keys"]:
                assert isinstance(dotted(written, key), int | float), f"{name}: {entry['path']} {key}"
