"""Initial weights for DeepLab-v2 (``model.init``): torchvision ImageNet ResNets, DeepLab's COCO file, ours.

State-dict layouts this module reads (after removing ``module.`` / ``Scale.`` prefixes):

* **ours**: :class:`~dacs_uda.models.deeplabv2.DeepLabV2` names: ``conv1``, ``bn1``, ``layerN.B.convK``,
  ``layerN.B.bnK``, ``layerN.0.downsample.{0,1}`` and ``classifier.branches.i.{weight,bias}``.
* **coco**: the official DACS starting point ``resnet101COCO-41f33a49.pth`` (AdvSemiSeg's DeepLab-v2,
  ImageNet then MS-COCO): the same backbone names (BN running statistics included) and the classifier as
  ``layer5.conv2d_list.i.{weight,bias}`` with 21 output classes.
* **torchvision**: ``torchvision.models.resnetXX().state_dict()``: the same backbone names and shapes (its
  stride sits on the 3x3 conv, which changes no shape) plus ``fc.*``, which is dropped.

Like the official loader, a tensor is copied iff its key exists in the file *and* the shapes match, so a
classifier made for another class count is skipped and keeps its N(0, 0.01) init. Unlike it, a file whose
backbone does not fit the model (wrong ``width``/``depths``) is an error rather than a silent random model.

Input convention: this pipeline feeds BGR images minus the Caffe mean, *not* scaled (see
``dacs_uda.utils.image``), which is what the COCO weights expect. torchvision's ImageNet weights expect
RGB in [0, 1] standardised by mean/std, so ``model.init: imagenet`` rewrites the stem conv for this input
(channels reversed, divided by 255*std) and folds the remaining constant offset into ``bn1.running_mean``:
the stem then computes what it computes in torchvision, up to the zero padding at the border.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn

from dacs_uda.config import IMAGENET_DEPTHS, ModelConfig
from dacs_uda.utils.image import IMG_MEAN_BGR

log = logging.getLogger(__name__)

PREFIXES = ("module.", "Scale.")
COCO_CLASSIFIER = "layer5.conv2d_list."
OUR_CLASSIFIER = "classifier.branches."
# torchvision's ImageNet preprocessing (RGB, [0, 1]): ImageClassification's defaults.
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)
# How torch.load(weights_only=True) says it refused a file, and names what (a global: code or a class).
WEIGHTS_ONLY_REFUSED = "Weights only load failed"
REFUSED_GLOBAL = re.compile(r"Unsupported global: (GLOBAL \S+)")
_WEIGHTS_ENUMS = {
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
    "resnet152": torchvision.models.ResNet152_Weights.IMAGENET1K_V1,
}


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove leading ``module.`` (DataParallel) and ``Scale.`` (DeepLab's MS wrapper), in any order."""
    out = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        out[key] = value
    return out


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """'coco', 'ours', 'torchvision' or 'backbone' (no classifier at all) for a prefix-free state dict."""
    keys = list(state_dict)
    if any(k.startswith(COCO_CLASSIFIER) for k in keys):
        return "coco"
    if any(k.startswith(OUR_CLASSIFIER) for k in keys):
        return "ours"
    if any(k.startswith("fc.") for k in keys):
        return "torchvision"
    return "backbone"


def convert_coco_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official DeepLab/COCO names -> this model's: prefixes removed, ``layer5.conv2d_list.i`` renamed.

    Shapes are not checked here; :func:`load_matching` skips tensors whose shape does not fit.
    """
    out = {}
    for key, value in strip_prefixes(state_dict).items():
        if key.startswith(COCO_CLASSIFIER):
            key = OUR_CLASSIFIER + key[len(COCO_CLASSIFIER) :]
        out[key] = value
    return out


def convert_torchvision_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, caffe_input: bool = True
) -> dict[str, torch.Tensor]:
    """torchvision ResNet names -> this model's backbone (``fc.*`` dropped).

    With ``caffe_input`` (the default), the stem is rewritten for this pipeline's input (BGR minus the
    Caffe mean, 0..255) instead of torchvision's (RGB, [0, 1], standardised); see the module docstring.
    """
    out = {k: v for k, v in strip_prefixes(state_dict).items() if not k.startswith("fc.")}
    if caffe_input and "conv1.weight" in out:
        weight = out["conv1.weight"].double()  # (C_out, 3 RGB, kh, kw)
        std = torch.tensor(TORCHVISION_STD_RGB, dtype=torch.float64).view(1, 3, 1, 1)
        scaled = weight / (255.0 * std)
        # x_tv[c] = (x_ours[2 - c] + caffe_mean_rgb[c] - 255 * mean_tv[c]) / (255 * std[c]): the constant
        # part is a per-output-channel offset of the conv output, which BN's running mean absorbs.
        caffe_mean_rgb = torch.tensor(IMG_MEAN_BGR[::-1], dtype=torch.float64)
        delta = (caffe_mean_rgb - 255.0 * torch.tensor(TORCHVISION_MEAN_RGB, dtype=torch.float64)).view(
            1, 3, 1, 1
        )
        offset = (scaled * delta).sum(dim=(1, 2, 3))
        out["conv1.weight"] = scaled.flip(1).to(out["conv1.weight"].dtype)
        if "bn1.running_mean" in out:
            running_mean = out["bn1.running_mean"]
            out["bn1.running_mean"] = (running_mean.double() - offset).to(running_mean.dtype)
    return out


@dataclass
class LoadReport:
    """What :func:`load_matching` did, key by key."""

    loaded: list[str] = field(default_factory=list)
    skipped_shape: list[str] = field(default_factory=list)  # in both, shapes differ: model keeps its init
    missing: list[str] = field(default_factory=list)  # in the model, not in the file: model keeps its init
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model: ignored

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors"]
        for name in ("skipped_shape", "missing", "unexpected"):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
                parts.append(f"{len(keys)} {name.replace('_', ' by ')} ({shown})")
        return "; ".join(parts)


def _is_backbone_tensor(key: str) -> bool:
    return not key.startswith(OUR_CLASSIFIER) and not key.endswith("num_batches_tracked")


@torch.no_grad()
def load_matching(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str) -> LoadReport:
    """Copy every tensor whose key is in the model with the same shape (the official rule); log counts.

    Raises ``ValueError`` when a backbone tensor (parameter or BN statistic) is missing or has another
    shape: the file was made for another ``model.width`` / ``model.depths``.
    """
    report = LoadReport()
    target = model.state_dict()
    for key, tensor in target.items():
        if key not in state_dict:
            report.missing.append(key)
        elif tuple(state_dict[key].shape) != tuple(tensor.shape):
            report.skipped_shape.append(key)
        else:
            tensor.copy_(state_dict[key])
            report.loaded.append(key)
    report.unexpected = [k for k in state_dict if k not in target]
    unfit = [k for k in report.missing + report.skipped_shape if _is_backbone_tensor(k)]
    if unfit:
        raise ValueError(
            f"{what}: {len(unfit)} backbone tensors of the model are missing from the weights or have "
            f"another shape (e.g. {unfit[:3]}); the file does not fit model.width / model.depths "
            "(the paper's ResNet-101: width 64, depths [3, 4, 23, 3])"
        )
    log.info("%s: %s", what, report.summary())
    return report


def _unreadable_weights_message(path: Path, reason: str) -> str:
    if WEIGHTS_ONLY_REFUSED in reason:
        found = REFUSED_GLOBAL.search(reason)
        what = f" ({found.group(1)})" if found else ""
        return (
            f"model.weights: {path} carries code or Python objects other than tensors{what}; it was "
            "refused and nothing in it ran. Use a file of plain tensors (torch.save of a state dict) "
            "from a source you trust"
        )
    first_line = reason.strip().splitlines()[0] if reason.strip() else "no reason given"
    return f"model.weights: {path} is not a readable weights file ({first_line})"


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth`` file: a state dict, or a checkpoint holding one under 'model' / 'state_dict'."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.weights: {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        # from None: torch's own message suggests weights_only=False, i.e. running the file's code.
        raise ValueError(_unreadable_weights_message(path, str(err))) from None
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"model.weights: {path} holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"model.weights: {path} holds no tensors")
    return tensors


def imagenet_weights_enum(depths: list[int]) -> torchvision.models.WeightsEnum:
    """torchvision's ImageNet weights (IMAGENET1K_V1) for a ResNet of these depths."""
    name = IMAGENET_DEPTHS.get((depths[0], depths[1], depths[2], depths[3])) if len(depths) == 4 else None
    if name is None:
        raise ValueError(f"no torchvision ImageNet ResNet has depths {list(depths)}")
    return _WEIGHTS_ENUMS[name]


def imagenet_state_dict(depths: list[int], *, progress: bool = True) -> dict[str, torch.Tensor]:
    """Download (or read from the torch hub cache) torchvision's ImageNet weights for these depths."""
    weights = imagenet_weights_enum(depths)
    try:
        return weights.get_state_dict(progress=progress)
    except Exception as err:  # noqa: BLE001 - URLError, HTTPError, hash mismatch...: same advice
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise RuntimeError(
            f"model.init: imagenet could not get {weights!r} from {weights.url} ({type(err).__name__}: "
            f"{err}). Offline? Fetch that file on a machine with internet access, copy it here and set "
            f"model.weights to its path (or put it into the torch hub cache, {cache})."
        ) from err


def init_from_config(model: nn.Module, cfg: ModelConfig) -> LoadReport | None:
    """Load ``model.init``'s weights into ``model`` (nothing for ``scratch``)."""
    if cfg.init == "scratch":
        return None
    if cfg.init == "imagenet":
        if cfg.weights:
            state_dict, what = read_weights_file(cfg.weights), f"ImageNet weights {cfg.weights}"
        else:
            state_dict = imagenet_state_dict(cfg.depths)
            what = f"ImageNet weights {imagenet_weights_enum(cfg.depths)!r}"
        layout = detect_layout(strip_prefixes(state_dict))
        if layout not in ("torchvision", "backbone"):
            raise ValueError(f"{what}: expected a torchvision ResNet state dict, found the {layout} layout")
        return load_matching(model, convert_torchvision_state_dict(state_dict), what=what)
    if cfg.init == "file":
        assert cfg.weights, "validated by ModelConfig"
        state_dict = strip_prefixes(read_weights_file(cfg.weights))
        layout = detect_layout(state_dict)
        if layout == "coco":
            state_dict = convert_coco_state_dict(state_dict)
        elif layout == "torchvision":
            state_dict = convert_torchvision_state_dict(state_dict, caffe_input=False)
        return load_matching(model, state_dict, what=f"weights {cfg.weights} ({layout} layout)")
    raise ValueError(f"unknown model.init {cfg.init!r}")
