"""FCN (Long, Shelhamer & Darrell, CVPR 2015), Sec. 4.3 "Optimization" and Sec. 4.1.

- SGD, momentum 0.9, minibatch 20 images, fixed learning rate 1e-4 for FCN-VGG16 (Sec. 4.3).
- Weight decay 5e-4 (Sec. 4.3: "5^-4"), doubled learning rate for biases (Sec. 4.3).
- The score layers are zero-initialised and the 2x upsampling initialised to bilinear and
  learned (Sec. 3.3, 4.2): the model's defaults (``models/fcn.py``).
"""

from experiments.recipe import Data, Eval, Optim, Recipe, Trainer

PAPER = Recipe(
    data=Data(crop_size=500, global_batch=20, scale_range=(1.0, 1.0), augment="flip"),
    optim=Optim(optimizer="sgd", lr=1e-4, momentum=0.9, weight_decay=5e-4, lr_schedule="constant",
                bias_lr_mult=2.0),
    trainer=Trainer(max_steps=20000),
    eval=Eval(mode="whole"),
    notes=(
        "data: trained on VOC train_aug (10,582) and evaluated on VOC 2012 val (1,449); the paper "
        "trains on SBD train (8,498) and evaluates on seg11valid (736 VOC 2011 images)",
        "augment: random 500x500 crops and flips; the paper trains on whole images without augmentation",
        "schedule: all nets trained at once from ImageNet weights; the paper trains stage-wise "
        "(FCN-16s from FCN-32s, FCN-8s from FCN-16s)",
        "max_steps: 20,000 is ours (the paper gives no iteration count for batch 20)",
        "model: paper_padding=False (the reference's pad-100 + crop geometry is available as a knob)",
    ),
)

# The README's Recipes table: the paper's value of each card item and where it is written.
from experiments.recipe import Source  # noqa: E402

SOURCES = {
    "train_split": Source("sbd_train", "Sec. 4.1 / footnote: SBD train (8,498 images)"),
    "val_split": Source("seg11valid", "Sec. 4.1: 736 VOC 2011 val images not in SBD train "
                                      "(shelhamer/fcn.berkeleyvision.org data/pascal/seg11valid.txt)"),
    "crop_size": Source(None, "Sec. 4.3 'Patch sampling': whole images (no crop)",
                        lambda crop: crop is None),
    "global_batch": Source(20, "Sec. 4.3 'minibatch size of 20 images'"),
    "max_steps": Source(None, "not given for batch 20"),
    "optimizer": Source("sgd", "Sec. 4.3 'SGD with momentum'"),
    "lr": Source(1e-4, "Sec. 4.3 'fixed learning rates of ... 10^-4 ... for FCN-VGG16'"),
    "momentum": Source(0.9, "Sec. 4.3"),
    "weight_decay": Source(5e-4, "Sec. 4.3 'weight decay of 5^-4 or 2^-4'"),
    "lr_schedule": Source("constant", "Sec. 4.3 (fixed learning rate)"),
    "bias_lr_mult": Source(2.0, "Sec. 4.3 'doubled learning rate for biases'"),
    "augment.flip": Source(False, "Sec. 4.3 'Augmentation': mirroring and jittering gave no improvement, not used"),
    "eval.protocol": Source("whole", "Sec. 4 (whole images)"),
    "pretrained": Source(True, "Sec. 4.1: ILSVRC-pretrained VGG-16"),
}
