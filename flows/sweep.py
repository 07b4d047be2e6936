"""Prefect flow that sweeps the pseudo-label threshold (λ's confidence cut-off) over seeds.

One ``dvc exp run --temp -n <sweep>-t<threshold>-s<seed> -S adapt.pseudo_threshold=.. -S seed=..`` per
point, run one after the other, each as its own Prefect task. Why sequential ``--temp`` rather than
``--queue`` + ``--run-all``: each point then has its own task state and live log lines in Prefect, a
failed point does not hide the others, no Celery queue worker is left running in the background, the
workspace is untouched, and on a 2-core machine parallel queue workers would only compete for the CPUs.
``--temp`` runs in a temporary copy of the last commit plus the workspace's changes to tracked files
(the uncached ``data``/``prepare`` outputs are regenerated there).

The results are read back from ``dvc exp show --json`` (the experiments' own recorded params and metrics),
and the flow reports the ``dacs`` mIoU's mean ± sample std over seeds per threshold.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, task

from dacs_uda.lineage import git_revision
from dacs_uda.utils.stats import mean_std
from flows import common
from flows.common import (
    CommandFailed,
    context_section,
    eval_metrics_path,
    experiment_command,
    logger,
    markdown_table,
    param,
    publish_markdown,
    read_params,
)

ARTIFACT_KEY = "dacs-sweep-summary"
THRESHOLD_KEY = "adapt.pseudo_threshold"
SEED_KEY = "seed"
MODEL = "dacs"
DEFAULT_THRESHOLDS = [0.9, 0.968]  # 0.968: the paper's value
DEFAULT_SEEDS = [0, 1, 2]


def point_name(sweep_id: str, threshold: float, seed: int) -> str:
    """The DVC experiment name of one sweep point (a valid git ref component, unique per sweep)."""
    return f"{sweep_id}-t{threshold:g}-s{seed}"


def _run_point(threshold: float, seed: int, overrides: dict[str, Any], name: str, repo: str) -> None:
    """Run one sweep point as a ``--temp`` DVC experiment, streaming its output to the run logger."""
    point = {**overrides, THRESHOLD_KEY: threshold, SEED_KEY: seed}
    common.stream_command(experiment_command(point, name, temp=True), repo, name)


# Not retried: a failed training run must not silently run again.
run_point = task(_run_point, name="dvc-exp-run-temp", task_run_name="{name}")


def iter_experiments(shown: Any) -> Iterator[dict[str, Any]]:
    """Every experiment revision in ``dvc exp show --json`` output (DVC 3.x).

    The output is a list of baselines (``workspace`` and commits), each with ``experiments``: a list
    (or null) of ``{"name", "executor", "revs": [{"rev", "name", "data": {"params", "metrics"}, "error"}]}``.
    Anything not shaped like that is skipped rather than trusted.
    """
    for baseline in shown if isinstance(shown, list) else []:
        for experiment in (baseline.get("experiments") or []) if isinstance(baseline, dict) else []:
            for rev in (experiment.get("revs") or []) if isinstance(experiment, dict) else []:
                if isinstance(rev, dict) and isinstance(rev.get("data"), dict):
                    yield rev


def _file_data(section: Any, path: str) -> dict[str, Any]:
    """The parsed content of one params/metrics file in an experiment's data ({} if missing or errored)."""
    entry = section.get(path) if isinstance(section, dict) else None
    data = entry.get("data") if isinstance(entry, dict) else None
    return data if isinstance(data, dict) else {}


def collect_results(shown: Any, names: Mapping[str, tuple[float, int]], metrics_path: str) -> list[dict]:
    """One row per requested point found in ``dvc exp show --json`` output.

    Threshold and seed come from the experiment's recorded params (what really ran), the mIoU from its
    metrics file; a point whose metrics are missing or errored gets mIoU None.

    Args:
        shown: The parsed JSON.
        names: Experiment name -> (threshold, seed) requested.
        metrics_path: The eval metrics file (``evaluate.metrics``).
    """
    rows = []
    for rev in iter_experiments(shown):
        name = rev.get("name")
        if name not in names:
            continue
        data = rev["data"]
        params = _file_data(data.get("params"), "params.yaml")
        metrics = _file_data(data.get("metrics"), metrics_path)
        model = metrics.get(MODEL)
        miou = model.get("mIoU") if isinstance(model, dict) else None
        requested_threshold, requested_seed = names[name]
        rows.append(
            {
                "name": name,
                "rev": rev.get("rev"),
                "threshold": param(params, THRESHOLD_KEY, requested_threshold),
                "seed": param(params, SEED_KEY, requested_seed),
                "mIoU": float(miou) if isinstance(miou, int | float) else None,
                "error": rev.get("error"),
            }
        )
    return sorted(rows, key=lambda row: (row["threshold"], row["seed"]))


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per threshold: the seeds, n, mean and sample std of the mIoU (std 0.0 for a single seed)."""
    by_threshold: dict[float, list[dict[str, Any]]] = {}
    for row in rows:
        if row["mIoU"] is not None:
            by_threshold.setdefault(row["threshold"], []).append(row)
    summary = []
    for threshold in sorted(by_threshold):
        values = [row["mIoU"] for row in by_threshold[threshold]]
        mean, std = mean_std(values)
        summary.append(
            {
                "threshold": threshold,
                "seeds": sorted(row["seed"] for row in by_threshold[threshold]),
                "n": len(values),
                "mean": mean,
                "std": std,
            }
        )
    return summary


def build_report(
    summary: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    failed: list[str],
    params: Mapping,
    revision: str,
) -> str:
    """Markdown for the run artifact: mean ± std per threshold, every point, failures, run context."""
    per_threshold = [
        [s["threshold"], ", ".join(map(str, s["seeds"])), s["n"], f"{s['mean']:.2f} ± {s['std']:.2f}"]
        for s in summary
    ]
    points = [[r["threshold"], r["seed"], r["mIoU"], r["name"], (r["rev"] or "")[:10]] for r in rows]
    lines = [
        "# DACS sweep: pseudo-label threshold x seed",
        "",
        f"## {MODEL} target-val mIoU per threshold (mean ± sample std over seeds)",
        "",
        *markdown_table(["threshold", "seeds", "n", "mIoU"], per_threshold, "llrr"),
        "",
        "## Experiments",
        "",
        *markdown_table(["threshold", "seed", "mIoU", "experiment", "rev"], points, "lrrll"),
        "",
    ]
    if failed:
        lines += ["## Failed points", "", *[f"- {name}" for name in failed], ""]
    lines += context_section(params, revision)
    return "\n".join(lines) + "\n"


def _show_experiments(repo: str) -> Any:
    """``dvc exp show --json`` parsed (only experiments of the current commit: the sweep's baseline)."""
    return json.loads(common.read_command(["dvc", "exp", "show", "--json"], Path(repo)) or "[]")


show_experiments = task(_show_experiments, name="dvc-exp-show")


@flow(name="dacs-sweep", log_prints=False)
def dacs_sweep(
    thresholds: list[float] | None = None,
    seeds: list[int] | None = None,
    overrides: dict[str, Any] | None = None,
    sweep_id: str | None = None,
    repo: str = ".",
) -> dict[str, Any]:
    """Run one ``--temp`` DVC experiment per (threshold, seed) and report mean ± std per threshold.

    Args:
        thresholds: Values of ``adapt.pseudo_threshold``; default ``DEFAULT_THRESHOLDS``.
        seeds: Values of ``seed``; default ``DEFAULT_SEEDS``.
        overrides: Other params set for every point (e.g. ``{"adapt.iterations": 400}``).
        sweep_id: Prefix of the experiment names; default ``sweep-<UTC timestamp>``.
        repo: The DVC repository root.

    Returns:
        ``{"summary": [per threshold], "points": [per experiment], "failed": [names]}``.

    Raises:
        RuntimeError: If any point failed (after every point ran and the report was published).
    """
    log = logger()
    sweep_id = sweep_id or f"sweep-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    thresholds = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    seeds = DEFAULT_SEEDS if seeds is None else seeds
    names = {point_name(sweep_id, t, s): (t, s) for t in thresholds for s in seeds}
    failed = []
    for name, (threshold, seed) in names.items():
        try:
            common.run_task(run_point, threshold, seed, dict(overrides or {}), name, repo)
        except CommandFailed as err:  # keep sweeping: one diverging point must not cost the others
            log.error("sweep point %s failed: %s", name, err)
            failed.append(name)
    params = read_params(repo)
    rows = collect_results(common.run_task(show_experiments, repo), names, eval_metrics_path(params))
    summary = summarise(rows)
    for s in summary:
        log.info(
            "threshold %g: mIoU %.2f ± %.2f over seeds %s", s["threshold"], s["mean"], s["std"], s["seeds"]
        )
    publish_markdown(
        ARTIFACT_KEY,
        build_report(summary, rows, failed, params, git_revision(repo)),
        f"dacs-sweep {sweep_id}: {MODEL} mIoU mean ± std per pseudo-label threshold",
    )
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(names)} sweep points failed: {failed}")
    return {"summary": summary, "points": rows, "failed": failed}


if __name__ == "__main__":
    dacs_sweep()
