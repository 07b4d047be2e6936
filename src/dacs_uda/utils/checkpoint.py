"""Checkpoints carry everything needed to trace and resume a run: weights, config, lineage, RNG state."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dacs_uda.config import ModelConfig, Params
from dacs_uda.models.deeplabv2 import DeepLabV2, build_model
from dacs_uda.utils.io import save_torch
from dacs_uda.utils.lineage import git_revision, lineage

__all__ = ["git_revision", "lineage", "load_checkpoint", "load_model", "save_checkpoint"]


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
