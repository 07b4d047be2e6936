"""Checkpoints carry everything needed to trace a model and rebuild it: weights, config, lineage.

The randomness of a run needs no saved generator state: every draw is keyed by the seed and the step
(:mod:`dacs_uda.utils.rng`), both of which are stored.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dacs_uda.config import ModelConfig, Params
from dacs_uda.models.deeplabv2 import DeepLabV2, build_model
from dacs_uda.utils.io import atomic_path

# What a checkpoint written before these model fields existed was built with (a format fact of old
# files, not a default: new checkpoints always record every field).
LEGACY_MODEL_FIELDS = {"aspp_sum": "all", "init": "scratch", "weights": None}


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    params: Params,
    run_lineage: dict[str, Any],
    *,
    step: int,
    ema_model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Write a checkpoint atomically (plain tensors and Python values only)."""
    contents = {
        "model": model.state_dict(),
        "ema_model": None if ema_model is None else ema_model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "step": step,
        "seed": params.seed,
        "model_config": asdict(params.model),
        "params": asdict(params),
        "lineage": run_lineage,
    }
    write_state(path, contents)


def write_state(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` atomically: a crash never leaves a half-written file under ``path``."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents on the CPU, read as plain tensors and Python values only.

    ``weights_only=True``: a file that carries anything else (code, arbitrary objects) is refused
    before any of it runs.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ValueError(
            f"{path} is not a readable checkpoint of plain tensors ({str(err).splitlines()[0]}); "
            "delete it and rerun `dvc repro`"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a checkpoint (a mapping); delete it and rerun `dvc repro`")
    return state


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU, with an error that says which stage makes it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `dvc repro` (the train@<section> stages write it)")
    return read_state(path)


def load_model(path: str | Path, which: str = "model") -> tuple[DeepLabV2, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint (``which``: 'model' or 'ema_model'), in eval mode."""
    ckpt = load_checkpoint(path)
    # Every tensor comes from the checkpoint: do not fetch model.init's ImageNet/COCO weights again.
    model = build_model(ModelConfig(**{**LEGACY_MODEL_FIELDS, **ckpt["model_config"]}), init_weights=False)
    model.load_state_dict(ckpt[which])
    return model.eval(), ckpt
