"""Validation during training: the evaluate stage's mIoU, modes restored, a bounded fixed subset of val."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from dacs_uda.config import ConfigError, load_params
from dacs_uda.evaluate import spread_rows
from dacs_uda.models.checkpoint import load_model
from dacs_uda.models.deeplabv2 import build_model
from dacs_uda.stages import evaluate as evaluate_stage
from dacs_uda.train.validation import Validator, build_validator, validated_models

# target_tree and workspace are fixtures (val frames, their manifest, a tiny checkpoint, params.yaml)
from tests.eval.conftest import N_VAL, TINY, target_tree, workspace  # noqa: F401

CPU = torch.device("cpu")


def other_model() -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model(TINY)


@pytest.mark.usefixtures("workspace")
def test_validator_gives_the_evaluate_stage_miou_of_each_model() -> None:
    assert evaluate_stage.main() == 0
    stage = json.loads(Path("metrics/eval.json").read_text())["dacs"]["mIoU"]
    params = load_params()
    student, teacher = load_model("models/dacs.pt")[0], other_model()
    validator = Validator(params, "adapt", CPU)
    scores = validator(200, {"student": student, "teacher": teacher})
    assert scores["mIoU_student"] == stage
    assert scores == validator(200, {"student": student, "teacher": teacher})  # deterministic
    # The teacher is another model: scored on its own, not a copy of the student's numbers.
    assert validator(200, {"model": teacher}) == {"mIoU_model": scores["mIoU_teacher"]}


@pytest.mark.usefixtures("workspace")
def test_models_are_scored_in_eval_mode_without_gradients_and_their_modes_restored() -> None:
    student, teacher = load_model("models/dacs.pt")[0].train(), other_model().train()
    frozen = next(m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)).eval()
    seen: list[tuple[bool, bool]] = []
    student.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    before = {name: [m.training for m in model.modules()] for name, model in (("s", student), ("t", teacher))}

    scores = Validator(load_params(), "adapt", CPU)(0, validated_models(student, teacher))

    assert list(scores) == ["mIoU_student", "mIoU_teacher"]
    assert seen and set(seen) == {(False, False)}
    assert [m.training for m in student.modules()] == before["s"]
    assert [m.training for m in teacher.modules()] == before["t"]
    assert not frozen.training and teacher.training
    assert validated_models(student) == {"model": student}


def test_spread_rows_takes_a_fixed_evenly_spaced_subset() -> None:
    rows = pd.DataFrame({"image": [f"{i}.png" for i in range(10)]})
    assert spread_rows(rows, 4)["image"].tolist() == ["0.png", "3.png", "6.png", "9.png"]
    assert spread_rows(rows, 1)["image"].tolist() == ["0.png"]
    assert spread_rows(rows, 0) is rows and spread_rows(rows, 10) is rows and spread_rows(rows, 11) is rows


@pytest.mark.usefixtures("workspace")
def test_eval_images_bounds_the_val_images() -> None:
    params = load_params()
    params.adapt.eval_images = 2
    dataset = Validator(params, "adapt", CPU).loader.dataset
    val = [row for row in pd.read_csv("data/prepared/target.csv").itertuples() if row.split == "val"]
    assert dataset.images == [val[0].image, val[N_VAL - 1].image]
    params.adapt.eval_images = N_VAL + 1  # a bound, not a demand: a smaller val set is used whole
    assert Validator(params, "adapt", CPU).loader.dataset.images == [row.image for row in val]


@pytest.mark.usefixtures("workspace")
def test_no_validator_when_eval_every_is_zero() -> None:
    params = load_params()
    params.oracle.eval_every = 0
    assert build_validator(params, "oracle", CPU) is None
    validator = build_validator(params, "pretrain", CPU)
    assert validator is not None
    assert [step for step in range(1, 801) if validator.due(step)] == [200, 400, 600, 800]


@pytest.mark.usefixtures("workspace")
@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("pretrain", "eval_every", -1), ("oracle", "eval_images", -1), ("adapt", "eval_every", -5)],
)
def test_negative_validation_settings_are_rejected_naming_the_key(section: str, key: str, value: int) -> None:
    params = load_params()
    with pytest.raises(ConfigError, match=rf"`{section}.{key}` must be >= 0"):
        changed = dataclasses.replace(getattr(params, section), **{key: value})
        dataclasses.replace(params, **{section: changed})
