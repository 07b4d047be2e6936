"""The seed x variant ablation (``ablation/``, ``dacs_uda.ablation``): config, summary, and a tiny run
that must reproduce the project's own stages exactly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from dacs_uda import ablation
from dacs_uda.ablation import load_config, run_params
from dacs_uda.ablation_summary import write_summary
from dacs_uda.config import ConfigError, parse_params
from dacs_uda.labels import CLASS_NAMES
from dacs_uda.models.checkpoint import load_checkpoint
from dacs_uda.stages import data as data_stage
from dacs_uda.stages import evaluate, prepare, train, validate

REPO = Path(__file__).resolve().parents[2]
STRATEGIES = {
    "warmup": "adapt.optim.warmup_iters",
    "rcs": "adapt.rcs.enabled",
    "fd": "adapt.fd.enabled",
    "mic": "adapt.mic.enabled",
}


def test_the_repository_ablation_is_dacs_each_strategy_and_all_four() -> None:
    config = load_config(REPO / "ablation/params.yaml")
    assert list(config.variants) == ["dacs", *STRATEGIES, "all_four"]
    assert config.variants["dacs"] == () and config.base == () and len(config.seeds) == 3
    for name, key in STRATEGIES.items():
        assert [o.split("=")[0] for o in config.variants[name]] == [key]
    singles = sorted(o for name in STRATEGIES for o in config.variants[name])
    assert sorted(config.variants["all_four"]) == singles


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"seeds": [0, 0], "variants": {"a": []}}, "distinct"),
        ({"seeds": [0], "variants": {}}, "at least one"),
        ({"seeds": [0], "variants": {"Bad-Name": []}}, "lower-case"),
        ({"seeds": [0], "variants": {"source_only": []}}, "lower-case"),
        ({"seeds": [0], "variants": {"a": ["adapt.rcs.enabled"]}}, "key=value"),
        ({"seeds": [0], "variants": {"a": ["seed=3"]}}, "sets seed"),
        ({"seeds": [0], "base": ["evaluate.models={}"], "variants": {"a": []}}, "base"),
        ({"seeds": [0], "variants": {"a": []}, "rare": ["bus", "tram"]}, "tram"),
        ({"seeds": [0], "variants": {"a": []}, "sedes": [1]}, "unknown keys"),
        ({"variants": {"a": []}}, "missing key 'seeds'"),
    ],
)
def test_bad_ablation_params_are_rejected(tmp_path: Path, raw: dict, match: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_run_params_apply_seed_and_overrides_and_score_only_the_run() -> None:
    project = yaml.safe_load((REPO / "params.yaml").read_text())
    params = run_params(
        project, 2, ("adapt.rcs.enabled=true", "adapt.optim.warmup_iters=30"), {"rcs": "m.pt"}
    )
    assert params.seed == 2 and params.adapt.rcs.enabled and params.adapt.optim.warmup_iters == 30
    assert params.evaluate.models == {"rcs": "m.pt"} and params.evaluate.save_predictions == []
    assert params.pretrain == parse_params(project).pretrain  # the rest is the project's
    with pytest.raises(ConfigError, match="adapt.rcs.enable"):
        run_params(project, 0, ("adapt.rcs.enable=true",), {})
    without_pretrain = {**project, "runs": {"adapt": {"start": "models/init/coco.pth"}}}
    with pytest.raises(ConfigError):
        run_params(without_pretrain, 0, (), {})


def _write_run(runs: Path, variant: str, seed: int, miou: float, iou: dict[str, float | None]) -> None:
    full = {name: iou.get(name, 10.0) for name in CLASS_NAMES}
    run = {
        "variant": variant,
        "seed": seed,
        "mIoU": miou,
        "never_predicted": sum(v == 0 for v in full.values()),
    }
    (runs / f"seed{seed}").mkdir(parents=True, exist_ok=True)
    (runs / f"seed{seed}" / f"{variant}.json").write_text(json.dumps({**run, "iou": full}))
    curve = "step,mIoU_student,mIoU_teacher\n" + "".join(f"{s},{miou + s / 100},0\n" for s in (200, 400))
    (runs / f"seed{seed}" / f"{variant}_validation.csv").write_text(curve)


def test_summary_is_mean_and_std_over_seeds_and_paired_differences(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed, (so, dacs, rcs) in enumerate([(17.0, 20.0, 21.0), (18.0, 22.0, 24.0)]):
        _write_run(runs, "source_only", seed, so, {"bus": 0.0, "rider": None})
        _write_run(
            runs, "dacs", seed, dacs, {"bus": 0.0, "rider": 4.0 + 2 * seed, "train": 0.0 if seed else 1.0}
        )
        _write_run(runs, "rcs", seed, rcs, {"bus": 2.0 * seed, "rider": 8.0})
    write_summary(runs, (0, 1), ["dacs", "rcs"], ("bus", "rider"), tmp_path)

    metrics = json.loads((tmp_path / "summary.json").read_text())
    assert list(metrics) == ["source_only", "dacs", "rcs"]
    assert metrics["dacs"] == {"mIoU": 21.0, "mIoU_std": 1.41, "rare_mIoU": 2.5, "rare_mIoU_std": 0.71}
    # rcs - dacs seed by seed: +1 and +2 (mIoU), +2 and +2 (rare mean)
    assert metrics["rcs"] == {
        "mIoU": 22.5,
        "mIoU_std": 2.12,
        "delta_mIoU": 1.5,
        "delta_mIoU_std": 0.71,
        "rare_mIoU": 4.5,
        "rare_mIoU_std": 0.71,
    }
    table = (tmp_path / "summary.md").read_text().splitlines()
    # rare mean: per seed over the rare classes present (rider is absent for source-only), then ± std
    assert table[2] == (
        "| source_only | 0, 1 | 17.5 ± 0.7 | -3.5 ± 0.7 | 0/2 | 0.0 ± 0.0 | -2.5 ± 0.7 | 1 / 1 | bus |"
    )
    assert (
        table[3] == "| dacs | 0, 1 | 21.0 ± 1.4 | – | – | 2.5 ± 0.7 | – | 1 / 2 | bus |"
    )  # train: 1.0 in seed 0
    assert table[4] == "| rcs | 0, 1 | 22.5 ± 2.1 | +1.5 ± 0.7 | 2/2 | 4.5 ± 0.7 | +2.0 ± 0.0 | 1 / 0 | – |"
    assert table[6:8] == ["| variant | bus | rider |", "|---|---:|---:|"]  # the rare classes
    assert table[10] == "| rcs | 1.0 ± 1.4 | 8.0 ± 0.0 |"
    iou_rows = (tmp_path / "summary_iou.csv").read_text().splitlines()
    assert "rcs,bus,1.0,1.41" in iou_rows and len(iou_rows) == 1 + 3 * 19 - 1  # no rider: source-only
    assert (tmp_path / "summary_validation.csv").read_text().splitlines() == [
        "step,dacs,rcs",
        "200,23.0,24.5",
        "400,25.0,26.5",
    ]


def test_a_missing_run_names_the_stage_that_makes_it(tmp_path: Path) -> None:
    for seed in (0, 1):
        _write_run(tmp_path, "source_only", seed, 17.0, {})
    _write_run(tmp_path, "dacs", 0, 20.0, {})
    with pytest.raises(FileNotFoundError, match=r"dvc repro ablation/dvc.yaml:adapt@1-dacs"):
        write_summary(tmp_path, (0, 1), ["dacs"], (), tmp_path)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline up to the evaluation of source-only and DACS, in a temporary project."""
    from tests.conftest import tiny_params, write_params

    root = tmp_path_factory.mktemp("ablation_project")
    params = tiny_params()
    params.evaluate = dataclasses.replace(
        params.evaluate,
        models={"source_only": "models/trained/pretrain.pt", "dacs": "models/trained/adapt.pt"},
        save_predictions=[],
        num_samples=0,
    )
    write_params(root, params)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for main in (data_stage.main, validate.main, prepare.main):
            assert main() == 0
        for section in ("pretrain", "adapt"):
            assert train.main(["--section", section]) == 0
        assert evaluate.main() == 0
    return root


def test_a_tiny_ablation_reproduces_the_projects_own_stages(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = project / "ablation"
    folder.mkdir()
    variants = {"dacs": [], "warmup": ["adapt.optim.warmup_iters=2"]}
    (folder / "params.yaml").write_text(yaml.safe_dump({"seeds": [0], "variants": variants, "rare": ["bus"]}))
    monkeypatch.chdir(folder)
    assert ablation.main(["pretrain", "--seed", "0"]) == 0
    for variant in variants:
        assert ablation.main(["adapt", "--seed", "0", "--variant", variant]) == 0
    assert ablation.main(["summarize"]) == 0

    ours = load_checkpoint(folder / "models/seed0/pretrain.pt")["model"]
    theirs = load_checkpoint(project / "models/trained/pretrain.pt")["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    project_scores = json.loads((project / "metrics/eval.json").read_text())
    for variant, model in (("source_only", "source_only"), ("dacs", "dacs")):
        run = json.loads((folder / "runs/seed0" / f"{variant}.json").read_text())
        assert run["mIoU"] == project_scores[model]["mIoU"]
    warmup = json.loads((folder / "runs/seed0/warmup.json").read_text())
    assert warmup["overrides"] == ["adapt.optim.warmup_iters=2"]
    assert not any((folder / "work").rglob("*.pt"))  # finished runs leave only their scores
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["dacs"]["mIoU"] == project_scores["dacs"]["mIoU"] and summary["dacs"]["mIoU_std"] == 0.0
