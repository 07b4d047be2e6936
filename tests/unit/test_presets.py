"""The paper presets (``conf/experiment/``) against the official DACS code's constants
(``shared/reference/dacs_official.md``, written out here independently of ``conf/``), the choice of
training stages (``runs``), and the dry run (``dacs-uda plan``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from dacs_uda import plan
from dacs_uda.config import ConfigError, compose_params
from dacs_uda.config import parse_params as parse
from tests.conftest import tiny_params

# The official trainUDA.py / configUDA.json recipe (GTA5 -> Cityscapes), dacs_official.md §1-§7.
OFFICIAL = {
    "model.depths": [3, 4, 23, 3],
    "model.width": 64,
    "model.aspp_dilations": [6, 12, 18, 24],
    "model.aspp_sum": "first_two",  # the early return in Classifier_Module
    "model.freeze_bn_affine": True,
    "model.init": "file",  # resnet101COCO-41f33a49.pth
    "model.num_classes": 19,
    "adapt.method": "dacs",
    "adapt.init": "model",  # DACS starts from the COCO weights, no source-only stage
    "adapt.fidelity": "official",
    "adapt.optim.iterations": 250_000,
    "adapt.optim.batch_size": 2,  # 2 source + 2 target crops
    "adapt.optim.lr": 2.5e-4,
    "adapt.optim.head_lr_mult": 10.0,
    "adapt.optim.momentum": 0.9,
    "adapt.optim.weight_decay": 5e-4,
    "adapt.optim.poly_power": 0.9,
    "adapt.optim.duplicate_backbone_updates": True,
    "adapt.ema_alpha": 0.99,
    "adapt.pseudo_threshold": 0.968,
    "adapt.mix_weight": 1.0,
    "adapt.jitter_p": 0.8,
    "adapt.jitter_strength": 0.25,
    "adapt.blur_p": 0.5,
    "adapt.blur_sigma": [0.15, 1.15],
    "data.crop": [512, 512],
    "data.target.resize": [1024, 512],
    "evaluate.protocol": "official",
    "evaluate.models": {"dacs": "models/trained/adapt.pt"},  # the student is evaluated
}
GTA5 = {"data.pair": "gta5_cityscapes", "data.source.format": "gta5", "data.source.resize": [1280, 720]}
COCO = "models/init/resnet101COCO-41f33a49.pth"


def value(params: object, dotted: str) -> object:
    for part in dotted.split("."):
        params = params[part] if isinstance(params, dict) else getattr(params, part)
    return params


@pytest.mark.parametrize(
    ("experiment", "expected"),
    [
        ("dacs_gta5", {**OFFICIAL, **GTA5}),
        ("dacs_synthia", {**OFFICIAL, "data.pair": "synthia_cityscapes", "data.source.format": "synthia"}),
    ],
)
def test_dacs_presets_are_the_official_recipe(experiment: str, expected: dict[str, object]) -> None:
    params = compose_params([f"experiment={experiment}"])
    wrong = {k: (value(params, k), v) for k, v in expected.items() if value(params, k) != v}
    assert not wrong, wrong
    assert params.model.weights == COCO
    assert list(params.runs) == ["adapt"]  # no 250k-step source-only or oracle stage before DACS
    assert params.runs["adapt"].start == COCO  # a DVC dependency: the run waits for the file
    assert params.export.checkpoint == "models/trained/adapt.pt"


def test_source_only_preset_trains_the_baseline_alone_with_the_same_recipe() -> None:
    params = compose_params(["experiment=source_only_gta5"])
    assert list(params.runs) == ["pretrain"] and params.runs["pretrain"].start == COCO
    assert params.evaluate.models == {"source_only": "models/trained/pretrain.pt"}
    dacs = compose_params(["experiment=dacs_gta5"])
    assert params.pretrain.optim == dacs.adapt.optim
    assert (params.model, params.data, params.pretrain.domain) == (dacs.model, dacs.data, "source")


def test_preset_values_can_still_be_overridden() -> None:
    params = compose_params(["experiment=dacs_gta5", "seed=2", "train.precision=bf16"])
    assert (params.seed, params.train.precision, params.adapt.optim.lr) == (2, "bf16", 2.5e-4)


def test_the_embedded_default_runs_all_three_training_stages() -> None:
    params = compose_params()
    assert {s: r.start for s, r in params.runs.items()} == {
        "pretrain": "src/dacs_uda/models",
        "oracle": "src/dacs_uda/models",
        "adapt": "models/trained/pretrain.pt",
    }
    assert plan.stages(params) == [
        "data", "validate", "prepare", "train@pretrain", "train@oracle", "train@adapt",
        "evaluate", "export", "evaluate_onnx",
    ]  # fmt: skip


def raw_params(*overrides: str) -> dict:
    return dataclasses.asdict(compose_params(list(overrides)))


def test_a_start_that_is_not_what_the_stage_starts_from_is_rejected_with_the_fix() -> None:
    raw = raw_params()
    raw["adapt"]["init"] = "model"  # adapt no longer starts from the pretrain checkpoint
    with pytest.raises(ConfigError, match=r"runs\.adapt\.start.*-S runs\.adapt\.start=src/dacs_uda/models"):
        parse(raw)


@pytest.mark.parametrize(
    ("key", "path", "stage"),
    [("evaluate", "oracle", "oracle"), ("export", None, "adapt")],
)
def test_a_model_from_a_stage_that_does_not_run_is_rejected(key: str, path: str | None, stage: str) -> None:
    raw = raw_params()
    del raw["runs"][stage]
    if stage == "adapt":
        raw["evaluate"]["models"].pop("dacs")
        raw["evaluate"]["save_predictions"] = []
    with pytest.raises(ConfigError, match=rf"`{key}\..*{stage}\.pt.*`runs` does not include"):
        parse(raw)


def test_unknown_training_stages_are_rejected() -> None:
    raw = raw_params()
    raw["runs"]["finetune"] = {"start": "src/dacs_uda/models"}
    with pytest.raises(ConfigError, match=r"`runs`.*finetune"):
        parse(raw)


def test_the_dry_run_names_the_missing_coco_weights_and_datasets(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = compose_params(["experiment=dacs_gta5"])
    missing = plan.missing_inputs(params)
    assert len(missing) == 3
    assert (
        COCO in missing[0] and "resnet101COCO-41f33a49.pth" in missing[0] and "-S model.weights" in missing[0]
    )
    assert "data.source.root" in missing[1] and "data.target.root" in missing[2]
    report = plan.render(
        params, ["experiment=dacs_gta5"], [plan.Projection("train@adapt", 250_000, 0.025)], "cuda"
    )
    assert (
        "stages that will run: data, validate, prepare, train@adapt, evaluate, export, evaluate_onnx"
        in report
    )
    assert "train@adapt: 250,000 steps x 25.0 ms = 1.74 h" in report


def test_the_step_time_is_measured_on_the_stage_own_task() -> None:
    params = tiny_params()  # from scratch, like any preset's weights: measuring never reads them
    for section in ("adapt", "pretrain"):
        seconds = plan.measure_step_seconds(params, section, torch.device("cpu"), steps=2)
        assert 0 < seconds < 60


def test_the_strategies_preset_is_dacs_gta5_plus_the_four_strategies_at_their_constants() -> None:
    base, params = (
        compose_params(["experiment=dacs_gta5"]),
        compose_params(["experiment=dacs_gta5_strategies"]),
    )
    cfg = params.adapt
    assert (cfg.optim.warmup_iters, cfg.optim.lr, cfg.optim.iterations) == (1500, 2.5e-4, 250_000)
    assert cfg.rcs.enabled and (cfg.rcs.temperature, cfg.rcs.min_pixels, cfg.rcs.min_crop_ratio) == (
        0.01,
        3000,
        0.5,
    )
    assert (
        cfg.fd.enabled and cfg.fd.weight == 0.005 and cfg.fd.classes == [6, 7, 11, 12, 13, 14, 15, 16, 17, 18]
    )
    assert cfg.mic.enabled and (cfg.mic.block_size, cfg.mic.mask_ratio, cfg.mic.weight) == (32, 0.7, 1.0)
    strategies = ("optim", "rcs", "fd", "mic")
    assert {k: v for k, v in vars(cfg).items() if k not in strategies} == {
        k: v for k, v in vars(base.adapt).items() if k not in strategies
    }
    assert (params.model, params.data, params.runs) == (base.model, base.data, base.runs)
