"""End to end through a worker: ``prefect deploy --all`` onto the temporary server, a flow run of
``dacs-pipeline/nightly-evaluate`` scheduled a few seconds ahead, and a real ``prefect worker start
--run-once`` on the ``process`` pool that executes it with ``DACS_REPO`` pointing at a toy git + DVC repo."""

from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tests.flows.conftest import POOL, REPO_ROOT, TOY_DVC_YAML, deploy_all, git, prefect_cli_env

DEPLOYMENT = "dacs-pipeline/nightly-evaluate"
ARTIFACT_KEY = "dacs-pipeline-summary"
NIGHTLY_STAGES = ["evaluate", "evaluate_onnx"]  # what prefect.yaml's nightly-evaluate requests

# The toy repo with the stage names nightly-evaluate requests: the toy stage renamed `evaluate` (it writes
# metrics/eval.json and models/dacs.onnx) and an `evaluate_onnx` stage that hashes the ONNX file.
EVAL_ONNX_STAGE = textwrap.dedent(
    """\
    import hashlib, json
    from pathlib import Path

    digest = hashlib.sha256(Path("models/dacs.onnx").read_bytes()).hexdigest()
    Path("metrics/eval_onnx.json").write_text(json.dumps({"onnx_sha256": digest}))
    """
)
EVAL_ONNX_DVC_STAGE = (
    "  evaluate_onnx:\n"
    "    cmd: python eval_onnx_stage.py\n"
    "    deps: [eval_onnx_stage.py, models/dacs.onnx]\n"
    "    metrics:\n"
    "      - metrics/eval_onnx.json:\n"
    "          cache: false\n"
)
# The stage goes at the end of `stages:`, before the toy repo's `artifacts:` block.
NIGHTLY_DVC_YAML = TOY_DVC_YAML.replace("  toy:\n", "  evaluate:\n").replace(
    "artifacts:\n", EVAL_ONNX_DVC_STAGE + "artifacts:\n"
)


@pytest.fixture
def nightly_repo(toy_repo: Path) -> Path:
    """The toy repo with stages ``evaluate`` and ``evaluate_onnx``, never reproduced yet, and the project's
    ``flows/`` linked in: the deployments' entrypoints (``flows/pipeline.py``) resolve in ``DACS_REPO``."""
    (toy_repo / "dvc.yaml").write_text(NIGHTLY_DVC_YAML)
    (toy_repo / "eval_onnx_stage.py").write_text(EVAL_ONNX_STAGE)
    git(toy_repo, "add", "-A")
    git(toy_repo, "commit", "-qm", "nightly stages")
    (toy_repo / "flows").symlink_to(REPO_ROOT / "flows", target_is_directory=True)
    return toy_repo


def test_scheduled_nightly_evaluate_run_executes_dvc_stages_through_worker(
    prefect_server, nightly_repo: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )
    from prefect.deployments import run_deployment

    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    nightly = next(d for d in spec["deployments"] if d["name"] == DEPLOYMENT.split("/")[1])
    assert nightly["parameters"] == {"stages": NIGHTLY_STAGES, "force": False}
    deploy_all(tmp_path / "deploy-home")

    # The deployment's own parameters (no override), scheduled in the near future: the worker must
    # pick it up before it is due (it prefetches runs due within 10 s) and start it no earlier.
    scheduled = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=6)
    flow_run = run_deployment(DEPLOYMENT, scheduled_time=scheduled, timeout=0)
    assert flow_run.state is not None and flow_run.state.is_scheduled()

    worker = subprocess.run(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--run-once"],
        cwd=tmp_path,
        env=prefect_cli_env(tmp_path / "worker-home", DACS_REPO=str(nightly_repo)),
        capture_output=True,
        text=True,
        timeout=150,
    )
    output = worker.stdout[-4000:] + worker.stderr[-4000:]
    assert worker.returncode == 0, output

    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30  # --run-once waits for its runs; this is only a safety net
        while True:
            run = client.read_flow_run(flow_run.id)
            if run.state.is_final() or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[ARTIFACT_KEY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]),
            )
        )

    assert run.state.is_completed(), f"{run.state!r}\n{output}"
    assert run.parameters == {"stages": NIGHTLY_STAGES, "force": False}
    assert run.start_time >= scheduled  # held until its scheduled time

    # The DVC stages really ran in the toy repo, and only those two.
    lock = yaml.safe_load((nightly_repo / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == NIGHTLY_STAGES
    metrics = json.loads((nightly_repo / "metrics" / "eval.json").read_text())
    assert metrics["dacs"]["mIoU"] == pytest.approx(46.8)
    onnx_sha = hashlib.sha256((nightly_repo / "models" / "dacs.onnx").read_bytes()).hexdigest()
    assert json.loads((nightly_repo / "metrics" / "eval_onnx.json").read_text()) == {"onnx_sha256": onnx_sha}

    assert len(artifacts) == 1
    report = artifacts[0].data
    assert "| evaluate | " in report and "| evaluate_onnx | " in report
    assert report.count("| ok |") == 2 and "FAILED" not in report
    assert "| dacs | 46.8 |" in report
