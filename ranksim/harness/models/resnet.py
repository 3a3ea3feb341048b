"""ResNet regressor for the image benchmarks (AgeDB-DIR, IMDB-WIKI-DIR), docs/published_behaviour.md §3 and §7.

Architecture and parameter names follow torchvision's ResNet (`conv1`, `bn1`, `layer1..4`, blocks
with `conv1..3`, `bn1..3`, `downsample.0/1`), except that the regression head is called `linear`
(Linear(feature_dim, 1)) and the optional feature-distribution-smoothing module lives at `FDS`.
With these names our checkpoints and the published ones load into each other (modulo the
`module.` prefix that DataParallel adds, handled in ranksim.harness.checkpoint).

forward(x, targets, epoch):
    x: images [B, 3, H, W]; targets: labels [B, 1] (only needed for FDS smoothing); epoch: 0-based.
    encoding = pooled backbone features [B, feature_dim]; in training with FDS and
    epoch >= start_smooth the encoding is smoothed IN PLACE (published behaviour: the prediction,
    RankSim and the FDS statistics all see the smoothed features); pred = linear(encoding) [B, 1].
    Returns (pred, encoding) in training when FDS or `return_encoding` (RankSim) is on, else pred.
"""
import math
from typing import List, Optional, Type, Union

import torch
import torch.nn as nn

from ranksim.fds import FDS

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "MODELS", "build_model"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, as in torchvision), 1x1 expand x4, residual (ResNet-50)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet backbone + `linear` regression head + optional FDS (see the module docstring).

    block, layers: block type and blocks per stage ([3, 4, 6, 3] Bottleneck for ResNet-50).
    fds: add an FDS module at `self.FDS`; the fds_* arguments are FDS's constructor arguments.
    return_encoding: also return the features in training (RankSim needs them).
    """

    def __init__(
        self,
        block: Type[Union[BasicBlock, Bottleneck]],
        layers: List[int],
        fds: bool = False,
        bucket_num: int = 100,
        bucket_start: int = 3,
        start_update: int = 0,
        start_smooth: int = 1,
        kernel: str = "gaussian",
        ks: int = 5,
        sigma: float = 2.0,
        momentum: float = 0.9,
        return_encoding: bool = False,
    ):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 512 * block.expansion
        self.linear = nn.Linear(self.feature_dim, 1)

        self.fds = fds
        self.start_smooth = start_smooth
        self.return_encoding = return_encoding
        if fds:
            self.FDS = FDS(
                feature_dim=self.feature_dim, bucket_num=bucket_num, bucket_start=bucket_start,
                start_update=start_update, start_smooth=start_smooth, kernel=kernel, ks=ks,
                sigma=sigma, momentum=momentum,
            )

        # docs/published_behaviour.md §7 init: He-normal with fan-out for convolutions, identity BatchNorm. The head keeps
        # PyTorch's default Linear init.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> pooled features [B, feature_dim]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor, targets: Optional[torch.Tensor] = None, epoch: Optional[int] = None):
        encoding = self.backbone(x)
        if self.training and self.fds and epoch is not None and epoch >= self.start_smooth:
            if targets is None:
                raise ValueError("FDS smoothing needs the targets: call model(x, targets, epoch)")
            # In place on purpose (docs/published_behaviour.md §3): the returned encoding is the smoothed one.
            encoding = self.FDS.smooth(encoding, targets, epoch)
        pred = self.linear(encoding)
        if self.training and (self.fds or self.return_encoding):
            return pred, encoding
        return pred


def resnet18(**kwargs) -> ResNet:
    """ResNet-18 (BasicBlock [2, 2, 2, 2], 512-d features): a fast choice for CPU demos and tests."""
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34(**kwargs) -> ResNet:
    """ResNet-34 (BasicBlock [3, 4, 6, 3], 512-d features)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50 (Bottleneck [3, 4, 6, 3], 2048-d features): the paper's model and the default."""
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


MODELS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}


def build_model(name: str, **kwargs) -> ResNet:
    """Model by `--model` name (one of MODELS) with ResNet's keyword arguments."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
