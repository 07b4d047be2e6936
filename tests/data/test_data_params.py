"""The data params of the real pairs: pairs fix the formats, counts are validated, paths have defaults."""

from __future__ import annotations

import copy
import functools
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from dacs_uda.config import ConfigError, compose_params, parse_params
from dacs_uda.data.datasets import manifest_path

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


@functools.cache
def _defaults() -> dict[str, Any]:
    return asdict(compose_params())


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and value:
            _merge(base[key], value)
        else:
            base[key] = value


def data_params(**data) -> dict:
    """The composed default params (conf/) with ``data`` merged into their data section."""
    raw = copy.deepcopy(_defaults())
    _merge(raw["data"], data)
    return raw


def test_repo_params_keep_the_embedded_default_and_name_the_new_keys() -> None:
    data = yaml.safe_load(REPO_PARAMS.read_text())["data"]
    assert data["pair"] == "embedded" and data["download"] is False and data["checksums"] is None
    assert data["source"]["counts"] is None and data["target"]["counts"] is None
    assert data["prepared"] == "data/prepared" and data["downloads"] == "data/downloads"
    assert (data["on_bad_pair"], data["max_bad_fraction"], data["io_workers"]) == ("fail", 0.001, 0)


@pytest.mark.parametrize(
    ("pair", "source", "target"),
    [("gta5_cityscapes", "gta5", "cityscapes"), ("synthia_cityscapes", "synthia", "cityscapes")],
)
def test_real_pairs_parse(pair: str, source: str, target: str) -> None:
    params = parse_params(data_params(pair=pair, source={"format": source}, target={"format": target}))
    assert (params.data.pair, params.data.source.format, params.data.target.format) == (pair, source, target)
    assert manifest_path(params, "source") == Path("data/prepared/source.csv")
    composed = compose_params([f"dataset={pair}"]).data  # the conf group of the pair says the same
    assert (composed.pair, composed.source.format, composed.target.format) == (pair, source, target)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"pair": "synthia_cityscapes"}, "data.source.format"),  # source left at gta5
        ({"pair": "gta5_cityscapes", "source": {"format": "synthia"}}, "data.source.format"),
        ({"pair": "embedded", "source": {"format": "synthia"}}, "data.source.format"),
        ({"pair": "kitti_cityscapes"}, "data.pair"),
        ({"source": {"counts": {"train": 0}}}, "data.source.counts"),
        ({"target": {"counts": {}}}, "data.target.counts"),
        ({"download": "maybe"}, "data.download"),
        ({"on_bad_pair": "drop"}, "data.on_bad_pair"),
        ({"max_bad_fraction": 1.0}, "data.max_bad_fraction"),
        ({"max_bad_fraction": -0.01}, "data.max_bad_fraction"),
        ({"io_workers": -1}, "data.io_workers"),
    ],
)
def test_inconsistent_data_params_are_rejected_by_name(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_params(data_params(**data))


def test_manifest_path_rejects_unknown_domains() -> None:
    with pytest.raises(ValueError, match="domain"):
        manifest_path(parse_params(data_params()), "validation")
