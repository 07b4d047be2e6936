"""The summary of a seed x variant ablation (``ablation/``): mean ± std over seeds and paired differences.

Reads each run's scores (``runs/seed<S>/<variant>.json``, ``<variant>_validation.csv``) and writes

* ``summary.md``: per variant the mIoU, its difference to the reference variant (the first of
  ``variants``) taken seed by seed, the rare classes and their mean, the classes never predicted;
  then every class;
* ``summary.json``: mIoU, paired difference and rare-class mean per variant (few keys, since
  ``dvc exp show`` lists them);
* ``summary_iou.csv``: per variant and class, mean and std (the ``grouped_bars`` DVC plot);
* ``summary_validation.csv``: per validation step, each variant's student mIoU averaged over seeds.

Every variant of one seed adapts the same source-only model, so the seed-by-seed difference to the
reference removes what the seeds share (the start, the draws); its std is the noise left.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dacs_uda.labels import CLASS_NAMES
from dacs_uda.utils.io import write_json, write_text
from dacs_uda.utils.stats import mean_std
from dacs_uda.variants import IOU_HEADER, Result, Summary, iou_rows, plus_minus, summarize, write_csv

SOURCE_ONLY = "source_only"  # each seed's pretrain model, the first row
Stat = tuple[float, float]  # mean, std over seeds


def run_file(runs: Path, seed: int, variant: str) -> Path:
    """Where the ``adapt`` (or, for ``source_only``, the ``pretrain``) stage writes one run's scores."""
    path = runs / f"seed{seed}" / f"{variant}.json"
    if not path.is_file():
        stage = f"pretrain@{seed}" if variant == SOURCE_ONLY else f"adapt@{seed}-{variant}"
        raise FileNotFoundError(f"{path} not found: run `dvc repro ablation/dvc.yaml:{stage}`")
    return path


def load_results(runs: Path, seeds: Sequence[int], variants: Sequence[str]) -> list[Result]:
    """Every run's scores, source-only first, then ``variants`` in order; a missing run names its stage."""
    results = []
    for variant in (SOURCE_ONLY, *variants):
        for seed in seeds:
            run = json.loads(run_file(runs, seed, variant).read_text())
            results.append(Result(variant, seed, run["mIoU"], run["iou"], run["never_predicted"]))
    return results


def zero_iou_classes(results: list[Result]) -> dict[str, list[str]]:
    """Per variant, the classes present in target val that score 0 IoU in every seed."""
    zero: dict[str, set[str]] = {}
    for r in results:
        these = {c for c, v in r.iou.items() if v == 0.0}
        zero[r.variant] = zero[r.variant] & these if r.variant in zero else these
    return {variant: sorted(classes, key=CLASS_NAMES.index) for variant, classes in zero.items()}


def rare_mean(result: Result, rare: Sequence[str]) -> float | None:
    """The mean IoU of the ``rare`` classes present in target val (None: none is)."""
    present = [v for c in rare if (v := result.iou.get(c)) is not None]
    return sum(present) / len(present) if present else None


def rare_means(results: list[Result], rare: Sequence[str]) -> dict[str, Stat]:
    """Per variant, the rare-class mean of each seed, then mean ± std over seeds."""
    per_seed: dict[str, list[float]] = {}
    for r in results:
        if (value := rare_mean(r, rare)) is not None:
            per_seed.setdefault(r.variant, []).append(value)
    return {variant: mean_std(values) for variant, values in per_seed.items()}


def paired_deltas(results: list[Result], reference: str, rare: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per variant, its difference to ``reference`` seed by seed: mIoU and rare mean (mean ± std), and
    the seeds where its mIoU is higher."""
    ref = {r.seed: r for r in results if r.variant == reference}
    by_variant: dict[str, list[Result]] = {}
    for r in results:
        if r.variant != reference and r.seed in ref:
            by_variant.setdefault(r.variant, []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for variant, runs in by_variant.items():
        rare_diffs = [
            a - b
            for r in runs
            if (a := rare_mean(r, rare)) is not None and (b := rare_mean(ref[r.seed], rare)) is not None
        ]
        out[variant] = {
            "mIoU": mean_std([r.miou - ref[r.seed].miou for r in runs]),
            "rare": mean_std(rare_diffs) if rare_diffs else None,
            "better": sum(r.miou > ref[r.seed].miou for r in runs),
            "seeds": len(runs),
        }
    return out


def mean_curves(
    runs: Path, seeds: Sequence[int], variants: Sequence[str], column: str = "mIoU_student"
) -> list[list[Any]]:
    """Rows ``[step, one value per variant]``: ``column`` of each validation curve, averaged over seeds."""
    by_step: dict[int, dict[str, list[float]]] = {}
    for variant in variants:
        for seed in seeds:
            with (runs / f"seed{seed}" / f"{variant}_validation.csv").open() as fh:
                for row in csv.DictReader(fh):
                    values = by_step.setdefault(int(row["step"]), {}).setdefault(variant, [])
                    values.append(float(row[column]))
    return [
        [step, *(round(mean_std(row[v])[0], 2) if v in row else "" for v in variants)]
        for step, row in sorted(by_step.items())
    ]


def _signed(value: Stat | None, runs: int) -> str:
    return "–" if value is None else ("+" if value[0] >= 0 else "") + plus_minus(value, runs)


def markdown(
    summaries: list[Summary],
    zero: dict[str, list[str]],
    rares: dict[str, Stat],
    deltas: dict[str, dict[str, Any]],
    reference: str,
    rare: Sequence[str],
) -> str:
    """Three tables: per variant mIoU, paired difference (``deltas``), rare mean (``rares``),
    never-predicted and ``zero``-IoU classes; the rare classes; every class. Cells are mean ± std over
    seeds."""
    lines = [
        f"| variant | seeds | mIoU | Δ mIoU vs {reference}, same seed | higher in | rare mean "
        f"| Δ rare mean | classes never predicted (per seed) | 0 IoU in every seed |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for s in summaries:
        n, d = len(s.seeds), deltas.get(s.variant)
        higher = f"{d['better']}/{d['seeds']}" if d else "–"
        lines.append(
            f"| {s.variant} | {', '.join(map(str, s.seeds))} | {plus_minus(s.miou, n)} "
            f"| {_signed(d['mIoU'] if d else None, n)} | {higher} | {plus_minus(rares.get(s.variant), n)} "
            f"| {_signed(d['rare'] if d else None, n)} | {' / '.join(map(str, s.never_predicted))} "
            f"| {', '.join(zero[s.variant]) or '–'} |"
        )
    for classes in (rare, CLASS_NAMES):
        lines += ["", "| variant | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
        for s in summaries:
            lines.append(
                f"| {s.variant} | " + " | ".join(plus_minus(s.iou[c], len(s.seeds)) for c in classes) + " |"
            )
    return "\n".join(lines) + "\n"


def summary_metrics(
    summaries: list[Summary], rares: dict[str, Stat], deltas: dict[str, dict[str, Any]]
) -> dict[str, dict[str, float]]:
    """``summary.json``: per variant mIoU, its paired difference and the rare-class mean, ± std."""
    out: dict[str, dict[str, float]] = {}
    for s in summaries:
        entry = {"mIoU": round(s.miou[0], 2), "mIoU_std": round(s.miou[1], 2)}
        if s.variant in deltas:
            entry["delta_mIoU"], entry["delta_mIoU_std"] = (round(v, 2) for v in deltas[s.variant]["mIoU"])
        if s.variant in rares:
            entry["rare_mIoU"], entry["rare_mIoU_std"] = (round(v, 2) for v in rares[s.variant])
        out[s.variant] = entry
    return out


def write_summary(
    runs: Path, seeds: Sequence[int], variants: Sequence[str], rare: Sequence[str], out: Path
) -> None:
    """The four summary files of the runs of ``seeds`` x ``variants`` under ``runs``, written to ``out``."""
    results = load_results(runs, seeds, variants)
    order = [SOURCE_ONLY, *variants]
    summaries = sorted(summarize(results), key=lambda s: order.index(s.variant))
    reference = variants[0]
    rares, deltas = rare_means(results, rare), paired_deltas(results, reference, rare)
    write_text(
        out / "summary.md", markdown(summaries, zero_iou_classes(results), rares, deltas, reference, rare)
    )
    write_json(out / "summary.json", summary_metrics(summaries, rares, deltas))
    write_csv(out / "summary_iou.csv", IOU_HEADER, iou_rows(summaries))
    write_csv(out / "summary_validation.csv", ["step", *variants], mean_curves(runs, seeds, variants))
