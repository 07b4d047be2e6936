"""Prefect flow that retrains with param overrides and promotes the ONNX model only if it is no worse.

``dvc exp run -S key=value ...`` runs in the workspace (not ``--temp``): DVC reproduces what the overrides
invalidate, records the experiment (``dvc exp show``) and leaves its params, metrics and models in the
workspace, where this flow reads them. The candidate is the ``dacs`` model of ``metrics/eval.json``; the
deployed model lives in ``deployed_dir`` (``model.onnx`` + ``deployed.json``). The candidate replaces it
when its target mIoU is >= the deployed one's (or nothing is deployed) and its ONNX lineage is complete.
Every decision is appended to ``deployed_dir/decisions.jsonl`` and published as a markdown artifact.

No stage is imported: DVC runs the stages, the flow only reads their outputs. The lineage rule (which keys
a promoted model must carry) and the atomic writer are the package's own (``dacs_uda.lineage``,
``dacs_uda.utils.io``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx
from prefect import flow, task
from prefect.context import FlowRunContext

from dacs_uda.lineage import REQUIRED_FOR_PROMOTION, git_revision, missing_lineage
from dacs_uda.utils.io import atomic_path, file_sha256, write_json
from flows import common
from flows.common import (
    context_section,
    experiment_command,
    fmt,
    logger,
    markdown_table,
    metrics_section,
    model_metrics,
    onnx_path,
    override_args,
    publish_markdown,
    read_eval_metrics,
    read_params,
)

ARTIFACT_KEY = "dacs-retrain-decision"
CANDIDATE_MODEL = "dacs"
DEPLOYED_DIR = "models/deployed"
DEPLOYED_MODEL = "model.onnx"
DEPLOYED_RECORD = "deployed.json"
DECISION_LOG = "decisions.jsonl"


class LineageIncomplete(ValueError):
    """The candidate ONNX file does not say where it came from: it must not be deployed."""


def _run_experiment(overrides: dict[str, Any] | None, name: str, repo: str) -> None:
    """Run the experiment in the workspace, streaming DVC's output to the run logger."""
    common.stream_command(experiment_command(overrides, name), repo, name)


# Not retried: a failed training run must not silently run again.
run_experiment = task(_run_experiment, name="dvc-exp-run", task_run_name="dvc-exp-run-{name}")


def read_lineage(model: str | Path) -> dict[str, Any]:
    """The ``lineage`` dict of an ONNX file's ``metadata_props`` (weights not loaded); {} if absent or bad.

    Raises:
        FileNotFoundError: If the model file does not exist.
    """
    props = onnx.load(str(model), load_external_data=False).metadata_props
    raw = {prop.key: prop.value for prop in props}.get("lineage")
    try:
        lineage = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return lineage if isinstance(lineage, dict) else {}


def read_candidate(repo: str | Path) -> dict[str, Any]:
    """The freshly trained candidate: its mIoU, all models' metrics, ONNX path and lineage.

    Raises:
        FileNotFoundError: If the metrics or the ONNX file is missing.
        KeyError: If the metrics hold no ``dacs`` mIoU.
    """
    repo = Path(repo)
    metrics = read_eval_metrics(repo)
    if metrics is None:
        raise FileNotFoundError(f"no readable eval metrics in {repo} (evaluate.metrics of params.yaml)")
    models = model_metrics(metrics)
    if CANDIDATE_MODEL not in models:
        raise KeyError(f"the eval metrics hold no {CANDIDATE_MODEL!r} mIoU (models: {sorted(models)})")
    model = repo / onnx_path(read_params(repo))
    return {
        "mIoU": float(models[CANDIDATE_MODEL]["mIoU"]),
        "metrics": metrics,
        "model": str(model),
        "lineage": read_lineage(model),
    }


def read_deployed(deployed_dir: Path) -> dict[str, Any] | None:
    """The deployed model's record (``deployed.json``), or None when nothing valid is deployed."""
    try:
        record = json.loads((deployed_dir / DEPLOYED_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("mIoU"), int | float):
        return None
    if not (deployed_dir / DEPLOYED_MODEL).is_file():
        return None
    return record


def decide(candidate: Mapping[str, Any], deployed: Mapping[str, Any] | None) -> tuple[bool, str]:
    """Whether to promote the candidate, and why: complete lineage (``REQUIRED_FOR_PROMOTION``), and mIoU
    >= the deployed one's."""
    missing = missing_lineage(candidate["lineage"], REQUIRED_FOR_PROMOTION)
    if missing:
        return False, f"refused: incomplete lineage (missing or unknown: {', '.join(missing)})"
    if deployed is None:
        return True, "promoted: nothing deployed yet"
    if candidate["mIoU"] >= deployed["mIoU"]:
        return True, f"promoted: candidate mIoU {candidate['mIoU']:g} >= deployed {deployed['mIoU']:g}"
    return False, f"refused: candidate mIoU {candidate['mIoU']:g} < deployed {deployed['mIoU']:g}"


def _promote(model: str, deployed_dir: str, record: dict[str, Any]) -> dict[str, Any]:
    """Copy ``model`` to ``deployed_dir/model.onnx`` and write ``deployed.json``, each atomically: readers
    (a serving process) see the old file or the new one, never a half-written one.

    The model goes first: the record then never names weights that are not in place yet.

    Raises:
        LineageIncomplete: If the ONNX file's lineage lacks a required key (checked here again, so no
            caller can deploy an untraceable model).
    """
    source, target_dir = Path(model), Path(deployed_dir)
    missing = missing_lineage(read_lineage(source), REQUIRED_FOR_PROMOTION)
    if missing:
        raise LineageIncomplete(f"{source}: lineage missing or unknown: {', '.join(missing)}")
    with atomic_path(target_dir / DEPLOYED_MODEL) as tmp:
        shutil.copyfile(source, tmp)
    record = {**record, "model": DEPLOYED_MODEL, "sha256": file_sha256(target_dir / DEPLOYED_MODEL)}
    write_json(target_dir / DEPLOYED_RECORD, record)
    logger().info("promoted %s to %s (mIoU %s)", source, target_dir / DEPLOYED_MODEL, record.get("mIoU"))
    return record


promote = task(_promote, name="promote-model")


def append_decision(deployed_dir: Path, decision: Mapping[str, Any]) -> Path:
    """Append one decision as a JSON line to ``deployed_dir/decisions.jsonl`` (the audit trail)."""
    deployed_dir.mkdir(parents=True, exist_ok=True)
    path = deployed_dir / DECISION_LOG
    with path.open("a") as handle:
        handle.write(json.dumps(decision, sort_keys=True) + "\n")
    return path


def build_report(decision: Mapping[str, Any], metrics: Mapping[str, Any] | None, params: Mapping) -> str:
    """Markdown for the run artifact: the decision with both mIoUs, candidate metrics, lineage, context."""
    verdict = "PROMOTED" if decision["promoted"] else "NOT PROMOTED"
    rows = [
        ["decision", verdict],
        ["reason", decision["reason"]],
        ["candidate mIoU (dacs)", decision["candidate_mIoU"]],
        ["deployed mIoU", decision["deployed_mIoU"]],
        ["experiment", decision["experiment"]],
        ["overrides", " ".join(override_args(decision["overrides"])) or "-"],
    ]
    lineage = [[key, decision["lineage"].get(key)] for key in sorted(decision["lineage"])]
    lines = ["# DACS retrain", "", *markdown_table(["item", "value"], rows), ""]
    section = metrics_section(metrics, "Candidate on target val")
    lines += [*section, ""] if section else []
    lines += ["## Candidate lineage (ONNX metadata)", "", *markdown_table(["key", "value"], lineage), ""]
    lines += context_section(params, decision["git_revision"])
    return "\n".join(lines) + "\n"


def _flow_run_id() -> str | None:
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


@flow(name="dacs-retrain", log_prints=False)
def dacs_retrain(
    overrides: dict[str, Any] | None = None,
    deployed_dir: str = DEPLOYED_DIR,
    experiment_name: str | None = None,
    repo: str = ".",
) -> dict[str, Any]:
    """Retrain with ``overrides`` as a DVC experiment and promote the ONNX model if it is no worse.

    Args:
        overrides: Params to set for this experiment, e.g. ``{"seed": 1, "adapt.pseudo_threshold": 0.9}``.
        deployed_dir: The deployed model's directory (relative to ``repo`` unless absolute).
        experiment_name: DVC experiment name (unique); default ``retrain-<UTC timestamp>``.
        repo: The DVC repository root.

    Returns:
        The decision, as appended to the decision log.

    Raises:
        CommandFailed: If ``dvc exp run`` fails (nothing is promoted nor logged).
    """
    log = logger()
    now = datetime.now(UTC)
    name = experiment_name or f"retrain-{now:%Y%m%d-%H%M%S}"
    target_dir = Path(repo) / deployed_dir
    common.run_task(run_experiment, overrides, name, repo)

    candidate = read_candidate(repo)
    deployed = read_deployed(target_dir)
    promoted, reason = decide(candidate, deployed)
    decision = {
        "timestamp": now.isoformat(),
        "experiment": name,
        "overrides": dict(overrides or {}),
        "candidate_mIoU": candidate["mIoU"],
        "deployed_mIoU": deployed["mIoU"] if deployed else None,
        "promoted": promoted,
        "reason": reason,
        "candidate_model": candidate["model"],
        "lineage": candidate["lineage"],
        "git_revision": git_revision(repo),
        "flow_run_id": _flow_run_id(),
    }
    if promoted:
        record = {
            "mIoU": candidate["mIoU"],
            "metrics": model_metrics(candidate["metrics"]),
            "lineage": candidate["lineage"],
            "promoted_at": now.isoformat(),
            "experiment": name,
            "overrides": decision["overrides"],
            "source": candidate["model"],
        }
        common.run_task(promote, candidate["model"], str(target_dir), record)
    log.info("%s (log: %s)", reason, append_decision(target_dir, decision))
    publish_markdown(
        ARTIFACT_KEY,
        build_report(decision, candidate["metrics"], read_params(repo)),
        f"dacs-retrain {name}: {fmt(decision['candidate_mIoU'])} vs {fmt(decision['deployed_mIoU'])}",
    )
    return decision


if __name__ == "__main__":
    dacs_retrain()
