"""DeepLab v3's cascaded atrous blocks: "Going deeper with atrous convolution" — Chen et al. 2017,
arXiv:1706.05587, Sec. 3.1/3.2 and Fig. 3, Tables 1–3 (ResNet-50/101, VOC 2012 val).

"We duplicate several copies of the last ResNet block, denoted as block4 in Fig. 3, and arrange
them in cascade": block5, block6 and block7 are built like block4 (three bottleneck units of 512
planes, 2048 channels out) and follow it. Without atrous convolution every block after block1
halves the resolution (Fig. 3a), so block7 ends at output stride 256; with atrous convolution
(Fig. 3b) a block that would pass ``output_stride`` keeps its resolution and doubles its rate
instead (at OS 16: block4 rate 2, block5 4, block6 8, block7 16).

Knobs, named as the paper:

- ``num_blocks`` — 4 (plain ResNet, "block4" of Table 2) to 7 ("block7", Tables 1–3).
- ``output_stride`` — 8, 16, 32, 64, 128 or 256 (Table 1); at most 32 · 2^(num_blocks − 4).
- ``multi_grid`` — the unit rates (r1, r2, r3) of the three convs of each block from block4 to
  block7 (Sec. 3.2): "the final atrous rate ... is equal to the multiplication of the unit rate
  and the corresponding rate", e.g. OS 16 and (1, 2, 4) give (2, 4, 8) in block4 (Table 3).
  Default (1, 1, 1): the cascade of Tables 1 and 2.
- ``backbone`` — ``"resnet50"`` (Table 1) or ``"resnet101"`` / ``"resnet152"``
  (:mod:`models.backbones.resnet`, 7×7 stem, torchvision ImageNet weights); ``width``, ``pretrained``.

Choices the paper leaves open, made here and said where they matter:

- Block1–block4 are the dilated ResNet backbone (the ImageNet-pretrained part, ``backbone``);
  block5–7 are new layers (``cascade``), initialised as timm initialises a ResNet (He normal,
  last BatchNorm of each unit at zero). Block4's weights cannot be copied into them: their first
  unit takes 2048 channels, block4's takes 1024.
- As our block2–4 (torchvision/timm), a strided block strides its *first* unit and projects the
  shortcut with a strided 1×1 conv + BN; the TF reference (slim ``resnet_v1``) strides the last
  unit of block1–3 with a subsampling shortcut. The output strides are the same (256 at block7).
- The logits are a 1×1 conv on the last block (the paper gives no other head for these rows),
  bilinearly upsampled to the input (``align_corners=False``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from timm.models.resnet import Bottleneck, downsample_conv
from torch import nn

from models.backbones.resnet import dilated_resnet
from models.blocks import scale_channels
from models.pretrained import PretrainedArg

OUTPUT_STRIDES = (8, 16, 32, 64, 128, 256)
BLOCK4_PLANES = 512


def _set_rate(conv: nn.Conv2d, rate: int) -> None:
    conv.dilation, conv.padding = (rate, rate), (rate, rate)  # "same" size for a 3×3 kernel


class CascadeBlock(nn.Sequential):
    """A copy of block4's layout: three bottleneck units, the first one strided (``stride``),
    the 3×3 convs at ``rate × multi_grid[i]``."""

    def __init__(self, channels: int, planes: int, stride: int, rate: int, multi_grid: tuple[int, ...]) -> None:
        units = []
        for i, grid in enumerate(multi_grid):
            first = i == 0 and stride != 1
            down = downsample_conv(channels, channels, 1, stride=stride) if first else None
            unit = Bottleneck(channels, planes, stride=stride if first else 1, downsample=down)
            _set_rate(unit.conv2, rate * grid)
            for m in unit.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            unit.zero_init_last()
            units.append(unit)
        super().__init__(*units)
        self.stride, self.rate = stride, rate


class DeepLabV3Cascade(nn.Module):
    """ResNet block1–4 (dilated) → cascaded block5..``num_blocks`` → 1×1 classifier → upsampling."""

    has_aux_head = False

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        num_blocks: int = 7,
        output_stride: int = 16,
        multi_grid: tuple[int, ...] = (1, 1, 1),
        pretrained: PretrainedArg = False,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        multi_grid = tuple(multi_grid)
        if num_blocks not in (4, 5, 6, 7):
            raise ValueError(f"num_blocks must be 4 (block4) to 7 (block7), got {num_blocks}")
        deepest = 32 * 2 ** (num_blocks - 4)
        if output_stride not in OUTPUT_STRIDES or output_stride > deepest:
            raise ValueError(f"output_stride must be one of {[s for s in OUTPUT_STRIDES if s <= deepest]} "
                             f"with num_blocks={num_blocks} (each block past block4 can halve it once), "
                             f"got {output_stride}")
        if len(multi_grid) != 3 or any(int(g) != g or g < 1 for g in multi_grid):
            raise ValueError(f"multi_grid must be three positive ints (one per unit), got {multi_grid}")
        if not (backbone.startswith("resnet") and backbone[6:].isdigit()):
            raise ValueError(f"backbone must be resnet50, resnet101 or resnet152, got {backbone!r}")
        self.backbone = dilated_resnet(int(backbone[6:]), min(output_stride, 32), multi_grid, False,
                                       width, pretrained)
        channels = self.backbone.channels["layer4"]
        planes = scale_channels(BLOCK4_PLANES, width)
        stride, rate = self.backbone.output_stride, self.backbone.layer4[0].dilation
        self.stage_strides = dict(self.backbone.stage_strides)
        blocks = OrderedDict()
        for k in range(5, num_blocks + 1):
            if stride * 2 <= output_stride:   # Fig. 3a: halve the resolution
                block_stride, stride = 2, stride * 2
            else:                             # Fig. 3b: keep it, double the rate
                block_stride, rate = 1, rate * 2
            blocks[f"block{k}"] = CascadeBlock(channels, planes, block_stride, rate, multi_grid)
            self.stage_strides[f"block{k}"] = stride
        self.cascade = nn.Sequential(blocks)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.output_stride = output_stride
        self.num_blocks, self.multi_grid = num_blocks, multi_grid

    def atrous_rates(self) -> dict[str, tuple[int, ...]]:
        """The 3×3 rates of the three units of block4..block7 (Fig. 3; Sec. 3.2's example)."""
        blocks = {"block4": self.backbone.layer4, **dict(self.cascade.named_children())}
        return {name: tuple(unit.conv2.dilation[0] for unit in block) for name, block in blocks.items()}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's output, at ``output_stride``."""
        return self.cascade(self.backbone(x)["layer4"])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.classifier(self.features(x))
        return {"out": F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)}
