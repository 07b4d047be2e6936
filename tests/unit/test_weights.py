"""Weights files cannot run code: ``model.weights`` is read with ``weights_only=True``, and so is every
other ``torch.load`` of the project."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

from dacs_uda.models.deeplabv2 import build_model
from dacs_uda.models.weights import init_from_config, read_weights_file
from tests.conftest import r101_model, tiny_model

REPO = Path(__file__).resolve().parents[2]
LOADING_CODE = ("src", "flows", "bench")


class _WritesMarker:
    """What a malicious pickle carries: a call that runs when the file is unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - the pickle protocol
        return (Path.write_text, (self.marker, "code ran"))


def malicious_weights(path: Path, marker: Path) -> Path:
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": {"conv1.weight": _WritesMarker(marker)}}, fh, protocol=2)
    return path


def test_the_crafted_pickle_does_run_code_when_unpickled_unsafely(tmp_path: Path) -> None:
    """The fixture is a real attack: plain pickle runs it (so the refusal below means something)."""
    marker = tmp_path / "PWNED"
    with open(malicious_weights(tmp_path / "evil.pth", marker), "rb") as fh:
        pickle.load(fh)  # noqa: S301 - deliberately unsafe, on the test's own file
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize("init", ["file", "imagenet"])
def test_model_weights_carrying_code_are_refused_before_they_run(tmp_path: Path, init: str) -> None:
    marker = tmp_path / "PWNED"
    evil = malicious_weights(tmp_path / "evil.pth", marker)
    with pytest.raises(ValueError) as err:
        if init == "file":
            build_model(tiny_model(init="file", weights=str(evil)))
        else:  # the file is read before the (ResNet-101-sized) model is touched: a stand-in will do
            init_from_config(torch.nn.Identity(), r101_model(init="imagenet", weights=str(evil)))
    assert str(err.value) == (
        f"model.weights: {evil} carries code or Python objects other than tensors (GLOBAL getattr); it "
        "was refused and nothing in it ran. Use a file of plain tensors (torch.save of a state dict) "
        "from a source you trust"
    )
    assert err.value.__cause__ is None and err.value.__suppress_context__  # torch's advice is not shown
    assert not marker.exists()


def test_a_corrupt_weights_file_names_the_file_and_the_first_line_of_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7)}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(
        ValueError, match=r"^model\.weights: .*cut\.pth is not a readable weights file \([^\n]+\)$"
    ):
        read_weights_file(path)


def test_a_plain_state_dict_is_read(tmp_path: Path) -> None:
    path = tmp_path / "ok.pth"
    torch.save({"model": {"conv1.weight": torch.ones(2, 3), "step": 5}}, path)
    tensors = read_weights_file(path)
    assert list(tensors) == ["conv1.weight"] and torch.equal(tensors["conv1.weight"], torch.ones(2, 3))


def _torch_loads_without_weights_only(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr != "load" or ast.unparse(node.func.value) not in ("torch", "torch.serialization"):
            continue
        safe = any(
            k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in node.keywords
        )
        if not safe:
            lines.append(node.lineno)
    return lines


def test_every_torch_load_of_the_project_is_weights_only() -> None:
    files = sorted(p for folder in LOADING_CODE for p in (REPO / folder).rglob("*.py"))
    assert any("models/checkpoint.py" in str(p) for p in files)
    unsafe = {
        str(p.relative_to(REPO)): lines for p in files if (lines := _torch_loads_without_weights_only(p))
    }
    assert unsafe == {}


def test_the_scan_finds_an_unsafe_torch_load(tmp_path: Path) -> None:
    code = tmp_path / "loader.py"
    code.write_text(
        "import torch\n"
        "a = torch.load('x', weights_only=True)\n"
        "b = torch.load('x')\n"
        "c = torch.serialization.load('x', weights_only=False)\n"
    )
    assert _torch_loads_without_weights_only(code) == [3, 4]
