"""Prefect flow that retrains with param overrides and promotes the ONNX model only if it is no worse.

``dvc exp run -S key=value ...`` runs in the workspace (not ``--temp``): DVC reproduces what the overrides
invalidate, records the experiment (``dvc exp show``) and leaves its params, metrics and models in the
workspace, where this flow reads them. The candidate is the ``dacs`` model of ``metrics/eval.json``; the
deployed model lives in ``deployed_dir`` (``model.onnx`` + ``deployed.json``). The candidate replaces it
when its target mIoU is >= the deployed one's (or nothing is deployed) and its ONNX lineage is complete.
A promotion also registers the experiment's commit as the next version of the named DVC artifact
(``artifacts:`` in ``dvc.yaml``) and assigns it the ``prod`` stage, with annotated Git tags in the format
of DVC's model registry (GTO): ``<artifact>@v<N>.0.0`` and ``<artifact>#<stage>#<counter>``, so
``dvc artifacts get . <artifact> --stage prod`` fetches the promoted file.
Every decision is appended to ``deployed_dir/decisions.jsonl`` and published as a markdown artifact.

No stage is imported: DVC runs the stages, the flow only reads their outputs. The lineage rule (which keys
a promoted model must carry) and the atomic writer are the package's own (``dacs_uda.lineage``,
``dacs_uda.utils.io``); DVC's own API reads ``dvc.yaml``'s artifacts (paths resolved from params), and
git writes the tags.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx
from dvc.repo import Repo
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
ARTIFACT = "dacs-onnx"  # the fp32 model in dvc.yaml's `artifacts:`
STAGE = "prod"
# GTO's rule for artifact and stage names: tags with any other name are invisible to `dvc artifacts get`.
REGISTRY_NAME = re.compile(r"[a-z0-9]([a-z0-9-/]*[a-z0-9])?")


class LineageIncomplete(ValueError):
    """The candidate ONNX file does not say where it came from: it must not be deployed."""


class RegistryError(RuntimeError):
    """The candidate cannot be registered as the named DVC artifact: nothing is promoted."""


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


def check_registry_name(kind: str, name: str) -> None:
    """Fail on a name the model registry cannot hold (GTO's rule: lowercase letters, digits, ``-``, ``/``).

    Raises:
        RegistryError: Naming ``kind`` (``artifact`` or ``stage``) and the rule.
    """
    if not REGISTRY_NAME.fullmatch(name):
        raise RegistryError(
            f"{kind} {name!r}: use lowercase letters, digits, '-' and '/', starting and ending with a "
            "letter or digit (the model registry's rule for names)"
        )


def declared_artifact(repo: str | Path, name: str) -> str:
    """The path that ``dvc.yaml``'s ``artifacts:`` gives ``name``, ``${...}`` resolved by DVC from params.

    Raises:
        RegistryError: If the root ``dvc.yaml`` declares no artifact ``name``.
    """
    with Repo(str(repo)) as dvc_repo:
        declared = dvc_repo.artifacts.read().get("dvc.yaml", {})
    if name not in declared:
        raise RegistryError(
            f"{Path(repo) / 'dvc.yaml'} declares no artifact {name!r} (declared: {sorted(declared)}): "
            "add it under `artifacts:` or pass the flow another `artifact`"
        )
    return declared[name].path


def _git(repo: str | Path, *args: str) -> str:
    return common.read_command(["git", *args], Path(repo)).strip()


def experiment_commit(repo: str | Path, experiment: str) -> str:
    """The commit in which ``dvc exp run -n <experiment>`` recorded its params, ``dvc.lock`` and metrics.

    DVC keeps it at ``refs/exps/<baseline[:2]>/<baseline[2:]>/<experiment>``, the baseline being HEAD.

    Raises:
        RegistryError: If there is no such experiment on top of HEAD.
    """
    head = _git(repo, "rev-parse", "HEAD")
    ref = f"refs/exps/{head[:2]}/{head[2:]}/{experiment}"
    commit = _git(repo, "for-each-ref", "--format=%(objectname)", ref)
    if not commit:
        raise RegistryError(
            f"{repo}: no experiment {experiment!r} on top of {head[:7]} ({ref} is missing; "
            "`dvc exp show` lists the recorded ones)"
        )
    return commit


def next_tags(repo: str | Path, artifact: str, stage: str) -> tuple[str, str]:
    """The next version tag and stage tag of ``artifact``, numbered as GTO numbers them.

    The version is one major above the highest registered (``v1.0.0``, ``v2.0.0``, ...: GTO needs
    SemVer); the stage tag's counter is one above the highest counter among the artifact's tags.
    """
    tags = _git(repo, "tag", "--list", f"{artifact}@*", f"{artifact}#*").split()
    majors = [int(m[1]) for tag in tags if (m := re.match(rf"{re.escape(artifact)}@v(\d+)\.", tag))]
    counters = [int(m[1]) for tag in tags if (m := re.search(r"#(\d+)$", tag))]
    version = f"v{max(majors, default=0) + 1}.0.0"
    return f"{artifact}@{version}", f"{artifact}#{stage}#{max(counters, default=0) + 1}"


def _register(repo: str, artifact: str, stage: str, experiment: str, model: str, note: str) -> dict[str, str]:
    """Register the experiment's commit as the next version of ``artifact`` and assign it ``stage``.

    Two annotated tags on that commit (``dvc artifacts get``, ``gto show`` and DVC Studio read them),
    written before the deployed copy changes, so a failure here leaves the deployed model as it was
    (a version tag written without its stage tag is a registered version that no stage points to).

    Args:
        repo: The DVC repository root.
        artifact: The artifact's name in ``dvc.yaml``; it must be declared at ``model``.
        stage: The stage to assign, e.g. ``prod``.
        experiment: The ``dvc exp run`` name whose commit holds the candidate.
        model: The candidate's path relative to ``repo`` (``export.onnx``).
        note: Appended to the tag messages (what the version scored).

    Returns:
        ``artifact``, ``version``, ``version_tag``, ``stage``, ``stage_tag`` and ``commit``.

    Raises:
        RegistryError: If the artifact is declared at another path or the experiment has no commit.
        CommandFailed: If git cannot write a tag (e.g. no ``user.name``/``user.email`` configured).
    """
    declared = declared_artifact(repo, artifact)
    if Path(declared) != Path(model):
        raise RegistryError(
            f"dvc.yaml's artifact {artifact!r} is {declared}, but the candidate is {model} (export.onnx): "
            "declare the artifact at the exported model's path"
        )
    commit = experiment_commit(repo, experiment)
    version_tag, stage_tag = next_tags(repo, artifact, stage)
    version = version_tag.split("@", 1)[1]
    _git(repo, "tag", "-a", version_tag, "-m", f"{artifact} {version}: {note}", commit)
    _git(repo, "tag", "-a", stage_tag, "-m", f"{artifact} {version} to {stage}: {note}", commit)
    logger().info("registered %s and %s on %s (experiment %s)", version_tag, stage_tag, commit, experiment)
    return {
        "artifact": artifact,
        "version": version,
        "version_tag": version_tag,
        "stage": stage,
        "stage_tag": stage_tag,
        "commit": commit,
    }


register = task(_register, name="register-artifact")


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
        ["registered", _registered(decision["registered"])],
        ["overrides", " ".join(override_args(decision["overrides"])) or "-"],
    ]
    lineage = [[key, decision["lineage"].get(key)] for key in sorted(decision["lineage"])]
    lines = ["# DACS retrain", "", *markdown_table(["item", "value"], rows), ""]
    section = metrics_section(metrics, "Candidate on target val")
    lines += [*section, ""] if section else []
    lines += ["## Candidate lineage (ONNX metadata)", "", *markdown_table(["key", "value"], lineage), ""]
    lines += context_section(params, decision["git_revision"])
    return "\n".join(lines) + "\n"


def _registered(registry: Mapping[str, str] | None) -> str:
    if registry is None:
        return "-"
    return f"{registry['version_tag']} ({registry['stage_tag']}, commit {registry['commit'][:12]})"


def _flow_run_id() -> str | None:
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


@flow(name="dacs-retrain", log_prints=False)
def dacs_retrain(
    overrides: dict[str, Any] | None = None,
    deployed_dir: str = DEPLOYED_DIR,
    experiment_name: str | None = None,
    repo: str = ".",
    artifact: str = ARTIFACT,
    stage: str = STAGE,
) -> dict[str, Any]:
    """Retrain with ``overrides`` as a DVC experiment and promote the ONNX model if it is no worse.

    Args:
        overrides: Params to set for this experiment, e.g. ``{"seed": 1, "adapt.pseudo_threshold": 0.9}``.
        deployed_dir: The deployed model's directory (relative to ``repo`` unless absolute).
        experiment_name: DVC experiment name (unique); default ``retrain-<UTC timestamp>``.
        repo: The DVC repository root.
        artifact: The DVC artifact (``artifacts:`` in ``dvc.yaml``) a promotion registers a version of.
        stage: The stage a promoted version is assigned.

    Returns:
        The decision, as appended to the decision log.

    Raises:
        RegistryError: Before training, if ``artifact`` or ``stage`` is not a valid registry name or
            ``dvc.yaml`` declares no such artifact; after it, if the artifact is not the candidate's file.
        CommandFailed: If ``dvc exp run`` fails (nothing is promoted nor logged).
    """
    log = logger()
    now = datetime.now(UTC)
    name = experiment_name or f"retrain-{now:%Y%m%d-%H%M%S}"
    target_dir = Path(repo) / deployed_dir
    # Checked before hours of training, not after: a promotion could not register the model.
    check_registry_name("artifact", artifact)
    check_registry_name("stage", stage)
    declared_artifact(repo, artifact)
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
        "registered": None,
    }
    if promoted:
        note = f"experiment {name}, {CANDIDATE_MODEL} mIoU {candidate['mIoU']:g}"
        model = onnx_path(read_params(repo))
        decision["registered"] = common.run_task(register, repo, artifact, stage, name, model, note)
        record = {
            "mIoU": candidate["mIoU"],
            "metrics": model_metrics(candidate["metrics"]),
            "lineage": candidate["lineage"],
            "promoted_at": now.isoformat(),
            "experiment": name,
            "overrides": decision["overrides"],
            "source": candidate["model"],
            "registered": decision["registered"],
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
