"""The retrain flow: experiment command, promotion rule, lineage gate, atomic copy, decision log, artifact,
and the registry tags of the named DVC artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dvc.repo import Repo

from dacs_uda.lineage import git_revision
from flows import common, retrain
from flows.retrain import LineageIncomplete, RegistryError, dacs_retrain
from tests.flows.conftest import COMPLETE_LINEAGE, TOY_ARTIFACTS, commit_git_dvc_repo, git
from tests.flows.toy_onnx import write_onnx


class FakeExperiment:
    """Stands in for ``run_command`` running ``dvc exp run``: writes the metrics (numbers only) and the ONNX
    file (with its lineage) a run would, and records the workspace as an experiment commit where DVC does
    (``refs/exps/<HEAD[:2]>/<HEAD[2:]>/<name>``)."""

    def __init__(self, miou: float, lineage: dict | None = None, returncode: int = 0) -> None:
        self.miou = miou
        self.lineage = dict(COMPLETE_LINEAGE) if lineage is None else lineage
        self.returncode = returncode
        self.calls: list[list[str]] = []
        self.commits: list[str] = []
        self.records = True  # False: the run leaves no experiment commit

    def __call__(self, cmd: list[str], cwd: Path, on_line) -> int:
        self.calls.append(list(cmd))
        on_line("Running stage 'adapt':")
        if self.returncode == 0:
            metrics = {"source_only": {"mIoU": 12.5}, "dacs": {"mIoU": self.miou}}
            (cwd / "metrics").mkdir(exist_ok=True)
            (cwd / "metrics" / "eval.json").write_text(json.dumps(metrics))
            write_onnx(cwd / "models" / "dacs.onnx", self.lineage)
            if self.records:
                self.commits.append(record_experiment(cwd, cmd[cmd.index("-n") + 1]))
        return self.returncode


def record_experiment(root: Path, name: str) -> str:
    """Commit the workspace under the experiment ref of ``name`` (HEAD and the branch stay put)."""
    head = git(root, "rev-parse", "HEAD").strip()
    git(root, "add", "-A")
    tree = git(root, "write-tree").strip()
    commit = git(root, "commit-tree", tree, "-p", head, "-m", f"experiment {name}").strip()
    git(root, "update-ref", f"refs/exps/{head[:2]}/{head[2:]}/{name}", commit)
    return commit


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A committed git + DVC repo declaring the artifacts; the fake experiment writes its outputs."""
    return commit_git_dvc_repo(tmp_path, TOY_ARTIFACTS)


def tags(repo: Path) -> list[str]:
    return git(repo, "tag", "--list").split()


def fake(monkeypatch: pytest.MonkeyPatch, miou: float, lineage: dict | None = None) -> FakeExperiment:
    runner = FakeExperiment(miou, lineage)
    monkeypatch.setattr(common, "run_command", runner)
    return runner


def deploy(repo: Path, miou: float) -> bytes:
    """Put a model with ``miou`` in place as the deployed one; returns its bytes."""
    target = repo / "models" / "deployed"
    write_onnx(target / "model.onnx", {**COMPLETE_LINEAGE, "seed": 99})
    (target / "deployed.json").write_text(json.dumps({"mIoU": miou, "lineage": {}}))
    return (target / "model.onnx").read_bytes()


def decisions(repo: Path) -> list[dict]:
    lines = (repo / "models" / "deployed" / "decisions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_experiment_command_has_name_and_overrides() -> None:
    assert common.experiment_command({"seed": 1, "adapt.pseudo_threshold": 0.9}, "r1") == [
        "dvc", "exp", "run", "-n", "r1", "-S", "seed=1", "-S", "adapt.pseudo_threshold=0.9",
    ]  # fmt: skip
    overrides = {"deterministic": True, "model.depths": [1, 2]}
    assert common.experiment_command(overrides, "r2", temp=True)[3:] == [
        "--temp", "-n", "r2", "-S", "deterministic=true", "-S", "model.depths=[1, 2]",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="bad override key"):
        common.override_args({"a=b": 1})


def test_first_model_is_promoted_with_record_and_decision(
    monkeypatch: pytest.MonkeyPatch, repo: Path
) -> None:
    runner = fake(monkeypatch, 41.5)
    decision = dacs_retrain.fn(overrides={"seed": 3}, experiment_name="exp-a", repo=str(repo))
    assert runner.calls == [["dvc", "exp", "run", "-n", "exp-a", "-S", "seed=3"]]
    assert decision["promoted"] is True and decision["reason"] == "promoted: nothing deployed yet"
    deployed = repo / "models" / "deployed"
    assert (deployed / "model.onnx").read_bytes() == (repo / "models" / "dacs.onnx").read_bytes()
    record = json.loads((deployed / "deployed.json").read_text())
    assert record["mIoU"] == 41.5 and record["lineage"] == COMPLETE_LINEAGE
    assert record["experiment"] == "exp-a" and record["overrides"] == {"seed": 3}
    assert set(record["metrics"]) == {"source_only", "dacs"}
    assert record["promoted_at"] == decision["timestamp"] and len(record["sha256"]) == 64
    [commit] = runner.commits
    assert decision["registered"] == {
        "artifact": "dacs-onnx",
        "version": "v1.0.0",
        "version_tag": "dacs-onnx@v1.0.0",
        "stage": "prod",
        "stage_tag": "dacs-onnx#prod#1",
        "commit": commit,
    }
    assert record["registered"] == decision["registered"]
    assert tags(repo) == ["dacs-onnx#prod#1", "dacs-onnx@v1.0.0"]
    for tag in tags(repo):  # annotated (GTO ignores lightweight tags), on the experiment's commit
        assert git(repo, "cat-file", "-t", tag).strip() == "tag"
        assert git(repo, "rev-parse", f"{tag}^{{commit}}").strip() == commit
    message = git(repo, "tag", "--list", "--format=%(contents:subject)", "dacs-onnx@v1.0.0").strip()
    assert message == "dacs-onnx v1.0.0: experiment exp-a, dacs mIoU 41.5"
    [logged] = decisions(repo)
    assert logged == decision
    assert (logged["candidate_mIoU"], logged["deployed_mIoU"]) == (41.5, None)
    left = sorted(path.name for path in deployed.iterdir())
    assert left == ["decisions.jsonl", "deployed.json", "model.onnx"]  # no temporary file or folder


@pytest.mark.parametrize("miou", [40.0, 40.5])
def test_equal_or_better_is_promoted(monkeypatch: pytest.MonkeyPatch, repo: Path, miou: float) -> None:
    old = deploy(repo, 40.0)
    fake(monkeypatch, miou)
    decision = dacs_retrain.fn(repo=str(repo))
    assert decision["promoted"] is True
    assert decision["reason"] == f"promoted: candidate mIoU {miou:g} >= deployed 40"
    assert (repo / "models/deployed/model.onnx").read_bytes() != old
    assert json.loads((repo / "models/deployed/deployed.json").read_text())["mIoU"] == miou
    assert decisions(repo)[-1]["deployed_mIoU"] == 40.0


def test_worse_is_refused_and_logged(monkeypatch: pytest.MonkeyPatch, repo: Path) -> None:
    old = deploy(repo, 40.0)
    fake(monkeypatch, 39.99)
    decision = dacs_retrain.fn(repo=str(repo))
    assert decision["promoted"] is False
    assert decision["reason"] == "refused: candidate mIoU 39.99 < deployed 40"
    assert (repo / "models/deployed/model.onnx").read_bytes() == old
    assert json.loads((repo / "models/deployed/deployed.json").read_text())["mIoU"] == 40.0
    [logged] = decisions(repo)
    assert (logged["candidate_mIoU"], logged["deployed_mIoU"], logged["promoted"]) == (39.99, 40.0, False)
    assert logged["registered"] is None and tags(repo) == []


@pytest.mark.parametrize(
    ("lineage", "missing"),
    [
        ({**COMPLETE_LINEAGE, "data_version": "unknown"}, "data_version"),
        ({k: v for k, v in COMPLETE_LINEAGE.items() if k != "params_hash"}, "params_hash"),
        ({**COMPLETE_LINEAGE, "git_revision": ""}, "git_revision"),
        (None, "git_revision, params_hash, seed, data_version"),  # no lineage at all
    ],
)
def test_incomplete_lineage_is_refused_even_when_better(
    monkeypatch: pytest.MonkeyPatch, repo: Path, lineage: dict | None, missing: str
) -> None:
    old = deploy(repo, 10.0)
    runner = fake(monkeypatch, 90.0)
    runner.lineage = lineage
    decision = dacs_retrain.fn(repo=str(repo))
    assert decision["promoted"] is False
    assert decision["reason"] == f"refused: incomplete lineage (missing or unknown: {missing})"
    assert (repo / "models/deployed/model.onnx").read_bytes() == old
    assert decisions(repo)[-1]["reason"] == decision["reason"]
    assert decision["registered"] is None and tags(repo) == []


def test_second_promotion_is_v2_and_dvc_resolves_both(monkeypatch: pytest.MonkeyPatch, repo: Path) -> None:
    runner = fake(monkeypatch, 41.0)
    dacs_retrain.fn(experiment_name="exp-a", repo=str(repo))
    runner.miou = 42.0
    second = dacs_retrain.fn(experiment_name="exp-b", repo=str(repo))
    assert (second["registered"]["version_tag"], second["registered"]["stage_tag"]) == (
        "dacs-onnx@v2.0.0",
        "dacs-onnx#prod#2",
    )
    assert tags(repo) == ["dacs-onnx#prod#1", "dacs-onnx#prod#2", "dacs-onnx@v1.0.0", "dacs-onnx@v2.0.0"]
    first_commit, second_commit = runner.commits
    # DVC's own reading of the tags (what `dvc artifacts get` downloads from).
    with Repo(str(repo)) as dvc_repo:
        assert dvc_repo.artifacts.get_rev("dacs-onnx", stage="prod") == second_commit
        assert dvc_repo.artifacts.get_rev("dacs-onnx") == second_commit  # the latest version
        assert dvc_repo.artifacts.get_rev("dacs-onnx", version="v1.0.0") == first_commit


def test_numbers_follow_existing_tags_of_that_artifact_only(repo: Path) -> None:
    for tag in ["dacs-onnx@v3.1.0", "dacs-onnx#staging#7", "dacs-onnx-fp16@v9.0.0", "dacs-onnx-fp16#prod#12"]:
        git(repo, "tag", "-a", tag, "-m", "earlier")
    assert retrain.next_tags(repo, "dacs-onnx", "prod") == ("dacs-onnx@v4.0.0", "dacs-onnx#prod#8")
    assert retrain.next_tags(repo, "other", "prod") == ("other@v1.0.0", "other#prod#1")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"artifact": "missing-model"}, "declares no artifact 'missing-model'"),
        ({"artifact": "Dacs_ONNX"}, "artifact 'Dacs_ONNX': use lowercase letters"),
        ({"stage": "Prod"}, "stage 'Prod': use lowercase letters"),
    ],
)
def test_unregistrable_artifact_fails_before_training(
    monkeypatch: pytest.MonkeyPatch, repo: Path, kwargs: dict, error: str
) -> None:
    runner = fake(monkeypatch, 90.0)
    with pytest.raises(RegistryError, match=error):
        dacs_retrain.fn(repo=str(repo), **kwargs)
    assert runner.calls == [] and not (repo / "models").exists()


def test_artifact_of_another_file_is_not_promoted(monkeypatch: pytest.MonkeyPatch, repo: Path) -> None:
    fake(monkeypatch, 90.0)
    error = "'dacs-onnx-fp16' is models/dacs_fp16.onnx, but the candidate is models/dacs.onnx"
    with pytest.raises(RegistryError, match=error):
        dacs_retrain.fn(repo=str(repo), artifact="dacs-onnx-fp16")
    assert tags(repo) == [] and not (repo / "models" / "deployed").exists()


def test_experiment_without_commit_is_not_promoted(monkeypatch: pytest.MonkeyPatch, repo: Path) -> None:
    runner = fake(monkeypatch, 90.0)
    runner.records = False
    with pytest.raises(RegistryError, match="no experiment 'exp-x' on top of"):
        dacs_retrain.fn(experiment_name="exp-x", repo=str(repo))
    assert runner.calls and tags(repo) == [] and not (repo / "models" / "deployed").exists()


def test_promote_itself_refuses_incomplete_lineage(tmp_path: Path) -> None:
    model = write_onnx(tmp_path / "m.onnx", {**COMPLETE_LINEAGE, "seed": None})
    with pytest.raises(LineageIncomplete, match="seed"):
        retrain.promote.fn(str(model), str(tmp_path / "deployed"), {"mIoU": 1.0})
    assert not (tmp_path / "deployed").exists()


def test_seed_zero_counts_as_lineage() -> None:
    candidate = {"mIoU": 1.0, "lineage": {**COMPLETE_LINEAGE, "seed": 0}}
    assert retrain.decide(candidate, None) == (True, "promoted: nothing deployed yet")


def test_failed_experiment_promotes_and_logs_nothing(monkeypatch: pytest.MonkeyPatch, repo: Path) -> None:
    runner = fake(monkeypatch, 99.0)
    runner.returncode = 1
    with pytest.raises(common.CommandFailed, match="exited with code 1"):
        dacs_retrain.fn(repo=str(repo))
    assert not (repo / "models" / "deployed").exists()


def test_custom_deployed_dir(monkeypatch: pytest.MonkeyPatch, repo: Path, tmp_path: Path) -> None:
    fake(monkeypatch, 50.0)
    elsewhere = tmp_path / "serving"
    dacs_retrain.fn(deployed_dir=str(elsewhere), repo=str(repo))
    assert (elsewhere / "model.onnx").is_file() and (elsewhere / "decisions.jsonl").is_file()


def test_flow_run_publishes_decision_artifact(
    prefect_server, monkeypatch: pytest.MonkeyPatch, repo: Path
) -> None:
    from prefect.artifacts import Artifact

    deploy(repo, 40.0)
    fake(monkeypatch, 39.5)
    state = dacs_retrain(overrides={"adapt.pseudo_threshold": 0.9}, repo=str(repo), return_state=True)
    assert state.is_completed()
    decision = state.result()
    assert decision["flow_run_id"] == str(state.state_details.flow_run_id)
    artifact = Artifact.get(retrain.ARTIFACT_KEY)
    assert artifact is not None and artifact.type == "markdown"
    assert artifact.flow_run_id == state.state_details.flow_run_id
    text = artifact.data
    assert "| decision | NOT PROMOTED |" in text
    assert "| candidate mIoU (dacs) | 39.5 |" in text and "| deployed mIoU | 40 |" in text
    assert "| overrides | -S adapt.pseudo_threshold=0.9 |" in text
    assert "| dacs | 39.5 | - | - |" in text
    assert "| data_version | embedded-v1 |" in text
    assert "| registered | - |" in text
    assert f"| git revision | {git_revision(repo)} |" in text
    assert "| seed | 0 |" in text and "| adapt.pseudo_threshold | 0.968 |" in text


@pytest.mark.slow
def test_real_dvc_experiment_promotes_then_refuses(prefect_server, toy_repo: Path) -> None:
    """``dvc exp run`` for real on the toy repo: promotes the first model, refuses a worse seed."""
    first = dacs_retrain(
        overrides={"seed": 2}, experiment_name="toy-a", repo=str(toy_repo), return_state=True
    )
    assert first.is_completed(), first
    assert first.result()["candidate_mIoU"] == pytest.approx(48.8)  # 40 + 100 * 0.068 + 2
    assert first.result()["promoted"] is True
    deployed = toy_repo / "models" / "deployed"
    assert json.loads((deployed / "deployed.json").read_text())["lineage"]["seed"] == 2
    assert first.result()["registered"]["version_tag"] == "dacs-onnx@v1.0.0"
    fetched = toy_repo.parent / "fetched.onnx"
    common.read_command(
        ["dvc", "artifacts", "get", ".", "dacs-onnx", "--stage", "prod", "-o", str(fetched)], toy_repo
    )
    assert fetched.read_bytes() == (deployed / "model.onnx").read_bytes()

    second = dacs_retrain(overrides={"seed": 1}, experiment_name="toy-b", repo=str(toy_repo)).copy()
    assert second["promoted"] is False and second["deployed_mIoU"] == pytest.approx(48.8)
    assert second["git_revision"] == git_revision(toy_repo) and len(second["git_revision"]) >= 40
    assert second["registered"] is None and tags(toy_repo) == ["dacs-onnx#prod#1", "dacs-onnx@v1.0.0"]
    assert [d["experiment"] for d in decisions(toy_repo)] == ["toy-a", "toy-b"]
    shown = json.loads(common.read_command(["dvc", "exp", "show", "--json"], toy_repo))
    names = {exp["name"] for baseline in shown for exp in baseline.get("experiments") or []}
    assert {"toy-a", "toy-b"} <= names
