"""Prefect flow that drives the DVC pipeline, one ``dvc repro --single-item`` task per stage.

Prefect orchestrates, DVC executes (style anchor C9): this module imports no stage of ``dacs_uda``, only
its ground floor (``dacs_uda.lineage`` for the git revision). DVC stays the one record of what ran, with
which params, producing which outs; Prefect adds scheduling, retries for the network-bound ``data``
stage, live logs and a run summary artifact.

Another pipeline file runs the same way: ``dvcfile="ablation/dvc.yaml"`` reproduces the seed x variant
ablation stage group by stage group, and ``summary_file`` puts its table into the run report (the
``strategies-ablation`` deployment).

Run it once locally with ``python flows/pipeline.py``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from prefect import Task, flow, task

from dacs_uda.lineage import git_revision
from flows import common
from flows.common import (
    CommandFailed,
    context_section,
    logger,
    markdown_table,
    metrics_section,
    publish_markdown,
    read_eval_metrics,
    read_params,
)

ARTIFACT_KEY = "dacs-pipeline-summary"
PROJECT_FILE = "dvc.yaml"


class StageFailed(RuntimeError):
    """A ``dvc repro`` of one stage exited non-zero."""

    def __init__(self, stage: str, returncode: int) -> None:
        super().__init__(
            f"DVC stage {stage!r} failed: `dvc repro --single-item {stage}` exited with code {returncode}"
        )
        self.stage = stage
        self.returncode = returncode


def pipeline_stages(repo: str | Path = ".", dvcfile: str = PROJECT_FILE) -> list[str]:
    """Stage names in ``dvcfile`` order (the order of its ``stages`` mapping, which is topological here).

    Args:
        repo: The DVC repository root.
        dvcfile: The pipeline file, relative to ``repo``.

    Returns:
        The stage names (a ``foreach``/``matrix`` group is one name: ``dvc repro`` runs all its members).
    """
    spec = yaml.safe_load((Path(repo) / dvcfile).read_text())
    return list((spec or {}).get("stages") or {})


def select_stages(requested: list[str] | None, available: list[str]) -> list[str]:
    """The requested stages in pipeline order (all of them if ``requested`` is None).

    Raises:
        ValueError: If a requested stage is not in the pipeline file.
    """
    if requested is None:
        return list(available)
    unknown = sorted(set(requested) - set(available))
    if unknown:
        raise ValueError(f"unknown DVC stage(s) {unknown}; the pipeline file defines {available}")
    return [stage for stage in available if stage in requested]


def stage_target(stage: str, dvcfile: str = PROJECT_FILE) -> str:
    """``stage`` as ``dvc repro`` names it: bare in ``dvc.yaml``, ``<file>:<stage>`` in another file."""
    return stage if dvcfile == PROJECT_FILE else f"{dvcfile}:{stage}"


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
    start = time.monotonic()
    try:
        common.stream_command(repro_command(stage, force), repo, stage)
    except CommandFailed as err:
        raise StageFailed(stage, err.returncode) from None
    seconds = time.monotonic() - start
    logger().info("stage %s done in %.1f s", stage, seconds)
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
    return common.run_task(stage_task(stage), stage, force, repo)


def build_report(
    summary: dict[str, dict[str, Any]],
    metrics: dict[str, Any] | None,
    params: dict[str, Any] | None = None,
    revision: str = "unknown",
    extra: tuple[str, str] | None = None,
) -> str:
    """Markdown for the run artifact: one row per stage run, mIoU per model if evaluated, ``extra``
    (a title and a markdown file's text), run context."""
    rows = [
        [stage, f"{row['seconds']:.1f}", "ok" if row["ok"] else "FAILED"] for stage, row in summary.items()
    ]
    lines = ["# DACS pipeline run", "", *markdown_table(["stage", "seconds", "status"], rows, "lrl"), ""]
    section = metrics_section(metrics, "Target val (metrics/eval.json)")
    lines += [*section, ""] if section else []
    lines += [f"## {extra[0]}", "", extra[1].rstrip(), ""] if extra else []
    lines += context_section(params or {}, revision)
    return "\n".join(lines) + "\n"


def publish_report(
    summary: dict[str, dict[str, Any]],
    repo: str | Path,
    dvcfile: str = PROJECT_FILE,
    summary_file: str | None = None,
) -> str:
    """Build the report and, inside a flow run, publish it as a markdown artifact.

    The target-val mIoUs of ``metrics/eval.json`` belong to the project's own pipeline; another
    ``dvcfile`` reports ``summary_file`` instead, when it exists.
    """
    metrics = read_eval_metrics(repo) if dvcfile == PROJECT_FILE else None
    path = Path(repo) / summary_file if summary_file else None
    extra = (summary_file, path.read_text()) if path is not None and path.is_file() else None
    markdown = build_report(summary, metrics, read_params(repo), git_revision(repo), extra)
    publish_markdown(
        ARTIFACT_KEY, markdown, "DVC stages run by dacs-pipeline, durations, mIoU, params, git revision"
    )
    return markdown


@flow(name="dacs-pipeline", log_prints=False)
def dacs_pipeline(
    stages: list[str] | None = None,
    force: bool = False,
    repo: str = ".",
    dvcfile: str = PROJECT_FILE,
    summary_file: str | None = None,
) -> dict:
    """Reproduce a DVC pipeline stage by stage, in the order of its file.

    Args:
        stages: Stages to run (pipeline order is kept whatever order they are given in); None runs all.
        force: Pass ``--force`` to ``dvc repro`` (rerun even if nothing changed).
        repo: The DVC repository root.
        dvcfile: The pipeline file, relative to ``repo``: ``dvc.yaml`` (the project) or another one,
            such as ``ablation/dvc.yaml``.
        summary_file: A markdown file the pipeline writes (relative to ``repo``), added to the report.

    Returns:
        ``{stage: {"seconds": float, "ok": bool}}`` for the stages run.

    Raises:
        StageFailed: On the first failing stage; later stages do not run. The report is still published.
    """
    log = logger()
    selected = select_stages(stages, pipeline_stages(repo, dvcfile))
    log.info("running DVC stages %s of %s in %s (force=%s)", selected, dvcfile, Path(repo).resolve(), force)
    summary: dict[str, dict[str, Any]] = {}
    for stage in selected:
        start = time.monotonic()
        try:
            _run_stage(stage_target(stage, dvcfile), force, repo)
        except BaseException:
            summary[stage] = {"seconds": round(time.monotonic() - start, 3), "ok": False}
            try:
                publish_report(summary, repo, dvcfile, summary_file)
            except Exception:  # never let the report hide the stage's own error
                log.exception("could not publish the run report")
            raise
        summary[stage] = {"seconds": round(time.monotonic() - start, 3), "ok": True}
    publish_report(summary, repo, dvcfile, summary_file)
    return summary


if __name__ == "__main__":
    dacs_pipeline()
