"""DeepLab v3 (Chen et al., 2017) Sec. 4 and DeepLab v3+ (Chen et al., ECCV 2018) Sec. 4.

- "poly" learning rate, power 0.9, base 0.007 at output stride 16, 30K iterations (v3 Sec. 4.1).
- Crop 513, batch 16, BatchNorm trained (v3 Sec. 4.1: "crop size 513 ... batch size 16").
- Random scaling 0.5-2.0 and left-right flips (v3 Sec. 4.1).
- Weight decay 1e-4 (tensorflow/models research/deeplab ``train.py`` default for ResNet).
- Test images padded to 513x513 (the official ``eval.py`` ``eval_crop_size``).
"""

from experiments.recipe import Data, Eval, Optim, Recipe, Trainer

PAPER = Recipe(
    data=Data(crop_size=513, global_batch=16, scale_range=(0.5, 2.0), augment="deeplab"),
    optim=Optim(optimizer="sgd", lr=0.007, momentum=0.9, weight_decay=1e-4, lr_schedule="poly", poly_power=0.9),
    trainer=Trainer(max_steps=30000),
    eval=Eval(mode="whole", pad_to=513),
    model={"backbone": "resnet101"},
    notes=(
        "bn: PyTorch's BatchNorm momentum 0.1; the official code uses decay 0.9997",
        "augment: continuous scale factors in 0.5-2.0; the official code draws them in steps of 0.25",
        "schedule: the single OS-16 stage; the paper's Table 6 rows fine-tune at OS 8 with frozen "
        "BN on trainval afterwards",
    ),
)
