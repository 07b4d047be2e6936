"""prefect.yaml: every deployment resolves to a real flow with matching parameters and a valid cron
schedule, and ``prefect deploy --all`` creates them on a process work pool of a temporary server."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from tests.flows.conftest import POOL, REPO_ROOT, deploy_all

PREFECT_YAML = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in PREFECT_YAML["deployments"]}


def load_flow(entrypoint: str):
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(str(REPO_ROOT / entrypoint))


def test_expected_deployments_and_pull_step() -> None:
    assert set(DEPLOYMENTS) == {
        "weekly-retrain",
        "nightly-evaluate",
        "threshold-sweep",
        "strategies-ablation",
    }
    assert PREFECT_YAML["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $DACS_REPO }}"}}
    ]
    assert {d["work_pool"]["name"] for d in DEPLOYMENTS.values()} == {POOL}


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_entrypoint_is_a_flow_and_parameters_match_its_signature(name: str) -> None:
    from prefect import Flow

    deployment = DEPLOYMENTS[name]
    path, _, function = deployment["entrypoint"].partition(":")
    assert path.startswith("flows/") and (REPO_ROOT / path).is_file()
    flow = load_flow(deployment["entrypoint"])
    assert isinstance(flow, Flow) and flow.fn.__name__ == function
    signature = inspect.signature(flow.fn)
    assert set(deployment.get("parameters") or {}) <= set(signature.parameters)
    signature.bind(**(deployment.get("parameters") or {}))  # the values fit the signature too
    flow.validate_parameters(deployment.get("parameters") or {})  # and Prefect's type validation


def test_schedules_are_valid_cron() -> None:
    from prefect.client.schemas.schedules import CronSchedule

    crons = {name: [s["cron"] for s in d.get("schedules") or []] for name, d in DEPLOYMENTS.items()}
    assert crons == {
        "weekly-retrain": ["0 3 * * 1"],
        "nightly-evaluate": ["30 1 * * *"],
        "threshold-sweep": [],
        "strategies-ablation": [],
    }
    for deployment in DEPLOYMENTS.values():
        for schedule in deployment.get("schedules") or []:
            CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))  # raises if invalid
    with pytest.raises(ValueError):  # the check above is a real one
        CronSchedule(cron="61 * * * *")


def test_nightly_evaluate_runs_only_evaluation_stages() -> None:
    from flows.pipeline import pipeline_stages, select_stages

    stages = DEPLOYMENTS["nightly-evaluate"]["parameters"]["stages"]
    assert select_stages(stages, pipeline_stages(REPO_ROOT)) == ["evaluate", "evaluate_onnx"]


def test_strategies_ablation_runs_the_ablation_pipeline() -> None:
    from flows.pipeline import pipeline_stages

    parameters = DEPLOYMENTS["strategies-ablation"]["parameters"]
    assert pipeline_stages(REPO_ROOT, parameters["dvcfile"]) == ["pretrain", "adapt", "summarize"]
    summarize = yaml.safe_load((REPO_ROOT / parameters["dvcfile"]).read_text())["stages"]["summarize"]
    written = [next(iter(o)) if isinstance(o, dict) else o for o in summarize["outs"]]
    assert Path(parameters["summary_file"]).relative_to("ablation").as_posix() in written


@pytest.mark.slow
def test_prefect_deploy_all_creates_scheduled_deployments(prefect_server, tmp_path: Path) -> None:
    """The real CLI, ``prefect deploy --all`` from the repo root, against the temporary server."""
    from prefect.client.orchestration import get_client

    deploy_all(tmp_path)
    with get_client(sync_client=True) as client:
        created = {d.name: d for d in client.read_deployments()}
        flows = {f.id: f.name for f in client.read_flows()}
    assert set(created) == set(DEPLOYMENTS)
    for name, spec in DEPLOYMENTS.items():
        deployment = created[name]
        assert deployment.work_pool_name == POOL
        assert deployment.entrypoint == spec["entrypoint"]
        assert deployment.parameters == spec["parameters"]
        assert deployment.pull_steps == PREFECT_YAML["pull"]
        assert flows[deployment.flow_id] == load_flow(spec["entrypoint"]).name
        assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules] == [
            (s["cron"], s["timezone"], True) for s in spec.get("schedules") or []
        ]
