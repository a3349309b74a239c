"""PSPNet (Zhao et al., CVPR 2017) Sec. 4.1 and hszhao/semseg ``config/ade20k/ade20k_pspnet50.yaml``.

- "poly" learning rate, base 0.01, power 0.9, 10x for the head; momentum 0.9, weight decay 1e-4.
- 150K iterations on ADE20K, batch 16 with BatchNorm synchronised over the GPUs.
- Auxiliary loss weight 0.4 (Table 2).
- Random mirror, resize 0.5-2.0, rotation -10..10 degrees, Gaussian blur; crop 473.
"""

from experiments.recipe import Data, Eval, Optim, Recipe, Trainer

PAPER = Recipe(
    data=Data(crop_size=473, global_batch=16, scale_range=(0.5, 2.0), augment="pspnet"),
    optim=Optim(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, lr_schedule="poly", poly_power=0.9,
                head_lr_mult=10.0, aux_weight=0.4),
    trainer=Trainer(max_steps=150000),
    eval=Eval(mode="whole"),
    notes=(
        "eval: whole image at native size; hszhao/semseg resizes the long side to 512 and "
        "averages 473x473 sliding windows (stride 2/3) with flips",
        "pretrained: timm's resnet50s.gluon_in1k deep-stem weights, not the authors' resnet50_v2.pth",
    ),
)
