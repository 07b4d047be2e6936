"""``conf/``: DVC's Hydra composition reproduces the committed ``params.yaml``, and every group option
composes into params that the stages accept.

Compositions go through ``dvc.utils.hydra.compose_and_dump``, the function ``dvc exp run -S`` calls
when ``hydra.enabled`` is set, so they are exactly what an experiment would run with.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import compose_and_dump

from dacs_uda.config import load_params

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
PARAMS = REPO / "params.yaml"
# group -> a key its options set.
GROUP_KEYS = {
    "dataset": ("data", "pair"),
    "model": ("model", "width"),
    "method": ("adapt", "method"),
    "fidelity": ("adapt", "fidelity"),
}
MODEL_WIDTHS = {"small": 16, "r101": 64}  # the model group's options set the shape, not a name
OPTIONS = sorted((group, path.stem) for group in GROUP_KEYS for path in (CONF / group).glob("*.yaml"))


def compose(tmp_path: Path, *overrides: str) -> Path:
    """``params.yaml`` as ``dvc exp run -S OVERRIDE ...`` writes it, in ``tmp_path``."""
    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(CONF), None, "config", str(REPO), list(overrides))
    return out


def test_every_group_has_the_expected_options() -> None:
    assert {g: sorted(o for gg, o in OPTIONS if gg == g) for g in GROUP_KEYS} == {
        "dataset": ["embedded", "gta5_cityscapes", "synthia_cityscapes"],
        "model": ["r101", "small"],
        "method": ["classmix", "cutmix", "dacs", "dist_align", "pseudo_label", "source_only"],
        "fidelity": ["clean", "official"],
    }


def test_defaults_compose_to_the_committed_params_yaml(tmp_path: Path) -> None:
    composed = compose(tmp_path)
    assert yaml.safe_load(composed.read_text()) == yaml.safe_load(PARAMS.read_text())
    # Byte for byte: the committed file is what `dvc exp run` writes, so an experiment's diff
    # shows only what its overrides change.
    assert composed.read_text() == PARAMS.read_text()


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_group_option_composes_into_valid_params(tmp_path: Path, group: str, option: str) -> None:
    params = load_params(compose(tmp_path, f"{group}={option}"))  # validated as at stage start
    section, key = GROUP_KEYS[group]
    expected = MODEL_WIDTHS[option] if group == "model" else option
    assert getattr(getattr(params, section), key) == expected


def test_real_pairs_use_the_official_sizes(tmp_path: Path) -> None:
    for pair, source in (("gta5_cityscapes", "gta5"), ("synthia_cityscapes", "synthia")):
        data = load_params(compose(tmp_path, f"dataset={pair}")).data
        assert (data.source.format, data.source.resize, data.target.resize, data.crop) == (
            source,
            [1280, 720],
            [1024, 512],
            [512, 512],
        )


def test_r101_is_the_paper_backbone(tmp_path: Path) -> None:
    model = load_params(compose(tmp_path, "model=r101")).model
    assert (model.depths, model.width, model.aspp_dilations) == ([3, 4, 23, 3], 64, [6, 12, 18, 24])


def test_groups_and_values_combine_like_dvc_exp_run(tmp_path: Path) -> None:
    composed = compose(tmp_path, "method=classmix", "fidelity=clean", "seed=1", "adapt.pseudo_threshold=0.9")
    raw, base = yaml.safe_load(composed.read_text()), yaml.safe_load(PARAMS.read_text())
    params = load_params(composed)
    assert (params.adapt.method, params.adapt.fidelity, params.seed) == ("classmix", "clean", 1)
    assert params.adapt.pseudo_threshold == 0.9
    for key in ("method", "fidelity", "pseudo_threshold"):
        raw["adapt"][key] = base["adapt"][key]
    raw["seed"] = base["seed"]
    assert raw == base  # nothing else moved


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dvc_exp_run_rewrites_params_from_the_composition(tmp_path: Path) -> None:
    """A real ``dvc exp run -S method=... -S seed=...`` in a scratch repo with this conf/ and a
    one-line stage that records what it was run with."""
    shutil.copytree(CONF, tmp_path / "conf")
    shutil.copy2(PARAMS, tmp_path / "params.yaml")
    (tmp_path / "record.py").write_text(
        "import json, yaml\n"
        "p = yaml.safe_load(open('params.yaml'))\n"
        "json.dump({'seed': p['seed'], 'method': p['adapt']['method']}, open('ran.json', 'w'))\n"
    )
    (tmp_path / "dvc.yaml").write_text(
        f"stages:\n  record:\n    cmd: {sys.executable} record.py\n    deps: [record.py]\n"
        "    params: [seed, adapt.method]\n    metrics: [{ran.json: {cache: false}}]\n"
    )

    def run(*args: str) -> None:
        proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run(sys.executable, "-m", "dvc", "config", "hydra.enabled", "true")
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    run(sys.executable, "-m", "dvc", "exp", "run", "-S", "method=cutmix", "-S", "seed=3")
    ran = yaml.safe_load((tmp_path / "ran.json").read_text())
    assert ran == {"seed": 3, "method": "cutmix"}
    load_params(tmp_path / "params.yaml")
