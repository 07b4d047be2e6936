"""``data_version``: stable for the same bytes wherever they live, different when any used file changes,
and the same from the validated manifests (stage validate) and the prepared ones (later stages)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from dacs_uda.config import Params
from dacs_uda.data import prepare
from dacs_uda.data.manifest import build_manifest
from dacs_uda.data.version import PREPARED_PREFIX, data_version, prepared_data_version
from dacs_uda.lineage import UNKNOWN
from dacs_uda.utils.io import file_sha256
from tests.conftest import tiny_params
from tests.data import fixtures


def params_with_prepared(folder: Path) -> Params:
    """The tiny params, reading their prepared manifests from ``folder``."""
    params = tiny_params()
    params.data = replace(params.data, prepared=str(folder))
    return params


@pytest.fixture
def trees(tmp_path: Path) -> Path:
    fixtures.gta5_tree(tmp_path / "gta5", count=3)
    fixtures.cityscapes_tree(tmp_path / "cityscapes", counts={"train": 2, "val": 1})
    return tmp_path


def version_of(trees: Path) -> str:
    """The version ``validate`` records for these trees (rescanned: nothing is remembered)."""
    manifests = {
        "source": build_manifest("gta5", trees / "gta5", workers=1),
        "target": build_manifest("cityscapes", trees / "cityscapes", workers=1),
    }
    return data_version(manifests)


def test_manifest_rows_carry_the_file_hashes(trees: Path) -> None:
    rows = build_manifest("gta5", trees / "gta5", workers=1)
    assert rows["image_sha256"].tolist() == [file_sha256(p) for p in rows["image"]]
    assert rows["label_sha256"].tolist() == [file_sha256(p) for p in rows["label"]]


def test_same_bytes_same_version_wherever_they_live(trees: Path, tmp_path_factory) -> None:
    first = version_of(trees)
    assert len(first) == 16 and version_of(trees) == first
    moved = tmp_path_factory.mktemp("elsewhere")
    for name in ("gta5", "cityscapes"):
        shutil.copytree(trees / name, moved / name)
    assert version_of(moved) == first  # paths are not content


def test_any_changed_pixel_changes_the_version(trees: Path) -> None:
    before = version_of(trees)
    path = next((trees / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"))
    with Image.open(path) as img:
        pixels = img.convert("RGB")
    pixels.putpixel((0, 0), tuple(255 - c for c in pixels.getpixel((0, 0))))
    pixels.save(path)
    assert version_of(trees) != before


def test_dropping_a_pair_changes_the_version(trees: Path) -> None:
    before = version_of(trees)
    for side in ("images", "labels"):
        (trees / "gta5" / side / "00003.png").unlink()
    assert version_of(trees) != before


def test_prepared_manifests_give_the_validated_version(trees: Path, tmp_path: Path) -> None:
    validated = {
        "source": build_manifest("gta5", trees / "gta5", workers=1),
        "target": build_manifest("cityscapes", trees / "cityscapes", workers=1),
    }
    prepared_dir = tmp_path / "prepared"
    for domain, fmt in (("source", "gta5"), ("target", "cityscapes")):
        rows, _ = prepare.prepare_domain(validated[domain], fmt, prepared_dir / domain, (32, 16), workers=1)
        rows.to_csv(prepared_dir / f"{domain}.csv", index=False)
    assert prepared_data_version(params_with_prepared(prepared_dir)) == data_version(validated)


def test_missing_hashes_are_reported(tmp_path: Path) -> None:
    rows = pd.DataFrame({"split": ["train"], "image": ["a.png"], "label": ["b.png"]})
    with pytest.raises(ValueError, match="image_sha256"):
        data_version({"source": rows})
    with pytest.raises(ValueError, match="without a content hash"):
        data_version({"source": rows.assign(raw_image_sha256="ab", raw_label_sha256="")}, PREPARED_PREFIX)
    # A run whose prepared manifests are missing still records its lineage, with an honest "unknown".
    assert prepared_data_version(params_with_prepared(tmp_path)) == UNKNOWN
