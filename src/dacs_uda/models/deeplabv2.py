"""DeepLab-v2: a Caffe-style ResNet with output stride 8 and an ASPP classifier.

``depths=(3, 4, 23, 3), width=64`` is the paper's ResNet-101; the embedded default is a narrow,
shallow member of the same family so that it trains on two CPU cores.

Faithful to the official ``model/deeplabv2.py`` (vikolss/DACS, from AdvSemiSeg): stem 7x7/2 conv (pad 3,
no bias) + BN + ReLU + 3x3/2 max-pool with ``ceil_mode=True``; bottlenecks with the stride on the first
1x1 conv and ``padding = dilation`` on the 3x3 conv; layer3/layer4 at stride 1 with dilation 2/4 (output
stride 8: 512x512 -> 256 -> 129 (ceil) -> 65); a downsample (1x1 conv + BN) on the first block of every
layer; BN affine parameters frozen (``freeze_bn_affine``) while BN still normalises with batch statistics
in train mode; ASPP classifier of biased 3x3 convs ~ N(0, 0.01). Parameter names equal the official ones
except the classifier (``classifier.branches.i`` for ``layer5.conv2d_list.i``), see
:mod:`dacs_uda.models.weights`. One deliberate difference: backbone convs trained from scratch get
Kaiming init (the official N(0, 0.01) init is always overwritten by the COCO weights there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dacs_uda.config import ModelConfig
from dacs_uda.models.weights import init_from_config


class Bottleneck(nn.Module):
    """1x1 (carries the stride, as in Caffe's ResNet) -> 3x3 dilated -> 1x1, expansion 4."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None
    ) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + identity)


class ASPP(nn.Module):
    """Parallel 3x3 convolutions with the given dilations, summed (DeepLab-v2's classifier).

    ``summed="first_two"`` reproduces the official ``Classifier_Module.forward``, which returns inside its
    loop: the output is ``branches[0](x) + branches[1](x)``; the other branches are never evaluated, so
    they get no gradient (and no weight decay) and keep their initial values.
    """

    def __init__(self, channels: int, num_classes: int, dilations: list[int], summed: str = "all") -> None:
        super().__init__()
        if summed not in ("all", "first_two") or (summed == "first_two" and len(dilations) < 2):
            raise ValueError(f"summed must be 'all' or 'first_two' (with >= 2 branches), got {summed!r}")
        self.summed = summed
        self.branches = nn.ModuleList(
            nn.Conv2d(channels, num_classes, 3, padding=d, dilation=d, bias=True) for d in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        used = self.branches[:2] if self.summed == "first_two" else self.branches
        out = used[0](x)
        for branch in used[1:]:
            out = out + branch(x)
        return out


class DeepLabV2(nn.Module):
    """Returns logits at 1/8 of the input resolution; see :func:`upsample_logits`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w = cfg.width
        self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.inplanes = w
        self.layer1 = self._make_layer(w, cfg.depths[0], stride=1, dilation=1)
        self.layer2 = self._make_layer(2 * w, cfg.depths[1], stride=2, dilation=1)
        self.layer3 = self._make_layer(4 * w, cfg.depths[2], stride=1, dilation=2)
        self.layer4 = self._make_layer(8 * w, cfg.depths[3], stride=1, dilation=4)
        self.classifier = ASPP(self.inplanes, cfg.num_classes, cfg.aspp_dilations, cfg.aspp_sum)
        self._init_weights(cfg.freeze_bn_affine)

    def _make_layer(self, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
        )
        layers = [Bottleneck(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = out
        layers += [Bottleneck(out, planes, 1, dilation, None) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self, freeze_bn_affine: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m not in set(self.classifier.modules()):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.weight.requires_grad_(not freeze_bn_affine)
                m.bias.requires_grad_(not freeze_bn_affine)
        for branch in self.classifier.branches:
            assert isinstance(branch, nn.Conv2d)
            nn.init.normal_(branch.weight, 0.0, 0.01)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck features: layer4's output, the ASPP's input (``[B, 32 * width, h, w]``)."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits; with ``return_features``, ``(logits, features)`` of the same pass.

        The flag goes through whatever wraps the model (DDP, ``torch.compile``), so a feature distance
        reuses the trained pass; without it the graph is the plain one (ONNX export unchanged).
        """
        features = self.features(x)
        logits = self.classifier(features)
        return (logits, features) if return_features else logits

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        """Backbone at ``lr``, classifier at ``head_lr_mult * lr``; frozen parameters left out."""
        head = [p for p in self.classifier.parameters() if p.requires_grad]
        head_ids = {id(p) for p in head}
        backbone = [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]
        return [{"params": backbone, "lr": lr}, {"params": head, "lr": lr * head_lr_mult}]


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling to ``size`` (H, W) with ``align_corners=True``, as the official code."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


class FullResolution(nn.Module):
    """Wraps a model so that it returns logits at the input resolution (for export and inference)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_logits(self.model(x), (x.shape[-2], x.shape[-1]))


def build_model(cfg: ModelConfig, *, init_weights: bool = True) -> DeepLabV2:
    """The model named by ``params.yaml``'s ``model`` section, initialised as ``model.init`` says.

    ``init_weights=False`` skips loading ``model.init``'s weights (ImageNet / file): for callers that
    overwrite every tensor anyway, such as :func:`dacs_uda.models.checkpoint.load_model`.
    """
    model = DeepLabV2(cfg)
    if init_weights and cfg.init != "scratch":
        init_from_config(model, cfg)
    return model
