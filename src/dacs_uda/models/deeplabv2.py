"""DeepLab-v2: a Caffe-style ResNet with output stride 8 and an ASPP classifier.

``depths=(3, 4, 23, 3), width=64`` is the paper's ResNet-101; the embedded default is a narrow,
shallow member of the same family so that it trains on two CPU cores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dacs_uda.config import ModelConfig


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
    """Parallel 3x3 convolutions with the given dilations, summed (DeepLab-v2's classifier)."""

    def __init__(self, channels: int, num_classes: int, dilations: list[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(channels, num_classes, 3, padding=d, dilation=d, bias=True) for d in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


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
        self.classifier = ASPP(self.inplanes, cfg.num_classes, cfg.aspp_dilations)
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
            nn.init.normal_(branch.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.classifier(x)

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
        return upsample_logits(self.model(x), x.shape[-2:])


def build_model(cfg: ModelConfig) -> DeepLabV2:
    """The model named by ``params.yaml``'s ``model`` section."""
    return DeepLabV2(cfg)
