"""The committed ``.dvc/config``, read through DVC itself: Hydra composition on, and a default remote
(a local folder beside the repository) that ``dvc push`` / ``dvc pull`` use."""

from __future__ import annotations

from pathlib import Path

import pytest
from dvc.repo import Repo

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config():
    with Repo(str(REPO)) as repo:
        return repo.config


def test_hydra_composes_params_yaml(config) -> None:
    assert config["hydra"]["enabled"] is True
    assert not {"config_dir", "config_name"} & set(config["hydra"])  # the defaults: conf/config.yaml


def test_default_remote_is_a_local_folder_beside_the_repository(config) -> None:
    name = config["core"]["remote"]
    # DVC resolves the url relative to .dvc/: one clone's remote is `../dacs-uda-remote`.
    assert Path(config["remote"][name]["url"]) == REPO.parent / "dacs-uda-remote"
