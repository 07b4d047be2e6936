"""The real ``dvc.yaml``, reproduced by DVC itself in a scratch git repo with tiny params.

Checks what the in-process smoke test cannot: that the DAG parses, every declared output is
produced, a second ``dvc repro`` is a no-op, and a parameter change invalidates only its stage and
what depends on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_params, write_params

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("git") is None, reason="needs git"),
]

REPO = Path(__file__).resolve().parents[2]
DVC_YAML = REPO / "dvc.yaml"
STAGES = ("data", "validate", "prepare", "pretrain", "oracle", "adapt", "evaluate", "export", "evaluate_onnx")
OUTPUTS = (
    "data/raw/source",
    "data/raw/target",
    "data/manifests/source.csv",
    "data/manifests/target.csv",
    "data/prepared/source.csv",
    "data/prepared/target.csv",
    "reports/embedded_samples.png",
    "reports/validation.md",
    "metrics/validation.json",
    "models/source.pt",
    "models/oracle.pt",
    "models/dacs.pt",
    "models/dacs.onnx",
    "metrics/pretrain.json",
    "metrics/oracle.json",
    "metrics/adapt.json",
    "metrics/adapt_curve.csv",
    "metrics/eval.json",
    "metrics/per_class_iou.csv",
    "metrics/export.json",
    "reports/samples/target_val.png",
    "metrics/confusion.csv",
    "predictions/dacs/labelIds",
    "models/dacs_fp16.onnx",
    "metrics/eval_onnx.json",
)
MODELS = (
    "models/source.pt",
    "models/oracle.pt",
    "models/dacs.pt",
    "models/dacs.onnx",
    "models/dacs_fp16.onnx",
)


def _env() -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", DO_NOT_TRACK="1")
    # Stages run `python -m dacs_uda...`: that must be this interpreter (the one with the package).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``dvc ARGS`` in ``root``; with ``check``, a non-zero exit fails the test and shows the output."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check:
        assert proc.returncode == 0, (
            f"dvc {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def mtimes(root: Path) -> dict[str, int]:
    return {name: (root / name).stat().st_mtime_ns for name in MODELS}


def ran_and_skipped(output: str) -> tuple[set[str], set[str]]:
    ran = {s for s in STAGES if f"Running stage '{s}'" in output}
    skipped = {s for s in STAGES if f"Stage '{s}' didn't change, skipping" in output}
    return ran, skipped


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC repo holding the real dvc.yaml, the package sources (for `deps`) and tiny params."""
    root = tmp_path_factory.mktemp("dvc_project")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    shutil.copy2(DVC_YAML, root / "dvc.yaml")
    shutil.copytree(
        REPO / "src" / "dacs_uda",
        root / "src" / "dacs_uda",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    write_params(root, tiny_params())
    dvc(root, "init", "-q")
    proc = dvc(root, "repro", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"dvc repro exited {proc.returncode}:\n{output[-6000:]}"
    assert ran_and_skipped(output)[0] == set(STAGES)
    return root


def test_every_stage_output_exists(project: Path) -> None:
    missing = [name for name in OUTPUTS if not (project / name).exists()]
    assert not missing
    assert any((project / "data/raw/source").rglob("*.png"))
    for name in MODELS:
        assert (project / name).stat().st_size > 0
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)


def test_dvc_metrics_show_has_every_model(project: Path) -> None:
    shown = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    eval_metrics = shown[""]["data"]["metrics/eval.json"]["data"]
    for model in ("source_only", "dacs", "oracle"):
        assert 0.0 <= eval_metrics[model]["mIoU"] <= 100.0
    assert shown[""]["data"]["metrics/export.json"]["data"]["pass"] is True
    assert shown[""]["data"]["metrics/eval_onnx.json"]["data"]["pass"] is True


def test_second_repro_changes_nothing(project: Path) -> None:
    lock_before = (project / "dvc.lock").read_bytes()
    mtimes_before = mtimes(project)
    proc = dvc(project, "repro")
    output = proc.stdout + proc.stderr
    ran, skipped = ran_and_skipped(output)
    assert not ran and skipped == set(STAGES), output
    assert "up to date" in output
    assert (project / "dvc.lock").read_bytes() == lock_before
    assert mtimes(project) == mtimes_before
    assert json.loads(dvc(project, "status", "--json").stdout) == {}


def test_param_change_invalidates_only_adapt_and_downstream(project: Path, tmp_path: Path) -> None:
    # Work on a copy so the other tests see the untouched project whatever the order.
    root = tmp_path / "copy"
    shutil.copytree(project, root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["adapt"]["ema_alpha"] = 0.5  # reached within the 3 tiny steps (the EMA ramp is 0, 1/2, 2/3)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    # `dvc status` checks each stage against its own lock entry: only adapt's params differ. Its
    # dependants (evaluate, export) are stale only through models/dacs.pt, which has not changed yet.
    status = json.loads(dvc(root, "status", "--json").stdout)
    assert set(status) == {"adapt"}, status
    assert status["adapt"] == [{"changed deps": {"params.yaml": {"adapt": "modified"}}}]

    before = mtimes(root)
    proc = dvc(root, "repro")
    output = proc.stdout + proc.stderr
    ran, skipped = ran_and_skipped(output)
    assert ran == {"adapt", "evaluate", "export", "evaluate_onnx"}, output
    assert skipped == {"data", "validate", "prepare", "pretrain", "oracle"}, output
    after = mtimes(root)
    assert after["models/source.pt"] == before["models/source.pt"]
    assert after["models/oracle.pt"] == before["models/oracle.pt"]
    assert after["models/dacs.pt"] != before["models/dacs.pt"]
    assert json.loads(dvc(root, "status", "--json").stdout) == {}
