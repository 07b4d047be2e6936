"""Fixtures of the flow tests: a temporary Prefect server, tiny ONNX files, a toy git + DVC repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

# Quiet and offline before Prefect is imported (its settings are read at import).
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPLETE_LINEAGE = {
    "git_revision": "0123abc",
    "params_hash": "ph42",
    "seed": 0,
    "data_version": "embedded-v1",
}


POOL = "dacs-process"  # the work pool of every deployment in prefect.yaml


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory):
    """A temporary local Prefect server (a subprocess on a free port) and a throwaway PREFECT_HOME."""
    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with temporary_settings(
        updates={
            PREFECT_HOME: home,
            PREFECT_SERVER_ANALYTICS_ENABLED: False,
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 90,
        }
    ):
        with prefect_test_harness(server_startup_timeout=120):
            yield


def prefect_cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a Prefect CLI subprocess that talks to the temporary server (call it inside a
    test using ``prefect_server``): its API URL, a throwaway ``PREFECT_HOME``, the venv first on PATH."""
    from prefect.settings import PREFECT_API_URL

    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return dict(
        os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_HOME=str(home), PATH=path, **extra
    )


def deploy_all(home: Path) -> None:
    """Create the ``process`` work pool (unless it exists) and run the real ``prefect --no-prompt deploy
    --all`` from the repository root against the temporary server; fails the test if the CLI fails."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        except ObjectAlreadyExists:  # the server is shared by the session's tests
            pass
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=REPO_ROOT,
        env=prefect_cli_env(home),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


# The toy pipeline: one stage standing in for train + evaluate + export. Its mIoU is a known function of
# the params (so the sweep's mean ± std can be checked exactly); as the real stages, it writes numbers only
# to the metrics file and the lineage to the ONNX file's metadata.
TOY_STAGE = textwrap.dedent(
    """\
    import json, sys
    from pathlib import Path

    import yaml

    sys.path.insert(0, REPO_ROOT)  # the stage imports the tests' ONNX helper
    from tests.flows.toy_onnx import write_onnx

    p = yaml.safe_load(Path("params.yaml").read_text())
    miou = round(p["base_miou"] + 100 * (p["adapt"]["pseudo_threshold"] - 0.9) + p["seed"], 6)
    lineage = {"git_revision": "toyrev", "params_hash": "toyhash", "seed": p["seed"],
               "data_version": p["data_version"]}
    Path("metrics").mkdir(exist_ok=True)
    metrics = {"source_only": {"mIoU": 10.0}, "dacs": {"mIoU": miou}}
    Path("metrics/eval.json").write_text(json.dumps(metrics))
    write_onnx(Path("models/dacs.onnx"), lineage)
    """
).replace("REPO_ROOT", repr(str(REPO_ROOT)))
# The models the retrain flow can register, declared as the project's dvc.yaml declares its own.
TOY_ARTIFACTS = textwrap.dedent(
    """\
    artifacts:
      dacs-onnx:
        path: ${export.onnx}
        type: model
      dacs-onnx-fp16:
        path: models/dacs_fp16.onnx
        type: model
    """
)
TOY_DVC_YAML = (
    textwrap.dedent(
        """\
        stages:
          toy:
            cmd: python toy_stage.py
            deps: [toy_stage.py]
            params: [seed, base_miou, data_version, adapt.pseudo_threshold]
            outs: [models/dacs.onnx]
            metrics:
              - metrics/eval.json:
                  cache: false
        """
    )
    + TOY_ARTIFACTS
)
TOY_PARAMS = {
    "seed": 0,
    "base_miou": 40.0,
    "data_version": "toy-v1",
    "adapt": {"pseudo_threshold": 0.968},
    "evaluate": {"metrics": "metrics/eval.json"},
    "export": {"onnx": "models/dacs.onnx"},
}


def git(root: Path, *args: str) -> str:
    """``git ARGS`` in ``root`` (fails the test on error)."""
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def commit_git_dvc_repo(root: Path, dvc_yaml: str) -> Path:
    """Make ``root`` (holding its files) a git + DVC repo with ``dvc_yaml`` and TOY_PARAMS, all committed."""
    if shutil.which("git") is None:
        pytest.skip("needs git")
    from dvc.repo import Repo

    (root / "params.yaml").write_text(yaml.safe_dump(TOY_PARAMS, sort_keys=False))
    (root / "dvc.yaml").write_text(dvc_yaml)
    git(root, "init", "-q")
    git(root, "config", "user.email", "flows@test")
    git(root, "config", "user.name", "flow tests")
    Repo.init(str(root)).close()
    git(root, "add", "-A")
    git(root, "commit", "-qm", "toy pipeline")
    return root


@pytest.fixture
def toy_repo(tmp_path: Path) -> Path:
    """A committed git + DVC repo whose one stage writes metrics/eval.json and models/dacs.onnx in ~1 s."""
    root = tmp_path / "toy"
    root.mkdir()
    (root / "toy_stage.py").write_text(TOY_STAGE)
    return commit_git_dvc_repo(root, TOY_DVC_YAML)
