"""The Prefect flow that drives `dvc repro`: order, subsets, --force, failures, retries, and one real run."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from flows import common, pipeline
from flows.pipeline import StageFailed, dacs_pipeline
from tests.flows.conftest import REPO_ROOT

DVC_ORDER = list(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])


class FakeRunner:
    """Stands in for `run_command`: records each command, prints two lines, fails the stages asked to."""

    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.calls: list[tuple[list[str], Path]] = []
        self.fail = fail or {}

    def __call__(self, cmd: list[str], cwd: Path, on_line) -> int:
        self.calls.append((list(cmd), Path(cwd)))
        stage = cmd[cmd.index("--single-item") + 1]
        on_line(f"Running stage '{stage}':")
        on_line(f"> python -m dacs_uda.stages.{stage}")
        return self.fail.get(stage, 0)

    @property
    def stages(self) -> list[str]:
        return [cmd[cmd.index("--single-item") + 1] for cmd, _ in self.calls]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeRunner:
    runner = FakeRunner()
    monkeypatch.setattr(common, "run_command", runner)
    return runner


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the project's dvc.yaml and params.yaml, plus an evaluate result."""
    shutil.copy(REPO_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "eval.json").write_text(
        json.dumps(
            {
                "source_only": {"mIoU": 31.5, "mIoU16": 33.0},
                "dacs": {"mIoU": 42.25},
                "oracle": {"mIoU": 60.0},
            }
        )
    )
    return tmp_path


# (a) Unit tests through .fn(): no Prefect server.


def test_all_stages_run_in_dvc_yaml_order(fake: FakeRunner, repo: Path) -> None:
    summary = dacs_pipeline.fn(repo=str(repo))
    assert DVC_ORDER[0] == "data" and "export" in DVC_ORDER
    assert fake.stages == DVC_ORDER
    assert list(summary) == DVC_ORDER
    assert all(row["ok"] and row["seconds"] >= 0 for row in summary.values())
    assert all(
        cmd[:4] == ["dvc", "repro", "--single-item", cmd[3]] and "--force" not in cmd for cmd, _ in fake.calls
    )
    assert {cwd for _, cwd in fake.calls} == {repo}


def test_subset_keeps_pipeline_order(fake: FakeRunner, repo: Path) -> None:
    summary = dacs_pipeline.fn(stages=["export", "train", "data"], repo=str(repo))
    assert fake.stages == ["data", "train", "export"]
    assert list(summary) == ["data", "train", "export"]


def test_unknown_stage_is_rejected_before_anything_runs(fake: FakeRunner, repo: Path) -> None:
    with pytest.raises(ValueError, match="trian"):
        dacs_pipeline.fn(stages=["data", "trian"], repo=str(repo))
    assert fake.calls == []


def test_force_passes_force(fake: FakeRunner, repo: Path) -> None:
    dacs_pipeline.fn(stages=["validate", "evaluate"], force=True, repo=str(repo))
    assert [cmd for cmd, _ in fake.calls] == [
        ["dvc", "repro", "--single-item", "validate", "--force"],
        ["dvc", "repro", "--single-item", "evaluate", "--force"],
    ]


def test_failing_stage_raises_and_stops_later_stages(fake: FakeRunner, repo: Path) -> None:
    fake.fail = {"train": 2}
    with pytest.raises(StageFailed, match=r"'train'.*exited with code 2") as err:
        dacs_pipeline.fn(repo=str(repo))
    assert (err.value.stage, err.value.returncode) == ("train", 2)
    assert fake.stages == ["data", "validate", "prepare", "train"]


def test_output_lines_are_logged_as_they_arrive(
    monkeypatch: pytest.MonkeyPatch, repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen_before_exit: list[bool] = []

    def runner(cmd: list[str], cwd: Path, on_line) -> int:
        on_line("step 1 loss 0.9")
        seen_before_exit.append(any("step 1 loss 0.9" in r.getMessage() for r in caplog.records))
        return 0

    monkeypatch.setattr(common, "run_command", runner)
    with caplog.at_level(logging.INFO, logger="dacs_uda.flows"):
        dacs_pipeline.fn(stages=["train"], repo=str(repo))
    assert seen_before_exit == [True]
    assert any(r.getMessage() == "[train] step 1 loss 0.9" for r in caplog.records)


def test_another_pipeline_file_runs_its_stage_groups_and_reports_its_summary(
    fake: FakeRunner, repo: Path
) -> None:
    (repo / "ablation").mkdir()
    shutil.copy(REPO_ROOT / "ablation" / "dvc.yaml", repo / "ablation" / "dvc.yaml")
    table = "| variant | seeds | mIoU |\n|---|---|---:|\n| rcs | 0, 1, 2 | 21.5 ± 0.4 |\n"
    (repo / "ablation" / "summary.md").write_text(table)
    summary = dacs_pipeline.fn(
        repo=str(repo), dvcfile="ablation/dvc.yaml", summary_file="ablation/summary.md"
    )
    assert fake.stages == [f"ablation/dvc.yaml:{s}" for s in ("pretrain", "adapt", "summarize")]
    assert list(summary) == ["pretrain", "adapt", "summarize"]
    markdown = pipeline.publish_report(summary, repo, "ablation/dvc.yaml", "ablation/summary.md")
    assert "## ablation/summary.md\n\n" + table in markdown and "| adapt |" in markdown
    assert "| dacs | 42.25 |" not in markdown  # the project's eval.json is not this pipeline's result
    with pytest.raises(ValueError, match="train"):
        dacs_pipeline.fn(stages=["train"], repo=str(repo), dvcfile="ablation/dvc.yaml")


def test_only_the_data_stage_retries() -> None:
    data = pipeline.stage_task("data")
    assert data.retries == 2 and data.retry_delay_seconds == [30, 120]
    for stage in DVC_ORDER[1:]:
        assert pipeline.stage_task(stage).retries == 0, stage
    assert pipeline.repro_stage.retries == 0


def test_run_command_streams_lines_live_and_returns_exit_code(tmp_path: Path) -> None:
    """The child waits for a marker that only the first line's callback creates: buffering would time out."""
    marker = tmp_path / "got-first-line"
    child = (
        "import pathlib, sys, time\n"
        "print('first')\n"
        f"m = pathlib.Path({str(marker)!r})\n"
        "deadline = time.time() + 20\n"
        "while not m.exists() and time.time() < deadline: time.sleep(0.02)\n"
        "print('second' if m.exists() else 'timed out', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        marker.touch()

    assert common.run_command([sys.executable, "-c", child], tmp_path, on_line) == 3
    assert lines == ["first", "second"]


def test_report_lists_stages_and_miou(repo: Path) -> None:
    summary = {"adapt": {"seconds": 12.34, "ok": True}, "evaluate": {"seconds": 1.0, "ok": False}}
    markdown = pipeline.build_report(summary, pipeline.read_eval_metrics(repo))
    assert "| adapt | 12.3 | ok |" in markdown and "| evaluate | 1.0 | FAILED |" in markdown
    assert "| dacs | 42.25 |" in markdown and "| source_only | 31.5 | 33 |" in markdown
    (repo / "metrics" / "eval.json").unlink()
    assert pipeline.read_eval_metrics(repo) is None
    assert "mIoU" not in pipeline.build_report(summary, None)


def test_older_metrics_with_a_lineage_entry_still_report_only_models(repo: Path) -> None:
    """Metrics files written before the lineage moved to the ONNX metadata carry a top-level ``lineage``."""
    path = repo / "metrics" / "eval.json"
    old = {"lineage": {"git_revision": "abc", "seed": 0}, **json.loads(path.read_text())}
    path.write_text(json.dumps(old))
    metrics = pipeline.read_eval_metrics(repo)
    assert list(common.model_metrics(metrics)) == ["source_only", "dacs", "oracle"]
    markdown = pipeline.build_report({}, metrics)
    assert "| dacs | 42.25 |" in markdown and "| lineage |" not in markdown


# (b) One real run under a temporary Prefect server.


def test_flow_run_end_to_end(prefect_server, fake: FakeRunner, repo: Path) -> None:
    from prefect.artifacts import Artifact

    state = dacs_pipeline(repo=str(repo), return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert list(summary) == DVC_ORDER and all(row["ok"] for row in summary.values())
    assert fake.stages == DVC_ORDER

    artifact = Artifact.get(pipeline.ARTIFACT_KEY)
    assert artifact is not None and artifact.type == "markdown"
    assert artifact.flow_run_id == state.state_details.flow_run_id
    assert all(f"| {stage} |" in artifact.data for stage in DVC_ORDER)
    assert "| dacs | 42.25 |" in artifact.data
    # the run context: seeds and params from params.yaml, the git revision (tmp_path is no git repo)
    assert "| git revision | unknown |" in artifact.data
    assert "| seed | 0 |" in artifact.data and "| data.embedded.seed | 0 |" in artifact.data
    assert (
        "| adapt.pseudo_threshold | 0.968 |" in artifact.data and "| data.pair | embedded |" in artifact.data
    )


def test_flow_run_failure_does_not_retry_training(prefect_server, fake: FakeRunner, repo: Path) -> None:
    from prefect.artifacts import Artifact

    fake.fail = {"train": 1}
    state = dacs_pipeline(stages=["train", "evaluate"], repo=str(repo), return_state=True)
    assert state.is_failed()
    with pytest.raises(StageFailed, match="'train'"):
        state.result()
    assert fake.stages == ["train"]  # once: no retry, and evaluate never ran
    artifact = Artifact.get(pipeline.ARTIFACT_KEY)
    assert artifact.flow_run_id == state.state_details.flow_run_id
    assert "| train |" in artifact.data and "FAILED" in artifact.data
