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
