"""``dacs-uda predict`` on a folder of mixed images: every readable one is segmented, the rest reported."""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dacs_uda import cli
from dacs_uda.export import export_onnx, onnx_metadata
from dacs_uda.inference import OnnxSegmenter, collect_inputs, load_image, segment_files, to_rgb8
from dacs_uda.labels import NUM_CLASSES, TRAIN_ID_TO_LABEL_ID
from dacs_uda.models.deeplabv2 import FullResolution, build_model
from tests.export.test_onnx_export import LINEAGE, TINY

EVAL_SIZE = [64, 32]


def png_rgb16(path: Path, pixels: np.ndarray) -> None:
    """A 48-bit RGB PNG (Pillow cannot write one): 8-bit RGB scaled to 16 bits, big-endian."""
    height, width, _ = pixels.shape
    wide = (pixels.astype(">u2") * 257).astype(">u2")
    raw = b"".join(b"\x00" + wide[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    meta = onnx_metadata(NUM_CLASSES, 18, False, LINEAGE, eval_size=EVAL_SIZE)
    export_onnx(FullResolution(build_model(TINY)).eval(), path, 18, False, meta, example_size=(32, 64))
    return path


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """Every pixel format a user may have, a corrupt PNG, a text file named .jpg and one that is ignored."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(rgb).save(folder / "photo.JPG", quality=90)
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(folder / "gray.png")
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(folder / "gray16.png")
    png_rgb16(folder / "rgb16.png", rgb)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(folder / "palette.png", transparency=0)
    (folder / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(rgb[:20, :30]).save(folder / "nested" / "deeper" / "small.jpeg")
    Image.fromarray(rgb).save(folder / "nested" / "rgb.png")  # same name as ../rgb.png, other folder
    data = (folder / "rgb.png").read_bytes()
    (folder / "corrupt.png").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("not an image at all\n")
    (folder / "readme.txt").write_text("ignored: not an image suffix\n")
    return folder


GOOD = ["rgb", "photo", "rgba", "gray", "gray16", "rgb16", "palette", "nested/deeper/small", "nested/rgb"]


def test_predict_folder_of_mixed_images(model_path, mixed_folder, tmp_path, caplog, monkeypatch) -> None:
    monkeypatch.setattr(cli, "setup_logging", lambda level=None: None)  # keep pytest's log capture
    out = tmp_path / "out"
    argv = ["predict", str(mixed_folder), "--model", str(model_path), "--out", str(out), "--no-progress"]
    with caplog.at_level(logging.INFO):
        assert cli.main(argv) == 1  # two files failed, the others were written
    for stem in GOOD:
        source = next(mixed_folder.glob(f"{stem}.*"))
        with Image.open(source) as img:
            size = img.size
        labels = np.asarray(Image.open(out / f"{stem}_labels.png"))
        assert labels.shape == size[::-1] and labels.dtype == np.uint8 and labels.max() < NUM_CLASSES
        for suffix in ("_color.png", "_overlay.png"):
            with Image.open(out / f"{stem}{suffix}") as img:
                assert img.size == size and img.mode == "RGB"
    assert not list(out.glob("corrupt*")) and not list(out.glob("notes*")) and not list(out.glob("readme*"))
    assert "corrupt.png" in caplog.text and "notes.jpg" in caplog.text and "readme" not in caplog.text
    assert "9 image(s) segmented, 2 failed" in caplog.text
    assert "CPUExecutionProvider" in caplog.text  # says which provider ran


def test_cityscapes_ids_and_colours_follow_the_metadata(model_path, mixed_folder, tmp_path) -> None:
    out = tmp_path / "out"
    argv = ["predict", str(mixed_folder / "rgb.png"), "--model", str(model_path), "--out", str(out)]
    assert cli.main([*argv, "--ids", "cityscapes", "--no-progress"]) == 0
    label_ids = np.asarray(Image.open(out / "rgb_labels.png"))
    assert set(np.unique(label_ids)) <= set(TRAIN_ID_TO_LABEL_ID)
    segmenter = OnnxSegmenter(model_path)
    train_ids = segmenter.predict(load_image(mixed_folder / "rgb.png"), "auto")
    assert np.array_equal(label_ids, segmenter.to_label_ids(train_ids))
    assert np.array_equal(np.asarray(Image.open(out / "rgb_color.png")), segmenter.colorize(train_ids))


def test_pixel_formats_become_the_same_rgb(mixed_folder) -> None:
    rgb = load_image(mixed_folder / "rgb.png")
    assert np.array_equal(load_image(mixed_folder / "rgba.png"), rgb)  # alpha dropped
    assert np.array_equal(load_image(mixed_folder / "rgb16.png"), rgb)  # 16 -> 8 bits
    gray16 = load_image(mixed_folder / "gray16.png")
    assert np.array_equal(gray16, np.repeat(rgb[..., 1:2], 3, axis=2))
    assert load_image(mixed_folder / "gray.png").shape == rgb.shape
    assert np.array_equal(
        to_rgb8(Image.fromarray(np.array([[0.0, 1.0]], np.float32))), [[[0] * 3, [255] * 3]]
    )


def test_too_large_and_unreadable_images_fail_alone(model_path, mixed_folder, tmp_path) -> None:
    segmenter = OnnxSegmenter(model_path)
    inputs = [
        mixed_folder / "rgb.png",
        mixed_folder / "nested" / "deeper" / "small.jpeg",
        tmp_path / "missing.png",
    ]
    report = segment_files(inputs, segmenter, tmp_path / "out", max_pixels=1000, progress=False)
    assert list(report.written) == [mixed_folder / "nested" / "deeper" / "small.jpeg"]  # 600 pixels
    assert "exceeds the limit" in report.failed[mixed_folder / "rgb.png"]
    assert "--max-pixels" in report.failed[mixed_folder / "rgb.png"]
    assert report.failed[tmp_path / "missing.png"] == "no such file or folder"
    assert report.provider == "CPUExecutionProvider" and not report.ok


def test_resize_runs_the_model_at_the_evaluated_scale_and_answers_at_the_image_size(model_path) -> None:
    segmenter = OnnxSegmenter(model_path)
    assert segmenter.eval_size == tuple(EVAL_SIZE)
    assert segmenter.model_size(128, 64, "auto") == (64, 32)  # Cityscapes-like: 2048x1024 -> 1024x512
    assert segmenter.model_size(90, 64, "auto") == (45, 32)
    assert segmenter.model_size(90, 64, "none") == (90, 64)
    assert segmenter.model_size(90, 64, (40, 20)) == (40, 20)
    image = np.random.default_rng(3).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    assert segmenter.predict(image, "auto").shape == (64, 128)
    assert np.array_equal(segmenter.predict(image, "none"), segmenter.predict(image))


def test_same_stem_in_one_folder_gets_the_suffix(tmp_path) -> None:
    for name in ("a.png", "a.jpg", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    jobs, missing = collect_inputs([tmp_path])
    assert sorted(str(stem) for _, stem in jobs) == ["a_jpg", "a_png", "b"] and not missing


def test_console_script_exit_codes(model_path, mixed_folder, tmp_path) -> None:
    """The installed entry point, as a user runs it: 1 when some files fail, 2 without a model."""
    base = [
        sys.executable,
        "-m",
        "dacs_uda.cli",
        "predict",
        str(mixed_folder / "gray.png"),
        "--out",
        str(tmp_path),
    ]
    ok = subprocess.run([*base, "--model", str(model_path), "--no-progress"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "gray_overlay.png").is_file()
    bad = subprocess.run([*base, "--model", str(tmp_path / "nope.onnx")], capture_output=True, text=True)
    assert bad.returncode == 2 and "nope.onnx" in bad.stderr
    info = subprocess.run(
        [sys.executable, "-m", "dacs_uda.cli", "info", str(model_path)], capture_output=True, text=True
    )
    assert info.returncode == 0 and json.loads(info.stdout)["eval_size"] == EVAL_SIZE
