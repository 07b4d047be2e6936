"""``params.yaml`` validation: the repo's file parses; bad keys, types and ranges are rejected by name."""

from __future__ import annotations

import copy
import dataclasses
import logging
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from dacs_uda import config
from dacs_uda.config import (
    TRAIN_SECTIONS,
    ConfigError,
    Params,
    compose_params,
    load_params,
    params_hash,
    parse_params,
)

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(REPO_PARAMS.read_text())


def _with(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``raw`` with ``dotted`` (e.g. ``adapt.optim.iterations``) set to ``value``."""
    out = copy.deepcopy(raw)
    *parents, leaf = dotted.split(".")
    node = out
    for key in parents:
        node = node[key]
    node[leaf] = value
    return out


def test_repo_params_yaml_parses(raw: dict[str, Any]) -> None:
    params = load_params(REPO_PARAMS)
    assert isinstance(params, Params)
    # Spot-check that values come from the file, not from the dataclass defaults.
    assert params.model.aspp_dilations == raw["model"]["aspp_dilations"]
    assert params.adapt.optim.lr == raw["adapt"]["optim"]["lr"]
    assert params.data.crop == raw["data"]["crop"]
    assert params == parse_params(raw)


@pytest.mark.parametrize("dotted", ["seed", "adapt.pseudo_threshold", "model.aspp_dilations", "data.source"])
def test_missing_key_is_rejected_by_name(raw: dict[str, Any], dotted: str) -> None:
    """No default hides a missing key: params.yaml (composed from conf/) must carry every knob."""
    out = copy.deepcopy(raw)
    *parents, leaf = dotted.split(".")
    node = out
    for key in parents:
        node = node[key]
    del node[leaf]
    with pytest.raises(ConfigError, match=dotted.replace(".", r"\.")):
        parse_params(out)


def _dataclasses(schema: type) -> list[type]:
    hints = typing.get_type_hints(schema)
    nested = [hints[f.name] for f in dataclasses.fields(schema) if dataclasses.is_dataclass(hints[f.name])]
    return [schema, *(c for n in nested for c in _dataclasses(n))]


def test_the_schema_has_no_defaults() -> None:
    """Defaults live in conf/ only: a default in config.py could disagree with it (as they once did)."""
    with_default = [
        f"{schema.__name__}.{f.name}"
        for schema in _dataclasses(Params)
        for f in dataclasses.fields(schema)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    ]
    assert not with_default


def test_composed_conf_equals_the_committed_params(raw: dict[str, Any]) -> None:
    """Hydra's composition of conf/, the committed params.yaml and what the stages load: one config."""
    assert compose_params() == load_params(REPO_PARAMS) == parse_params(raw)
    assert config.CONF_DIR == REPO_PARAMS.parent / "conf"


@pytest.mark.parametrize(
    "dotted",
    [
        "bogus",
        "adapt.lamda_threshold",
        "pretrain.optim.learning_rate",
        "data.embedded.n_sources",
        "model.depth",
    ],
)
def test_unknown_key_is_rejected_by_name(raw: dict[str, Any], dotted: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params(_with(raw, dotted, 1))
    assert dotted in str(err.value)


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("adapt.ema_alpha", "high"),
        ("adapt.ema_alpha", True),
        ("adapt.optim.iterations", "many"),
        ("adapt.optim.iterations", True),
        ("seed", 1.5),
        ("model.num_classes", "nineteen"),
        ("data.crop", None),
    ],
)
def test_wrong_type_is_rejected_by_name(raw: dict[str, Any], dotted: str, value: Any) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params(_with(raw, dotted, value))
    assert dotted in str(err.value)


def test_wrong_type_in_list_names_the_element(raw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"data\.crop\[0\]"):
        parse_params(_with(raw, "data.crop", ["a", 64]))


@pytest.mark.parametrize(("dotted", "named"), [("adapt", "`adapt`"), ("adapt.optim", "`adapt.optim`")])
def test_scalar_in_place_of_a_section_names_the_section(raw: dict[str, Any], dotted: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_params(_with(raw, dotted, 5))


def test_yaml_syntax_error_is_a_config_error(tmp_path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


@pytest.mark.parametrize(
    ("dotted", "value", "named"),
    [
        ("adapt.pseudo_threshold", 1.5, "adapt.pseudo_threshold"),
        ("adapt.pseudo_threshold", -0.01, "adapt.pseudo_threshold"),
        ("adapt.ema_alpha", 1.0, "adapt.ema_alpha"),
        ("adapt.ema_alpha", -0.5, "adapt.ema_alpha"),
        ("adapt.jitter_p", -0.1, "adapt.jitter_p"),
        ("adapt.blur_p", 1.1, "adapt.blur_p"),
        ("adapt.blur_sigma", [1.0], "adapt.blur_sigma"),
        ("adapt.blur_sigma", [1.0, 0.5], "adapt.blur_sigma"),
        ("adapt.method", "fda", "adapt.method"),
        ("adapt.init", "imagenet", "adapt.init"),
        ("adapt.optim.iterations", 0, "adapt.optim.iterations"),
        ("pretrain.optim.iterations", 0, "pretrain.optim.iterations"),
        ("oracle.optim.iterations", 0, "oracle.optim.iterations"),
        ("pretrain.optim.momentum", 1.0, "pretrain.optim.momentum"),
        ("oracle.domain", "sky", "oracle.domain"),
        # crop is (H, W), resize is (W, H): each too large on one axis of one domain
        ("data.crop", [512, 512], "data.crop"),
        ("data.crop", [145, 128], "data.crop"),  # taller than source (144)
        ("data.crop", [129, 128], "data.crop"),  # taller than target (128)
        ("data.crop", [128, 257], "data.crop"),  # wider than both (256)
        ("data.source.resize", [0, 144], "data.source.resize"),
        ("data.embedded.n_source", 0, "data.embedded.n_source"),
        ("model.num_classes", 1, "model.num_classes"),
        ("export.opset", 6, "export.opset"),
        ("evaluate.batch_size", 0, "evaluate.batch_size"),
    ],
)
def test_out_of_range_value_is_rejected_by_name(
    raw: dict[str, Any], dotted: str, value: Any, named: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params(_with(raw, dotted, value))
    assert f"`{named}`" in str(err.value)


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("adapt.ema_alpha", 0.0),
        ("adapt.pseudo_threshold", 1.0),
        ("adapt.jitter_p", 0.0),
        ("data.crop", [128, 256]),
    ],
)
def test_boundary_values_are_accepted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parse_params(_with(raw, dotted, value))


def test_load_params_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(ConfigError) as err:
        load_params(missing)
    message = str(err.value)
    assert str(missing) in message and "not found" in message and "dvc.yaml" in message


def test_load_params_rejects_non_mapping(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(path)


def test_load_params_reports_bad_key_from_file(tmp_path: Path, raw: dict[str, Any]) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_with(raw, "adapt.lamda_threshold", 0.9)))
    with pytest.raises(ConfigError, match=r"adapt\.lamda_threshold"):
        load_params(path)


def test_params_hash_is_stable(raw: dict[str, Any]) -> None:
    first, second = parse_params(raw), parse_params(copy.deepcopy(raw))
    assert first is not second
    assert params_hash(first) == params_hash(second)
    assert len(params_hash(first)) == 12 and int(params_hash(first), 16) >= 0
    # Key order in the file does not matter.
    reordered = dict(reversed(list(copy.deepcopy(raw).items())))
    assert params_hash(parse_params(reordered)) == params_hash(first)


@pytest.mark.parametrize(
    ("dotted", "value"),
    [("adapt.ema_alpha", 0.999), ("seed", 1), ("data.crop", [64, 64]), ("adapt.optim.lr", 0.0051)],
)
def test_params_hash_changes_with_any_value(raw: dict[str, Any], dotted: str, value: Any) -> None:
    assert params_hash(parse_params(_with(raw, dotted, value))) != params_hash(parse_params(raw))


def _stage_mains() -> dict[str, tuple[Any, Any]]:
    """Stage name -> (module, main as called by dvc.yaml's cmd)."""
    from dacs_uda.stages import data as acquire
    from dacs_uda.stages import evaluate, evaluate_onnx, export, prepare, train, validate

    return {
        "data": (acquire, acquire.main),
        "validate": (validate, validate.main),
        "prepare": (prepare, prepare.main),
        **{f"train@{s}": (train, lambda s=s: train.main(["--section", s])) for s in TRAIN_SECTIONS},
        "evaluate": (evaluate, evaluate.main),
        "export": (export, export.main),
        "evaluate_onnx": (evaluate_onnx, evaluate_onnx.main),
    }


@pytest.mark.parametrize("stage", list(_stage_mains()))
@pytest.mark.parametrize(
    ("dotted", "value"),
    [("adapt.lamda_threshold", 0.9), ("adapt.ema_alpha", "high"), ("adapt.pseudo_threshold", 1.5)],
    ids=["unknown-key", "wrong-type", "out-of-range"],
)
def test_every_stage_stops_at_start_on_invalid_params(
    stage: str,
    dotted: str,
    value: Any,
    in_tmp_project: Path,
    raw: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What a stage run by DVC does: name the bad key (exit 1 or ConfigError) and write nothing."""
    module, main = _stage_mains()[stage]
    monkeypatch.setattr(module, "setup_logging", lambda *args, **kwargs: None)  # keep caplog's handler
    (in_tmp_project / "params.yaml").write_text(yaml.safe_dump(_with(raw, dotted, value)))
    with caplog.at_level(logging.ERROR):
        try:
            assert main() == 1
            message = caplog.text
        except ConfigError as err:
            message = str(err)
    assert f"`{dotted}`" in message or f"key: {dotted}" in message, message
    assert [p.name for p in in_tmp_project.iterdir()] == ["params.yaml"]
