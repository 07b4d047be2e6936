"""Seed x variant ablations as a DVC pipeline of their own (``ablation/dvc.yaml``).

Each variant is a list of dotted overrides of the project's ``params.yaml`` (``ablation/params.yaml``:
``seeds``, ``variants``, ``rare``). Per seed, ``pretrain`` trains the source-only model once and scores
it; per seed and variant, ``adapt`` adapts that model with the variant's overrides and scores the
student with the evaluate stage's own code; ``summarize`` writes mean ± std over seeds per variant and
the difference to the first variant seed by seed (``dacs_uda.ablation_summary``).

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

from dacs_uda.ablation_summary import SOURCE_ONLY, write_summary
from dacs_uda.config import ConfigError, Params, parse_params
from dacs_uda.labels import CLASS_NAMES
from dacs_uda.utils.io import atomic_path, write_json, write_text
from dacs_uda.utils.logging import setup_logging

log = logging.getLogger(__name__)

ABLATION_PARAMS = Path("params.yaml")  # in ablation/, DVC's working directory for its stages
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
        write_summary(Path(config.runs), config.seeds, list(config.variants), config.rare, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
