"""DeepLab v1 (Chen et al., ICLR 2015) / v2 (TPAMI 2017): VGG-16 LargeFOV and ASPP, ResNet-101.

VGG-16 (v2 Sec. 4.1, v1 Sec. 4.1 and the released prototxts):
- SGD, momentum 0.9, weight decay 5e-4, minibatch 10 (v2 Table 2's best: batch 10, 20K iterations).
- "poly" learning rate, power 0.9, base 1e-3, 10x for the new layers, 2x for biases (Caffe lr_mult).
- 321x321 crops; test images padded to 513x513.
ResNet-101 (v2 Sec. 4.1/4.2; kazuto1011/deeplab-pytorch ``configs/voc12.yaml`` and ``main.py``):
- base lr 2.5e-4 (10x classifier), BatchNorm frozen, batch 10 (5 x iter_size 2), 20K iterations.
- Multi-scale inputs (MSC) at 1, 0.75, 0.5, max-fused, with a loss on each scale and on the fusion.
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

# Table 4 rows (ResNet-101): kazuto1011/deeplab-pytorch's reproduction of the reference, with
# multi-scale inputs (MSC, v2 Sec. 4.1: scales 1, 0.75, 0.5, max fusion; models/msc.py) in
# training and evaluation; the loss is summed over each scale and the fusion at stride 8.
MSC_SCALES = (1.0, 0.75, 0.5)
RESNET101 = {"optim": {"lr": 2.5e-4, "bn": "frozen"}, "model": {"msc_scales": MSC_SCALES}}
NEEDS_COCO = "needs MS-COCO pre-training (Table 4: MSC + COCO + Aug), which this recipe does not have"
RESNET101_NOTES = (
    "Table 4's LargeFOV/ASPP numbers include MS-COCO pre-training (kazuto1011 starts from a "
    "COCO-trained DeepLab v1 ResNet-101; here timm's ImageNet weights): the table shows them without a Δ",
    "loss (MSC rows): summed over the three scales and the fusion at stride 8 on shrunk labels, as the "
    "reference; the 'loss' note above concerns the single-scale rows",
)

# The dense CRF (v2 Sec. 3.3): kazuto1011's parameters (lightning_modules.crf.CRFParams).
CRF = dataclasses.replace(
    PAPER, eval=dataclasses.replace(PAPER.eval, crf=dataclasses.asdict(CRFParams())),
    notes=PAPER.notes + ("crf: the ResNet-101 parameters for every model; the paper "
                         "cross-validated them per model on held-out val images",),
)
