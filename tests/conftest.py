"""Shared fixtures: a tiny, fast configuration of the real pipeline, shrunk from the composed ``conf/``."""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from pathlib import Path

import pytest
import torch
import yaml

from dacs_uda.config import ModelConfig, Params, compose_params

os.environ.setdefault("DVC_NO_ANALYTICS", "1")

# The embedded pipeline shrunk to seconds: 64-px frames, a 4-channel model, 3 steps of batch 2.
TINY_OVERRIDES = (
    "data.embedded.n_source=8",
    "data.embedded.n_target_train=6",
    "data.embedded.n_target_val=4",
    "data.embedded.source_size=[64,36]",
    "data.embedded.target_size=[64,32]",
    "data.source.resize=[64,36]",
    "data.target.resize=[64,32]",
    "data.crop=[32,32]",
    "model.width=4",
    "model.aspp_dilations=[1,2]",
    *(
        f"{section}.{key}"
        for section in ("pretrain", "oracle", "adapt")
        for key in ("optim.iterations=3", "optim.batch_size=2", "optim.lr=0.01", "log_every=1")
    ),
    "evaluate.batch_size=4",
    "evaluate.num_samples=2",
)


@functools.cache
def _tiny_base() -> Params:
    return compose_params(TINY_OVERRIDES)


def tiny_params(**overrides) -> Params:
    """The real default params (``conf/``) shrunk by :data:`TINY_OVERRIDES`; ``overrides`` set sections."""
    params = copy.deepcopy(_tiny_base())
    for key, value in overrides.items():
        setattr(params, key, value)
    return params


def tiny_model(**changes) -> ModelConfig:
    """The tiny model of :func:`tiny_params` (width 4, one block per stage), with ``changes``."""
    return dataclasses.replace(_tiny_base().model, **changes)


@functools.cache
def _r101() -> ModelConfig:
    return compose_params(["model=r101"]).model


def r101_model(**changes) -> ModelConfig:
    """The paper's ResNet-101 (``conf/model/r101.yaml``), randomly initialised unless ``changes`` say."""
    return dataclasses.replace(_r101(), **{"init": "scratch", "weights": None, **changes})


def write_params(directory: Path, params: Params) -> Path:
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(params), sort_keys=False))
    return path


@pytest.fixture
def in_tmp_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary working directory with tiny params, as the stages expect (they run from the repo root)."""
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params())
    return tmp_path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread (``pytestmark = pytest.mark.usefixtures("one_thread")``): faster on small
    tensors, and far faster on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
