"""Aligned Xception-65 backbone (DeepLab v3+ Sec. 3.2, Fig. 4), built on timm's ``XceptionAligned``.

DeepLab v3+ modifies Xception (Chollet) as in MSRA's Aligned Xception: a deeper middle flow
(16 blocks), every max-pool replaced by a strided depthwise-separable conv, and BatchNorm + ReLU
after each 3×3 depthwise conv. timm's ``xception65`` is that network, ported from the TF DeepLab
model zoo (weights ``xception65.tf_in1k``).

Knobs:

- ``output_stride`` (8, 16 or 32) — strided blocks past the target stride become stride 1 with
  their dilation doubled (timm), as in the paper's atrous Xception (OS 16 for training, 8 for
  the best evaluation, Table 5).
- ``width`` — scales every channel count of the block configuration and of the stem.
- ``pretrained`` — see :mod:`models.pretrained`; the ImageNet classifier (``head.``) is ignored.

Returns ``[low_level, final]``: ``low_level`` is the stride-4 feature the v3+ decoder uses, taken
as in the TF reference (``entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise``):
the output of the second separable conv (after its BatchNorm, before the ReLU that precedes the
strided third conv) of the second entry-flow block, 256 channels; ``final`` is the exit-flow
output, 2048 channels.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct
from timm.models.xception_aligned import XceptionAligned, XceptionModule
from torch import nn

from models.blocks import scale_channels
from models.pretrained import PretrainedArg, load_pretrained

TIMM_NAME = "xception65.tf_in1k"
LOW_LEVEL_BLOCK = 1  # second entry-flow block: its strided conv goes from stride 4 to 8


def xception65_block_cfg(width: float = 1.0) -> list[dict]:
    """timm's ``xception65`` block configuration with every channel count scaled by ``width``."""

    def s(chs):
        return tuple(scale_channels(c, width) for c in chs) if isinstance(chs, tuple) else (
            scale_channels(chs, width)
        )

    return [
        # entry flow
        dict(in_chs=s(64), out_chs=s(128), stride=2),
        dict(in_chs=s(128), out_chs=s(256), stride=2),
        dict(in_chs=s(256), out_chs=s(728), stride=2),
        # middle flow: fresh dicts, since XceptionAligned writes into them
        *[dict(in_chs=s(728), out_chs=s(728), stride=1) for _ in range(16)],
        # exit flow
        dict(in_chs=s(728), out_chs=s((728, 1024, 1024)), stride=2),
        dict(in_chs=s(1024), out_chs=s((1536, 1536, 2048)), stride=1, no_skip=True,
             start_with_relu=False),
    ]


class XceptionBackbone(nn.Module):
    """Aligned Xception-65 without classifier, returning ``[stride-4 features, final features]``."""

    def __init__(self, output_stride: int = 16, width: float = 1.0) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        norm_layer = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.1)  # as timm's xception65
        net = XceptionAligned(
            xception65_block_cfg(width), num_classes=0, output_stride=output_stride,
            norm_layer=norm_layer,
        )
        if width != 1.0:  # timm fixes the stem at 32 and 64 channels
            c32, c64 = scale_channels(32, width), scale_channels(64, width)
            net.stem = nn.Sequential(
                ConvNormAct(3, c32, kernel_size=3, stride=2, norm_layer=norm_layer),
                ConvNormAct(c32, c64, kernel_size=3, stride=1, norm_layer=norm_layer),
            )
        self.stem, self.blocks = net.stem, net.blocks
        low = self.blocks[LOW_LEVEL_BLOCK]
        if not (isinstance(low, XceptionModule) and isinstance(low.stack[-2], nn.ReLU)):
            raise RuntimeError("unexpected timm XceptionModule layout: no low-level feature tap")
        self.channels = [low.stack[-1].conv_dw.in_channels, self.blocks[-1].out_channels]
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        low_level = None
        for i, block in enumerate(self.blocks):
            if i == LOW_LEVEL_BLOCK:
                low_level = block.stack[:-2](x)  # up to the second separable conv, before its ReLU
                out = block.stack[-1](F.relu(low_level))  # not in place: low_level is returned
                skip = x if block.shortcut is None else block.shortcut(x)
                x = out + skip
            else:
                x = block(x)
        return [low_level, x]


def aligned_xception65(
    output_stride: int = 16, width: float = 1.0, pretrained: PretrainedArg = False
) -> XceptionBackbone:
    """Build an :class:`XceptionBackbone`, optionally with ImageNet weights (``TIMM_NAME``)."""
    backbone = XceptionBackbone(output_stride, width)
    load_pretrained(backbone, pretrained, TIMM_NAME, width, ignore_prefixes=("head.",))
    return backbone
