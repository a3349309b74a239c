"""PSPNet: Pyramid Scene Parsing Network (Zhao et al. CVPR'17), Sec. 3.2-3.3, Fig. 3, Table 1.

A dilated ResNet with the deep 3×3 stem (output stride 8, :mod:`models.backbones.resnet`) gives
the feature map; the Pyramid Pooling Module pools it to ``b×b`` for every ``b`` in ``bins``,
upsamples every level bilinearly back to the feature size and concatenates them with the
features; a 3×3 conv (512, BN, ReLU), dropout 0.1 and a 1×1 conv give the logits, upsampled to
the input. Layout, widths and dropout follow the authors' hszhao/semseg ``PSPNet``.

Knobs (Table 1 rows; ``bins=()`` is the dilated-FCN "baseline" with no pyramid):

- ``bins`` — pyramid levels, (1, 2, 3, 6) in the paper ("B1236"), (1,) is "B1".
- ``pooling`` — ``"avg"`` ("AVE") or ``"max"`` ("MAX").
- ``reduction`` — "DR", dimension reduction: a 1×1 conv (+ BN + ReLU) after each level reduces
  it to ``1/len(bins)`` of the feature channels, so the pyramid adds as many channels as the
  features have (2048 + 4·512 = 4096). Without it the paper's module has no conv at all: the
  pooled features are upsampled and concatenated unchanged (2048 + 4·2048 = 10240 channels),
  which is what "dimension reduction" is the ablation of.
- ``aux`` — the deeply supervised auxiliary FCN head on ``layer3`` (Sec. 4, Fig. 4; 3×3 conv of
  ``aux_channels`` = 256, BN, ReLU, dropout, 1×1 conv), weighted 0.4 in the loss (Table 2) by
  the training code. Returned as ``"aux"`` whenever ``aux=True``, in eval mode too, so
  validation losses use the same terms; dropping it at test time (as the paper does) is the
  caller's choice.
- ``backbone`` — ``"resnet50"``, ``"resnet101"`` or ``"resnet152"`` (Table 3 depths).
- ``width``, ``pretrained`` — see :mod:`models.blocks` and :mod:`models.pretrained`; ImageNet
  weights for the deep-stem ResNet are timm's ``resnet{depth}s.gluon_in1k``.

Bilinear resizing uses ``align_corners=True``, as Caffe's Interp layer and hszhao/semseg do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones.resnet import dilated_resnet
from models.blocks import ConvBNReLU, scale_channels
from models.pretrained import PretrainedArg

POOLING = {"avg": nn.AdaptiveAvgPool2d, "max": nn.AdaptiveMaxPool2d}


def resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class PyramidPooling(nn.Module):
    """Pyramid Pooling Module (Fig. 3c): concatenation ``[x, up(level_1(x)), ..., up(level_n(x))]``.
    """

    def __init__(
        self,
        in_channels: int,
        bins: tuple[int, ...] = (1, 2, 3, 6),
        pooling: str = "avg",
        reduction: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in POOLING:
            raise ValueError(f"pooling must be one of {sorted(POOLING)}, got {pooling!r}")
        level_channels = in_channels // len(bins) if (reduction and bins) else in_channels
        levels = []
        for b in bins:
            layers: list[nn.Module] = [POOLING[pooling](b)]
            if reduction:
                layers.append(ConvBNReLU(in_channels, level_channels, 1))
            levels.append(nn.Sequential(*layers))
        self.levels = nn.ModuleList(levels)
        self.out_channels = in_channels + len(bins) * level_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [resize(level(x), size) for level in self.levels], dim=1)


class FCNHead(nn.Sequential):
    """3×3 conv → BN → ReLU → dropout → 1×1 classifier (the PSPNet head and its auxiliary head)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__(
            ConvBNReLU(in_channels, channels, 3),
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )


class PSPNet(nn.Module):
    """Dilated deep-stem ResNet (OS 8) → Pyramid Pooling Module → FCN head, plus auxiliary head."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        bins: tuple[int, ...] = (1, 2, 3, 6),
        pooling: str = "avg",
        reduction: bool = True,
        aux: bool = True,
        aux_channels: int = 256,
        pretrained: PretrainedArg = False,
        width: float = 1.0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not (backbone.startswith("resnet") and backbone[6:].isdigit()):
            raise ValueError(f"backbone must be resnet50, resnet101 or resnet152, got {backbone!r}")
        self.output_stride = 8
        self.backbone = dilated_resnet(
            int(backbone[6:]), self.output_stride, (1, 1, 1), deep_stem=True, width=width,
            pretrained=pretrained,
        )
        self.ppm = PyramidPooling(self.backbone.channels["layer4"], tuple(bins), pooling, reduction)
        self.head = FCNHead(self.ppm.out_channels, scale_channels(512, width), num_classes, dropout)
        self.aux_head = (
            FCNHead(self.backbone.channels["layer3"], scale_channels(aux_channels, width),
                    num_classes, dropout)
            if aux else None
        )
        self.has_aux_head = self.aux_head is not None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)["layer4"]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        feats = self.backbone(x)
        out = {"out": resize(self.head(self.ppm(feats["layer4"])), size)}
        if self.aux_head is not None:
            out["aux"] = resize(self.aux_head(feats["layer3"]), size)
        return out
