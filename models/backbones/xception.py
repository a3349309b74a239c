"""Aligned Xception-65 backbone (DeepLab v3+ Sec. 3.2, Fig. 4), built on timm's ``XceptionAligned``.

DeepLab v3+ modifies Xception (Chollet) as in MSRA's Aligned Xception: a deeper middle flow
(16 blocks), every max-pool replaced by a strided depthwise-separable conv, and BatchNorm + ReLU
after each 3×3 depthwise conv. timm's ``xception65`` is that network, ported from the TF DeepLab
model zoo (weights ``xception65.tf_in1k``).

Knobs:

- ``output_stride`` (8, 16 or 32) — strided blocks past the target stride become stride 1 with
  their dilation doubled (timm), as in the paper's atrous Xception (OS 16 for training, 8 for
  the best evaluation, Table 5). ``set_output_stride`` changes it after training, in place.
- ``width`` — scales every channel count of the block configuration and of the stem.
- ``pretrained`` — see :mod:`models.pretrained`; the ImageNet classifier (``head.``) is ignored.

Returns the named outputs ``{"low_level", "entry", "middle", "exit"}`` (``stage_strides`` gives
their strides, ``channels`` their widths):

- ``low_level`` (stride 4, 256 channels) — the feature the v3+ decoder uses, taken as in the TF
  reference (``entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise``): the output
  of the second separable conv (after its BatchNorm, before the ReLU that precedes the strided
  third conv) of the second entry-flow block;
- ``entry`` (stride 16, or 8 at output stride 8; 728 channels) — the end of the entry flow;
- ``middle`` (same stride and width) — the end of the 16-block middle flow;
- ``exit`` (``output_stride``, 2048 channels) — the exit-flow output, what ASPP sees.
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
ENTRY_BLOCKS, MIDDLE_BLOCKS = 3, 16  # then two exit-flow blocks (see xception65_block_cfg)


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
    """Aligned Xception-65 without classifier, returning its named features (module docstring)."""

    def __init__(self, output_stride: int = 16, width: float = 1.0) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        norm_layer = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.1)  # as timm's xception65
        cfg = xception65_block_cfg(width)
        self._block_strides = tuple(b["stride"] for b in cfg)  # timm overwrites them in cfg
        net = XceptionAligned(cfg, num_classes=0, output_stride=output_stride, norm_layer=norm_layer)
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
        middle_end = ENTRY_BLOCKS + MIDDLE_BLOCKS
        self._returned = {ENTRY_BLOCKS - 1: "entry", middle_end - 1: "middle",
                          len(self.blocks) - 1: "exit"}  # index in ``blocks`` -> output name
        self.channels = {
            "low_level": low.stack[-1].conv_dw.in_channels,
            "entry": self.blocks[ENTRY_BLOCKS - 1].out_channels,
            "middle": self.blocks[middle_end - 1].out_channels,
            "exit": self.blocks[-1].out_channels,
        }
        self.output_stride = output_stride
        self.stage_strides = {"low_level": 4, "entry": min(16, output_stride),
                              "middle": min(16, output_stride), "exit": output_stride}

    def set_output_stride(self, output_stride: int) -> None:
        """Re-stride and re-dilate in place for another output stride; the weights are unchanged.

        DeepLab v3+ Table 5 trains Xception-65 at output stride 16 and evaluates at 8. The rule
        is timm's at construction (and the TF reference's): a strided block that would pass
        ``output_stride`` runs at stride 1 and every later block at twice the rate; the block
        itself keeps the rate it had. Equals a network built at ``output_stride`` with these
        weights (tested).
        """
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        stride, rate = 2, 1  # after the stem
        for block, configured in zip(self.blocks, self._block_strides, strict=True):
            block_rate, block_stride = rate, configured
            if configured > 1:
                if stride * configured > output_stride:
                    rate, block_stride = rate * configured, 1
                else:
                    stride *= configured
            for i, sep in enumerate(m for m in block.stack if hasattr(m, "conv_dw")):
                conv = sep.conv_dw  # 3×3 depthwise: padding = rate keeps "same" size at stride 1 and 2
                conv.dilation, conv.padding = (block_rate, block_rate), (block_rate, block_rate)
                conv.stride = (block_stride, block_stride) if i == 2 else (1, 1)
            if block.shortcut is not None:
                block.shortcut.conv.stride = (block_stride, block_stride)
        self.output_stride = output_stride
        self.stage_strides = {"low_level": 4, "entry": min(16, output_stride),
                              "middle": min(16, output_stride), "exit": output_stride}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        feats: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            if i == LOW_LEVEL_BLOCK:
                low_level = block.stack[:-2](x)  # up to the second separable conv, before its ReLU
                out = block.stack[-1](F.relu(low_level))  # not in place: low_level is returned
                skip = x if block.shortcut is None else block.shortcut(x)
                x = out + skip
                feats["low_level"] = low_level
            else:
                x = block(x)
            if i in self._returned:
                feats[self._returned[i]] = x
        return feats


def aligned_xception65(
    output_stride: int = 16, width: float = 1.0, pretrained: PretrainedArg = False
) -> XceptionBackbone:
    """Build an :class:`XceptionBackbone`, optionally with ImageNet weights (``TIMM_NAME``)."""
    backbone = XceptionBackbone(output_stride, width)
    load_pretrained(backbone, pretrained, TIMM_NAME, width, ignore_prefixes=("head.",))
    return backbone
