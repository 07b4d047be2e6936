"""Shared fixtures: a tiny, fast configuration of the real pipeline."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from dacs_uda.config import EmbeddedConfig, ModelConfig, OptimConfig, Params

os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def tiny_params(**overrides) -> Params:
    """Params of the embedded pipeline shrunk to seconds: 64-px frames, a 4-channel model, 3 steps."""
    params = Params()
    params.data.embedded = EmbeddedConfig(
        n_source=8, n_target_train=6, n_target_val=4, source_size=[64, 36], target_size=[64, 32]
    )
    params.data.source.resize = [64, 36]
    params.data.target.resize = [64, 32]
    params.data.crop = [32, 32]
    params.model = ModelConfig(width=4, depths=[1, 1, 1, 1], aspp_dilations=[1, 2])
    for section in (params.pretrain, params.oracle, params.adapt):
        section.optim = OptimConfig(iterations=3, batch_size=2, lr=0.01)
        section.log_every = 1
    params.evaluate.batch_size = 4
    params.evaluate.num_samples = 2
    for key, value in overrides.items():
        setattr(params, key, value)
    return params


def write_params(directory: Path, params: Params) -> Path:
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(asdict(params), sort_keys=False))
    return path


@pytest.fixture
def in_tmp_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary working directory with tiny params, as the stages expect (they run from the repo root)."""
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params())
    return tmp_path
