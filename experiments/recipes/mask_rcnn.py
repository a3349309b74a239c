"""Mask R-CNN (He et al., ICCV 2017) Sec. 3.1 "Training", adapted to VOC's size.

- 16 images per batch (8 GPUs x 2), lr 0.02, momentum 0.9, weight decay 1e-4, lr / 10 at
  120k of 160k iterations on COCO; ImageNet backbone with frozen BatchNorm.
- 500 linear warm-up iterations as Detectron's configs.
"""

from experiments.recipe import Data, Optim, Recipe, Trainer

PAPER = Recipe(
    data=Data(global_batch=16, val_batch_size=1, augment="flip"),
    optim=Optim(optimizer="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4, lr_schedule="step",
                lr_steps=(6750,), lr_gamma=0.1, warmup_steps=500, bn="frozen"),
    trainer=Trainer(max_steps=9000, val_every=3000),
    model={"frozen_bn": True},   # the model freezes BN itself (torchvision's FrozenBatchNorm2d)
    notes=(
        "data: VOC (about 1/80 of COCO's images): 9,000 iterations with the step at the same 3/4 "
        "(ours), short side 800 as the paper",
        "model: ResNet-50-FPN (the paper's final model, Table 3); Table 2c used ResNet-50-C4",
    ),
)

# The README's Recipes table: the paper's value of each card item and where it is written.
from experiments.recipe import Source  # noqa: E402

SOURCES = {
    "global_batch": Source(16, "Sec. 3.1 'Training': 8 GPUs x 2 images"),
    "optimizer": Source("sgd", "Sec. 3.1"),
    "lr": Source(0.02, "Sec. 3.1 'learning rate of 0.02'"),
    "momentum": Source(0.9, "Sec. 3.1"),
    "weight_decay": Source(1e-4, "Sec. 3.1"),
    "max_steps": Source(160000, "Sec. 3.1: 160k iterations on COCO"),
    "lr_schedule": Source("step", "Sec. 3.1: lr / 10 at 120k iterations"),
    "warmup_steps": Source(500, "Detectron configs WARM_UP_ITERS: 500"),
    "bn": Source("frozen", "Sec. 3.1 / Detectron: frozen BatchNorm of the ImageNet backbone"),
    "pretrained": Source(True, "Sec. 3.1: ImageNet-pretrained ResNet-50"),
}
