"""Mask R-CNN (He et al., ICCV 2017) with a switchable RoI feature extractor: Sec. 3 "RoIAlign",
Table 2c (RoIPool vs RoIWarp vs RoIAlign, ResNet-50-C4) and Table 2d (ResNet-50-C5, stride 32).

torchvision's ``MaskRCNN`` (RPN, box head, mask head, losses, post-processing) on a ResNet-50 +
FPN backbone (paper Sec. 3.1, "ResNet-FPN"); only the layer that crops each region's features,
for the box head AND the mask head alike, is switched:

- ``roi_layer="RoIAlign"`` (the paper's): bins of exactly (box size / output size), features
  bilinearly interpolated at ``sampling_ratio`` × ``sampling_ratio`` regular points per bin and
  averaged (``torchvision.ops.roi_align``). ``sampling_ratio=2`` is the paper's "four regular
  locations" per bin; 0 means ceil(bin size) points (Detectron's adaptive default).
- ``roi_layer="RoIPool"`` (Fast R-CNN's): the box is rounded to the feature grid, its bins are
  floor/ceil-ed to whole cells, and each bin takes the max over its cells
  (``torchvision.ops.roi_pool``): the two quantisations the paper removes. Regions are
  assigned to FPN levels exactly as ``torchvision.ops.MultiScaleRoIAlign`` does (FPN Eq. 1,
  k = ⌊4 + log2(√(wh) / 224)⌋ clamped to P2..P5), so the variants differ only in the pooling.
- ``roi_layer="RoIWarp"`` (Dai et al., MNC, as Mask R-CNN Sec. 3 describes it): "quantizes the
  RoI like RoIPool", i.e. rounds the box to the feature grid (``round(c · scale)``, Caffe's
  half-away-from-zero rounding), then "adopts bilinear resampling" like RoIAlign: the same sample
  points in the same bins, only of the rounded box.
- ``roi_aggregation`` — Table 2c's "agg." column: how the samples of a bin are combined,
  ``"max"`` or ``"avg"``; ``None`` takes each layer's own (RoIPool and RoIWarp max, RoIAlign
  avg). ``"max"`` with RoIAlign/RoIWarp takes the maximum over the ``sampling_ratio²`` bilinear
  samples of each bin (:func:`roi_align_max`); RoIPool is always max.
- ``aligned`` (RoIAlign only): ``False`` is the paper's RoIAlign, as implemented in Detectron
  (Caffe2) and in torchvision's ``MultiScaleRoIAlign`` / ``maskrcnn_resnet50_fpn``: a box
  coordinate c is sampled at feature coordinate c·scale, where feature cell i is centred at i,
  i.e. half a cell off the continuous image-to-feature mapping. ``True`` is Detectron2's
  correction (c·scale − 0.5). It is off by default because Table 2c measures the paper's
  layer; ``tools/roi_quantisation.py`` draws both.

Other knobs: ``backbone`` ("resnet50" | "resnet101"), ``pretrained`` (``models.pretrained``: the
torchvision ImageNet ResNet weights via timm, ``resnet50.tv_in1k``, the weights
``maskrcnn_resnet50_fpn`` starts from), ``width`` (scales backbone, FPN and head channels, for CPU
smoke runs from scratch), ``frozen_bn`` / ``trainable_layers`` (default as torchvision and
Detectron: with ImageNet weights, BatchNorm frozen and stem + res2 fixed; from scratch,
everything trains), ``anchor_sizes`` (one per FPN level, FPN paper: 32..512 px) and any further
``torchvision.models.detection.MaskRCNN`` keyword (``min_size``, ``max_size``,
``rpn_post_nms_top_n_train``, ``box_detections_per_img``, ...). At width 1, random init, the
parameter count equals ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)`` (tested).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d, roi_align, roi_pool
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torchvision.ops.poolers import (
    MultiScaleRoIAlign,
    _convert_to_roi_format,
    _filter_input,
    _setup_scales,
)

from models.backbones.resnet import ResNetBackbone, dilated_resnet
from models.blocks import scale_channels
from models.pretrained import PretrainedArg

RoILayer = Literal["RoIAlign", "RoIPool", "RoIWarp"]
ROI_LAYERS: tuple[str, ...] = ("RoIAlign", "RoIPool", "RoIWarp")
AGGREGATIONS: dict[str, str] = {"RoIAlign": "avg", "RoIPool": "max", "RoIWarp": "max"}  # each layer's own


def c_round(x: torch.Tensor) -> torch.Tensor:
    """Caffe's ``round``: halves away from zero (``torch.round`` rounds them to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def quantise_rois(rois: torch.Tensor, scale: float) -> torch.Tensor:
    """RoIWarp's (and RoIPool's) first quantisation: box corners rounded to the feature grid,
    returned in image coordinates; ``rois`` is K×5 (batch index, x1, y1, x2, y2)."""
    out = rois.clone()
    out[:, 1:] = c_round(rois[:, 1:] * scale) / scale
    return out


def roi_align_max(feature: torch.Tensor, rois: torch.Tensor, output_size, scale: float,
                  sampling_ratio: int, aligned: bool = False) -> torch.Tensor:
    """RoIAlign whose bins take the MAX of their ``sampling_ratio²`` bilinear samples (Mask R-CNN
    Table 2c, "RoIAlign max"), from torchvision's kernel: sample ``(iy, ix)`` of every bin is the
    single centre sample (``sampling_ratio=1``) of the box shifted by that sample's offset from the
    bin centre, since the shift keeps the box size and so the bins. The mean of the same calls is
    ``roi_align`` with ``sampling_ratio`` (tested), and gradients flow as through ``roi_align``."""
    if sampling_ratio < 1:
        raise ValueError("max aggregation needs a fixed sampling_ratio >= 1 (0 is adaptive per box)")
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    x1, y1, x2, y2 = (rois[:, i] * scale for i in range(1, 5))
    w, h = x2 - x1, y2 - y1
    if not aligned:  # torchvision (and Detectron) force at least one cell
        w, h = w.clamp(min=1.0), h.clamp(min=1.0)
    out = None
    for iy in range(sampling_ratio):
        dy = ((iy + 0.5) / sampling_ratio - 0.5) * h / oh
        for ix in range(sampling_ratio):
            dx = ((ix + 0.5) / sampling_ratio - 0.5) * w / ow
            shifted = rois.clone()
            shifted[:, 1:] = rois[:, 1:] + torch.stack([dx, dy, dx, dy], 1) / scale
            sample = roi_align(feature, shifted, (oh, ow), scale, 1, aligned)
            out = sample if out is None else torch.maximum(out, sample)
    return out
_DEPTHS = {"resnet50": 50, "resnet101": 101}


class MultiScaleRoIExtractor(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` with the pooling op switchable to RoIPool and RoIAlign's
    ``aligned`` exposed. Same FPN level mapping and scale inference (its helpers are reused);
    with ``roi_layer="RoIAlign", aligned=False`` the output equals ``MultiScaleRoIAlign``'s
    (tested). A subclass, because torchvision's Mask R-CNN accepts only that type."""

    def __init__(self, featmap_names: list[str], output_size: int, roi_layer: RoILayer = "RoIAlign",
                 sampling_ratio: int = 2, aligned: bool = False, roi_aggregation: str | None = None) -> None:
        if roi_layer not in ROI_LAYERS:
            raise ValueError(f"roi_layer must be one of {ROI_LAYERS}, got {roi_layer!r}")
        aggregation = roi_aggregation or AGGREGATIONS[roi_layer]
        if aggregation not in ("avg", "max"):
            raise ValueError(f"roi_aggregation must be 'avg', 'max' or None, got {roi_aggregation!r}")
        if roi_layer == "RoIPool" and aggregation != "max":
            raise ValueError("RoIPool max-pools whole cells; roi_aggregation='avg' applies to RoIAlign and RoIWarp")
        if aligned and roi_layer != "RoIAlign":
            raise ValueError(f"aligned=True is Detectron2's RoIAlign correction; {roi_layer} has none")
        if aggregation == "max" and roi_layer != "RoIPool" and sampling_ratio < 1:
            raise ValueError("roi_aggregation='max' needs sampling_ratio >= 1 (0 is adaptive per box)")
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.roi_layer, self.aligned, self.aggregation = roi_layer, aligned, aggregation

    def pool(self, feature: torch.Tensor, rois: torch.Tensor, scale: float) -> torch.Tensor:
        if self.roi_layer == "RoIPool":
            return roi_pool(feature, rois, self.output_size, scale)
        if self.roi_layer == "RoIWarp":
            rois = quantise_rois(rois, scale)
        if self.aggregation == "max":
            return roi_align_max(feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned)
        return roi_align(feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned)

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        if len(features) == 1:
            return self.pool(features[0], rois, self.scales[0])
        levels = self.map_levels(boxes)
        first = features[0]
        result = first.new_zeros((len(rois), first.shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            idx = torch.where(levels == level)[0]
            result[idx] = self.pool(feature, rois[idx], scale).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(featmap_names={self.featmap_names}, output_size="
                f"{self.output_size}, roi_layer={self.roi_layer!r}, sampling_ratio="
                f"{self.sampling_ratio}, aligned={self.aligned}, aggregation={self.aggregation!r})")


class ResNetFPN(nn.Module):
    """ResNet stages C2..C5 → FPN P2..P5 plus P6 (max-pooled P5, for the RPN only), returned as
    ``{"0", "1", "2", "3", "pool"}`` like torchvision's ``BackboneWithFPN``."""

    def __init__(self, body: ResNetBackbone, out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.channels.values()), out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # torchvision's level names "0".."3" for C2..C5 (layer1..layer4)
        feats = self.body(x).values()
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` by a ``FrozenBatchNorm2d`` holding its statistics and affine
    parameters (Detectron / torchvision with ImageNet weights: batches of 2 images per GPU are
    too small for batch statistics)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def _freeze_stages(body: ResNetBackbone, trainable_layers: int) -> None:
    """Keep only the last ``trainable_layers`` of (stem, layer1..layer4) trainable (torchvision's
    ``trainable_backbone_layers``; Detectron freezes stem and res2, i.e. 3)."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    stem = nn.ModuleList([body.conv1, body.bn1])
    parts = [stem, body.layer1, body.layer2, body.layer3, body.layer4]
    for part in parts[: 5 - trainable_layers]:
        part.requires_grad_(False)


def mask_rcnn(
    num_classes: int,
    roi_layer: RoILayer = "RoIAlign",
    sampling_ratio: int = 2,
    aligned: bool = False,
    roi_aggregation: str | None = None,
    backbone: str = "resnet50",
    pretrained: PretrainedArg = False,
    width: float = 1.0,
    frozen_bn: bool | None = None,
    trainable_layers: int | None = None,
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
    min_size: int = 800,
    max_size: int = 1333,
    **maskrcnn_kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN, ResNet-FPN backbone, ``roi_layer`` for both heads; see the module docstring.

    ``num_classes`` includes the background (COCO 81, VOC 21). In training mode the model takes
    ``(images, targets)`` and returns torchvision's loss dict; in eval mode it returns one dict
    of ``boxes``, ``labels``, ``scores``, ``masks`` (N×1×H×W probabilities) per image.
    """
    if backbone not in _DEPTHS:
        raise ValueError(f"backbone must be one of {sorted(_DEPTHS)}, got {backbone!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
    if sampling_ratio < 0:
        raise ValueError(f"sampling_ratio must be >= 0 (0 = adaptive), got {sampling_ratio}")
    if len(anchor_sizes) != 5:
        raise ValueError(f"anchor_sizes needs one size per level P2..P6, got {anchor_sizes}")
    is_trained = pretrained not in (False, None)
    body = dilated_resnet(depth=_DEPTHS[backbone], output_stride=32, width=width,
                          pretrained=pretrained)
    if frozen_bn if frozen_bn is not None else is_trained:
        freeze_batchnorm(body)
    if trainable_layers is None:
        trainable_layers = 3 if is_trained else 5
    _freeze_stages(body, trainable_layers)
    fpn_channels = scale_channels(256, width)
    features = ResNetFPN(body, fpn_channels)

    def extractor(size: int) -> MultiScaleRoIExtractor:
        levels = ["0", "1", "2", "3"]  # P2..P5; P6 ("pool") feeds the RPN only
        return MultiScaleRoIExtractor(levels, size, roi_layer, sampling_ratio, aligned, roi_aggregation)

    representation = scale_channels(1024, width)
    mask_channels = scale_channels(256, width)
    anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
    return MaskRCNN(
        features,
        num_classes=None,  # given by the predictors below
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        box_roi_pool=extractor(7),
        box_head=TwoMLPHead(fpn_channels * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, num_classes),
        mask_roi_pool=extractor(14),
        mask_head=MaskRCNNHeads(fpn_channels, (mask_channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes),
        **maskrcnn_kwargs,
    )
