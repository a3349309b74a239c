"""DeepLab v1 LargeFOV and DeepLab v2 ASPP.

- :class:`DeepLabLargeFOV` — Chen et al., "Semantic Image Segmentation with Deep Convolutional
  Nets and Fully Connected CRFs", ICLR'15, Sec. 3.1 / 4.1 and Table 2 ("DeepLab-CRF-LargeFOV",
  20.5M parameters), following the reference ``DeepLab-LargeFOV/train.prototxt``: the DeepLab
  VGG16 (:mod:`models.backbones.vgg`, ``dilated=True``: pool1–3 3×3/2 pad 1, pool4/pool5 3×3/1
  pad 1, conv5 dilated by 2, output stride 8), then the prototxt's ``pool5a`` (3×3/1 pad 1
  average pooling, parameter-free), fc6 (3×3, dilation 12, 1024) → ReLU → Dropout, fc7 (1×1,
  1024) → ReLU → Dropout, fc8 (1×1 to the classes). With ImageNet weights, fc6/fc7 start from
  the 7×7×4096 fc6 / 4096 fc7 subsampled (Sec. 4.1; see :class:`models.backbones.vgg.ConvFC`).
  Knobs: ``fc_channels`` (1024; 4096 is "DeepLab-CRF-7x7"), ``fc6_kernel_size`` (3; 4 or 7 are
  the other Table 2 rows), ``fc6_dilation`` (12, the "input stride" of Table 2), ``dropout``.
- :class:`DeepLabV2` — Chen et al., "DeepLab: Semantic Image Segmentation with Deep
  Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI'17, Sec. 3.1 and
  Fig. 7 (ASPP): parallel branches, one per rate in ``atrous_rates``, each producing class
  scores; the scores are SUMMED (not concatenated). ASPP-S is ``(2, 4, 8, 12)``, ASPP-L
  ``(6, 12, 18, 24)`` (Table 3); a single rate ``(12,)`` is LargeFOV (without ``pool5a``: the v2
  VGG ASPP prototxt has none). Backbones:
  ``"vgg16"`` — the DeepLab VGG16 above, each branch fc6 (3×3, dilation r, 1024) → fc7 → fc8 as
  in LargeFOV (Table 3); ``"resnet101"`` / ``"resnet50"`` — dilated ResNet at output stride 8
  (:func:`models.backbones.resnet.dilated_resnet`), each branch one 3×3 conv of dilation r from
  the last stage straight to the classes, with bias (Table 4; ``fc1_voc12_c0..3`` in the
  prototxt). The default is the paper's final model, ResNet-101 with ASPP-L. ``fc_channels`` and
  ``dropout`` apply to the VGG branches only. BatchNorm freezing (the paper fine-tunes with
  fixed ImageNet statistics) is the training code's choice, not the model's.

``batch_norm=True`` (both models, VGG only) uses VGG16-BN: not in the papers, it exists for the
from-scratch CPU smoke preset, where plain VGG16 does not train (see ``models/backbones/vgg.py``).

Both return logits bilinearly upsampled to the input (``F.interpolate``, ``align_corners=False``;
the Caffe ``Interp`` layer aligns corners — at stride 8 the difference is sub-pixel) and
declare ``output_stride = 8``. Classifier layers (fc8, ASPP convs) are initialised N(0, 0.01²),
bias 0, as in the prototxts. The CRF is not part of the model.

``msc_scales`` (DeepLabV2): multi-scale inputs with max fusion (v2 Sec. 4.1, Table 4 "MSC";
:mod:`models.msc`, as kazuto1011/deeplab-pytorch): ``(1.0, 0.75, 0.5)`` is the paper's; the
default ``(1.0,)`` is a single scale (Table 3 and the first row of Table 4). With several
scales, training mode also returns ``"msc"`` (every scale's stride-8 score map and the fused
one) for the loss; ``"out"`` is always the fused map upsampled to the input.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones.resnet import dilated_resnet
from models.backbones.vgg import timm_name as vgg16_timm_name
from models.backbones.vgg import VGG16, ConvFC
from models.blocks import scale_channels
from models.msc import check_scales, msc_forward
from models.pretrained import PretrainedArg, load_timm_state_dict

ASPP_S = (2, 4, 8, 12)
ASPP_L = (6, 12, 18, 24)
RESNET_DEPTHS = {"resnet50": 50, "resnet101": 101}


def _classifier(in_ch: int, num_classes: int, kernel_size: int = 1, rate: int = 1) -> nn.Conv2d:
    padding = rate * (kernel_size - 1) // 2
    conv = nn.Conv2d(in_ch, num_classes, kernel_size, padding=padding, dilation=rate)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


class VGGBranch(nn.Sequential):
    """fc6 (``kernel_size``, dilation ``rate``) → ReLU → Dropout → fc7 → ReLU → Dropout → fc8."""

    def __init__(
        self, in_channels: int, fc_channels: int, num_classes: int, rate: int,
        kernel_size: int = 3, dropout: float = 0.5,
    ) -> None:
        # "same" padding; an even kernel (Table 2's 4×4) with odd rate·(k-1) loses one pixel,
        # which the final upsampling to the input size absorbs.
        padding = rate * (kernel_size - 1) // 2
        super().__init__(OrderedDict(
            pre_logits=ConvFC(in_channels, fc_channels, kernel_size, rate, padding, dropout),
            fc8=_classifier(fc_channels, num_classes),
        ))


def _upsample_to(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabLargeFOV(nn.Module):
    """DeepLab v1 LargeFOV (VGG16); ``forward`` returns ``{"out": N×classes×H×W}``."""

    has_aux_head = False

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "vgg16",
        pretrained: PretrainedArg = False,
        width: float = 1.0,
        fc_channels: int = 1024,
        fc6_dilation: int = 12,
        fc6_kernel_size: int = 3,
        dropout: float = 0.5,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if backbone != "vgg16":
            raise ValueError(f"LargeFOV is VGG16-only (backbone='vgg16'), got {backbone!r}")
        state = load_timm_state_dict(pretrained, vgg16_timm_name(batch_norm), width)  # fail fast
        self.backbone = VGG16(width=width, dilated=True, include_fc=False, batch_norm=batch_norm)
        self.pool5a = nn.AvgPool2d(3, stride=1, padding=1)
        self.classifier = VGGBranch(
            self.backbone.channels["pool5"], scale_channels(fc_channels, width), num_classes,
            fc6_dilation, fc6_kernel_size, dropout,
        )
        if state is not None:
            self.backbone.load_imagenet(state, pretrained)
            self.classifier.pre_logits.load_imagenet(state)
        self.output_stride = 8

    def pretrained_modules(self) -> list[nn.Module]:
        """VGG16 and fc6/fc7 (from VGG's fc layers): only fc8 is new and gets the head lr (the
        prototxts' ``lr_mult: 10`` on fc8 only)."""
        return [self.backbone, self.classifier.pre_logits]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """pool5a: the stride-8 map fc6 sees."""
        return self.pool5a(self.backbone(x)["pool5"])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": _upsample_to(self.classifier(self.features(x)), x)}


class DeepLabV2(nn.Module):
    """DeepLab v2 with ASPP (sum of per-rate class scores); ``forward`` returns ``{"out"}``."""

    has_aux_head = False

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "resnet101",
        atrous_rates: tuple[int, ...] = ASPP_L,
        pretrained: PretrainedArg = False,
        width: float = 1.0,
        fc_channels: int = 1024,
        dropout: float = 0.5,
        batch_norm: bool = False,
        msc_scales: tuple[float, ...] = (1.0,),
    ) -> None:
        super().__init__()
        atrous_rates = tuple(atrous_rates)
        self.msc_scales = check_scales(msc_scales)
        if batch_norm and backbone != "vgg16":
            raise ValueError(f"batch_norm=True selects VGG16-BN; {backbone!r} always has BatchNorm")
        if not atrous_rates or any(int(r) != r or r < 1 for r in atrous_rates):
            raise ValueError(f"atrous_rates must be one or more positive ints, got {atrous_rates}")
        if backbone in RESNET_DEPTHS:
            self.backbone = dilated_resnet(
                RESNET_DEPTHS[backbone], output_stride=8, width=width, pretrained=pretrained
            )
            self.feature_stage = "layer4"
            in_ch = self.backbone.channels[self.feature_stage]
            self.branches = nn.ModuleList(
                _classifier(in_ch, num_classes, 3, r) for r in atrous_rates
            )
        elif backbone == "vgg16":
            state = load_timm_state_dict(pretrained, vgg16_timm_name(batch_norm), width)  # fail fast
            self.backbone = VGG16(width=width, dilated=True, include_fc=False, batch_norm=batch_norm)
            fc = scale_channels(fc_channels, width)
            self.feature_stage = "pool5"
            in_ch = self.backbone.channels[self.feature_stage]
            self.branches = nn.ModuleList(
                VGGBranch(in_ch, fc, num_classes, r, 3, dropout) for r in atrous_rates
            )
            if state is not None:  # every branch starts from the same subsampled fc6/fc7
                self.backbone.load_imagenet(state, pretrained)
                for branch in self.branches:
                    branch.pre_logits.load_imagenet(state)
        else:
            raise ValueError(
                f"backbone must be 'vgg16', 'resnet50' or 'resnet101', got {backbone!r}"
            )
        self.atrous_rates = atrous_rates
        self.output_stride = 8

    def pretrained_modules(self) -> list[nn.Module]:
        """The backbone, and with VGG16 every branch's fc6/fc7 (from VGG's fc layers): the new
        layers are the fc8 of each branch (VGG, ``lr_mult: 10`` in the ASPP prototxt) or the
        ASPP classifier convs (ResNet, ``fc1_voc12_c0..3``)."""
        return [self.backbone] + [b.pre_logits for b in self.branches if isinstance(b, VGGBranch)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-8 map the ASPP branches share (pool5 for VGG16, layer4 for ResNet)."""
        return self.backbone(x)[self.feature_stage]

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-8 class scores: the sum of the ASPP branches, before upsampling."""
        feats = self.features(x)
        return sum(branch(feats) for branch in self.branches)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(self.msc_scales) > 1:
            return msc_forward(self.scores, x, self.msc_scales, self.training)
        return {"out": _upsample_to(self.scores(x), x)}
