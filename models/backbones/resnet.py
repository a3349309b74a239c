"""Dilated ResNet backbone (DeepLab v2/v3/v3+, PSPNet), built on timm's ResNet.

Knobs:

- ``output_stride`` (8, 16 or 32) — DeepLab v3 Sec. 3.1 / Table 1: the strides of the last
  ``log2(32 / output_stride)`` stages are removed and their 3×3 convs dilated (rate 2 for
  ``layer3`` at OS 8; rate 2 or 4 for ``layer4`` at OS 16 / 8). Every 3×3 conv of a dilated
  stage, its first block included, uses the stage's rate, as in the DeepLab Caffe prototxts
  (``res4a_branch2b`` dilation 2, kazuto1011/deeplab-pytorch) and PSPNet's hszhao/semseg.
  timm and torchvision instead keep the first block at the previous stage's rate; the
  parameters are the same, only the dilation differs.
- ``multi_grid`` — DeepLab v3 Sec. 3.2 / Table 3: the three blocks of ``layer4`` ("block4")
  get rates ``base_rate × multi_grid[i]``, e.g. OS 16 and (1, 2, 4) give (2, 4, 8).
- ``deep_stem`` — PSPNet's ResNet (hszhao/semseg ``deep_base``): three 3×3 convs of 64, 64, 128
  channels replace the 7×7 conv (timm's ResNet-S, ``stem_type='deep'``, ``stem_width=64``).
  These widths reproduce the 46.78M parameters of PSPNet-R50 without its auxiliary head
  (``tests/test_models_resnet.py::test_parameter_counts``); timm's ResNet-C stem (32, 32, 64)
  would not.
- ``width`` — scales every channel count (stem included), keeping the topology.
- ``pretrained`` — see :mod:`models.pretrained`. Weight sources (timm): the 7×7 stem uses the
  torchvision ImageNet weights ``resnet{50,101,152}.tv_in1k``, as the PyTorch DeepLab
  reimplementations do; the deep stem uses ``resnet{50,101,152}s.gluon_in1k`` (MXNet Gluon
  ResNet-v1s, the same 64-64-128 stem and stride-in-3×3 bottleneck as PSPNet's ResNet; the
  authors' own Caffe ImageNet weights are not available in timm).

:class:`ResNetBackbone` returns the four stage outputs by name, ``{"layer1": stride 4, "layer2":
stride 8, "layer3", "layer4"}`` (torchvision's and timm's stage names; the stem's output is only
layer1's input); ``channels`` and ``stage_strides`` map the same names to widths and strides, and
``output_stride`` is layer4's stride.
"""

from __future__ import annotations

import torch
from timm.models.resnet import Bottleneck, ResNet, downsample_conv
from torch import nn

from models.blocks import scale_channels
from models.pretrained import PretrainedArg, load_pretrained

LAYERS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
STAGES = ("layer1", "layer2", "layer3", "layer4")


def timm_resnet_name(depth: int, deep_stem: bool) -> str:
    """The timm model (with weight tag) whose ImageNet weights initialise this backbone."""
    return f"resnet{depth}s.gluon_in1k" if deep_stem else f"resnet{depth}.tv_in1k"


def _set_dilation(conv: nn.Conv2d, rate: int) -> None:
    conv.dilation = (rate, rate)
    conv.padding = (rate, rate)  # "same" size for a 3×3 kernel


class ResNetBackbone(nn.Module):
    """Bottleneck ResNet without its classifier, returning the four stage outputs by name."""

    def __init__(
        self,
        depth: int = 101,
        output_stride: int = 8,
        multi_grid: tuple[int, ...] = (1, 1, 1),
        deep_stem: bool = False,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if depth not in LAYERS:
            raise ValueError(f"depth must be one of {sorted(LAYERS)}, got {depth}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        layers = LAYERS[depth]
        if len(multi_grid) != layers[3]:
            raise ValueError(
                f"multi_grid needs one rate per block of layer4 ({layers[3]}), got {multi_grid}"
            )
        planes = tuple(scale_channels(c, width) for c in (64, 128, 256, 512))
        stem = scale_channels(64, width)
        net = ResNet(
            Bottleneck, layers=layers, num_classes=0, output_stride=output_stride,
            channels=planes, stem_width=stem, stem_type="deep" if deep_stem else "",
        )
        if not deep_stem and stem != 64:
            net = _scale_plain_stem(net, stem)
        self.conv1, self.bn1, self.act1, self.maxpool = net.conv1, net.bn1, net.act1, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4
        )
        # Dilate every block of a stage at its own rate (see module docstring), then multi-grid.
        for layer in (self.layer2, self.layer3):
            for block in layer:
                _set_dilation(block.conv2, block.dilation)
        base_rate = self.layer4[0].dilation
        for block, grid in zip(self.layer4, multi_grid, strict=True):
            _set_dilation(block.conv2, base_rate * grid)
        self.channels = {name: getattr(self, name)[-1].conv3.out_channels for name in STAGES}
        self.output_stride = output_stride
        self.depth, self.deep_stem, self.multi_grid = depth, deep_stem, tuple(multi_grid)

    def set_output_stride(self, output_stride: int) -> None:
        """Re-dilate in place for another output stride; the weights are unchanged.

        DeepLab v3 Table 6 / v3+ Table 3 train at output stride 16 and evaluate at 8: the same
        parameters with layer4 (and, for 8, layer3) run at stride 1 and twice the dilation.
        Equals a network built at ``output_stride`` with these weights (tested).
        """
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        current, rate = 4, 1
        for layer in (self.layer2, self.layer3, self.layer4):
            if current * 2 <= output_stride:
                stride, current = 2, current * 2
            else:
                stride, rate = 1, rate * 2
            layer[0].conv2.stride = (stride, stride)
            if layer[0].downsample is not None:
                layer[0].downsample[0].stride = (stride, stride)
            grid = self.multi_grid if layer is self.layer4 else (1,) * len(layer)
            for block, g in zip(layer, grid, strict=True):
                block.dilation = rate
                _set_dilation(block.conv2, rate * g)
        self.output_stride = output_stride

    @property
    def stage_strides(self) -> dict[str, int]:
        """Stride of each stage's output: 4, 8, then 16 and 32 unless dilated away."""
        os_ = self.output_stride
        return {"layer1": 4, "layer2": 8, "layer3": min(16, os_), "layer4": os_}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        feats: dict[str, torch.Tensor] = {}
        for name in STAGES:
            x = feats[name] = getattr(self, name)(x)
        return feats


def _scale_plain_stem(net: ResNet, stem: int) -> ResNet:
    """timm fixes the 7×7 stem at 64 channels; give it ``stem`` channels for ``width != 1``.

    The first block then takes ``stem`` channels, so its projection shortcut is rebuilt too.
    timm builds none when layer1's output happens to be 64 wide (width 1/4: 16 planes × 4 = 64,
    equal to its fixed stem), but a ``stem``-channel input needs one: a fresh ``downsample_conv``
    (1×1 conv + BN), timm's own projection, replaces whatever was there.
    """
    net.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(stem)
    first = net.layer1[0]
    first.conv1 = nn.Conv2d(stem, first.conv1.out_channels, 1, bias=False)
    first.downsample = downsample_conv(stem, first.conv3.out_channels, 1)
    for conv in (net.conv1, first.conv1, first.downsample[0]):
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return net


def dilated_resnet(
    depth: int = 101,
    output_stride: int = 8,
    multi_grid: tuple[int, ...] = (1, 1, 1),
    deep_stem: bool = False,
    width: float = 1.0,
    pretrained: PretrainedArg = False,
) -> ResNetBackbone:
    """Build a :class:`ResNetBackbone`, optionally with ImageNet weights (see module docstring).

    ``pretrained`` is False, True (timm weights :func:`timm_resnet_name`) or a path to a state
    dict saved from that timm architecture; the ImageNet classifier (``fc.``) is ignored.
    """
    backbone = ResNetBackbone(depth, output_stride, multi_grid, deep_stem, width)
    load_pretrained(backbone, pretrained, timm_resnet_name(depth, deep_stem), width, ignore_prefixes=("fc.",))
    return backbone
