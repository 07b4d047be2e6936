"""The sweep flow: one ``dvc exp run --temp`` per point, ``dvc exp show --json`` parsing, mean ± std."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from flows import common, sweep
from flows.sweep import dacs_sweep
from tests.flows.conftest import TOY_PARAMS


def exp_rev(name: str, threshold: float, seed: int, miou: float | None) -> dict:
    """One experiment revision as DVC 3.x ``exp show --json`` writes it."""
    metrics = (
        {"metrics/eval.json": {"data": {"source_only": {"mIoU": 10.0}, "dacs": {"mIoU": miou}}}}
        if miou is not None
        else {"metrics/eval.json": {"error": {"type": "FileNotFoundError", "msg": "missing"}}}
    )
    params = {"params.yaml": {"data": {"seed": seed, "adapt": {"pseudo_threshold": threshold}}}}
    return {
        "revs": [
            {
                "rev": f"{abs(hash(name)):040x}"[:40],
                "name": name,
                "data": {
                    "rev": "x",
                    "params": params,
                    "metrics": metrics,
                    "deps": {},
                    "outs": {},
                    "meta": {},
                },
                "error": None,
                "experiments": None,
            }
        ],
        "executor": None,
        "name": name,
    }


POINTS = {  # (threshold, seed) -> dacs mIoU
    (0.9, 0): 40.0,
    (0.9, 1): 42.0,
    (0.9, 2): 47.0,
    (0.968, 0): 45.5,
    (0.968, 1): 44.5,
}


def fake_show(sweep_id: str, points: dict[tuple[float, int], float | None]) -> list:
    """``dvc exp show --json`` output: workspace, then HEAD with the sweep's and an unrelated experiment."""
    experiments = [exp_rev(sweep.point_name(sweep_id, t, s), t, s, m) for (t, s), m in points.items()]
    experiments.append(exp_rev("someone-elses-exp", 0.9, 0, 99.0))
    head = {"rev": "a" * 40, "name": "main", "data": {}, "error": None, "experiments": experiments}
    return [{"rev": "workspace", "name": None, "data": {}, "error": None, "experiments": None}, head]


class FakeDvc:
    """``run_command`` and ``read_command`` for the sweep: records runs, serves canned ``exp show`` JSON."""

    def __init__(self, shown: list, fail: set[str] | None = None) -> None:
        self.shown = shown
        self.fail = fail or set()
        self.runs: list[list[str]] = []

    def run(self, cmd: list[str], cwd: Path, on_line) -> int:
        self.runs.append(list(cmd))
        on_line("Running stage 'adapt':")
        return 1 if cmd[cmd.index("-n") + 1] in self.fail else 0

    def read(self, cmd: list[str], cwd: Path) -> str:
        assert cmd == ["dvc", "exp", "show", "--json"]
        return json.dumps(self.shown)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TOY_PARAMS))
    return tmp_path


def install(monkeypatch: pytest.MonkeyPatch, dvc: FakeDvc) -> FakeDvc:
    monkeypatch.setattr(common, "run_command", dvc.run)
    monkeypatch.setattr(common, "read_command", dvc.read)
    return dvc


def test_one_temp_experiment_per_point_and_exact_mean_std(
    monkeypatch: pytest.MonkeyPatch, repo: Path
) -> None:
    dvc = install(monkeypatch, FakeDvc(fake_show("sw", POINTS)))
    result = dacs_sweep.fn(thresholds=[0.9, 0.968], seeds=[0, 1, 2], sweep_id="sw", repo=str(repo))
    assert dvc.runs[0] == [
        "dvc", "exp", "run", "--temp", "-n", "sw-t0.9-s0", "-S", "adapt.pseudo_threshold=0.9", "-S", "seed=0",
    ]  # fmt: skip
    assert [cmd[5] for cmd in dvc.runs] == [
        "sw-t0.9-s0", "sw-t0.9-s1", "sw-t0.9-s2", "sw-t0.968-s0", "sw-t0.968-s1", "sw-t0.968-s2",
    ]  # fmt: skip
    low, high = result["summary"]
    # 40, 42, 47: mean 43, sample variance ((-3)^2 + (-1)^2 + 4^2) / 2 = 13
    assert low == {"threshold": 0.9, "seeds": [0, 1, 2], "n": 3, "mean": 43.0, "std": pytest.approx(13**0.5)}
    # 45.5, 44.5 (seed 2 absent from exp show): mean 45, sample std sqrt(0.5)
    assert high["seeds"] == [0, 1] and high["mean"] == 45.0 and high["std"] == pytest.approx(0.5**0.5)
    assert high["std"] == pytest.approx(statistics.stdev([45.5, 44.5]))
    assert [p["name"] for p in result["points"]] == [
        "sw-t0.9-s0",
        "sw-t0.9-s1",
        "sw-t0.9-s2",
        "sw-t0.968-s0",
        "sw-t0.968-s1",
    ]  # fmt: skip  (someone-elses-exp is not the sweep's)


def test_point_without_metrics_is_left_out_of_the_mean() -> None:
    shown = fake_show("s", {(0.5, 0): 30.0, (0.5, 1): None})
    rows = sweep.collect_results(shown, {"s-t0.5-s0": (0.5, 0), "s-t0.5-s1": (0.5, 1)}, "metrics/eval.json")
    assert [r["mIoU"] for r in rows] == [30.0, None]
    assert sweep.summarise(rows) == [{"threshold": 0.5, "seeds": [0], "n": 1, "mean": 30.0, "std": 0.0}]


@pytest.mark.parametrize("garbage", [None, {}, [], [{"experiments": [{"revs": [None, {"data": 1}]}]}], ["x"]])
def test_malformed_exp_show_yields_nothing(garbage) -> None:
    assert sweep.collect_results(garbage, {"a": (0.9, 0)}, "metrics/eval.json") == []


def test_failed_point_does_not_stop_the_sweep(
    prefect_server, monkeypatch: pytest.MonkeyPatch, repo: Path
) -> None:
    from prefect.artifacts import Artifact

    points = {k: v for k, v in POINTS.items() if k != (0.9, 1)}
    dvc = install(monkeypatch, FakeDvc(fake_show("f", points), fail={"f-t0.9-s1"}))
    state = dacs_sweep(thresholds=[0.9, 0.968], seeds=[0, 1], sweep_id="f", repo=str(repo), return_state=True)
    assert state.is_failed()
    with pytest.raises(RuntimeError, match=r"1 of 4 sweep points failed: \['f-t0.9-s1'\]"):
        state.result()
    assert len(dvc.runs) == 4  # the points after the failed one still ran
    artifact = Artifact.get(sweep.ARTIFACT_KEY)
    assert artifact.flow_run_id == state.state_details.flow_run_id
    assert "## Failed points" in artifact.data and "- f-t0.9-s1" in artifact.data
    assert "| 0.9 | 0 | 1 | 40.00 ± 0.00 |" in artifact.data


def test_flow_run_artifact_has_mean_std_points_and_context(
    prefect_server, monkeypatch: pytest.MonkeyPatch, repo: Path
) -> None:
    from prefect.artifacts import Artifact

    install(monkeypatch, FakeDvc(fake_show("ok", POINTS)))
    state = dacs_sweep(
        thresholds=[0.9, 0.968], seeds=[0, 1, 2], sweep_id="ok", repo=str(repo), return_state=True
    )
    assert state.is_completed()
    text = Artifact.get(sweep.ARTIFACT_KEY).data
    assert "| 0.9 | 0, 1, 2 | 3 | 43.00 ± 3.61 |" in text  # sqrt(13) = 3.6056
    assert "| 0.968 | 0, 1 | 2 | 45.00 ± 0.71 |" in text
    assert "| 0.9 | 2 | 47 | ok-t0.9-s2 |" in text
    assert "| git revision | unknown |" in text and "| seed | 0 |" in text


@pytest.mark.slow
def test_real_dvc_sweep_on_toy_repo(prefect_server, toy_repo: Path) -> None:
    """Four real ``dvc exp run --temp`` and a real ``dvc exp show --json``; the workspace stays untouched."""
    params_before = (toy_repo / "params.yaml").read_text()
    result = dacs_sweep(thresholds=[0.9, 0.95], seeds=[0, 2], sweep_id="toy", repo=str(toy_repo))
    # toy mIoU = 40 + 100 * (threshold - 0.9) + seed
    by_threshold = {s["threshold"]: s for s in result["summary"]}
    assert by_threshold[0.9]["mean"] == pytest.approx(41.0) and by_threshold[0.9]["seeds"] == [0, 2]
    assert by_threshold[0.95]["mean"] == pytest.approx(46.0)
    assert by_threshold[0.9]["std"] == pytest.approx(2**0.5) == by_threshold[0.95]["std"]
    assert {p["name"] for p in result["points"]} == {
        "toy-t0.9-s0",
        "toy-t0.9-s2",
        "toy-t0.95-s0",
        "toy-t0.95-s2",
    }
    assert (toy_repo / "params.yaml").read_text() == params_before
    assert not (toy_repo / "metrics" / "eval.json").exists()  # --temp: results live in the experiments
