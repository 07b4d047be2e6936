"""A run folder with target-val frames written at 96x48 and loaded at 64x32, so the two protocols differ."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

from dacs_uda.config import Params
from dacs_uda.data.datasets import manifest_path
from dacs_uda.data.synth import cityscapes_paths, generate_target
from dacs_uda.models.checkpoint import save_checkpoint
from dacs_uda.models.deeplabv2 import build_model
from tests.conftest import tiny_model, tiny_params, write_params

NATIVE = (96, 48)  # W, H on disk (Cityscapes: 2048x1024)
RESIZE = (64, 32)  # W, H the model sees (Cityscapes: 1024x512)
N_VAL = 4
TINY = tiny_model()


def eval_params(protocol: str = "official", models: dict[str, str] | None = None) -> Params:
    models = models or {"dacs": "models/dacs.pt"}
    params = tiny_params(model=TINY)
    params.data.source.resize, params.data.target.resize = [64, 32], list(RESIZE)
    params.data.crop = [16, 16]
    params.evaluate = dataclasses.replace(
        params.evaluate,
        batch_size=3,  # 4 frames: one full batch and one partial
        models=models,
        protocol=protocol,
        save_predictions=[name for name in models if name == "dacs"],
        num_samples=2,
    )
    params.export = dataclasses.replace(params.export, checkpoint="models/dacs.pt")  # the workspace's own
    return params


@pytest.fixture(scope="session")
def target_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated target frames in the Cityscapes layout, shared (read-only) by the tests."""
    root = tmp_path_factory.mktemp("cityscapes") / "target"
    generate_target(root, 0, {"train": 1, "val": N_VAL}, NATIVE, workers=1)
    return root


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target_tree: Path) -> Path:
    """A run folder (cwd) holding the frames, their manifest, a tiny checkpoint and params.yaml."""
    monkeypatch.chdir(tmp_path)
    Path("data/raw").mkdir(parents=True)
    Path("data/raw/target").symlink_to(target_tree)
    params = eval_params()
    # The prepared manifest (stage prepare) points at native-size files here: the loaders resize on
    # load, and `raw_label` (what the full protocol reads) is the same file.
    records = []
    for split, index in [("train", 0)] + [("val", i) for i in range(N_VAL)]:
        image, label, _ = cityscapes_paths(Path("data/raw/target"), split, index)
        records.append({"split": split, "image": str(image), "label": str(label), "raw_label": str(label)})
    manifest = manifest_path(params, "target")
    manifest.parent.mkdir(parents=True)
    pd.DataFrame(records).to_csv(manifest, index=False)
    write_params(tmp_path, params)
    torch.manual_seed(0)
    save_checkpoint("models/dacs.pt", build_model(TINY), params, {}, step=0)
    return tmp_path
