"""DeepLab-v2 as in the official DACS code: shapes, structure, ASPP quirk, initial weights, checkpoints.

The ResNet-101 structure tests build the network on the ``meta`` device (shapes, no memory, no compute);
the weight converters run on real, randomly initialised tensors (no download anywhere).
"""

from __future__ import annotations

import copy
import dataclasses
import resource
import time
import urllib.error
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dacs_uda.config import ConfigError, ModelConfig, compose_params, parse_params
from dacs_uda.models.checkpoint import load_model, save_checkpoint
from dacs_uda.models.deeplabv2 import ASPP, DeepLabV2, build_model, upsample_logits
from dacs_uda.models.weights import (
    TORCHVISION_MEAN_RGB,
    TORCHVISION_STD_RGB,
    convert_coco_state_dict,
    convert_torchvision_state_dict,
    detect_layout,
    init_from_config,
    load_matching,
    strip_prefixes,
)
from dacs_uda.optim import build_optimizer
from dacs_uda.utils.image import IMG_MEAN_BGR
from tests.conftest import r101_model, tiny_model, tiny_params


def tiny(**changes) -> ModelConfig:
    """A width-4 network with the paper's ASPP dilations."""
    return tiny_model(aspp_dilations=[6, 12, 18, 24], **changes)


@pytest.fixture(autouse=True, scope="module")
def threads() -> int:
    """One intra-op thread: faster on these small tensors, and far faster on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield before
    torch.set_num_threads(before)


def r101_meta(**overrides) -> DeepLabV2:
    with torch.device("meta"):
        return DeepLabV2(r101_model(**overrides))


def conv_out(size: int, kernel: int, stride: int, pad: int, dilation: int = 1, ceil: bool = False) -> int:
    """PyTorch's output-size rule for conv / max-pool (ceil mode drops a window starting in the padding)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


# ---------------------------------------------------------------- output size (65x65 for 512x512, §2)


def test_output_size_arithmetic_of_the_stem() -> None:
    stem = conv_out(512, 7, 2, 3)
    assert stem == 256
    assert conv_out(stem, 3, 2, 1, ceil=True) == 129  # ceil mode ...
    assert conv_out(stem, 3, 2, 1, ceil=False) == 128  # ... is what makes it 65 and not 64
    assert conv_out(129, 1, 2, 0) == 65 and conv_out(128, 1, 2, 0) == 64
    assert conv_out(conv_out(conv_out(1024, 7, 2, 3), 3, 2, 1, ceil=True), 1, 2, 0) == 129


def test_r101_output_is_65x65_for_512x512_and_65x129_for_512x1024() -> None:
    model = r101_meta()
    with torch.device("meta"):
        assert model(torch.empty(2, 3, 512, 512)).shape == (2, 19, 65, 65)
        assert model(torch.empty(1, 3, 512, 1024)).shape == (1, 19, 65, 129)


def test_stage_sizes_on_real_tensors() -> None:
    model = DeepLabV2(tiny()).eval()
    sizes: dict[str, tuple[int, ...]] = {}
    for name in ("conv1", "maxpool", "layer1", "layer2", "layer3", "layer4", "classifier"):
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: sizes.__setitem__(name, o.shape[-2:])
        )
    with torch.no_grad():
        model(torch.zeros(1, 3, 512, 512))
    assert sizes == {
        "conv1": (256, 256),
        "maxpool": (129, 129),
        "layer1": (129, 129),
        "layer2": (65, 65),
        "layer3": (65, 65),
        "layer4": (65, 65),
        "classifier": (65, 65),
    }
    assert upsample_logits(torch.zeros(1, 19, 65, 65), (512, 512)).shape == (1, 19, 512, 512)


def test_return_features_gives_the_same_logits_and_layer4s_output() -> None:
    """adapt.fd's flag: one pass gives the logits and the ASPP's input; the plain call is unchanged."""
    model = DeepLabV2(tiny()).train()  # train mode: BN on batch statistics, as in the adaptation step
    seen: list[torch.Tensor] = []
    model.layer4.register_forward_hook(lambda m, i, o: seen.append(o))
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    keys = list(model.state_dict())
    logits, features = model(images, return_features=True)
    assert torch.equal(logits, model(images)) and torch.equal(features, seen[0])
    assert features.shape == (2, 32 * 4, 9, 9)  # 32 x width channels (2048 for ResNet-101)
    assert torch.equal(model.features(images), features)
    assert list(model.state_dict()) == keys  # no new module, buffer or parameter


# ---------------------------------------------------------------- ResNet-101 structure (§2)


def test_r101_stem() -> None:
    model = r101_meta()
    c = model.conv1
    assert (c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.bias) == (
        3,
        64,
        (7, 7),
        (2, 2),
        (3, 3),
        None,
    )
    pool = model.maxpool
    assert (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) == (3, 2, 1, True)


@pytest.mark.parametrize(
    ("layer", "blocks", "planes", "stride", "dilation"),
    [("layer1", 3, 64, 1, 1), ("layer2", 4, 128, 2, 1), ("layer3", 23, 256, 1, 2), ("layer4", 3, 512, 1, 4)],
)
def test_r101_layers(layer: str, blocks: int, planes: int, stride: int, dilation: int) -> None:
    seq = getattr(r101_meta(), layer)
    assert len(seq) == blocks
    for b, block in enumerate(seq):
        s = stride if b == 0 else 1
        # Caffe style: the stride is on the first 1x1 conv, the 3x3 conv has stride 1 and pad = dilation.
        assert (block.conv1.kernel_size, block.conv1.stride, block.conv1.out_channels) == (
            (1, 1),
            (s, s),
            planes,
        )
        assert block.conv2.kernel_size == (3, 3) and block.conv2.stride == (1, 1)
        assert block.conv2.dilation == (dilation, dilation) and block.conv2.padding == (dilation, dilation)
        assert block.conv3.kernel_size == (1, 1) and block.conv3.out_channels == 4 * planes
        assert all(conv.bias is None for conv in (block.conv1, block.conv2, block.conv3))
        if b == 0:
            down_conv, down_bn = block.downsample
            assert down_conv.kernel_size == (1, 1) and down_conv.stride == (s, s) and down_conv.bias is None
            assert down_conv.out_channels == 4 * planes and isinstance(down_bn, nn.BatchNorm2d)
        else:
            assert block.downsample is None


def test_r101_bn_affine_frozen_and_classifier() -> None:
    model = r101_meta()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 33 * 3 + 4
    for bn in bns:
        assert bn.affine and not bn.weight.requires_grad and not bn.bias.requires_grad
        assert bn.eps == 1e-5 and bn.momentum == 0.1 and bn.track_running_stats
    branches = model.classifier.branches
    assert [b.dilation[0] for b in branches] == [6, 12, 18, 24]
    assert [b.padding[0] for b in branches] == [6, 12, 18, 24]
    assert all(b.in_channels == 2048 and b.out_channels == 19 and b.bias is not None for b in branches)


def test_r101_parameters_match_torchvision_resnet101_plus_aspp() -> None:
    model = r101_meta()
    with torch.device("meta"):
        tv = torchvision.models.resnet101(weights=None)
    ours = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    theirs = {k: v.shape for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    assert ours == theirs
    n_backbone = sum(p.numel() for n, p in tv.named_parameters() if not n.startswith("fc."))
    assert sum(p.numel() for p in model.parameters()) == n_backbone + 4 * (2048 * 19 * 9 + 19) == 43_901_068


def test_r101_parameter_groups() -> None:
    model = r101_meta()
    backbone, head = model.param_groups(2.5e-4, 10.0)
    assert head["lr"] == pytest.approx(2.5e-3) and backbone["lr"] == 2.5e-4
    names = {id(p): n for n, p in model.named_parameters()}
    backbone_names = [names[id(p)] for p in backbone["params"]]
    assert len(backbone_names) == 104 and all(
        n.split(".")[-2].startswith(("conv", "0")) for n in backbone_names
    )
    assert sorted(names[id(p)] for p in head["params"]) == sorted(
        f"classifier.branches.{i}.{t}" for i in range(4) for t in ("weight", "bias")
    )
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in backbone["params"] + head["params"]}


def test_embedded_default_model_still_builds_and_runs() -> None:
    params = compose_params()
    assert params.model.init == "scratch" and params.model.aspp_sum == "all" and params.model.weights is None
    model = build_model(params.model)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 19, 9, 9)


# ---------------------------------------------------------------- ASPP: all | first_two (§2)


@pytest.mark.parametrize("summed", ["all", "first_two"])
def test_aspp_sum_values_and_gradients(summed: str) -> None:
    torch.manual_seed(0)
    aspp = ASPP(8, 5, [1, 2, 3, 4], summed)
    x = torch.randn(2, 8, 9, 9)
    out = aspp(x)
    b = [branch(x) for branch in aspp.branches]
    expected = b[0] + b[1] if summed == "first_two" else b[0] + b[1] + b[2] + b[3]
    assert torch.equal(out, expected)
    out.square().sum().backward()
    used = 2 if summed == "first_two" else 4
    for i, branch in enumerate(aspp.branches):
        has_grad = branch.weight.grad is not None and branch.bias.grad is not None
        assert has_grad == (i < used)


def test_aspp_first_two_through_the_model_and_optimizer() -> None:
    model = build_model(tiny(aspp_sum="first_two"))
    before = copy.deepcopy(model.classifier.state_dict())
    optimizer = build_optimizer(model, compose_params().pretrain.optim)
    model(torch.randn(2, 3, 33, 33)).sum().backward()
    optimizer.step()
    after = model.classifier.state_dict()
    for key in before:
        changed = not torch.equal(before[key], after[key])
        assert changed == key.startswith(("branches.0.", "branches.1.")), key  # no grad: no decay either


def test_aspp_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError):
        ASPP(4, 2, [6], "first_two")


# ---------------------------------------------------------------- config validation of the new keys


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"aspp_sum": "first"}, "model.aspp_sum"),
        ({"aspp_dilations": [6], "aspp_sum": "first_two"}, "model.aspp_sum"),
        ({"init": "coco"}, "model.init"),
        ({"init": "file"}, "model.weights"),
        ({"init": "scratch", "weights": "w.pth"}, "model.weights"),
        ({"init": "imagenet"}, "model.init"),  # the default tiny model has no ImageNet weights
        ({"init": "imagenet", "width": 64, "depths": [3, 4, 5, 3]}, "model.init"),
    ],
)
def test_config_rejects_bad_model_keys(model: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_params(default_raw(model=model))


def default_raw(**sections: dict) -> dict:
    """The composed default params as a mapping, with ``sections``' keys changed."""
    raw = dataclasses.asdict(compose_params())
    for name, changes in sections.items():
        raw[name] = {**raw[name], **changes}
    return raw


def test_config_accepts_model_keys() -> None:
    r101 = dataclasses.asdict(r101_model())
    params = parse_params(default_raw(model={**r101, "init": "imagenet", "aspp_sum": "first_two"}))
    assert params.model.init == "imagenet" and params.model.weights is None
    assert parse_params(default_raw(model={"init": "file", "weights": "w.pth"})).model.weights == "w.pth"
    optim = dataclasses.asdict(compose_params().adapt.optim)
    assert parse_params(
        default_raw(adapt={"optim": {**optim, "duplicate_backbone_updates": True}})
    ).adapt.optim.duplicate_backbone_updates
    with pytest.raises(ConfigError, match="duplicate_backbone_updates"):
        parse_params(default_raw(pretrain={"optim": {**optim, "duplicate_backbone_updates": "maybe"}}))


# ---------------------------------------------------------------- COCO DeepLab layout (official init)


def coco_layout(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """A state dict as in ``resnet101COCO-41f33a49.pth``: official names, no num_batches_tracked, prefixed."""
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        key = key.replace("classifier.branches.", "layer5.conv2d_list.")
        out[prefix + key] = value
    return out


@pytest.fixture(scope="module")
def r101_pair() -> tuple[DeepLabV2, DeepLabV2]:
    """A random 21-class R101 (the 'checkpoint') and a 19-class R101 that the loading tests load into."""
    torch.manual_seed(1)
    coco = DeepLabV2(r101_model(num_classes=21))
    with torch.no_grad():
        for name, buf in coco.named_buffers():  # non-trivial BN statistics, so copying them is visible
            if name.endswith(("running_mean", "running_var")):
                buf.uniform_(0.5, 1.5)
    return coco, DeepLabV2(r101_model())


def test_convert_coco_state_dict_names(r101_pair) -> None:
    coco, ours = r101_pair
    sd = coco_layout(coco, "Scale.")
    assert "Scale.layer5.conv2d_list.3.bias" in sd and "Scale.layer3.22.bn3.running_var" in sd
    assert detect_layout(strip_prefixes(sd)) == "coco"
    converted = convert_coco_state_dict(sd)
    expected = {k for k in ours.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(converted) == expected
    assert converted["classifier.branches.2.weight"].shape == (21, 2048, 3, 3)
    assert converted["layer3.0.downsample.1.running_mean"] is sd["Scale.layer3.0.downsample.1.running_mean"]
    assert set(convert_coco_state_dict(coco_layout(coco, "module.Scale."))) == expected


def test_load_coco_r101_into_19_class_model(r101_pair, caplog: pytest.LogCaptureFixture) -> None:
    coco, ours = r101_pair  # ``ours`` is shared: the ImageNet tests below load into it again
    head_before = copy.deepcopy(ours.classifier.state_dict())
    with caplog.at_level("INFO", logger="dacs_uda.models.weights"):
        report = load_matching(ours, convert_coco_state_dict(coco_layout(coco, "module.")), what="coco")
    # 104 conv weights + 104 BN x (weight, bias, running_mean, running_var); the 21-class head is skipped
    assert len(report.loaded) == 104 + 104 * 4
    assert sorted(report.skipped_shape) == sorted(
        f"classifier.branches.{i}.{t}" for i in range(4) for t in ("weight", "bias")
    )
    assert len(report.missing) == 104 and all(k.endswith("num_batches_tracked") for k in report.missing)
    assert report.unexpected == []
    assert "loaded 520 tensors; 8 skipped by shape" in caplog.text
    theirs = coco.state_dict()
    for key, value in ours.state_dict().items():
        if key.startswith("classifier."):
            assert torch.equal(value, head_before[key.removeprefix("classifier.")])  # stays N(0, 0.01)
        elif not key.endswith("num_batches_tracked"):
            assert torch.equal(value, theirs[key]), key


def test_init_file_coco_layout_tiny_and_matching_head(tmp_path) -> None:
    torch.manual_seed(2)
    source = DeepLabV2(tiny(num_classes=21))
    path = tmp_path / "coco.pth"
    torch.save(coco_layout(source, "Scale."), path)
    model = build_model(tiny(num_classes=21, init="file", weights=str(path)))
    theirs = source.state_dict()
    for key, value in model.state_dict().items():  # same class count: the classifier is copied too
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, theirs[key]), key


def test_init_file_that_does_not_fit_is_an_error(tmp_path) -> None:
    path = tmp_path / "coco.pth"
    torch.save(coco_layout(DeepLabV2(tiny(width=8)), ""), path)
    with pytest.raises(ValueError, match="model.width"):
        build_model(tiny(init="file", weights=str(path)))
    with pytest.raises(FileNotFoundError, match="model.weights"):
        build_model(tiny(init="file", weights=str(tmp_path / "missing.pth")))


# ---------------------------------------------------------------- torchvision layout / ImageNet


@pytest.fixture(scope="module")
def tv_resnet101() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    sd = torchvision.models.resnet101(weights=None).state_dict()  # no download
    with torch.no_grad():
        for key, value in sd.items():
            if key.endswith(("running_mean", "running_var")):
                value.uniform_(0.5, 1.5)
    return sd


@pytest.fixture(scope="module")
def tv_file(tv_resnet101, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet101-63fe2227.pth"
    torch.save(tv_resnet101, path)
    return path


def test_init_file_torchvision_layout_loads_as_is(tv_resnet101, tv_file) -> None:
    assert detect_layout(tv_resnet101) == "torchvision"
    model = build_model(r101_model(init="file", weights=str(tv_file)))
    for key, value in model.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(value, tv_resnet101[key]), key


def test_imagenet_init_through_torchvision_weights_api(tv_resnet101, r101_pair, monkeypatch) -> None:
    urls = []

    def fake_download(url, *args, **kwargs):
        urls.append((url, kwargs.get("progress")))
        return tv_resnet101

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    model = r101_pair[1]  # a real R101 (building one is the slow part: reuse it)
    init_from_config(model, r101_model(init="imagenet"))
    assert urls == [(torchvision.models.ResNet101_Weights.IMAGENET1K_V1.url, True)]
    converted = convert_torchvision_state_dict(tv_resnet101)
    for key, value in model.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(value, converted[key]), key
    assert not torch.equal(converted["conv1.weight"], tv_resnet101["conv1.weight"])
    assert torch.equal(converted["layer4.2.conv3.weight"], tv_resnet101["layer4.2.conv3.weight"])


def test_imagenet_download_failure_says_what_to_do(monkeypatch) -> None:
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError) as err:
        init_from_config(r101_meta(), r101_model(init="imagenet"))
    message = str(err.value)
    assert "resnet101-63fe2227.pth" in message and "model.weights" in message and "URLError" in message


def test_imagenet_init_from_a_local_copy(tv_resnet101, tv_file, r101_pair, monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("must not download when model.weights is set")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    model = r101_pair[1]
    init_from_config(model, r101_model(init="imagenet", weights=str(tv_file)))
    assert torch.equal(model.conv1.weight, convert_torchvision_state_dict(tv_resnet101)["conv1.weight"])
    assert torch.equal(model.layer2[0].downsample[0].weight, tv_resnet101["layer2.0.downsample.0.weight"])


def test_torchvision_stem_conversion_matches_torchvision_preprocessing() -> None:
    """conv1 + bn1 (eval) on our BGR/Caffe input == torchvision's stem on its RGB/standardised input."""
    gen = torch.Generator().manual_seed(4)
    sd = {
        "conv1.weight": torch.randn(8, 3, 7, 7, generator=gen) * 0.1,
        "bn1.weight": torch.rand(8, generator=gen) + 0.5,
        "bn1.bias": torch.randn(8, generator=gen),
        "bn1.running_mean": torch.randn(8, generator=gen),
        "bn1.running_var": torch.rand(8, generator=gen) + 0.5,
        "fc.weight": torch.zeros(2, 8),
    }
    conv = convert_torchvision_state_dict(sd)
    assert "fc.weight" not in conv
    rgb = torch.randint(0, 256, (1, 3, 32, 32), generator=gen).double()  # 0..255
    mean, std = (
        torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1)
        for v in (TORCHVISION_MEAN_RGB, TORCHVISION_STD_RGB)
    )
    x_tv = (rgb / 255.0 - mean) / std
    x_ours = rgb.flip(1) - torch.tensor(IMG_MEAN_BGR, dtype=torch.float64).view(1, 3, 1, 1)

    def stem(x, d):
        y = F.conv2d(x, d["conv1.weight"].double(), stride=2, padding=3)
        return F.batch_norm(
            y,
            d["bn1.running_mean"].double(),
            d["bn1.running_var"].double(),
            d["bn1.weight"].double(),
            d["bn1.bias"].double(),
        )

    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # away from the zero padding
    torch.testing.assert_close(stem(x_ours, conv)[inner], stem(x_tv, sd)[inner], rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- checkpoints round-trip the new fields


def test_checkpoint_round_trips_new_model_fields(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(5)
    source = DeepLabV2(tiny())
    weights = tmp_path / "coco.pth"
    torch.save(coco_layout(source, "Scale."), weights)
    params = tiny_params()
    params.model = tiny(aspp_sum="first_two", init="file", weights=str(weights))
    model = build_model(params.model)
    save_checkpoint("ckpt.pt", model, params, {}, step=3)
    weights.unlink()  # load_model must rebuild from the checkpoint alone, not re-read model.weights
    loaded, ckpt = load_model("ckpt.pt")
    assert ckpt["model_config"] == asdict(params.model)
    assert loaded.classifier.summed == "first_two"
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    # an older checkpoint, written before these fields existed, still loads (defaults: clean, scratch)
    for key in ("aspp_sum", "init", "weights"):
        del ckpt["model_config"][key]
    torch.save(ckpt, "old.pt")
    assert load_model("old.pt")[0].classifier.summed == "all"


# ---------------------------------------------------------------- the paper's network, one DACS-style step


@pytest.mark.slow
def test_r101_paper_setting_one_training_step_on_cpu(threads: int) -> None:
    torch.set_num_threads(threads)  # the machine's threads for the big convolutions
    torch.manual_seed(0)
    cfg = r101_model(aspp_sum="first_two")
    student = DeepLabV2(cfg).train()
    teacher = copy.deepcopy(student).train()
    optim_cfg = compose_params().adapt.optim
    optim_cfg.lr, optim_cfg.duplicate_backbone_updates = 2.5e-4, True
    optimizer = build_optimizer(student, optim_cfg)
    src, tgt = torch.randn(2, 3, 512, 512) * 50, torch.randn(2, 3, 512, 512) * 50
    src_label = torch.randint(0, 19, (2, 512, 512))
    src_label[:, :16] = 255
    before = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
    start = time.perf_counter()

    loss_source = F.cross_entropy(upsample_logits(student(src), (512, 512)), src_label, ignore_index=255)
    with torch.no_grad():
        pseudo = upsample_logits(teacher(tgt), (512, 512)).softmax(1).argmax(1)
    mask = (src_label % 2 == 0).unsqueeze(1)  # paste half of the source classes
    mixed_image = torch.where(mask, src, tgt)
    mixed_label = torch.where(mask.squeeze(1), src_label, pseudo)
    pixel = F.cross_entropy(
        upsample_logits(student(mixed_image), (512, 512)), mixed_label, ignore_index=255, reduction="none"
    )
    loss = loss_source + pixel.mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"R101 512x512 DACS-style step on CPU: {seconds:.1f} s, peak RSS {peak_gib:.2f} GiB")
    assert torch.isfinite(loss)
    after = dict(student.named_parameters())
    changed = [n for n, p in before.items() if not torch.equal(p, after[n])]
    assert "conv1.weight" in changed and "layer4.2.conv3.weight" in changed
    assert "classifier.branches.0.weight" in changed and "classifier.branches.3.weight" not in changed
