"""DeepLab v3 (Chen et al. 2017, arXiv:1706.05587) and DeepLab v3+ (Chen et al. ECCV'18).

DeepLab v3 (Sec. 3.3, Fig. 5): a dilated ResNet at ``output_stride`` 16 or 8 (Table 1) whose last
block uses ``multi_grid`` rates (Sec. 3.2, Table 3), then Atrous Spatial Pyramid Pooling: a 1×1
branch, one 3×3 branch per rate in ``atrous_rates`` and, with ``image_pooling``, a global-average
branch (Table 5), each 256 channels with BatchNorm; concatenated, projected by a 1×1 conv to 256
(+ BN), and "the final 1×1 convolution which generates the final logits". ``atrous_rates=None``
gives the paper's (6, 12, 18) at OS 16, "doubled" at OS 8 (in general ``rate · 16 / OS``).
The projection is followed by dropout 0.1, as in the TF reference (``concat_projection`` with
``keep_prob=0.9``); the paper does not mention it. torchvision's ``DeepLabHead`` differs: dropout
0.5 and an extra 3×3 conv between ASPP and classifier. Our :class:`ASPP` keeps torchvision's
module layout (``convs``, ``project``), so its weights load into ours and the two are compared.

DeepLab v3+ (Sec. 3.1, Fig. 2): ASPP output at stride 16 (or 8) → bilinear upsampling to the
stride-4 low-level features, which first go through a 1×1 conv to ``low_level_channels`` (48;
Table 1) + BN + ReLU; concatenation; ``decoder_convs`` 3×3 convs of ``decoder_channels``
(2 × 256; Table 2) of ``decoder_kernel_size`` (3); 1×1 classifier; bilinear upsampling to the
input. ``low_level_features=("conv3", "conv2")`` decodes in two steps, stride 8 then 4 (Table 2's
"Conv2 + Conv3" row; see :class:`DeepLabV3Plus`). ``separable`` uses
atrous depthwise-separable convs (depthwise → BN → ReLU → pointwise → BN → ReLU, Sec. 3.2) in the
ASPP 3×3 branches and the decoder; ``None`` picks the paper's choice per backbone: True for
Xception-65 (the final model, Table 5 "SC"), False for ResNet-101 (Table 3).
Backbones: ``"resnet50"``, ``"resnet101"``, ``"resnet152"`` (:mod:`models.backbones.resnet`, 7×7
stem, torchvision ImageNet weights) and ``"xception65"`` (:mod:`models.backbones.xception`).
``multi_grid`` only exists for ResNets; ``None`` means the papers' (1, 2, 4) there (v3 Table 5,
v3+ Table 3). :class:`DeepLabV3` also accepts ``"xception65"``: the "no decoder" row of v3+ Table 5.
Bilinear resizing uses ``align_corners=False`` (torchvision); the TF reference uses True.

Structure: both models hold the v3 encoder, :class:`DeepLabV3Encoder` (``encoder.backbone``,
``encoder.aspp``); v3 adds its 1×1 ``classifier``, v3+ its ``decoder`` and ``classifier``. ASPP
reads the backbone's last feature and the decoder its stride-4 one, picked by the strides the
backbone declares (``layer4``/``layer1`` for ResNet, ``exit``/``low_level`` for Xception).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import deepest_stage
from models.backbones.resnet import dilated_resnet
from models.backbones.xception import aligned_xception65
from models.blocks import ConvBNReLU, SeparableConv2d, scale_channels
from models.pretrained import PretrainedArg


def resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPPPooling(nn.Sequential):
    """Image-level features: global average pool → 1×1 conv → BN → ReLU → upsample back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize(super().forward(x), x.shape[-2:])


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling with any number of ``atrous_rates`` (DeepLab v3 Fig. 5)."""

    def __init__(
        self,
        in_channels: int,
        atrous_rates: tuple[int, ...] = (6, 12, 18),
        out_channels: int = 256,
        image_pooling: bool = True,
        separable: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, 1)]
        for rate in atrous_rates:
            if separable:
                branches.append(SeparableConv2d(in_channels, out_channels, 3, dilation=rate))
            else:
                branches.append(ConvBNReLU(in_channels, out_channels, 3, dilation=rate))
        if image_pooling:
            branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.atrous_rates = tuple(atrous_rates)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


def default_atrous_rates(output_stride: int) -> tuple[int, ...]:
    """(6, 12, 18) at output stride 16, scaled with the stride: (12, 24, 36) at 8 (v3 Sec. 3.3)."""
    return tuple(r * 16 // output_stride for r in (6, 12, 18))


def build_backbone(
    backbone: str,
    output_stride: int,
    multi_grid: tuple[int, ...] | None,
    width: float,
    pretrained: PretrainedArg,
) -> nn.Module:
    """``"resnet{50,101,152}"`` (multi-grid default (1, 2, 4)) or ``"xception65"``."""
    if backbone == "xception65":
        if multi_grid is not None:
            raise ValueError("multi_grid applies to ResNet backbones only, not xception65")
        return aligned_xception65(output_stride, width, pretrained)
    if backbone.startswith("resnet") and backbone[6:].isdigit():
        grid = (1, 2, 4) if multi_grid is None else tuple(multi_grid)
        return dilated_resnet(int(backbone[6:]), output_stride, grid, False, width, pretrained)
    raise ValueError(
        f"backbone must be resnet50, resnet101, resnet152 or xception65, got {backbone!r}"
    )


class DeepLabV3Encoder(nn.Module):
    """The DeepLab v3 encoder: dilated backbone → ASPP (v3 Fig. 5; the "Encoder" of v3+ Fig. 2).

    ``forward`` returns the backbone's named features and the ASPP output; ``feature_stage`` names
    the feature ASPP reads (the backbone's last, at ``output_stride``).
    """

    def __init__(
        self,
        backbone: str = "resnet101",
        output_stride: int = 16,
        atrous_rates: tuple[int, ...] | None = None,
        multi_grid: tuple[int, ...] | None = None,
        image_pooling: bool = True,
        separable: bool = False,
        pretrained: PretrainedArg = False,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, output_stride, multi_grid, width, pretrained)
        self.feature_stage = deepest_stage(self.backbone, output_stride)
        rates = default_atrous_rates(output_stride) if atrous_rates is None else atrous_rates
        self.aspp = ASPP(self.backbone.channels[self.feature_stage], rates,
                         scale_channels(256, width), image_pooling, separable)
        self.output_stride = output_stride

    def set_output_stride(self, output_stride: int) -> None:
        """Evaluate at another output stride with the same weights (v3 Table 6, v3+ Table 3):
        the backbone is re-dilated and the ASPP rates scale with it ("doubled" at OS 8)."""
        if not hasattr(self.backbone, "set_output_stride"):
            raise NotImplementedError(
                f"changing the output stride after construction is implemented for the ResNet and "
                f"Xception backbones; build {type(self.backbone).__name__} with output_stride={output_stride}")
        old = self.output_stride
        self.backbone.set_output_stride(output_stride)
        for branch in self.aspp.convs:
            for m in branch.modules():
                if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                    rate = m.dilation[0] * old // output_stride
                    m.dilation, m.padding = (rate, rate), (rate, rate)
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        feats = self.backbone(x)
        return feats, self.aspp(feats[self.feature_stage])


class _EncoderModel(nn.Module):
    """What DeepLab v3 and v3+ share: an ``encoder`` (:class:`DeepLabV3Encoder`), whose backbone
    is the ImageNet-pretrained part and whose output stride can change after training."""

    has_aux_head = False
    encoder: DeepLabV3Encoder

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    @property
    def output_stride(self) -> int:
        return self.encoder.output_stride

    def set_output_stride(self, output_stride: int) -> None:
        """See :meth:`DeepLabV3Encoder.set_output_stride`."""
        self.encoder.set_output_stride(output_stride)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone feature ASPP reads, at ``output_stride``."""
        return self.backbone(x)[self.encoder.feature_stage]


class DeepLabV3(_EncoderModel):
    """:class:`DeepLabV3Encoder` → 1×1 classifier → bilinear upsampling to the input size."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet101",
        output_stride: int = 16,
        atrous_rates: tuple[int, ...] | None = None,
        multi_grid: tuple[int, ...] | None = None,
        image_pooling: bool = True,
        separable: bool | None = None,
        pretrained: PretrainedArg = False,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        separable = backbone == "xception65" if separable is None else separable
        self.encoder = DeepLabV3Encoder(backbone, output_stride, atrous_rates, multi_grid,
                                        image_pooling, separable, pretrained, width)
        self.classifier = nn.Conv2d(self.encoder.aspp.out_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _, aspp_out = self.encoder(x)
        return {"out": resize(self.classifier(aspp_out), x.shape[-2:])}


# The low-level features of v3+ Table 2, named as the paper, by their stride.
LOW_LEVEL_STRIDES = {"conv2": 4, "conv3": 8}


class Decoder(nn.Module):
    """DeepLab v3+ decoder (Fig. 2): reduce low-level features, concat upsampled ASPP, refine
    with ``decoder_convs`` convs of ``decoder_kernel_size`` × ``decoder_kernel_size``."""

    def __init__(
        self,
        low_level_in: int,
        aspp_channels: int,
        low_level_channels: int = 48,
        decoder_convs: int = 2,
        decoder_channels: int = 256,
        separable: bool = False,
        decoder_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if decoder_convs < 0:
            raise ValueError(f"decoder_convs must be >= 0, got {decoder_convs}")
        if decoder_kernel_size < 1 or decoder_kernel_size % 2 == 0:
            raise ValueError(f"decoder_kernel_size must be odd and >= 1, got {decoder_kernel_size}")
        self.reduce = ConvBNReLU(low_level_in, low_level_channels, 1)
        conv = SeparableConv2d if separable and decoder_kernel_size > 1 else ConvBNReLU
        in_channels = aspp_channels + low_level_channels
        layers = []
        for _ in range(decoder_convs):
            layers.append(conv(in_channels, decoder_channels, decoder_kernel_size))
            in_channels = decoder_channels
        self.refine = nn.Sequential(*layers)
        self.out_channels = in_channels

    def forward(self, aspp_out: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        low_level = self.reduce(low_level)
        x = torch.cat([resize(aspp_out, low_level.shape[-2:]), low_level], dim=1)
        return self.refine(x)


def low_level_stage(backbone: nn.Module, feature: str) -> str:
    """The backbone stage the paper's ``"conv2"`` (stride 4) or ``"conv3"`` (stride 8) names: the
    last stage before the backbone first strides past it (ResNet layer1 / layer2; at output
    stride 8 the deeper stages are at stride 8 too, hence the first stage at that stride)."""
    if feature not in LOW_LEVEL_STRIDES:
        raise ValueError(f"low-level features are {sorted(LOW_LEVEL_STRIDES)} (v3+ Table 2), got {feature!r}")
    stride = LOW_LEVEL_STRIDES[feature]
    names = [name for name, s in backbone.stage_strides.items() if s == stride]
    if not names:
        raise ValueError(f"{type(backbone).__name__} has no {feature} feature (stride {stride}): "
                         f"{backbone.stage_strides}")
    return names[0]


class DeepLabV3Plus(_EncoderModel):
    """:class:`DeepLabV3Encoder` + the stride-4 :class:`Decoder` of DeepLab v3+ (Fig. 2).

    v3+ Table 2 knobs: ``decoder_convs`` × [``decoder_kernel_size`` × ``decoder_kernel_size``,
    ``decoder_channels``] (``[3×3, 256] × 2`` is the paper's; ``[3×3, 128]`` and ``[1×1, 256]``
    its other rows) and ``low_level_features``: ``("conv2",)`` (the paper's, stride 4) or
    ``("conv3", "conv2")``, the U-Net-like variant of Sec. 4.1: the encoder output is upsampled
    to Conv3 (stride 8), concatenated with its 1×1 projection and refined, then the same again
    with Conv2. ``decoder`` is always the last (stride-4) stage; coarser ones are
    ``decoder_stages[name]``; ``low_level_stage`` names the backbone feature ``decoder`` reads.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "xception65",
        output_stride: int = 16,
        atrous_rates: tuple[int, ...] | None = None,
        multi_grid: tuple[int, ...] | None = None,
        image_pooling: bool = True,
        low_level_channels: int = 48,
        decoder_convs: int = 2,
        decoder_channels: int = 256,
        decoder_kernel_size: int = 3,
        low_level_features: tuple[str, ...] = ("conv2",),
        separable: bool | None = None,
        pretrained: PretrainedArg = False,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        features = tuple(low_level_features)
        if not features or len(set(features)) != len(features):
            raise ValueError(f"low_level_features must name distinct features, got {features}")
        separable = backbone == "xception65" if separable is None else separable
        self.encoder = DeepLabV3Encoder(backbone, output_stride, atrous_rates, multi_grid,
                                        image_pooling, separable, pretrained, width)
        # coarse to fine: Conv3 (stride 8) before Conv2 (stride 4)
        stages = {f: low_level_stage(self.backbone, f)
                  for f in sorted(features, key=lambda f: -LOW_LEVEL_STRIDES[f])}
        in_channels = self.encoder.aspp.out_channels
        decoders = {}
        for feature, stage in stages.items():
            decoders[feature] = Decoder(
                self.backbone.channels[stage], in_channels, scale_channels(low_level_channels, width),
                decoder_convs, scale_channels(decoder_channels, width), separable, decoder_kernel_size,
            )
            in_channels = decoders[feature].out_channels
        *coarse, finest = stages
        self.low_level_stage = stages[finest]
        self.decoder_stages = nn.ModuleDict({f: decoders[f] for f in coarse})  # empty: the paper's
        self._coarse_stages = {f: stages[f] for f in coarse}
        self.decoder = decoders[finest]
        self.classifier = nn.Conv2d(self.decoder.out_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats, y = self.encoder(x)
        for feature, decoder in self.decoder_stages.items():
            y = decoder(y, feats[self._coarse_stages[feature]])
        y = self.decoder(y, feats[self.low_level_stage])
        return {"out": resize(self.classifier(y), x.shape[-2:])}
