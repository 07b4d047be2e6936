"""Checkpoints carry everything needed to trace and resume a run: weights, config, lineage, RNG state."""

from __future__ import annotations

import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dacs_uda.config import ModelConfig, Params, params_hash
from dacs_uda.models.deeplabv2 import DeepLabV2, build_model
from dacs_uda.utils.io import save_torch


def git_revision() -> str:
    """The current git commit (``+dirty`` when the tree has changes), or ``unknown`` outside git."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
        return rev + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def lineage(params: Params) -> dict[str, Any]:
    """What produced an artefact: code revision, params hash, seeds, dataset."""
    return {
        "git_revision": git_revision(),
        "params_hash": params_hash(params),
        "seed": params.seed,
        "data_seed": params.data.embedded.seed,
        "data_pair": params.data.pair,
    }


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    params: Params,
    *,
    step: int,
    ema_model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> None:
    """Write a checkpoint atomically."""
    save_torch(
        path,
        {
            "model": model.state_dict(),
            "ema_model": None if ema_model is None else ema_model.state_dict(),
            "optimizer": None if optimizer is None else optimizer.state_dict(),
            "step": step,
            "model_config": asdict(params.model),
            "params": asdict(params),
            "lineage": lineage(params),
            "rng_state": None if generator is None else generator.get_state(),
        },
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU, with an error that says which stage makes it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `dvc repro` (the pretrain/adapt stages write it)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ValueError(
            f"{path} is not a readable checkpoint ({err}); delete it and rerun `dvc repro`"
        ) from err


def load_model(path: str | Path, which: str = "model") -> tuple[DeepLabV2, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint (``which``: 'model' or 'ema_model'), in eval mode."""
    ckpt = load_checkpoint(path)
    # Every tensor comes from the checkpoint: do not fetch model.init's ImageNet/COCO weights again.
    model = build_model(ModelConfig(**ckpt["model_config"]), init_weights=False)
    model.load_state_dict(ckpt[which])
    return model.eval(), ckpt
