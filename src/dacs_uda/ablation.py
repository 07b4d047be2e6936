"""Seed x variant ablations as a DVC pipeline of their own (``ablation/dvc.yaml``).

Each variant is a list of dotted overrides of the project's ``params.yaml`` (``ablation/params.yaml``:
``seeds``, ``variants``, ``rare``). Per seed, ``pretrain`` trains the source-only model once and scores
it; per seed and variant, ``adapt`` adapts that model with the variant's overrides and scores the
student with the evaluate stage's own code; ``summarize`` writes mean ± std over seeds per variant:
mIoU, classes never predicted, the rare classes and per-class IoU (``strategies.md``, ``.json``), the
long table behind the per-class DVC plot and the mean validation curve of each variant.

Every run is the project's own stage modules (``dacs_uda.stages.train``, ``.evaluate``) in a scratch
project under ``work/`` that links the prepared data: a killed run resumes from its resume state when
rerun, a finished one leaves only its scores. Unlike ``dvc exp run``, the source-only model of a seed is
trained once, not once per variant.

Run from ``ablation/`` (DVC does): ``python -m dacs_uda.ablation pretrain --seed 0``,
``adapt --seed 0 --variant rcs``, ``summarize``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from dacs_uda.config import ConfigError, Params, parse_params
from dacs_uda.labels import CLASS_NAMES
from dacs_uda.utils.io import atomic_path, write_json, write_text
from dacs_uda.utils.logging import setup_logging
from dacs_uda.utils.stats import mean_std
from dacs_uda.variants import Result, Summary, plus_minus, summarize

log = logging.getLogger(__name__)

ABLATION_PARAMS = Path("params.yaml")  # in ablation/, DVC's working directory for its stages
SOURCE_ONLY = "source_only"  # the row of each seed's pretrain model
PRETRAIN = "models/trained/pretrain.pt"  # where runs.adapt.start must point
_NAME = re.compile(r"[a-z0-9_]+")


@dataclass(frozen=True)
class AblationConfig:
    """``ablation/params.yaml``: the project it varies, the seeds, the variants and the rare classes."""

    seeds: tuple[int, ...]
    variants: dict[str, tuple[str, ...]]
    rare: tuple[str, ...]
    base: tuple[str, ...] = ()  # overrides of every run, the source-only models included
    project: str = ".."
    work: str = "work"
    models: str = "models"
    runs: str = "runs"

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: expected distinct integers, got {list(self.seeds)}")
        if not self.variants:
            raise ConfigError("variants: expected at least one variant (name: [key=value, ...])")
        for name, overrides in {"base": self.base, **self.variants}.items():
            if name != "base" and (not _NAME.fullmatch(name) or name == SOURCE_ONLY):
                raise ConfigError(
                    f"variants.{name}: use lower-case letters, digits and _ (not {SOURCE_ONLY})"
                )
            bad = [o for o in overrides if "=" not in o or o.startswith(("seed=", "evaluate."))]
            if bad:
                raise ConfigError(
                    f"{name}: {bad} are not key=value overrides of the project's params.yaml "
                    "(the ablation sets seed and evaluate itself)"
                )
        unknown = sorted(set(self.rare) - set(CLASS_NAMES))
        if unknown:
            raise ConfigError(f"rare: {unknown} are not Cityscapes class names")


def load_config(path: str | Path = ABLATION_PARAMS) -> AblationConfig:
    """Read and validate ``ablation/params.yaml`` (unknown keys rejected)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    fields = {f.name for f in dataclasses.fields(AblationConfig)}
    if unknown := sorted(set(raw) - fields):
        raise ConfigError(f"{path}: unknown keys {unknown} (expected {sorted(fields)})")
    try:
        return AblationConfig(
            seeds=tuple(int(s) for s in raw["seeds"]),
            variants={str(k): tuple(str(o) for o in v or ()) for k, v in raw["variants"].items()},
            rare=tuple(raw.get("rare", ())),
            base=tuple(str(o) for o in raw.get("base") or ()),
            **{k: str(raw[k]) for k in ("project", "work", "models", "runs") if k in raw},
        )
    except KeyError as err:
        raise ConfigError(f"{path}: missing key {err}") from None


def run_params(
    project_params: dict[str, Any], seed: int, overrides: tuple[str, ...], models: dict[str, str]
) -> Params:
    """The project's params with ``seed`` and a variant's overrides, validated, scoring only ``models``."""
    merged = OmegaConf.merge(
        OmegaConf.create(project_params), OmegaConf.from_dotlist([f"seed={seed}", *overrides])
    )
    raw = OmegaConf.to_container(merged, resolve=True)
    assert isinstance(raw, dict)
    params = parse_params(raw)  # type: ignore[arg-type]
    if "pretrain" not in params.runs or params.runs["adapt"].start != PRETRAIN:
        raise ConfigError(
            f"the ablation adapts each seed's source-only model: the project's params need runs.pretrain and "
            f"runs.adapt.start: {PRETRAIN} (the runs=all group), got {sorted(params.runs)}"
        )
    evaluate = dataclasses.replace(params.evaluate, models=models, save_predictions=[], num_samples=0)
    return dataclasses.replace(params, evaluate=evaluate)


def scratch_project(project: Path, work: Path, params: Params) -> None:
    """``work`` as a project of its own: ``params.yaml`` and links to the project's prepared data.

    Kept when it exists, so a killed run resumes from its resume state (the train stage checks that
    the state belongs to these params).
    """
    for rel in (params.data.prepared, params.data.manifests, params.data.target.root):
        link = work / rel
        if Path(rel).is_absolute() or link.is_symlink():
            continue
        if not (project / rel).exists():
            raise FileNotFoundError(f"{project / rel} not found: run `dvc repro` in {project} first")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((project / rel).resolve())
    write_text(work / "params.yaml", yaml.safe_dump(dataclasses.asdict(params), sort_keys=False))


def run_stage(work: Path, module: str, *args: str) -> None:
    """One of the project's stage modules, in ``work``, with this interpreter."""
    src = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-m", f"dacs_uda.stages.{module}", *args], cwd=work, env=env, check=True)


def scores(work: Path, params: Params, model: str, variant: str, seed: int, seconds: float) -> dict[str, Any]:
    """One model's entry of the scratch project's evaluation: mIoU, never-predicted count, per-class IoU."""
    metrics = json.loads((work / params.evaluate.metrics).read_text())[model]
    with (work / params.evaluate.per_class).open() as fh:
        iou = {
            r["class"]: float(r["iou"]) if r["iou"] else None
            for r in csv.DictReader(fh)
            if r["model"] == model
        }
    return {"variant": variant, "seed": seed, **metrics, "iou": iou, "seconds": round(seconds, 1)}


def pretrain(config: AblationConfig, seed: int) -> None:
    """Seed ``seed``'s source-only model (``models/seed<S>/pretrain.pt``) and its scores."""
    project = Path(config.project)
    params = run_params(load_yaml(project / "params.yaml"), seed, config.base, {SOURCE_ONLY: PRETRAIN})
    work = Path(config.work) / f"seed{seed}" / "pretrain"
    scratch_project(project, work, params)
    start = time.perf_counter()
    run_stage(work, "train", "--section", "pretrain")
    run_stage(work, "evaluate")
    result = scores(work, params, SOURCE_ONLY, SOURCE_ONLY, seed, time.perf_counter() - start)
    with atomic_path(Path(config.models) / f"seed{seed}" / "pretrain.pt") as tmp:
        shutil.copy2(work / PRETRAIN, tmp)
    write_json(Path(config.runs) / f"seed{seed}" / f"{SOURCE_ONLY}.json", result)
    shutil.rmtree(work)


def adapt(config: AblationConfig, seed: int, variant: str) -> None:
    """``variant`` adapted from seed ``seed``'s source-only model; its scores and validation curve."""
    if variant not in config.variants:
        raise ConfigError(f"unknown variant {variant!r}: ablation/params.yaml has {sorted(config.variants)}")
    project = Path(config.project)
    params = run_params(
        load_yaml(project / "params.yaml"),
        seed,
        (*config.base, *config.variants[variant]),
        {variant: "models/trained/adapt.pt"},
    )
    start_model = Path(config.models) / f"seed{seed}" / "pretrain.pt"
    if not start_model.is_file():
        raise FileNotFoundError(
            f"{start_model} not found: run `dvc repro ablation/dvc.yaml:pretrain@{seed}` first"
        )
    work = Path(config.work) / f"seed{seed}" / variant
    scratch_project(project, work, params)
    (work / PRETRAIN).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(start_model, work / PRETRAIN)
    start = time.perf_counter()
    run_stage(work, "train", "--section", "adapt")
    run_stage(work, "evaluate")
    result = scores(work, params, variant, variant, seed, time.perf_counter() - start)
    out = Path(config.runs) / f"seed{seed}"
    with atomic_path(out / f"{variant}_validation.csv") as tmp:
        shutil.copy2(work / "metrics/adapt_validation.csv", tmp)
    write_json(out / f"{variant}.json", {**result, "overrides": list(config.variants[variant])})
    shutil.rmtree(work)


def load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path} not found: the ablation varies the project's params.yaml (set `project`)")
    return yaml.safe_load(path.read_text())


def load_results(config: AblationConfig) -> list[Result]:
    """Every run's scores, source-only first, in ``variants`` order; a missing run names its stage."""
    results = []
    for variant in (SOURCE_ONLY, *config.variants):
        for seed in config.seeds:
            path = Path(config.runs) / f"seed{seed}" / f"{variant}.json"
            if not path.is_file():
                stage = f"pretrain@{seed}" if variant == SOURCE_ONLY else f"adapt@{seed}-{variant}"
                raise FileNotFoundError(f"{path} not found: run `dvc repro ablation/dvc.yaml:{stage}`")
            run = json.loads(path.read_text())
            results.append(Result(variant, seed, run["mIoU"], run["iou"], run["never_predicted"]))
    return results


def zero_iou_classes(results: list[Result]) -> dict[str, list[str]]:
    """Per variant, the classes present in target val that score 0 IoU in every seed."""
    zero: dict[str, set[str]] = {}
    for r in results:
        these = {c for c, v in r.iou.items() if v == 0.0}
        zero[r.variant] = zero[r.variant] & these if r.variant in zero else these
    return {variant: sorted(classes, key=CLASS_NAMES.index) for variant, classes in zero.items()}


def mean_curves(config: AblationConfig, column: str = "mIoU_student") -> list[dict[str, float]]:
    """Per validation step, each variant's ``column`` averaged over seeds (the DVC plot's rows)."""
    by_step: dict[int, dict[str, list[float]]] = {}
    for variant in config.variants:
        for seed in config.seeds:
            with (Path(config.runs) / f"seed{seed}" / f"{variant}_validation.csv").open() as fh:
                for row in csv.DictReader(fh):
                    by_step.setdefault(int(row["step"]), {}).setdefault(variant, []).append(
                        float(row[column])
                    )
    return [
        {"step": step, **{v: round(mean_std(vals)[0], 2) for v, vals in row.items()}}
        for step, row in sorted(by_step.items())
    ]


def rare_means(results: list[Result], rare: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """Per variant, the mean IoU of the ``rare`` classes present in target val: mean ± std over seeds."""
    per_seed: dict[str, list[float]] = {}
    for r in results:
        present = [v for c in rare if (v := r.iou.get(c)) is not None]
        if present:
            per_seed.setdefault(r.variant, []).append(sum(present) / len(present))
    return {variant: mean_std(values) for variant, values in per_seed.items()}


def markdown(summaries: list[Summary], rare: tuple[str, ...], results: list[Result]) -> str:
    """Mean ± std over seeds: mIoU, rare classes and their mean, never-predicted classes; every class."""
    zero, rare_mean = zero_iou_classes(results), rare_means(results, rare)
    lines = [
        "| variant | seeds | mIoU | "
        + " | ".join(rare)
        + " | rare mean | classes never predicted (per seed) | 0 IoU in every seed |",
        "|---|---|---:|" + "---:|" * (len(rare) + 1) + "---|---|",
    ]
    for s in summaries:
        n = len(s.seeds)
        cells = (
            " | ".join(plus_minus(s.iou[c], n) for c in rare)
            + f" | {plus_minus(rare_mean.get(s.variant), n)}"
        )
        counts = " / ".join(map(str, s.never_predicted))
        seeds, zeros = ", ".join(map(str, s.seeds)), ", ".join(zero[s.variant]) or "–"
        lines.append(f"| {s.variant} | {seeds} | {plus_minus(s.miou, n)} | {cells} | {counts} | {zeros} |")
    lines += ["", "| variant | " + " | ".join(CLASS_NAMES) + " |", "|---|" + "---:|" * len(CLASS_NAMES)]
    for s in summaries:
        lines.append(
            f"| {s.variant} | " + " | ".join(plus_minus(s.iou[c], len(s.seeds)) for c in CLASS_NAMES) + " |"
        )
    return "\n".join(lines) + "\n"


def summary_metrics(
    summaries: list[Summary], rare_mean: dict[str, tuple[float, float]]
) -> dict[str, dict[str, float]]:
    """``strategies.json`` (few keys: ``dvc exp show`` lists them): mIoU and rare-class mean, ± std."""
    out: dict[str, dict[str, float]] = {}
    for s in summaries:
        out[s.variant] = {"mIoU": round(s.miou[0], 2), "mIoU_std": round(s.miou[1], 2)}
        if s.variant in rare_mean:
            mean, std = rare_mean[s.variant]
            out[s.variant] |= {"rare_mIoU": round(mean, 2), "rare_mIoU_std": round(std, 2)}
    return out


def summarize_runs(config: AblationConfig, out: Path) -> None:
    """The tables, metrics and plot data of every run in ``config`` under ``out``."""
    results = load_results(config)
    order = [SOURCE_ONLY, *config.variants]
    summaries = sorted(summarize(results), key=lambda s: order.index(s.variant))
    write_text(out / "strategies.md", markdown(summaries, config.rare, results))
    write_json(out / "strategies.json", summary_metrics(summaries, rare_means(results, config.rare)))
    _write_csv(
        out / "strategies_iou.csv",
        ["variant", "class", "iou", "std"],
        [
            [s.variant, c, round(v[0], 2), round(v[1], 2)]
            for s in summaries
            for c, v in s.iou.items()
            if v is not None
        ],
    )
    curves = mean_curves(config)
    _write_csv(
        out / "strategies_validation.csv",
        ["step", *config.variants],
        [[r.get(k, "") for k in ["step", *config.variants]] for r in curves],
    )


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=ABLATION_PARAMS, help="the ablation's params file")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("pretrain", help="one seed's source-only model").add_argument(
        "--seed", type=int, required=True
    )
    one = commands.add_parser("adapt", help="one variant adapted from one seed's source-only model")
    one.add_argument("--seed", type=int, required=True)
    one.add_argument("--variant", required=True)
    commands.add_parser("summarize", help="mean ± std over seeds").add_argument(
        "--out", type=Path, default=Path(".")
    )
    args = parser.parse_args(argv)
    setup_logging()
    config = load_config(args.params)
    if args.command == "pretrain":
        pretrain(config, args.seed)
    elif args.command == "adapt":
        adapt(config, args.seed, args.variant)
    else:
        summarize_runs(config, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
