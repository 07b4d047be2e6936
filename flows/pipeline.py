"""Prefect flow that drives the DVC pipeline, one ``dvc repro --single-item`` task per stage.

Prefect orchestrates, DVC executes (style anchor C9): this module never imports training code from
``dacs_uda``. DVC stays the one record of what ran, with which params, producing which outs; Prefect
adds scheduling, retries for the network-bound ``data`` stage, live logs and a run summary artifact.

Run it once locally with ``python flows/pipeline.py``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from prefect import Task, flow, get_run_logger, task
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError

ARTIFACT_KEY = "dacs-pipeline-summary"
DEFAULT_EVAL_METRICS = "metrics/eval.json"

LineSink = Callable[[str], None]


class StageFailed(RuntimeError):
    """A ``dvc repro`` of one stage exited non-zero."""

    def __init__(self, stage: str, returncode: int) -> None:
        super().__init__(
            f"DVC stage {stage!r} failed: `dvc repro --single-item {stage}` exited with code {returncode}"
        )
        self.stage = stage
        self.returncode = returncode


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger; a plain logger when a body is called through ``.fn()`` outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("dacs_uda.flows")


def _in_flow_run() -> bool:
    return FlowRunContext.get() is not None


def run_command(cmd: list[str], cwd: Path, on_line: LineSink) -> int:
    """Run ``cmd`` in ``cwd``, passing each line of output (stdout and stderr) to ``on_line`` as it arrives.

    Tests replace this module-level function to check what would run without running DVC.

    Args:
        cmd: The command and its arguments.
        cwd: The working directory (the DVC repository root).
        on_line: Called once per output line, without the trailing newline.

    Returns:
        The process's exit code.
    """
    env = dict(os.environ)
    # The stage commands call `python -m dacs_uda...`: resolve `python` and `dvc` in this interpreter's
    # environment even when the venv is not activated, and keep the children's output unbuffered so
    # lines reach the Prefect logs while a stage trains, not when it ends.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line.rstrip("\r\n"))
    return proc.returncode


def pipeline_stages(repo: str | Path = ".") -> list[str]:
    """Stage names in ``dvc.yaml`` order (the order of its ``stages`` mapping, which is topological here).

    Args:
        repo: The DVC repository root.

    Returns:
        The stage names.
    """
    spec = yaml.safe_load((Path(repo) / "dvc.yaml").read_text())
    return list((spec or {}).get("stages") or {})


def select_stages(requested: list[str] | None, available: list[str]) -> list[str]:
    """The requested stages in pipeline order (all of them if ``requested`` is None).

    Raises:
        ValueError: If a requested stage is not in ``dvc.yaml``.
    """
    if requested is None:
        return list(available)
    unknown = sorted(set(requested) - set(available))
    if unknown:
        raise ValueError(f"unknown DVC stage(s) {unknown}; dvc.yaml defines {available}")
    return [stage for stage in available if stage in requested]


def repro_command(stage: str, force: bool = False) -> list[str]:
    """The ``dvc repro`` command for one stage (it does not check upstream stages: the flow orders them)."""
    return ["dvc", "repro", "--single-item", stage, *(["--force"] if force else [])]


def _repro(stage: str, force: bool = False, repo: str = ".") -> float:
    """Reproduce one DVC stage, streaming its output to the run logger.

    Returns:
        Wall-clock seconds the stage took.

    Raises:
        StageFailed: If ``dvc repro`` exits non-zero.
    """
    log = _logger()
    cmd = repro_command(stage, force)
    log.info("$ %s", " ".join(cmd))
    start = time.monotonic()
    returncode = run_command(cmd, Path(repo), lambda line: log.info("[%s] %s", stage, line))
    seconds = time.monotonic() - start
    if returncode != 0:
        raise StageFailed(stage, returncode)
    log.info("stage %s done in %.1f s", stage, seconds)
    return seconds


# Only `data` touches the network (downloads); a failed training stage must not silently run again.
repro_data = task(
    _repro, name="dvc-repro-data", task_run_name="dvc-repro-{stage}", retries=2, retry_delay_seconds=[30, 120]
)
repro_stage = task(_repro, name="dvc-repro", task_run_name="dvc-repro-{stage}")
RETRYING_TASKS = {"data": repro_data}


def stage_task(stage: str) -> Task[..., float]:
    """The Prefect task that runs ``stage``: the retrying one for ``data``, the non-retrying one otherwise."""
    return RETRYING_TASKS.get(stage, repro_stage)


def _run_stage(stage: str, force: bool, repo: str) -> float:
    """Run one stage as a Prefect task; through ``.fn()`` (no flow run) call the task body directly."""
    runner = stage_task(stage)
    if _in_flow_run():
        return runner(stage, force, repo)
    return runner.fn(stage, force, repo)


def read_eval_metrics(repo: str | Path = ".") -> dict[str, Any] | None:
    """The evaluate stage's metrics (``{model: {"mIoU": ..., ...}}``), or None if absent or unreadable."""
    repo = Path(repo)
    try:
        relative = yaml.safe_load((repo / "params.yaml").read_text())["evaluate"]["metrics"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        relative = DEFAULT_EVAL_METRICS
    try:
        metrics = json.loads((repo / relative).read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def build_report(summary: dict[str, dict[str, Any]], metrics: dict[str, Any] | None) -> str:
    """Markdown for the run artifact: one row per stage run, then mIoU per model if evaluated."""
    lines = ["# DACS pipeline run", "", "| stage | seconds | status |", "|---|---:|---|"]
    lines += [
        f"| {stage} | {row['seconds']:.1f} | {'ok' if row['ok'] else 'FAILED'} |"
        for stage, row in summary.items()
    ]
    if metrics:
        lines += ["", "## Target val (metrics/eval.json)", "", "| model | mIoU |", "|---|---:|"]
        for model, values in metrics.items():
            miou = values.get("mIoU") if isinstance(values, dict) else None
            lines.append(f"| {model} | {miou if miou is not None else '-'} |")
    return "\n".join(lines) + "\n"


def publish_report(summary: dict[str, dict[str, Any]], repo: str | Path) -> str:
    """Build the report and, inside a flow run, publish it as a markdown artifact."""
    markdown = build_report(summary, read_eval_metrics(repo))
    if _in_flow_run():
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(
            markdown=markdown,
            key=ARTIFACT_KEY,
            description="DVC stages run by dacs-pipeline, their durations and mIoU",
        )
    return markdown


@flow(name="dacs-pipeline", log_prints=False)
def dacs_pipeline(stages: list[str] | None = None, force: bool = False, repo: str = ".") -> dict:
    """Reproduce the DVC pipeline stage by stage, in ``dvc.yaml`` order.

    Args:
        stages: Stages to run (pipeline order is kept whatever order they are given in); None runs all.
        force: Pass ``--force`` to ``dvc repro`` (rerun even if nothing changed).
        repo: The DVC repository root.

    Returns:
        ``{stage: {"seconds": float, "ok": bool}}`` for the stages run.

    Raises:
        StageFailed: On the first failing stage; later stages do not run. The report is still published.
    """
    log = _logger()
    selected = select_stages(stages, pipeline_stages(repo))
    log.info("running DVC stages %s in %s (force=%s)", selected, Path(repo).resolve(), force)
    summary: dict[str, dict[str, Any]] = {}
    for stage in selected:
        start = time.monotonic()
        try:
            _run_stage(stage, force, repo)
        except BaseException:
            summary[stage] = {"seconds": round(time.monotonic() - start, 3), "ok": False}
            try:
                publish_report(summary, repo)
            except Exception:  # never let the report hide the stage's own error
                log.exception("could not publish the run report")
            raise
        summary[stage] = {"seconds": round(time.monotonic() - start, 3), "ok": True}
    publish_report(summary, repo)
    return summary


if __name__ == "__main__":
    dacs_pipeline()
