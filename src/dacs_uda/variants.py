"""The paper's analysis over DVC experiments: per-class IoU, mIoU and class conflation, mean ± std over seeds.

Each DVC experiment (``dvc exp run -S adapt.method=... -S seed=...``) is a git commit under
``refs/exps`` that holds its ``params.yaml``, ``metrics/eval.json``, ``metrics/per_class_iou.csv`` and
``metrics/confusion.csv`` (all ``cache: false``). This module reads those commits, groups the runs by
variant and writes

* ``variants.md``: one table of mIoU, classes never predicted and the share of target sidewalk pixels
  predicted as road (the paper's class conflation, as it shows on the embedded benchmark), one of
  per-class IoU (mean ± std);
* ``variants_iou.csv``: long format (variant, class, iou, std) for the ``grouped_bars`` DVC plot.

Variants: ``source_only`` is the ``pretrain`` checkpoint, ``oracle`` the ``oracle`` checkpoint (both
taken once per seed, whatever the adaptation method), every other variant is the ``adapt`` checkpoint
of one ``adapt.method`` (``source_only_steps`` when that method is ``source_only``).

Run it with ``python -m dacs_uda.variants --repo . --out reports``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dacs_uda.labels import CLASS_NAMES
from dacs_uda.utils.io import atomic_path, write_text
from dacs_uda.utils.logging import setup_logging
from dacs_uda.utils.stats import mean_std

log = logging.getLogger(__name__)

# Display order: baselines, the method, its ablations, the upper bound.
VARIANT_ORDER = (
    "source_only",
    "source_only_steps",
    "pseudo_label",
    "classmix",
    "cutmix",
    "dacs",
    "dist_align",
    "oracle",
)
CHECKPOINT_VARIANTS = {"source_only": "source_only", "oracle": "oracle"}  # eval.json model -> variant
IOU_HEADER = ["variant", "class", "iou", "std"]
CONFLATED = ("sidewalk", "road")  # (actual, predicted): the conflation naive mixing causes here


@dataclass(frozen=True)
class Result:
    """One model of one run: its variant, seed, mIoU, per-class IoU (None: class absent) and conflation."""

    variant: str
    seed: int
    miou: float
    iou: dict[str, float | None]
    never_predicted: int
    conflated: float | None = None  # % of actual CONFLATED[0] pixels predicted as CONFLATED[1]


@dataclass(frozen=True)
class Summary:
    """A variant over its seeds."""

    variant: str
    seeds: tuple[int, ...]
    miou: tuple[float, float]
    iou: dict[str, tuple[float, float] | None]
    never_predicted: tuple[int, ...]
    conflated: tuple[float | None, ...]


def conflation(confusion_csv: str | None) -> dict[str, float]:
    """Model -> share (%) of actual ``CONFLATED[0]`` pixels predicted as ``CONFLATED[1]`` (confusion.csv)."""
    actual, predicted = CONFLATED
    return {
        row["model"]: float(row["share"])
        for row in csv.DictReader(io.StringIO(confusion_csv or ""))
        if row["actual"] == actual and row["predicted"] == predicted
    }


def run_results(
    params: dict, eval_metrics: dict, per_class_csv: str, confusion_csv: str | None = None
) -> list[Result]:
    """The results of one run, from its ``params.yaml``, ``eval.json``, per-class and confusion CSVs.

    Only the models of ``eval.json`` count (dict values with an ``mIoU``): other entries, such as the
    ``lineage`` dict of metrics files written before the lineage moved to checkpoints and ONNX
    metadata, are skipped.
    """
    method = params["adapt"]["method"]
    adapted = "source_only_steps" if method == "source_only" else method
    variants = {**CHECKPOINT_VARIANTS, "dacs": adapted}
    iou: dict[str, dict[str, float | None]] = {}
    for row in csv.DictReader(io.StringIO(per_class_csv)):
        iou.setdefault(row["model"], {})[row["class"]] = float(row["iou"]) if row["iou"] else None
    shares = conflation(confusion_csv)
    return [
        Result(
            variants[model],
            int(params["seed"]),
            float(values["mIoU"]),
            iou[model],
            int(values["never_predicted"]),
            shares.get(model),
        )
        for model, values in eval_metrics.items()
        if isinstance(values, dict) and "mIoU" in values and model in variants
    ]


def summarize(results: Iterable[Result]) -> list[Summary]:
    """Group by variant (one result per variant and seed: the first wins) in ``VARIANT_ORDER``."""
    by_variant: dict[str, dict[int, Result]] = {}
    for result in results:
        by_variant.setdefault(result.variant, {}).setdefault(result.seed, result)
    order = [v for v in VARIANT_ORDER if v in by_variant] + sorted(set(by_variant) - set(VARIANT_ORDER))
    summaries = []
    for variant in order:
        runs = [by_variant[variant][seed] for seed in sorted(by_variant[variant])]
        per_class = {}
        for name in CLASS_NAMES:
            present = [iou for r in runs if (iou := r.iou.get(name)) is not None]
            per_class[name] = mean_std(present) if present else None
        summaries.append(
            Summary(
                variant,
                tuple(r.seed for r in runs),
                mean_std([r.miou for r in runs]),
                per_class,
                tuple(r.never_predicted for r in runs),
                tuple(r.conflated for r in runs),
            )
        )
    return summaries


def plus_minus(value: tuple[float, float] | None, runs: int) -> str:
    """``mean ± std``; the bare value for a single run, whose std says nothing."""
    if value is None:
        return "–"
    return f"{value[0]:.1f}" if runs == 1 else f"{value[0]:.1f} ± {value[1]:.1f}"


def markdown(summaries: list[Summary]) -> str:
    """The two README tables: mIoU with conflation counts, then per-class IoU."""
    actual, predicted = CONFLATED
    lines = [
        "| variant | seeds | mIoU | classes never predicted (per seed) "
        f"| {actual} predicted as {predicted}, % (per seed) |",
        "|---|---|---:|---|---|",
    ]
    for s in summaries:
        seeds, never = ", ".join(map(str, s.seeds)), " / ".join(map(str, s.never_predicted))
        shares = " / ".join("–" if v is None else f"{v:.0f}" for v in s.conflated)
        lines.append(f"| {s.variant} | {seeds} | {plus_minus(s.miou, len(s.seeds))} | {never} | {shares} |")
    lines += ["", "| variant | " + " | ".join(CLASS_NAMES) + " |", "|---|" + "---:|" * len(CLASS_NAMES)]
    for s in summaries:
        cells = " | ".join(plus_minus(s.iou[name], len(s.seeds)) for name in CLASS_NAMES)
        lines.append(f"| {s.variant} | {cells} |")
    return "\n".join(lines) + "\n"


def iou_rows(summaries: list[Summary]) -> list[list[Any]]:
    """Long-format rows ``[variant, class, iou, std]`` (mean and std over seeds; absent classes skipped),
    the data of the ``grouped_bars`` DVC plot."""
    return [
        [s.variant, name, round(value[0], 2), round(value[1], 2)]
        for s in summaries
        for name, value in s.iou.items()
        if value is not None
    ]


def write_csv(path: str | Path, header: list[str], rows: list[list[Any]]) -> None:
    """``header`` and ``rows`` as CSV, written atomically."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def write_outputs(out_dir: str | Path, summaries: list[Summary]) -> None:
    """``variants.md`` and ``variants_iou.csv`` in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    write_text(out_dir / "variants.md", markdown(summaries))
    write_csv(out_dir / "variants_iou.csv", IOU_HEADER, iou_rows(summaries))


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def experiment_revisions(repo: str | Path, include_head: bool = True) -> list[str]:
    """Commits of the DVC experiments in ``repo`` (``refs/exps``), HEAD first when asked."""
    refs = _git(Path(repo), "for-each-ref", "--format=%(objectname)", "refs/exps").split()
    return (["HEAD"] if include_head else []) + refs


def revision_results(repo: str | Path, rev: str, params_file: str = "params.yaml") -> list[Result]:
    """The results stored in one commit; [] (with a warning) when it has no evaluation."""
    repo = Path(repo)
    try:
        params = yaml.safe_load(_git(repo, "show", f"{rev}:{params_file}"))
        ev = params["evaluate"]
        metrics = json.loads(_git(repo, "show", f"{rev}:{ev['metrics']}"))
        per_class = _git(repo, "show", f"{rev}:{ev['per_class']}")
    except subprocess.CalledProcessError as err:
        log.warning("skipping %s: %s", rev, err.stderr.strip())
        return []
    try:
        confusion = _git(repo, "show", f"{rev}:{ev['confusion']}") if "confusion" in ev else None
    except subprocess.CalledProcessError:  # a run from before the confusion matrix was recorded
        confusion = None
    return run_results(params, metrics, per_class, confusion)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=".", help="git/DVC repository holding the experiments")
    parser.add_argument("--out", default="reports", help="folder for variants.md and variants_iou.csv")
    parser.add_argument("--no-head", action="store_true", help="only the experiments, not the HEAD commit")
    args = parser.parse_args(argv)
    setup_logging()
    results = [
        r
        for rev in experiment_revisions(args.repo, not args.no_head)
        for r in revision_results(args.repo, rev)
    ]
    if not results:
        log.error(
            "no evaluated runs in %s: run experiments first (dvc exp run -S adapt.method=...)", args.repo
        )
        return 1
    summaries = summarize(results)
    write_outputs(args.out, summaries)
    log.info("%d runs, %d variants -> %s", len(results), len(summaries), Path(args.out) / "variants.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
