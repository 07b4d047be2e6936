"""Label decoding, resizing, normalisation, crop sampling and manifest errors, on hand-made files."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dacs_uda.config import RcsConfig
from dacs_uda.data.datasets import KeyedCropSampler, SegmentationDataset, load_pair, read_manifest
from dacs_uda.data.rcs import RareClassSampler, class_pixel_counts, rare_plan
from dacs_uda.labels import IGNORE_INDEX, cityscapes_palette_bytes
from dacs_uda.utils.image import IMG_MEAN_BGR, denormalize, normalize
from dacs_uda.utils.rng import keyed_generator

# Cityscapes label id -> expected training id (every id outside the 19 classes -> ignore)
LABEL_IDS = np.array(
    [
        [7, 26, 0, 33],
        [255, 1, 34, 8],
        [11, 24, 23, 3],
    ],
    dtype=np.uint8,
)
TRAIN_IDS = np.array(
    [
        [0, 13, IGNORE_INDEX, 18],
        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 1],
        [2, 11, 10, IGNORE_INDEX],
    ],
    dtype=np.uint8,
)
H, W = LABEL_IDS.shape


def _image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").save(path)
    return path


def _gta5_label(path: Path, ids: np.ndarray) -> Path:
    """A palette PNG whose indices are label ids (the GTA5 encoding)."""
    label = Image.fromarray(ids, "L")
    label.putpalette(cityscapes_palette_bytes())
    assert label.mode == "P"
    label.save(path)
    return path


def _cityscapes_label(path: Path, ids: np.ndarray) -> Path:
    """An 8-bit greyscale ``*_gtFine_labelIds.png``."""
    Image.fromarray(ids, "L").save(path)
    return path


@pytest.fixture(params=["gta5", "cityscapes"])
def label_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "gta5":
        path = _gta5_label(tmp_path / "00001.png", LABEL_IDS)
        with Image.open(path) as check:
            assert check.mode == "P"
        return path
    path = _cityscapes_label(tmp_path / "x_gtFine_labelIds.png", LABEL_IDS)
    with Image.open(path) as check:
        assert check.mode == "L"
    return path


def test_load_pair_maps_label_ids_to_train_ids(tmp_path: Path, label_file: Path) -> None:
    image_path = _image(tmp_path / "image.png", W, H)
    image, label = load_pair(str(image_path), str(label_file), (W, H))
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    with Image.open(image_path) as original:
        np.testing.assert_array_equal(image, np.asarray(original))  # no resize: untouched
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, TRAIN_IDS)


def test_load_pair_upsamples_labels_with_nearest(tmp_path: Path, label_file: Path) -> None:
    image_path = _image(tmp_path / "image.png", W, H)
    image, label = load_pair(str(image_path), str(label_file), (2 * W, 3 * H))  # size is (W, H)
    assert image.shape == (3 * H, 2 * W, 3)
    assert label.shape == (3 * H, 2 * W)
    # An integer-factor nearest upsampling repeats every pixel exactly.
    np.testing.assert_array_equal(label, np.repeat(np.repeat(TRAIN_IDS, 3, axis=0), 2, axis=1))


@pytest.mark.parametrize("size", [(3, 2), (7, 5), (17, 4)])
def test_load_pair_resize_creates_no_new_label_values(
    tmp_path: Path, label_file: Path, size: tuple[int, int]
) -> None:
    image_path = _image(tmp_path / "image.png", W, H)
    image, label = load_pair(str(image_path), str(label_file), size)
    assert image.shape == (size[1], size[0], 3)
    assert label.shape == (size[1], size[0])
    assert set(np.unique(label).tolist()) <= set(np.unique(TRAIN_IDS).tolist())


def test_load_pair_resizes_image_and_label_from_different_sizes(tmp_path: Path) -> None:
    big_ids = np.kron(LABEL_IDS, np.ones((4, 4), dtype=np.uint8))  # 12 x 16, 4x4 blocks
    label_path = _gta5_label(tmp_path / "label.png", big_ids)
    image_path = _image(tmp_path / "image.png", 4 * W, 4 * H)
    image, label = load_pair(str(image_path), str(label_path), (W, H))
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(label, TRAIN_IDS)  # one sample per 4x4 block


def test_load_pair_without_label(tmp_path: Path) -> None:
    image, label = load_pair(str(_image(tmp_path / "image.png", W, H)), None, (W, H))
    assert label is None and image.shape == (H, W, 3)


def test_normalize_is_bgr_minus_mean() -> None:
    red = np.zeros((2, 3, 3), dtype=np.uint8)
    red[..., 0] = 255  # pure red in RGB
    x = normalize(red)
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    assert torch.equal(x.argmax(0), torch.full((2, 3), 2))  # red is the last channel in BGR
    expected = torch.tensor(
        [0 - IMG_MEAN_BGR[0], 0 - IMG_MEAN_BGR[1], 255 - IMG_MEAN_BGR[2]], dtype=torch.float32
    )
    torch.testing.assert_close(x[:, 0, 0], expected)


def test_normalize_denormalize_round_trip() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = normalize(image)
    back = denormalize(x)  # RGB in [0, 1], CHW
    assert back.shape == (3, 5, 7)
    restored = (back * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(restored, image)
    # batched input works too
    batch = denormalize(torch.stack([x, x]))
    torch.testing.assert_close(batch[1], back)


def _draws(sampler: KeyedCropSampler, count: int) -> list[tuple[int, int, int]]:
    return list(itertools.islice(iter(sampler), count))


def sampler(
    length: int, size=None, crop=None, *, seed: int = 0, batch: int = 2, **kwargs
) -> KeyedCropSampler:
    return KeyedCropSampler(
        length, size or SIZE, crop or CROP, seed=seed, stream="source", batch_size=batch, **kwargs
    )


# size is (W, H) and crop is (H, W): non-square on purpose, so a swap would go out of bounds.
SIZE, CROP = (40, 20), (8, 32)


def test_crop_sampler_in_bounds_and_covers_epochs() -> None:
    length, epochs = 7, 5
    draws = _draws(sampler(length), length * epochs)
    for index, y, x in draws:
        assert 0 <= index < length
        assert 0 <= y <= SIZE[1] - CROP[0] and 0 <= x <= SIZE[0] - CROP[1]
    for epoch in range(epochs):
        assert sorted(d[0] for d in draws[epoch * length : (epoch + 1) * length]) == list(range(length))
    # epochs are not all in the same order
    assert len({tuple(d[0] for d in draws[e * length : (e + 1) * length]) for e in range(epochs)}) > 1


def test_crop_sampler_bounds_are_inclusive() -> None:
    # a 6x10 (H, W) image with a 5x9 crop: y and x can each only be 0 or 1, and both must occur
    draws = _draws(sampler(3, (10, 6), (5, 9)), 300)
    assert {d[1] for d in draws} == {0, 1} and {d[2] for d in draws} == {0, 1}
    # crop == image: a single position
    draws = _draws(sampler(3, (10, 6), (6, 10)), 30)
    assert {(d[1], d[2]) for d in draws} == {(0, 0)}


def test_crop_sampler_is_deterministic_for_a_seed_and_stream() -> None:
    first = _draws(sampler(9, seed=3), 50)
    assert first == _draws(sampler(9, seed=3), 50)
    assert first != _draws(sampler(9, seed=4), 50)
    other_stream = KeyedCropSampler(9, SIZE, CROP, seed=3, stream="target", batch_size=2)
    assert first != _draws(other_stream, 50)


def test_crop_sampler_keys_do_not_depend_on_when_they_are_drawn() -> None:
    """A key is a function of (seed, stream, step, index): workers pre-fetching keys, a run resumed at
    a later step, or a process holding only part of the batch all get the same crops."""
    whole = _draws(sampler(9, batch=4), 40)  # steps 0-9
    assert _draws(sampler(9, batch=4, start_step=6), 16) == whole[24:]
    one = sampler(9, batch=4)
    assert [one.key(step, i) for step in range(10) for i in range(4)] == whole
    assert [one.key(7, 3), one.key(2, 1)] == [whole[31], whole[9]]  # out of order, same answers


def test_crop_sampler_draws_each_crop_from_its_own_key() -> None:
    """Sample i of step s: frame from the epoch permutation, crop from (seed, stream, 'crop', s, i)."""
    draws = _draws(sampler(5, batch=2), 10)
    order = torch.randperm(5, generator=keyed_generator(0, "source", "epoch", 0)).tolist()
    order += torch.randperm(5, generator=keyed_generator(0, "source", "epoch", 1)).tolist()
    for position, (index, y, x) in enumerate(draws):
        step, i = divmod(position, 2)
        gen = keyed_generator(0, "source", "crop", step, i)
        expected_y = int(torch.randint(0, SIZE[1] - CROP[0] + 1, (1,), generator=gen))
        expected_x = int(torch.randint(0, SIZE[0] - CROP[1] + 1, (1,), generator=gen))
        assert (index, y, x) == (order[position], expected_y, expected_x)


def test_crop_sampler_shards_split_each_global_batch() -> None:
    """Rank r of a DDP run loads global indices [2r, 2r + 2) of each batch of 4: the same keys."""
    whole = _draws(sampler(9, batch=4), 12)  # steps 0-2
    shards = [_draws(sampler(9, batch=4, shard=range(2 * r, 2 * r + 2)), 6) for r in range(2)]
    for step in range(3):
        pair = slice(2 * step, 2 * step + 2)
        assert shards[0][pair] + shards[1][pair] == whole[4 * step : 4 * step + 4]
    with pytest.raises(ValueError, match="not a non-empty part of a batch of 4"):
        sampler(9, batch=4, shard=range(3, 5))


def test_dataset_cuts_the_sampled_crop(tmp_path: Path) -> None:
    big_ids = np.kron(LABEL_IDS, np.ones((4, 4), dtype=np.uint8))  # 12 x 16
    manifest = pd.DataFrame(
        {
            "split": ["train"],
            "image": [str(_image(tmp_path / "image.png", 16, 12))],
            "label": [str(_gta5_label(tmp_path / "label.png", big_ids))],
        }
    )
    dataset = SegmentationDataset(manifest, (16, 12), crop=(4, 8))
    item = dataset[(0, 4, 8)]
    assert item["image"].shape == (3, 4, 8) and item["label"].shape == (4, 8)
    assert torch.equal(
        item["label"], torch.from_numpy(np.kron(TRAIN_IDS, np.ones((4, 4), np.uint8))[4:8, 8:16]).long()
    )
    whole = dataset[0]  # an int key gives the whole image
    assert whole["image"].shape == (3, 12, 16) and whole["name"] == "image.png"
    assert torch.equal(whole["image"][:, 4:8, 8:16], item["image"])


def test_read_manifest_missing_file_points_to_validate(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"dvc repro validate"):
        read_manifest(tmp_path / "target.csv")


def test_read_manifest_filters_split_and_names_an_empty_one(tmp_path: Path) -> None:
    path = tmp_path / "target.csv"
    pd.DataFrame(
        {"split": ["train", "train", "val"], "image": ["a", "b", "c"], "label": ["x", "y", "z"]}
    ).to_csv(path, index=False)
    val = read_manifest(path, "val")
    assert val["image"].tolist() == ["c"] and val.index.tolist() == [0]
    assert len(read_manifest(path)) == 3
    with pytest.raises(ValueError, match=r"'test'"):
        read_manifest(path, "test")


def test_read_manifest_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "source.csv"
    path.write_text("split,image,label\n")
    with pytest.raises(ValueError, match=r"no rows"):
        read_manifest(path)


def test_auto_loader_workers_use_the_cores_the_training_processes_leave(monkeypatch) -> None:
    from dacs_uda.data import datasets

    monkeypatch.setattr(datasets.os, "cpu_count", lambda: 16)
    assert datasets.loader_workers(3) == 3  # an explicit count is kept
    monkeypatch.setattr(datasets.torch.cuda, "is_available", lambda: False)
    assert datasets.loader_workers(-1) == 0  # CPU training uses every core itself
    monkeypatch.setattr(datasets.torch.cuda, "is_available", lambda: True)
    assert datasets.loader_workers(-1, {}) == 15
    assert datasets.loader_workers(-1, {"LOCAL_WORLD_SIZE": "2"}) == 7  # two GPUs on the node


def _rare_sampler(labels: dict[int, np.ndarray], **kwargs) -> KeyedCropSampler:
    cfg = RcsConfig(enabled=True, temperature=0.01, min_pixels=20, min_crop_ratio=0.5, max_crop_tries=10)
    pixels = np.stack([class_pixel_counts(labels[i]) for i in range(len(labels))])
    rare = RareClassSampler(rare_plan(pixels, cfg), labels.__getitem__)
    return sampler(len(labels), batch=4, rare=rare, **kwargs)


def _street_labels(count: int) -> dict[int, np.ndarray]:
    """Road frames (20 x 40, like SIZE); frame 3 alone holds a 5 x 6 patch of bus (class 15)."""
    labels = {i: np.zeros((SIZE[1], SIZE[0]), dtype=np.uint8) for i in range(count)}
    labels[3][10:15, 30:36] = 15
    return labels


def test_rare_class_keys_are_keyed_by_step_and_index_and_shardable() -> None:
    labels = _street_labels(6)
    whole = _draws(_rare_sampler(labels), 40)  # steps 0-9
    one = _rare_sampler(labels)
    assert [one.key(step, i) for step in range(10) for i in range(4)] == whole
    assert one.rare is not None
    assert one.key(7, 3) == one.rare.draw(CROP, keyed_generator(0, "source", "rcs", 7, 3))
    assert _draws(_rare_sampler(labels, start_step=6), 16) == whole[24:]
    shards = [_draws(_rare_sampler(labels, shard=range(2 * r, 2 * r + 2)), 4) for r in range(2)]
    for step in range(2):
        assert (
            shards[0][2 * step : 2 * step + 2] + shards[1][2 * step : 2 * step + 2]
            == whole[4 * step : 4 * step + 4]
        )
    # bus (30 px, f 30/4800) outweighs road by exp(~99): every key is frame 3 with > 10 px of bus in the crop
    for frame, y, x in whole:
        assert frame == 3 and np.count_nonzero(labels[3][y : y + CROP[0], x : x + CROP[1]] == 15) > 10
    # and the uniform sampler, off, still walks the epoch permutation
    assert {d[0] for d in _draws(sampler(6, batch=4), 40)} == set(range(6))


def test_dataset_label_is_the_label_of_the_whole_item(tmp_path: Path) -> None:
    manifest = pd.DataFrame(
        {
            "split": ["train"],
            "image": [str(_image(tmp_path / "image.png", W, H))],
            "label": [str(_gta5_label(tmp_path / "label.png", LABEL_IDS))],
        }
    )
    np.testing.assert_array_equal(SegmentationDataset(manifest, (W, H)).label(0), TRAIN_IDS)
    with pytest.raises(ValueError, match="frame 0 .*image.png.* has no label"):
        SegmentationDataset(manifest, (W, H), with_labels=False).label(0)
