"""Backbones: VGG16 (written here, with timm-compatible weight names), dilated ResNet and aligned
Xception-65 (from timm). Pretrained ImageNet weights come from timm; see ``models.pretrained``.

Every backbone's ``forward`` returns an ordered ``dict`` of named features, shallow to deep, and
declares the same names in ``channels`` (widths) and ``stage_strides`` (strides w.r.t. the input):

- :class:`~models.backbones.vgg.VGG16`: ``pool3``, ``pool4``, ``pool5`` (+ ``fc7``);
- :class:`~models.backbones.resnet.ResNetBackbone`: ``layer1`` … ``layer4``;
- :class:`~models.backbones.xception.XceptionBackbone`: ``low_level``, ``entry``, ``middle``, ``exit``.

A head that serves one backbone names its features; one that serves several asks
:func:`deepest_stage` for the feature at the stride its paper describes.
"""

from __future__ import annotations

from torch import nn


def deepest_stage(backbone: nn.Module, stride: int) -> str:
    """Name of ``backbone``'s deepest feature at ``stride`` (e.g. 4: the v3+ decoder's low-level
    feature; ``backbone.output_stride``: the last stage)."""
    names = [name for name, s in backbone.stage_strides.items() if s == stride]
    if not names:
        raise ValueError(f"{type(backbone).__name__} has no feature at stride {stride}: "
                         f"{backbone.stage_strides}")
    return names[-1]
