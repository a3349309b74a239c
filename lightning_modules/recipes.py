"""Each paper's training recipe as a thin subclass of :class:`SegmentationModule`.

Only the defaults differ; every value stays an argument (so the ``paper`` and ``smoke`` presets
of the experiment runner, or a user, can override it) and is recorded in the hyperparameters.

=================  =====================================================================
FCN                Long et al. CVPR'15 Sec. 4.3: SGD momentum 0.9, fixed lr 1e-4 (batch 20),
                   weight decay 5e-4, doubled learning rate for biases, no schedule.
DeepLab v1/v2      DeepLab v2 TPAMI'17 Sec. 4.1 (VGG-16): "poly" power 0.9, base lr 1e-3 with
                   10× for the newly added classifier/ASPP layers (DeepLab v1 Sec. 4.1),
                   momentum 0.9, weight decay 5e-4, Caffe's 2× bias lr.
DeepLab v3 / v3+   DeepLab v3 Sec. 4.1: poly 0.9, lr 0.007 (batch 16, OS 16), weight decay 1e-4
                   (the reference ResNet setting), BN trained; ``bn="frozen"`` for the OS 8
                   fine-tuning stage of Table 6.
PSPNet             PSPNet Sec. 4.1 / hszhao semseg: poly 0.9, base lr 0.01 with 10× for the
                   head, momentum 0.9, weight decay 1e-4, auxiliary loss weight 0.4 (Table 2).
U-Net              Ronneberger et al. Sec. 3: SGD momentum 0.99, pixel-wise border weight map
                   (Eq. 2); the paper gives no learning rate: 0.01 with poly decay here.
=================  =====================================================================
"""

from __future__ import annotations

from lightning_modules.segmentation import SegmentationModule


class FCNModule(SegmentationModule):
    def __init__(self, model, num_classes: int, lr: float = 1e-4, weight_decay: float = 5e-4,
                 lr_schedule: str = "constant", bias_lr_mult: float = 2.0, **kwargs) -> None:
        super().__init__(model, num_classes, lr=lr, weight_decay=weight_decay, lr_schedule=lr_schedule,
                         bias_lr_mult=bias_lr_mult, **kwargs)


class DeepLabModule(SegmentationModule):
    def __init__(self, model, num_classes: int, lr: float = 1e-3, weight_decay: float = 5e-4,
                 head_lr_mult: float = 10.0, bias_lr_mult: float = 2.0, **kwargs) -> None:
        super().__init__(model, num_classes, lr=lr, weight_decay=weight_decay, head_lr_mult=head_lr_mult,
                         bias_lr_mult=bias_lr_mult, **kwargs)


class DeepLabV3Module(SegmentationModule):
    def __init__(self, model, num_classes: int, lr: float = 0.007, weight_decay: float = 1e-4,
                 **kwargs) -> None:
        super().__init__(model, num_classes, lr=lr, weight_decay=weight_decay, **kwargs)


class PSPNetModule(SegmentationModule):
    def __init__(self, model, num_classes: int, lr: float = 0.01, weight_decay: float = 1e-4,
                 head_lr_mult: float = 10.0, aux_weight: float = 0.4, **kwargs) -> None:
        super().__init__(model, num_classes, lr=lr, weight_decay=weight_decay, head_lr_mult=head_lr_mult,
                         aux_weight=aux_weight, **kwargs)


class UNetModule(SegmentationModule):
    def __init__(self, model, num_classes: int, lr: float = 0.01, momentum: float = 0.99,
                 border_weight: bool = True, **kwargs) -> None:
        super().__init__(model, num_classes, lr=lr, momentum=momentum, border_weight=border_weight, **kwargs)


# model name (models.available_models()) -> the recipe that trains it
RECIPES: dict[str, type[SegmentationModule]] = {
    "fcn32s": FCNModule,
    "fcn16s": FCNModule,
    "fcn8s": FCNModule,
    "deeplab_largefov": DeepLabModule,
    "deeplab_v2": DeepLabModule,
    "deeplab_v3": DeepLabV3Module,
    "deeplab_v3plus": DeepLabV3Module,
    "pspnet": PSPNetModule,
    "unet": UNetModule,
}
