"""models/blocks.py: weight counts, bilinear exactness, width rounding, padding arithmetic; and the
layering rule that ``import models`` never pulls in Lightning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import (
    BilinearUpsample,
    ConvBNReLU,
    SeparableConv2d,
    bilinear_kernel,
    scale_channels,
)

REPO = Path(__file__).resolve().parents[1]


def _weights(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_separable_conv_weight_count_lecture_example():
    sep = SeparableConv2d(3, 16, norm_act=False, bias=False)
    depthwise, pointwise = sep
    assert depthwise.weight.numel() == 3 * 3 * 3 == 27
    assert pointwise.weight.numel() == 3 * 16 == 48
    assert _weights(sep) == 75
    assert _weights(nn.Conv2d(3, 16, 3, bias=False)) == 432
    assert sep(torch.randn(1, 3, 11, 14)).shape == (1, 16, 11, 14)


def test_separable_conv_with_norm_act_and_dilation_keeps_size():
    sep = SeparableConv2d(8, 12, dilation=6)
    assert sep(torch.randn(2, 8, 17, 23)).shape == (2, 12, 17, 23)


@pytest.mark.parametrize("kernel_size,dilation", [(1, 1), (3, 1), (3, 2), (3, 12), (5, 3)])
def test_conv_bn_relu_same_padding_keeps_size(kernel_size, dilation):
    block = ConvBNReLU(3, 8, kernel_size, dilation=dilation)
    assert block(torch.randn(2, 3, 29, 34)).shape == (2, 8, 29, 34)
    assert block[0].bias is None  # BN follows: a conv bias would be redundant


def test_conv_bn_relu_explicit_padding():
    assert ConvBNReLU(3, 8, 3, padding=0)(torch.randn(2, 3, 29, 34)).shape == (2, 8, 27, 32)


def test_bilinear_kernel_matches_fcn_reference_filter():
    # FCN surgery.upsample_filt: 1 - |og - center| / factor, center = factor - 0.5 (even size)
    f4 = torch.tensor([0.25, 0.75, 0.75, 0.25])
    f8 = torch.tensor([0.125, 0.375, 0.625, 0.875, 0.875, 0.625, 0.375, 0.125])
    f3 = torch.tensor([0.5, 1.0, 0.5])  # odd size: center = factor - 1
    for size, f in ((4, f4), (8, f8), (3, f3)):
        torch.testing.assert_close(bilinear_kernel(1, size)[0, 0], torch.outer(f, f))
    w = bilinear_kernel(3, 4)
    assert w.shape == (3, 3, 4, 4)
    off_diagonal = ~torch.eye(3, dtype=torch.bool)
    assert (w[off_diagonal] == 0).all()  # channels are upsampled independently


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_bilinear_upsample_size_and_exactness(factor):
    up = BilinearUpsample(2, factor)
    assert up(torch.randn(1, 2, 5, 7)).shape == (1, 2, 5 * factor, 7 * factor)
    with torch.no_grad():
        const = up(torch.full((1, 2, 6, 9), 3.0))
        inner = const[..., factor:-factor, factor:-factor]
        torch.testing.assert_close(inner, torch.full_like(inner, 3.0))
        # ramp in x: y[o] = (o + 0.5) / factor - 0.5 (half-pixel centres, align_corners=False)
        ramp = torch.arange(9.0).expand(1, 2, 6, 9)
        out = up(ramp)[..., factor:-factor, factor:-factor]
        o = torch.arange(factor, 9 * factor - factor, dtype=torch.float32)
        torch.testing.assert_close(out, ((o + 0.5) / factor - 0.5).expand_as(out))
        ref = F.interpolate(ramp, scale_factor=factor, mode="bilinear", align_corners=False)
        torch.testing.assert_close(out, ref[..., factor:-factor, factor:-factor])


def test_bilinear_upsample_learnable_flag():
    fixed, learned = BilinearUpsample(4, 2, learnable=False), BilinearUpsample(4, 2)
    assert not fixed.weight.requires_grad and learned.weight.requires_grad
    assert not [p for p in fixed.parameters() if p.requires_grad]
    for bad in (1, 3):
        with pytest.raises(ValueError):
            BilinearUpsample(4, bad)


def test_scale_channels_rounding_and_errors():
    assert scale_channels(64, 1.0) == 64
    assert scale_channels(64, 0.5) == 32
    assert scale_channels(64, 0.3) == 19  # 19.2 rounds down
    assert scale_channels(48, 0.3) == 14  # 14.4
    assert scale_channels(10, 0.27) == 3  # 2.7 rounds up
    assert scale_channels(3, 0.1) == 1  # never zero channels
    for bad in (0.0, -0.5):
        with pytest.raises(ValueError):
            scale_channels(64, bad)


@pytest.mark.slow  # a fresh interpreter importing torch and the backbones
def test_import_models_does_not_import_lightning():
    code = (
        "import models, sys; "
        "bad = [m for m in sys.modules if m == 'lightning' "
        "or m.startswith(('lightning.', 'lightning_fabric', 'pytorch_lightning'))]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
