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
