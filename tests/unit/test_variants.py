"""Variant analysis: runs grouped by variant, mean ± std, conflation counts, experiment commits read."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from dacs_uda.labels import CLASS_NAMES
from dacs_uda.utils.stats import mean_std
from dacs_uda.variants import (
    Result,
    experiment_revisions,
    main,
    markdown,
    revision_results,
    run_results,
    summarize,
)


def per_class_csv(models: dict[str, float | None]) -> str:
    """Every class gets the model's value, except 'train', absent (empty) for all models."""
    rows = ["class,model,iou"]
    for model, value in models.items():
        for name in CLASS_NAMES:
            rows.append(f"{name},{model},{'' if name == 'train' or value is None else value}")
    return "\n".join(rows) + "\n"


def eval_json(**miou: float) -> dict:
    """An ``eval.json`` as the evaluate stage writes it: numbers only, one entry per model."""
    return {model: {"mIoU": value, "mIoU16": 0.0, "never_predicted": 2} for model, value in miou.items()}


# Metrics files written before the lineage moved to checkpoints and ONNX metadata also carry it.
OLD_LINEAGE = {"lineage": {"git_revision": "abc", "seed": 0}}


def params(method: str, seed: int) -> dict:
    return {
        "seed": seed,
        "adapt": {"method": method},
        "evaluate": {
            "metrics": "metrics/eval.json",
            "per_class": "metrics/per_class_iou.csv",
            "confusion": "metrics/confusion.csv",
        },
    }


def confusion_csv(sidewalk_as_road: dict[str, float]) -> str:
    """The rows of confusion.csv that matter here, plus a distractor (road predicted as sidewalk)."""
    rows = ["model,actual,predicted,share"]
    for model, share in sidewalk_as_road.items():
        rows += [f"{model},sidewalk,road,{share}", f"{model},road,sidewalk,99.0"]
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize("extra", [{}, OLD_LINEAGE], ids=["numbers-only", "old-with-lineage"])
def test_run_results_maps_models_to_variants(extra: dict) -> None:
    results = run_results(
        params("source_only", 3),
        {**extra, **eval_json(source_only=10.0, dacs=12.5, oracle=30.0)},
        per_class_csv({"source_only": 1.0, "dacs": 2.0, "oracle": 3.0}),
        confusion_csv({"source_only": 40.0, "dacs": 61.5}),
    )
    assert [(r.variant, r.seed, r.miou, r.never_predicted, r.conflated) for r in results] == [
        ("source_only", 3, 10.0, 2, 40.0),
        ("source_only_steps", 3, 12.5, 2, 61.5),
        ("oracle", 3, 30.0, 2, None),  # no row: unknown, not 0
    ]
    assert results[1].iou["road"] == 2.0 and results[1].iou["train"] is None


def test_mean_std_is_the_sample_std() -> None:
    """The aggregate the tables report (``utils.stats.mean_std``): n - 1 in the denominator, 0 for one run."""
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([4.0]) == (4.0, 0.0)


def result(variant: str, seed: int, miou: float, never: int = 0, road: float | None = 50.0) -> Result:
    iou = {name: None for name in CLASS_NAMES} | {"road": road}
    return Result(variant, seed, miou, iou, never, conflated=10.0 * seed + 2.4)


def test_summarize_orders_variants_dedupes_seeds_and_skips_absent_classes() -> None:
    summaries = summarize(
        [
            result("dacs", 1, 20.0, 3, road=60.0),
            result("dacs", 0, 10.0, 5, road=40.0),
            result("source_only", 0, 5.0, 7),
            result("dacs", 0, 99.0, 0),  # the same seed again (another experiment's copy): the first wins
        ]
    )
    assert [s.variant for s in summaries] == ["source_only", "dacs"]
    dacs = summaries[1]
    assert dacs.seeds == (0, 1)
    assert dacs.miou == (15.0, pytest.approx(7.0710678))
    assert dacs.never_predicted == (5, 3)
    assert dacs.iou["road"] == (50.0, pytest.approx(14.1421356))
    assert dacs.iou["sky"] is None


def test_markdown_tables() -> None:
    text = markdown(summarize([result("dacs", 0, 10.0, 5), result("dacs", 1, 20.0, 3)]))
    lines = text.splitlines()
    assert lines[2] == "| dacs | 0, 1 | 15.0 ± 7.1 | 5 / 3 | 2 / 12 |"
    assert lines[4].startswith("| variant | road | sidewalk |")
    assert lines[6].startswith("| dacs | 50.0 ± 0.0 | – |")
    single = markdown(summarize([result("cutmix", 2, 12.34, 1)])).splitlines()
    assert single[2] == "| cutmix | 2 | 12.3 | 1 | 22 |"  # one run: no std


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def commit_run(repo: Path, method: str, seed: int, dacs: float, extra: dict | None = None) -> str:
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "params.yaml").write_text(yaml.safe_dump(params(method, seed)))
    (repo / "metrics" / "eval.json").write_text(
        json.dumps({**(extra or {}), **eval_json(source_only=5.0, dacs=dacs, oracle=30.0)})
    )
    (repo / "metrics" / "per_class_iou.csv").write_text(
        per_class_csv({"source_only": 1, "dacs": dacs, "oracle": 3})
    )
    if extra is None:  # the older (lineage-carrying) run also predates the confusion matrix
        (repo / "metrics" / "confusion.csv").write_text(confusion_csv({"dacs": dacs * 2}))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", f"{method} {seed}")
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def exp_repo(tmp_path: Path) -> Path:
    """HEAD is a dacs seed-0 run (an older metrics file, with lineage); two experiment refs as `dvc exp run`
    leaves them (classmix seeds 0, 1; numbers-only metrics)."""
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    base = commit_run(tmp_path, "dacs", 0, 20.0, OLD_LINEAGE)
    for seed, miou in ((0, 11.0), (1, 13.0)):
        rev = commit_run(tmp_path, "classmix", seed, miou)
        git(tmp_path, "update-ref", f"refs/exps/ab/{base}/classmix-s{seed}", rev)
        git(tmp_path, "reset", "-q", "--hard", base)
    return tmp_path


def test_reads_head_and_experiment_refs(exp_repo: Path, tmp_path: Path) -> None:
    revs = experiment_revisions(exp_repo)
    assert revs[0] == "HEAD" and len(revs) == 3
    variants = sorted((r.variant, r.seed, r.miou) for rev in revs for r in revision_results(exp_repo, rev))
    assert ("classmix", 1, 13.0) in variants and ("dacs", 0, 20.0) in variants
    out = tmp_path / "out"
    assert main(["--repo", str(exp_repo), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "variants_iou.csv").open()))
    classmix_road = next(r for r in rows if r["variant"] == "classmix" and r["class"] == "road")
    assert (classmix_road["iou"], classmix_road["std"]) == ("12.0", "1.41")
    table = (out / "variants.md").read_text()
    assert "| classmix | 0, 1 | 12.0 ± 1.4 | 2 / 2 | 22 / 26 |" in table
    assert "| dacs | 0 | 20.0 | 2 | – |" in table


def test_commit_without_evaluation_is_skipped_and_no_runs_is_an_error(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params("dacs", 0)))
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "no metrics yet")
    assert revision_results(tmp_path, "HEAD") == []
    assert main(["--repo", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()
