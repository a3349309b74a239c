"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015): Fig. 1 network, Fig. 2 overlap-tile strategy.

Fig. 1: each level of the contracting path is two 3×3 convs + ReLU, then a 2×2 max pool with
stride 2; level ``k`` has ``base_channels · 2^k`` channels. The expanding path up-samples by a 2×2
"up-convolution" that halves the channels, concatenates the centre-cropped feature map of the same
level, applies two 3×3 convs + ReLU, and a final 1×1 conv maps to the classes. With the paper's
unpadded ("valid") convs a 572² input tile gives a 388² output (``valid_output_size(572) == 388``);
for ``in_channels=1, num_classes=2`` the network has 31,030,658 parameters.

Knobs:
- ``depth``: number of poolings (4 in the paper); ``base_channels``/``width``: channel widths.
- ``padding``: ``"valid"`` (paper: no padding, output smaller than input, skips centre-cropped) or
  ``"same"`` (zero-padded 3×3 convs, the common modern variant).
- ``upsampling`` (the ablation of Odena et al. 2016, "Deconvolution and Checkerboard
  Artifacts", Distill): ``"transposed"`` (paper): 2×2 stride-2 up-conv halving the channels;
  ``"resize_conv"``: bilinear ×2 resize and a 1×1 conv halving the channels (the form of
  jvanvugt/pytorch-unet's ``up_mode="upsample"``; together with the level's 3×3 convs that
  follow, it is Odena's resize-then-convolve). A 1×1 conv keeps the paper's size arithmetic
  and, being linear and pointwise, commutes with the resize, so it runs first, at low
  resolution. ``"bilinear"``: the resize alone, no learned layer; the channels are not halved
  there, so the level's first 3×3 conv takes the concatenation of ``2c`` up-sampled and ``c``
  skip channels (``3c`` instead of ``2c``) and does the reduction. In ``"valid"`` mode both
  resize modes crop the two border pixels whose bilinear value would be extrapolated, so no
  output ever depends on padding and overlap-tiling stays exact.
- ``pretrained``: accepted for the common model signature; only ``False`` (the paper trains
  from scratch, there is no ImageNet encoder, hence ``backbone = None``).
- ``batch_norm``: BN after each 3×3 conv (not in the paper). ``dropout``: the paper's "drop-out
  layers at the end of the contracting path" (Sec. 3.1): one on the output of the deepest
  encoder level (which both the pooling and the skip connection read) and one after the
  bottleneck, the layout of zhixuhao/unet's Keras port (``drop4``, ``drop5``). The paper gives
  no rate; the default 0.5 is that port's (and Caffe's default ``dropout_ratio``); 0 removes
  both. Drop-out is active in training mode only (``model.eval()`` for inference).

``forward(x)`` returns ``{"out": logits at x's H×W}`` for any size. In ``"valid"`` mode it is the
single-tile overlap-tile strategy: the input is mirror-padded (Fig. 2) by the context margin so
the valid output covers it, then cropped. Padding is anchored at the top-left (``margin`` rows
before, the rest after), so the max-pooling grid is the same as in :func:`overlap_tile_predict`,
whose tiles are placed on multiples of ``2^depth``: tiling then reproduces ``forward`` exactly and
is purely a memory device. ``"same"`` mode mirror-pads to a multiple of ``2^depth`` and crops;
inside, its convs zero-pad. :func:`overlap_tile_predict` also tiles a same-padded network (each
tile with :meth:`UNet.receptive_radius` px of context); it then agrees with ``forward``
wherever ``forward``'s receptive field stays inside the image, and differs near the image
border, where tiles see mirrored image content and ``forward`` sees zero padding.

No ``output_stride`` is declared: U-Net predicts at full resolution, and in valid mode its
bottleneck is not at a fixed stride of the input (572 → 28), so there is no ``features()``.
The loss weights of Eq. 2 are :func:`models.unet_weights.unet_weight_map`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import ConvBNReLU, scale_channels

PADDINGS = ("valid", "same")
UPSAMPLINGS = ("transposed", "resize_conv", "bilinear")


def _up_loss(upsampling: str) -> int:
    """Pixels lost per valid-mode up-sampling (a resize drops its 2 extrapolated borders)."""
    if upsampling not in UPSAMPLINGS:
        raise ValueError(f"upsampling must be one of {UPSAMPLINGS}, got {upsampling!r}")
    return 0 if upsampling == "transposed" else 2


def valid_output_size(input_size: int, depth: int = 4, upsampling: str = "transposed") -> int:
    """Output side of the valid-padded U-Net for input side ``input_size`` (572 → 388, Fig. 1).

    Raises ``ValueError`` for an illegal size: every 2×2 pooling must see an even size (Sec. 2)
    and every feature map must stay non-empty; :func:`valid_input_size` gives legal sizes.
    """
    s, loss = input_size, _up_loss(upsampling)
    for _ in range(depth):
        s -= 4  # two unpadded 3×3 convs
        if s <= 0 or s % 2:
            raise ValueError(
                f"{input_size} is not a legal valid-padding input for depth {depth}: a max pool "
                f"would see size {s}; use valid_input_size() for legal sizes"
            )
        s //= 2
    s -= 4
    for _ in range(depth):
        if s <= 0:
            break
        s = 2 * s - loss - 4
    if s <= 0:
        raise ValueError(f"input {input_size} is too small for depth {depth}: empty output")
    return s


def valid_input_size(output_size: int, depth: int = 4, upsampling: str = "transposed") -> int:
    """Smallest legal input side whose valid output side is at least ``output_size``.

    Legal inputs are ``2^d·(b + 4) + 4·(2^d − 1)`` for a bottleneck side ``b`` ≥ 1 (d = depth).
    """
    b = 1
    while True:
        size = 2**depth * (b + 4) + 4 * (2**depth - 1)
        try:
            if valid_output_size(size, depth, upsampling) >= output_size:
                return size
        except ValueError:  # output still empty for this small bottleneck
            pass
        b += 1


def _reflect_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    idx = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= n, period - idx, idx)


def mirror_pad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Mirror (``"reflect"``, edge not repeated) padding ``(left, right, top, bottom)`` of any size.

    Equals ``F.pad(x, pad, mode="reflect")`` where that is defined; larger pads continue the
    mirroring periodically (the paper's extrapolation "by mirroring", Fig. 2), so small images
    can receive the 92-pixel context margin.
    """
    left, right, top, bottom = pad
    rows = _reflect_index(x.shape[-2], top, bottom, x.device)
    cols = _reflect_index(x.shape[-1], left, right, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


class DoubleConv(nn.Sequential):
    """One level of Fig. 1: two 3×3 convs + ReLU (``padding`` 0 = valid, 1 = same), optional BN."""

    def __init__(self, in_channels: int, out_channels: int, padding: int, batch_norm: bool) -> None:
        layers: list[nn.Module] = []
        for c in (in_channels, out_channels):
            if batch_norm:
                layers.append(ConvBNReLU(c, out_channels, 3, padding=padding))
            else:
                layers += [nn.Conv2d(c, out_channels, 3, padding=padding), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class BilinearResize2x(nn.Module):
    """Bilinear ×2 resize; ``crop_border`` drops the two extrapolated (edge-clamped) pixels."""

    def __init__(self, crop_border: bool) -> None:
        super().__init__()
        self.crop_border = crop_border

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return x[..., 1:-1, 1:-1] if self.crop_border else x


class UpConv(nn.Sequential):
    """Up-sampling ×2: 2×2 up-conv or resize-conv (both halve the channels), or a bare resize."""

    def __init__(self, in_channels: int, out_channels: int, upsampling: str, valid: bool) -> None:
        if upsampling == "transposed":
            super().__init__(nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2))
        elif upsampling == "resize_conv":  # 1×1 conv commutes with the resize: run it first
            super().__init__(nn.Conv2d(in_channels, out_channels, 1), BilinearResize2x(valid))
        else:
            super().__init__(BilinearResize2x(valid))


class UNet(nn.Module):
    """U-Net of Fig. 1; see the module docstring for the knobs and the valid-padding contract."""

    backbone = None  # trained from scratch: no ImageNet-pretrained part
    has_aux_head = False

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        base_channels: int = 64,
        depth: int = 4,
        padding: Literal["valid", "same"] = "valid",
        upsampling: Literal["transposed", "resize_conv", "bilinear"] = "transposed",
        batch_norm: bool = False,
        width: float = 1.0,
        dropout: float = 0.5,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if pretrained:
            raise ValueError("U-Net is trained from scratch (Sec. 3): it has no pretrained "
                             "weights; pass pretrained=False")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        _up_loss(upsampling)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.depth, self.padding, self.upsampling = depth, padding, upsampling
        valid, pad = padding == "valid", 0 if padding == "valid" else 1
        chans = [scale_channels(base_channels * 2**k, width) for k in range(depth + 1)]
        self.encoder = nn.ModuleList()
        c_in = in_channels
        for c in chans[:-1]:
            self.encoder.append(DoubleConv(c_in, c, pad, batch_norm))
            c_in = c
        self.pool = nn.MaxPool2d(2)
        self.encoder_dropout = nn.Dropout(dropout)  # the deepest level's output (Sec. 3.1)
        self.bottleneck = nn.Sequential(
            DoubleConv(chans[-2], chans[-1], pad, batch_norm), nn.Dropout(dropout)
        )
        self.up = nn.ModuleList(
            UpConv(chans[k + 1], chans[k], upsampling, valid) for k in reversed(range(depth))
        )
        # skip (c) + up-sampled (c; the 2c of the level below when a bare resize keeps them)
        up_out = chans[1:] if upsampling == "bilinear" else chans[:-1]
        self.decoder = nn.ModuleList(
            DoubleConv(chans[k] + up_out[k], chans[k], pad, batch_norm)
            for k in reversed(range(depth))
        )
        self.classifier = nn.Conv2d(chans[0], num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        """Sec. 3: Gaussian with std sqrt(2/N), N = incoming nodes of one neuron (k²·C_in)."""
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):  # stride = kernel: each output sees C_in inputs
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / m.in_channels))
            elif isinstance(m, nn.Conv2d):
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_in))
            else:
                continue
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # --- legal sizes (valid padding) ---------------------------------------------------------
    def valid_output_size(self, input_size: int) -> int:
        return valid_output_size(input_size, self.depth, self.upsampling)

    def valid_input_size(self, output_size: int) -> int:
        return valid_input_size(output_size, self.depth, self.upsampling)

    def context_margin(self) -> int:
        """Input pixels of context on each side of the valid output (92 for the paper's net)."""
        size = self.valid_input_size(1)
        return (size - self.valid_output_size(size)) // 2

    def tile_geometry(self, tile: int) -> tuple[int, int]:
        """``(input tile side, context margin)`` for an output tile of side ``tile``.

        Valid: the legal input whose valid output covers the tile. Same: the tile plus
        :meth:`receptive_radius` on each side, rounded up to a multiple of ``2^depth`` to keep
        the pooling grid; the margin's outputs are discarded.
        """
        if self.padding == "valid":
            return self.valid_input_size(tile), self.context_margin()
        m = 2**self.depth
        margin = math.ceil(self.receptive_radius() / m) * m
        return tile + 2 * margin, margin

    def receptive_radius(self) -> int:
        """Farthest input pixel (in rows or columns) an output pixel of the net can depend on.

        ``context_margin() + 2^depth − 1``: the valid net's convs shift its pooling grid so that
        its outputs sit where the field is smallest (92 px for the paper's net); over all the
        ``2^depth`` positions within a pooling cell, a same-padded net reaches up to
        ``2^depth − 1`` px farther (107 px; measured by gradients in the tests).
        """
        return self.context_margin() + 2**self.depth - 1

    # --- forward ----------------------------------------------------------------------------
    def _unet(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, level in enumerate(self.encoder):
            x = level(x)
            if k == len(self.encoder) - 1:
                x = self.encoder_dropout(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, level, skip in zip(self.up, self.decoder, reversed(skips), strict=True):
            x = up(x)
            x = level(torch.cat([center_crop(skip, *x.shape[-2:]), x], dim=1))
        return self.classifier(x)

    def forward_valid(self, x: torch.Tensor) -> torch.Tensor:
        """Raw valid-padded output, ``valid_output_size`` of x's sides, centred on the input."""
        if self.padding != "valid":
            raise RuntimeError("forward_valid needs padding='valid'")
        for side in x.shape[-2:]:
            self.valid_output_size(side)  # raises for illegal sizes
        return self._unet(x)

    def forward_tile(self, x: torch.Tensor, tile: int) -> torch.Tensor:
        """Logits of the ``tile``² output tile of an input tile from :meth:`tile_geometry`."""
        if self.padding == "valid":
            return self.forward_valid(x)[..., :tile, :tile]
        margin = self.tile_geometry(tile)[1]
        return self._unet(x)[..., margin : margin + tile, margin : margin + tile]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        if self.padding == "valid":
            before = self.context_margin()
            size_h, size_w = self.valid_input_size(h), self.valid_input_size(w)
            x = mirror_pad(x, (before, size_w - w - before, before, size_h - h - before))
            return {"out": self._unet(x)[..., :h, :w]}
        m = 2**self.depth
        x = mirror_pad(x, (0, -w % m, 0, -h % m))
        return {"out": self._unet(x)[..., :h, :w]}


@torch.no_grad()
def overlap_tile_predict(model: UNet, image: torch.Tensor, tile_size: int = 384) -> torch.Tensor:
    """Overlap-tile inference (Sec. 2, Fig. 2) of a U-Net on an arbitrary image.

    ``image`` is C×H×W or N×C×H×W; returns logits at its size (K×H×W or N×K×H×W). Output tiles of
    side ``tile_size`` (rounded up to a multiple of ``2^depth`` so every tile sees the same pooling
    grid) partition the image; each is predicted by :meth:`UNet.forward_tile` from its input tile,
    i.e. the output tile plus the context margin, mirror-padded beyond the image. Each output
    pixel is written exactly once (added into a zero canvas, so a coverage count is the
    prediction of an all-ones model). Valid padding (the paper's): the result equals
    ``model(image)["out"]``. Same padding: it equals ``model(image)["out"]`` wherever that one's
    receptive field (``model.receptive_radius()`` px) lies inside the image, and elsewhere replaces
    the zero padding by mirrored context. Call ``model.eval()`` first.
    """
    batched = image.dim() == 4
    x = image if batched else image[None]
    h, w = x.shape[-2:]
    m = 2**model.depth
    tile = max(m, math.ceil(tile_size / m) * m)
    in_tile, margin = model.tile_geometry(tile)
    ny, nx = math.ceil(h / tile), math.ceil(w / tile)
    x = mirror_pad(x, (margin, nx * tile - w + in_tile - tile - margin,
                       margin, ny * tile - h + in_tile - tile - margin))
    out = None
    for i in range(ny):
        for j in range(nx):
            y0, x0 = i * tile, j * tile
            pred = model.forward_tile(x[..., y0 : y0 + in_tile, x0 : x0 + in_tile], tile)
            if out is None:
                out = pred.new_zeros(*pred.shape[:2], ny * tile, nx * tile)
            out[..., y0 : y0 + tile, x0 : x0 + tile] += pred
    out = out[..., :h, :w]
    return out if batched else out[0]


__all__ = [
    "UNet",
    "mirror_pad",
    "overlap_tile_predict",
    "valid_input_size",
    "valid_output_size",
]
