"""Small building blocks shared by the architectures.

- :class:`ConvBNReLU` — the conv → BatchNorm → ReLU unit of DeepLab v3/v3+, PSPNet and U-Net
  variants (torchvision's ``ASPPConv`` pattern).
- :class:`SeparableConv2d` — depthwise 3×3 then pointwise 1×1 (Chollet, Xception; used by
  DeepLab v3+ Sec. 3.2 "atrous separable convolution"). For a 3×3 conv from 3 to 16 channels
  the plain conv has 3·3·3·16 = 432 weights, the separable one 3·3·3 + 3·16 = 27 + 48 = 75.
- :func:`bilinear_kernel` / :class:`BilinearUpsample` — the transposed convolution that FCN
  (Long et al. Sec. 3.3) initialises to exact bilinear interpolation, learnable or fixed.
- :class:`ResizeConv` — fixed bilinear upsampling followed by a learnable convolution, the
  "resize-convolution" of Odena, Dumoulin & Olah, "Deconvolution and Checkerboard Artifacts"
  (Distill 2016), initialised to the identity so it starts as plain bilinear upsampling.
- :func:`scale_channels` — the ``width`` multiplier: scales a channel count while keeping the
  topology, so CPU-sized runs ablate the same structure as the paper's.
"""

from __future__ import annotations

import torch
from torch import nn


def scale_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1. ``width=1.0`` returns ``channels`` unchanged."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return max(1, int(round(channels * width)))


class ConvBNReLU(nn.Sequential):
    """``kernel_size`` conv (bias-free, "same" padding for odd kernels) → BatchNorm → ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        padding: int | None = None,
    ) -> None:
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                dilation=dilation, bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SeparableConv2d(nn.Sequential):
    """Depthwise ``kernel_size`` conv (one filter per input channel) then pointwise 1×1 conv.

    ``norm_act=True`` adds BatchNorm + ReLU after the depthwise and after the pointwise conv, as
    DeepLab v3+ does in its separable ASPP and decoder; ``False`` gives the bare factorisation
    whose weight count the lectures compute (``bias=False`` there).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        bias: bool = False,
        norm_act: bool = True,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, stride=stride, padding=padding,
            dilation=dilation, groups=in_channels, bias=bias,
        )
        pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        if norm_act:
            layers = [depthwise, nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
                      pointwise, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        else:
            layers = [depthwise, pointwise]
        super().__init__(*layers)


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weight of a ``channels``→``channels`` transposed conv that performs bilinear upsampling.

    The FCN reference (``surgery.upsample_filt``): per-channel (diagonal) 2-D tent filter.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    filt = (filt1d[:, None] * filt1d[None, :]).float()
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt
    return weight


class BilinearUpsample(nn.ConvTranspose2d):
    """Transposed conv upsampling by integer ``factor``, initialised to bilinear interpolation.

    Kernel ``2·factor``, stride ``factor``, padding ``factor // 2`` (FCN's ``upscore`` layers
    with the crop folded into the padding), so an ``h×w`` input maps to ``factor·h × factor·w``
    ; the caller crops/aligns if it needs an exact size. ``learnable=False``
    freezes the weights (FCN's final 8× layer and the reference's "fixed" deconvolutions).
    """

    def __init__(self, channels: int, factor: int, learnable: bool = True) -> None:
        if factor < 2 or factor % 2:
            raise ValueError(f"factor must be an even integer >= 2, got {factor}")
        kernel_size = 2 * factor
        super().__init__(
            channels, channels, kernel_size, stride=factor, padding=factor // 2, bias=False
        )
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(channels, kernel_size))
        self.weight.requires_grad_(learnable)
        self.factor = factor
        self.learnable = learnable


class ResizeConv(nn.Sequential):
    """Resize-convolution (Odena et al. 2016): fixed bilinear ×``factor``, then a learnable conv.

    The resize is a frozen :class:`BilinearUpsample` (same size and alignment as the learnable
    transposed conv it replaces, so a caller can swap the two without touching its cropping);
    the ``kernel_size`` conv (odd, "same" padding, no bias, ``channels`` → ``channels``) is
    initialised to the identity (Dirac), so at initialisation the block *is* bilinear
    upsampling, as FCN's deconvolutions start as bilinear (Long et al. Sec. 3.3). Every output
    pixel sees the same number of kernel taps, so unlike a transposed conv whose kernel is not
    divisible by its stride it cannot produce uneven-overlap checkerboards by construction.
    """

    def __init__(self, channels: int, factor: int, kernel_size: int = 3) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, bias=False)
        with torch.no_grad():
            nn.init.dirac_(conv.weight)
        super().__init__(BilinearUpsample(channels, factor, learnable=False), conv)
        self.factor = factor
