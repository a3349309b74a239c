"""FCN-32s / 16s / 8s: Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR'15, Sec. 3–4.2 and Fig. 3, with the reference Caffe nets
(``voc-fcn{32,16,8}s/net.py`` of fcn.berkeleyvision.org).

VGG16 conv1–pool5, fc6 (7×7, 4096) and fc7 (1×1, 4096) as convolutions, each followed by ReLU
and Dropout(0.5); ``score_fr`` (1×1 to the classes) predicts at stride 32. Each entry of
``skips`` (the paper's Fig. 3 "skip" layers) upsamples the running score 2× with a transposed
conv initialised to bilinear interpolation and adds a 1×1 score of ``pool4`` (16s) and then
``pool3`` (8s); a final fixed bilinear transposed conv upsamples 32× / 16× / 8× to the input.
All score layers are zero-initialised (Sec. 4.3, Optimization: "we zero-initialize the class
scoring layer"), so a new skip leaves the prediction unchanged at the start of
training; the paper trains 16s from 32s and 8s from 16s (stage-wise; that is training code).

Knobs:

- ``skips`` — ``()`` FCN-32s, ``("pool4",)`` FCN-16s, ``("pool4", "pool3")`` FCN-8s.
- ``upsampling`` — how the intermediate 2× layers (one per skip) upsample the score map:
  ``"transposed"`` (paper, Sec. 3.3 and Sec. 4.3, Dense Prediction: "final layer
  deconvolutional filters are fixed to bilinear interpolation, while intermediate upsampling
  layers are initialized to bilinear upsampling, and then learned"): a learnable 4×4 stride-2
  transposed conv initialised to bilinear; ``"bilinear"``: the same layer frozen at bilinear
  (the reference Caffe nets, ``lr_mult: 0``); ``"resize_conv"``: frozen bilinear then a
  learnable 3×3 conv initialised to the identity (Odena et al., Distill 2016, "Deconvolution
  and Checkerboard Artifacts"), so all three start as the same function and differ only in
  what training may do to them. ``None`` = ``"transposed"``. The final 32×/16×/8× layer stays
  fixed bilinear in every mode, as in the paper, so the knob changes only the layers the paper
  learns (a fixed bilinear kernel overlaps evenly and adds no checkerboard of its own).
  FCN-32s has no intermediate layer, so the knob does not change it. Fixed layers keep their
  weights as parameters with ``requires_grad=False``.
- ``learnable_upsampling`` — the older boolean form of ``upsampling``: True = ``"transposed"``,
  False = ``"bilinear"``. Either may be given; both is an error unless they agree.
- ``paper_padding`` — True: the reference's geometry. ``conv1_1`` pads by 100 and fc6 is
  un-padded, so any input yields a score map; the Caffe ``Crop`` layers then align the maps at
  the offsets of :data:`CAFFE_SKIP_OFFSETS` / :data:`CAFFE_FINAL_OFFSETS` (derived below), and
  the output is exactly the input's size. False (default): "same" padding everywhere (fc6 pads
  3), so pool``k`` is ``ceil(H / 2^k)`` (ceil-mode pools). The upsampling layers pad by half
  their stride (:class:`BilinearUpsample`), which puts coarse cell ``i`` (centre
  ``i·s + (s-1)/2`` in input pixels) exactly on the fine cell with the same centre; both maps
  start at pixel 0, so aligning is cropping the upsampled map's bottom/right excess
  (``2·ceil(H/32) ≥ ceil(H/16)``, ``8·ceil(H/8) ≥ H``): no offsets, no interpolation.
- ``skip_scales`` — a fixed factor per skip applied to the pooled features before their 1×1
  score layer (the reference ``voc-fcn8s-atonce/net.py``: ``scale_pool4`` 0.01 and
  ``scale_pool3`` 0.0001, Caffe ``Scale`` layers with ``lr_mult: 0``, "for compatibility" with
  the stage-wise nets, so that the skips are trained at once from ImageNet weights without
  swamping ``score_fr``). ``None`` (default, the paper's nets): no scaling.
- ``batch_norm`` — VGG16-BN instead of VGG16 (not in the paper; for from-scratch CPU smoke runs,
  see ``models/backbones/vgg.py``).

Derivation of the Caffe offsets (``coord_map.py`` semantics: a conv/pool with kernel k, stride
s, pad p maps output x to input ``s·x + (k-1)/2 - p``; a deconv is the inverse). Input pixel
of a cell: pool``k``: ``2^k·y - 99 + (2^k - 1)/2``  (pool5: ``32y - 83.5``), score_fr (fc6 is
7×7 unpadded): ``32z + 12.5``; 32× deconv (kernel 64): ``u - 19`` → offset 19. 2× deconv
(kernel 4): ``16u - 11.5`` = pool4 at ``y = u + 5`` → offset 5; then 16× (kernel 32): offset
27. Again 2×: ``8w - 23.5`` = pool3 at ``y = w + 9`` → offset 9; then 8× (kernel 16): offset 31.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from models.backbones.vgg import VGG16
from models.blocks import BilinearUpsample, ResizeConv
from models.pretrained import PretrainedArg

SKIP_ORDER = ("pool4", "pool3")
CAFFE_SKIP_OFFSETS = {"pool4": 5, "pool3": 9}
CAFFE_FINAL_OFFSETS = {32: 19, 16: 27, 8: 31}
CAFFE_FIRST_PADDING = 100
UPSAMPLINGS = ("transposed", "resize_conv", "bilinear")
RESIZE_CONV_KERNEL = 3  # Odena et al.'s resize-convolution uses an ordinary 3×3 conv


def resolve_upsampling(upsampling: str | None, learnable_upsampling: bool | None) -> str:
    """The ``upsampling`` mode from the new knob and/or the older boolean (see module doc)."""
    if upsampling is not None and upsampling not in UPSAMPLINGS:
        raise ValueError(f"upsampling must be one of {UPSAMPLINGS}, got {upsampling!r}")
    if learnable_upsampling is None:
        return upsampling or "transposed"
    implied = "transposed" if learnable_upsampling else "bilinear"
    if upsampling is None:
        return implied
    if (upsampling == "bilinear") == bool(learnable_upsampling):
        raise ValueError(
            f"upsampling={upsampling!r} contradicts learnable_upsampling={learnable_upsampling}; "
            f"give only upsampling"
        )
    return upsampling


def _score(in_channels: int, num_classes: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _crop(x: torch.Tensor, offset: int, size: tuple[int, int]) -> torch.Tensor:
    """Caffe ``Crop`` on the spatial axes: ``x[..., offset:offset+h, offset:offset+w]``."""
    h, w = size
    if x.shape[-2] < offset + h or x.shape[-1] < offset + w:
        raise RuntimeError(f"cannot crop {tuple(x.shape[-2:])} at offset {offset} to {size}")
    return x[..., offset:offset + h, offset:offset + w]


class FCN(nn.Module):
    """FCN-VGG16; ``forward`` returns ``{"out": N×classes×H×W}``."""

    has_aux_head = False

    def __init__(
        self,
        num_classes: int = 21,
        skips: tuple[str, ...] = ("pool4", "pool3"),
        backbone: str = "vgg16",
        pretrained: PretrainedArg = False,
        width: float = 1.0,
        upsampling: Literal["transposed", "resize_conv", "bilinear"] | None = None,
        learnable_upsampling: bool | None = None,
        paper_padding: bool = False,
        dropout: float = 0.5,
        batch_norm: bool = False,
        skip_scales: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        if backbone != "vgg16":
            raise ValueError(f"FCN supports backbone='vgg16' only (the paper's), got {backbone!r}")
        skips = tuple(skips)
        if skips != SKIP_ORDER[:len(skips)]:
            raise ValueError(f"skips must be (), ('pool4',) or ('pool4', 'pool3'), got {skips}")
        self.skips = skips
        if skip_scales is not None:
            skip_scales = tuple(float(f) for f in skip_scales)
            if len(skip_scales) != len(skips) or min(skip_scales, default=1.0) <= 0:
                raise ValueError(f"skip_scales must give one positive factor per skip {skips}, got {skip_scales}")
        self.skip_scales = skip_scales or (1.0,) * len(skips)
        self.upsampling = resolve_upsampling(upsampling, learnable_upsampling)
        self.paper_padding = paper_padding
        self.backbone = VGG16(
            width=width,
            first_padding=CAFFE_FIRST_PADDING if paper_padding else 1,
            fc6_padding=0 if paper_padding else 3,
            dropout=dropout,
            pretrained=pretrained,
            batch_norm=batch_norm,
        )
        channels = self.backbone.channels
        self.score_fr = _score(channels["fc7"], num_classes)
        self.score_skips = nn.ModuleDict({s: _score(channels[s], num_classes) for s in skips})
        self.upscore_skips = nn.ModuleList(self._skip_upsample(num_classes) for _ in skips)
        self.final_stride = 32 // 2 ** len(skips)
        self.upscore = BilinearUpsample(num_classes, self.final_stride, learnable=False)
        if paper_padding:  # Caffe's Deconvolution has no padding; the Crop layers align instead.
            for up in self.modules():
                if isinstance(up, BilinearUpsample):
                    up.padding = (0, 0)
        self.output_stride = 32

    def _skip_upsample(self, num_classes: int) -> nn.Module:
        if self.upsampling == "resize_conv":
            return ResizeConv(num_classes, 2, RESIZE_CONV_KERNEL)
        return BilinearUpsample(num_classes, 2, learnable=self.upsampling == "transposed")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 activations: the stride-32 map that ``score_fr`` classifies."""
        return self.backbone(x)["fc7"]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        score = self.score_fr(feats["fc7"])
        for name, upsample, factor in zip(self.skips, self.upscore_skips, self.skip_scales, strict=True):
            score = upsample(score)
            skip = self.score_skips[name](feats[name] * factor if factor != 1.0 else feats[name])
            if self.paper_padding:
                skip = _crop(skip, CAFFE_SKIP_OFFSETS[name], score.shape[-2:])
            else:
                score = _crop(score, 0, skip.shape[-2:])
            score = score + skip
        offset = CAFFE_FINAL_OFFSETS[self.final_stride] if self.paper_padding else 0
        return {"out": _crop(self.upscore(score), offset, x.shape[-2:])}


def fcn32s(num_classes: int = 21, **kwargs) -> FCN:
    """FCN-32s: single-stream, 32× upsampling of ``score_fr``."""
    return FCN(num_classes, skips=(), **kwargs)


def fcn16s(num_classes: int = 21, **kwargs) -> FCN:
    """FCN-16s: adds the ``pool4`` skip."""
    return FCN(num_classes, skips=SKIP_ORDER[:1], **kwargs)


def fcn8s(num_classes: int = 21, **kwargs) -> FCN:
    """FCN-8s: adds the ``pool4`` and ``pool3`` skips."""
    return FCN(num_classes, skips=SKIP_ORDER, **kwargs)
