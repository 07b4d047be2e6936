"""Helpers shared by the flows: running DVC as a subprocess, reading its outputs, publishing artifacts.

Prefect orchestrates, DVC executes: the flows import only the package's ground floor (``dacs_uda.lineage``,
``dacs_uda.utils``, ``dacs_uda.config``), never a stage. They read what the pipeline writes (``params.yaml``,
``metrics/eval.json``, the ONNX file's metadata).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from prefect import Task, get_run_logger
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError

DEFAULT_EVAL_METRICS = "metrics/eval.json"
DEFAULT_ONNX = "models/dacs.onnx"

LineSink = Callable[[str], None]
R = TypeVar("R")


class CommandFailed(RuntimeError):
    """A DVC command exited non-zero."""

    def __init__(self, cmd: list[str], returncode: int) -> None:
        super().__init__(f"`{' '.join(cmd)}` exited with code {returncode}")
        self.cmd = list(cmd)
        self.returncode = returncode


def logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger; a plain logger when a body is called through ``.fn()`` outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("dacs_uda.flows")


def in_flow_run() -> bool:
    """Whether the caller runs inside a Prefect flow run (tasks and artifacts need one)."""
    return FlowRunContext.get() is not None


def _child_env() -> dict[str, str]:
    """The environment for DVC children.

    Stage commands call ``python -m dacs_uda...``: resolve ``python`` and ``dvc`` in this interpreter's
    environment even when the venv is not activated, and keep the children's output unbuffered so lines
    reach the Prefect logs while a stage trains, not when it ends.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def run_command(cmd: list[str], cwd: Path, on_line: LineSink) -> int:
    """Run ``cmd`` in ``cwd``, passing each line of output (stdout and stderr) to ``on_line`` as it arrives.

    Every flow runs its long commands through this module-level function, so tests replace it to check
    what would run without running DVC.

    Args:
        cmd: The command and its arguments.
        cwd: The working directory (the DVC repository root).
        on_line: Called once per output line, without the trailing newline.

    Returns:
        The process's exit code.
    """
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env=_child_env(),
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


def read_command(cmd: list[str], cwd: Path) -> str:
    """Run a short command and return its stdout (stderr apart, so warnings cannot corrupt JSON output).

    Tests replace this module-level function to feed canned output (e.g. ``dvc exp show --json``).

    Raises:
        CommandFailed: If the command exits non-zero (its stderr is logged).
    """
    proc = subprocess.run(cmd, cwd=cwd, env=_child_env(), capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        logger().error("%s", proc.stderr.strip())
        raise CommandFailed(cmd, proc.returncode)
    return proc.stdout


def stream_command(cmd: list[str], repo: str | Path, prefix: str) -> None:
    """Run ``cmd`` in ``repo`` through ``run_command``, logging each output line with ``[prefix]``.

    Raises:
        CommandFailed: If the command exits non-zero.
    """
    log = logger()
    log.info("$ %s", " ".join(cmd))
    returncode = run_command(cmd, Path(repo), lambda line: log.info("[%s] %s", prefix, line))
    if returncode != 0:
        raise CommandFailed(cmd, returncode)


def read_params(repo: str | Path = ".") -> dict[str, Any]:
    """``params.yaml`` as a dict (empty if absent or unreadable: reports then show '-')."""
    try:
        params = yaml.safe_load((Path(repo) / "params.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return params if isinstance(params, dict) else {}


def param(params: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """The value at a dotted key (``adapt.pseudo_threshold``) of nested params, or ``default``."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def eval_metrics_path(params: Mapping[str, Any]) -> str:
    """Where the evaluate stage writes its metrics (``evaluate.metrics``, relative to the repo)."""
    return str(param(params, "evaluate.metrics", DEFAULT_EVAL_METRICS))


def onnx_path(params: Mapping[str, Any]) -> str:
    """Where the export stage writes the fp32 ONNX model (``export.onnx``, relative to the repo)."""
    return str(param(params, "export.onnx", DEFAULT_ONNX))


def read_eval_metrics(repo: str | Path = ".") -> dict[str, Any] | None:
    """The evaluate stage's metrics file as a dict, or None if absent or unreadable."""
    repo = Path(repo)
    try:
        metrics = json.loads((repo / eval_metrics_path(read_params(repo))).read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def model_metrics(metrics: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The per-model entries of an eval metrics dict (``{model: {"mIoU": ..., ...}}``).

    Only the dict values holding ``mIoU`` count: anything else, such as the top-level ``lineage`` dict that
    metrics files carried before the lineage moved to the checkpoints and the ONNX metadata, is left out.
    """
    return {
        name: dict(values)
        for name, values in (metrics or {}).items()
        if isinstance(values, Mapping) and "mIoU" in values
    }


def override_args(overrides: Mapping[str, Any] | None) -> list[str]:
    """``-S key=value`` arguments for ``dvc exp run`` (values in YAML/Hydra syntax: ``true``, ``[1, 2]``).

    Raises:
        ValueError: On an empty key or one containing ``=``.
    """
    args: list[str] = []
    for key, value in (overrides or {}).items():
        if not key or "=" in key:
            raise ValueError(f"bad override key {key!r}")
        text = json.dumps(value) if isinstance(value, bool | list | dict) or value is None else str(value)
        args += ["-S", f"{key}={text}"]
    return args


def experiment_command(overrides: Mapping[str, Any] | None, name: str, temp: bool = False) -> list[str]:
    """The ``dvc exp run`` command for one named experiment (in the workspace unless ``temp``)."""
    return ["dvc", "exp", "run", *(["--temp"] if temp else []), "-n", name, *override_args(overrides)]


# The params a run summary shows: what distinguishes one DACS run from another.
SUMMARY_PARAMS = (
    "seed",
    "data.embedded.seed",
    "data.pair",
    "adapt.method",
    "adapt.pseudo_threshold",
    "adapt.ema_alpha",
)


def fmt(value: Any) -> str:
    """A table cell: '-' for missing values, ``%g``-style floats (no trailing noise)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list[Any]], align: str | None = None) -> list[str]:
    """Lines of a markdown table; ``align`` gives one char per column: 'l' or 'r' (default all 'l')."""
    align = align or "l" * len(headers)
    separator = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(separator) + "|"]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return lines


def context_section(params: Mapping[str, Any], revision: str) -> list[str]:
    """Markdown lines: the git revision and the params that identify a run (seeds included)."""
    rows = [["git revision", revision]] + [[key, param(params, key)] for key in SUMMARY_PARAMS]
    return ["## Run context", "", *markdown_table(["item", "value"], rows)]


def metrics_section(metrics: Mapping[str, Any] | None, title: str) -> list[str]:
    """Markdown lines: one row per evaluated model (mIoU and the SYNTHIA subsets), empty if none."""
    models = model_metrics(metrics)
    if not models:
        return []
    rows = [[name, m.get("mIoU"), m.get("mIoU16"), m.get("mIoU13")] for name, m in models.items()]
    return [f"## {title}", "", *markdown_table(["model", "mIoU", "mIoU16", "mIoU13"], rows, "lrrr")]


def publish_markdown(key: str, markdown: str, description: str) -> None:
    """Publish ``markdown`` as a Prefect artifact under ``key``; a no-op outside a flow run."""
    if in_flow_run():
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=markdown, key=key, description=description)


def run_task(task_: Task[..., R], *args: Any) -> R:
    """Call ``task_`` as a Prefect task inside a flow run, its body directly otherwise (``flow.fn()``)."""
    if in_flow_run():
        return task_(*args)
    return task_.fn(*args)
