"""DeepLab v1 (Chen et al., ICLR 2015) / v2 (TPAMI 2017): VGG-16 LargeFOV and ASPP, ResNet-101.

VGG-16 (v2 Sec. 4.1, v1 Sec. 4.1 and the released prototxts):
- SGD, momentum 0.9, weight decay 5e-4, minibatch 10 (v2 Table 2's best: batch 10, 20K iterations).
- "poly" learning rate, power 0.9, base 1e-3, 10x for the new layers, 2x for biases (Caffe lr_mult).
- 321x321 crops; test images padded to 513x513.
ResNet-101 (v2 Sec. 4.1/4.2; kazuto1011/deeplab-pytorch ``configs/voc12.yaml`` and ``main.py``):
- base lr 2.5e-4 (10x classifier), BatchNorm frozen, batch 10 (5 x iter_size 2), 20K iterations.
"""

import dataclasses

from experiments.recipe import Data, Eval, Optim, Recipe, Trainer
from lightning_modules.crf import CRFParams

PAPER = Recipe(
    data=Data(crop_size=321, global_batch=10, scale_range=(0.5, 1.5), augment="deeplab"),
    optim=Optim(optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4, lr_schedule="poly", poly_power=0.9,
                head_lr_mult=10.0, bias_lr_mult=2.0),
    trainer=Trainer(max_steps=20000),
    eval=Eval(mode="whole", pad_to=513),
    notes=(
        "head_lr_mult: 10x for fc6, fc7 and fc8 here; the VGG prototxts give 10x to fc8 only "
        "(fc6/fc7 come from VGG's fc layers)",
        "augment: random scaling 0.5-1.5 + mirror + 321 crop; the VGG prototxts mirror and crop only",
        "loss: computed on logits upsampled to the label size; the reference computes it at "
        "stride 8 on shrunk labels",
    ),
)

# Table 4 rows (ResNet-101): kazuto1011/deeplab-pytorch's reproduction of the reference.
RESNET101 = {"optim": {"lr": 2.5e-4, "bn": "frozen"}}
RESNET101_NOTES = (
    "Table 4's numbers include multi-scale-input training (MSC) and MS-COCO pre-training, "
    "which this recipe does not have",
)

# The dense CRF (v2 Sec. 3.3): kazuto1011's parameters (lightning_modules.crf.CRFParams).
CRF = dataclasses.replace(
    PAPER, eval=dataclasses.replace(PAPER.eval, crf=dataclasses.asdict(CRFParams())),
    notes=PAPER.notes + ("crf: the ResNet-101 parameters for every model; the paper "
                         "cross-validated them per model on held-out val images",),
)

# DeepLab v1 (ICLR'15) Sec. 4.1, for its Table 2 (fc6 kernel, input stride, width):
# "mini-batch of 20 images and initial learning rate of 0.001 (0.01 for the final classifier
# layer), multiplying the learning rate by 0.1 at every 2000 iterations ... momentum of 0.9 and
# a weight decay of 0.0005"; 321 crops with mirroring (the released prototxts); the table is
# evaluated after the dense CRF, whose before-CRF column v2 Table 1 reports.
V1 = Recipe(
    data=Data(crop_size=321, global_batch=20, scale_range=(1.0, 1.0), augment="deeplab"),
    optim=Optim(optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4, lr_schedule="step",
                lr_steps=(2000, 4000), lr_gamma=0.1, head_lr_mult=10.0, bias_lr_mult=2.0),
    trainer=Trainer(max_steps=6000),
    eval=Eval(mode="whole", pad_to=513, crf=dataclasses.asdict(CRFParams())),
    notes=(
        PAPER.notes[0], PAPER.notes[2],
        "max_steps: 6,000 (three steps of 2,000), as v2 Table 2's 'step' row of this model; v1 "
        "does not give the iteration count, and v2 Table 2 gives that row batch 30, v1's text 20",
        "crf: the v2 ResNet-101 parameters for every model; v1 cross-validated them per model",
    ),
)
