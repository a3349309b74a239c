"""Model zoo: plain ``nn.Module`` segmentation architectures written from their papers.

Nothing in this package imports Lightning. ``build_model(name, num_classes, **kwargs)`` is the
one entry point the training code and the experiment scripts use; the keyword arguments are the
papers' knobs (``atrous_rates``, ``bins``, ``pooling``, ``reduction``, ``output_stride``,
``multi_grid``, ``low_level_channels``, ...) plus the common ``backbone``, ``pretrained`` and
``width``. Every model's ``forward(x)`` returns ``{"out": logits at x's H x W}`` and, where the
paper has an auxiliary head, ``"aux"``. Mask R-CNN is the exception: torchvision's detection
interface (losses in training, per-image detections in eval).

Every semantic model declares what the training code needs to know, so that no table keyed by
model name has to mirror this package: ``backbone``, the ImageNet-pretrained part (``None`` for
U-Net, trained from scratch), and ``has_aux_head``, True exactly when ``forward`` also returns
``"aux"`` (PSPNet with ``aux=True``). A model whose ImageNet-initialised layers reach beyond
``backbone`` says so with a ``pretrained_modules()`` method (DeepLab's VGG16 heads: fc6/fc7
start from VGG's fc layers, only fc8 is new); :func:`pretrained_modules` reads either
declaration and :func:`new_layers` names the rest, the layers that get the head learning rate.

A plain dict maps names to builders (no string registry decorators, no config inheritance), so
"go to definition" on any entry lands on the paper-faithful code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from models.deeplab import DeepLabLargeFOV, DeepLabV2
from models.deeplab_v3 import DeepLabV3, DeepLabV3Plus
from models.deeplab_v3_cascade import DeepLabV3Cascade
from models.fcn import fcn8s, fcn16s, fcn32s
from models.mask_rcnn import mask_rcnn
from models.pspnet import PSPNet
from models.unet import UNet

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "fcn32s": fcn32s,
    "fcn16s": fcn16s,
    "fcn8s": fcn8s,
    "deeplab_largefov": DeepLabLargeFOV,
    "deeplab_v2": DeepLabV2,
    "deeplab_v3": DeepLabV3,
    "deeplab_v3plus": DeepLabV3Plus,
    "deeplab_v3_cascade": DeepLabV3Cascade,
    "pspnet": PSPNet,
    "unet": UNet,
    "mask_rcnn": mask_rcnn,
}


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(_BUILDERS)


def builder(name: str) -> Callable[..., nn.Module]:
    """The function or class that :func:`build_model` calls for ``name``."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of {available_models()}")
    return _BUILDERS[name]


def builder_parameters(name: str) -> list[str]:
    """The keyword arguments model ``name`` is documented to take (``num_classes`` aside)."""
    params = inspect.signature(builder(name)).parameters
    return [n for n, p in params.items() if n != "num_classes" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def builder_accepts(name: str, kwarg: str) -> bool:
    """Whether ``kwarg`` can be passed to model ``name``; a builder that forwards ``**kwargs``
    (the FCN variants to ``FCN``, Mask R-CNN to torchvision's ``MaskRCNN``) accepts any name
    here and rejects a wrong one when it is built."""
    params = inspect.signature(builder(name)).parameters
    return kwarg in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def pretrained_modules(model: nn.Module) -> list[nn.Module]:
    """The model's ImageNet-initialised parts (whether or not weights were loaded this time):
    ``model.pretrained_modules()`` where the model declares it, else ``[model.backbone]``, or
    ``[]`` for a model trained from scratch (``backbone = None``, U-Net)."""
    declared = getattr(model, "pretrained_modules", None)
    if callable(declared):
        return list(declared())
    backbone = getattr(model, "backbone", None)
    return [backbone] if isinstance(backbone, nn.Module) else []


def pretrained_parameter_ids(model: nn.Module) -> set[int]:
    return {id(p) for m in pretrained_modules(model) for p in m.parameters()}


def new_layers(model: nn.Module) -> list[str]:
    """Qualified names of the largest submodules (or parameters) with no pretrained parameter:
    the newly initialised layers, e.g. ``["classifier.fc8"]`` for DeepLab-LargeFOV."""
    pretrained = pretrained_parameter_ids(model)

    def walk(prefix: str, module: nn.Module, top: bool = False) -> list[str]:
        ids = {id(p) for p in module.parameters()}
        if not ids or ids <= pretrained:
            return []
        if not top and not ids & pretrained:
            return [prefix]
        out = [f"{prefix}.{n}" if prefix else n for n, p in module.named_parameters(recurse=False)
               if id(p) not in pretrained]
        for name, child in module.named_children():
            out += walk(f"{prefix}.{name}" if prefix else name, child)
        return out

    return walk("", model, top=True)


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build model ``name`` with ``num_classes`` output classes and the paper's knobs as kwargs."""
    make = builder(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return make(num_classes=num_classes, **kwargs)


__all__ = ["available_models", "build_model", "builder", "builder_accepts", "builder_parameters", "new_layers",
           "pretrained_modules", "pretrained_parameter_ids"]
