"""DeepLab v3 (Chen et al., 2017) Sec. 4 and DeepLab v3+ (Chen et al., ECCV 2018) Sec. 4.

- "poly" learning rate, power 0.9, base 0.007 at output stride 16, 30K iterations (v3 Sec. 4.1).
- Crop 513, batch 16, BatchNorm trained (v3 Sec. 4.1: "crop size 513 ... batch size 16").
- BatchNorm decay 0.9997 (tensorflow/models research/deeplab ``model.py`` ``batch_norm_params``),
  i.e. PyTorch momentum 1 - 0.9997 = 0.0003.
- Random scaling 0.5-2.0 and left-right flips (v3 Sec. 4.1), the factor drawn from the grid
  0.5:0.25:2.0 (official ``train.py`` flags ``min_scale_factor=0.5``, ``max_scale_factor=2.0``,
  ``scale_factor_step_size=0.25``; ``core/preprocess_utils.py`` ``get_random_scale``).
- Weight decay 1e-4 for ResNet-101 (not given in the papers: ours); 4e-5 for Xception-65 (the
  official ``train.py`` default, ``weight_decay=0.00004``, that its Xception commands use): set
  by the v3+ Xception variants.
- Test images padded to 513x513 (the official ``eval.py`` ``eval_crop_size``); "+MS +Flip" is
  ``--eval-mode ms_flip`` (scales 0.5:0.25:1.75 and flips, v3 Sec. 4.3 / v3+ Sec. 4).
"""

from experiments.recipe import Data, Eval, Optim, Recipe, Source, Trainer

PAPER = Recipe(
    data=Data(crop_size=513, global_batch=16, scale_range=(0.5, 2.0), scale_step=0.25, augment="deeplab"),
    optim=Optim(optimizer="sgd", lr=0.007, momentum=0.9, weight_decay=1e-4, lr_schedule="poly", poly_power=0.9,
                bn_momentum=0.0003),
    trainer=Trainer(max_steps=30000),
    eval=Eval(mode="whole", pad_to=513),
    model={"backbone": "resnet101"},
    notes=(
        "schedule: the single OS-16 stage on train_aug, which the val tables use (their 'eval OS 8' rows "
        "evaluate it at OS 8: v3 Sec. 4.3, v3+ Table 3); the paper's test-server model then freezes BN "
        "and trains 30K more at OS 8 on trainval (v3 Sec. 4.1), not done here",
    ),
)
XCEPTION = {"optim": {"weight_decay": 4e-5}}   # v3+ Xception-65 rows

_TF = "tensorflow/models research/deeplab"
SOURCES = {
    "train_split": Source("train_aug", "v3 Sec. 4: VOC 2012 + SBD annotations, 10,582 images"),
    "val_split": Source("val", "v3 Sec. 4: VOC 2012 val"),
    "crop_size": Source(513, "v3 Sec. 4.1 'crop size 513'"),
    "global_batch": Source(16, "v3 Sec. 4.1 'batch size 16'"),
    "max_steps": Source(30000, "v3 Sec. 4.1 (30K iterations at OS 16)"),
    "optimizer": Source("sgd", f"{_TF} train.py (momentum optimizer)"),
    "lr": Source(0.007, "v3 Sec. 4.1 'initial learning rate 0.007'"),
    "momentum": Source(0.9, f"{_TF} train.py momentum=0.9"),
    "weight_decay": Source(None, "not given in v3/v3+ for ResNet-101 (ours: 1e-4, ImageNet ResNet's); "
                                 f"{_TF} train.py's default 4e-5 is its Xception/MobileNet value"),
    "lr_schedule": Source("poly", "v3 Sec. 4.1"),
    "poly_power": Source(0.9, "v3 Sec. 4.1"),
    "bn": Source("trained", "v3 Sec. 4.1 (BN fine-tuned at OS 16, batch 16)"),
    "bn_momentum": Source(0.0003, f"{_TF} model.py batch_norm_params decay 0.9997"),
    "augment.flip": Source(True, "v3 Sec. 4.1 'randomly left-right flipping'"),
    "augment.scale_range": Source([0.5, 2.0], "v3 Sec. 4.1 'randomly scaling ... from 0.5 to 2.0'"),
    "augment.scale_step": Source(0.25, f"{_TF} train.py scale_factor_step_size=0.25"),
    "eval.protocol": Source("whole pad 513", f"{_TF} eval.py eval_crop_size 513 (single scale rows)"),
    "pretrained": Source(True, "v3 Sec. 4: ImageNet-pretrained ResNet-101"),
}
XCEPTION_SOURCES = {
    "weight_decay": Source(4e-5, f"{_TF} train.py weight_decay=0.00004 (the Xception-65 commands)"),
}
