"""DeepLab v1 (Chen et al., ICLR 2015) / v2 (TPAMI 2017): VGG-16 LargeFOV and ASPP, ResNet-101.

VGG-16 (v2 Sec. 4.1, v1 Sec. 4.1 and the released prototxts):
- SGD, momentum 0.9, weight decay 5e-4, minibatch 10 (v2 Table 2's best: batch 10, 20K iterations).
- "poly" learning rate, power 0.9, base 1e-3; 10x for fc8 only (fc6/fc7 start from VGG's fc
  layers at 1x; the models declare it, ``pretrained_modules()``), 2x for biases (Caffe lr_mult).
- Mirror + random 321x321 crop, no random scaling (the VGG ``train.prototxt`` ``transform_param``
  has ``mirror: true`` and ``crop_size: 321`` only; random scaling is Table 4's "+Aug" step of the
  ResNet-101 model); test images padded to 513x513 (``test.prototxt`` ``crop_size: 513``).
ResNet-101 (v2 Sec. 4.1/4.2; kazuto1011/deeplab-pytorch ``configs/voc12.yaml`` and ``main.py``):
- base lr 2.5e-4 (10x classifier), BatchNorm frozen, batch 10 (5 x iter_size 2), 20K iterations,
  random scale chosen from {0.5, 0.75, 1.0, 1.25, 1.5} (``DATASET.SCALES``, ``random.choice``
  in ``libs/datasets/base.py``) + mirror + 321 crop.
- Multi-scale inputs (MSC) at 1, 0.75, 0.5, max-fused, with a loss on each scale and on the fusion.
"""

import dataclasses

from experiments.recipe import Data, Eval, Optim, Recipe, Source, Trainer
from lightning_modules.crf import CRFParams

PAPER = Recipe(
    data=Data(crop_size=321, global_batch=10, scale_range=(1.0, 1.0), augment="flip"),
    optim=Optim(optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4, lr_schedule="poly", poly_power=0.9,
                head_lr_mult=10.0, bias_lr_mult=2.0),
    trainer=Trainer(max_steps=20000),
    eval=Eval(mode="whole", pad_to=513),
    notes=(
        "loss: computed on logits upsampled to the label size; the reference computes it at "
        "stride 8 on shrunk labels",
    ),
)


def _only_fc8(layers) -> bool:
    return bool(layers) and all(name.split(".")[-1] == "fc8" for name in layers)


_PROTOTXT = "DeepLab-LargeFOV / ASPP-L train.prototxt"
SOURCES = {
    "train_split": Source("train_aug", "v2 Sec. 4.1: VOC 2012 + SBD annotations, 10,582 images"),
    "val_split": Source("val", "v2 Sec. 4.1: VOC 2012 val, 1,449 images"),
    "crop_size": Source(321, f"v1 Sec. 4.1; {_PROTOTXT} crop_size: 321"),
    "global_batch": Source(10, "v2 Table 2 (batch 10, 20K iterations: the best row)"),
    "max_steps": Source(20000, "v2 Table 2"),
    "optimizer": Source("sgd", "v2 Sec. 4.1; solver.prototxt"),
    "lr": Source(1e-3, "v2 Sec. 4.1 / Table 2; solver.prototxt base_lr: 0.001"),
    "momentum": Source(0.9, "solver.prototxt momentum: 0.9"),
    "weight_decay": Source(5e-4, "solver.prototxt weight_decay: 0.0005"),
    "lr_schedule": Source("poly", "v2 Sec. 4.1 (poly vs step, Table 2)"),
    "poly_power": Source(0.9, "v2 Sec. 4.1"),
    "head_lr_mult": Source(10.0, f"{_PROTOTXT}: fc8 lr_mult 10 (bias 20)"),
    "head_layers": Source("fc8 only", f"{_PROTOTXT}: fc6/fc7 from VGG's fc layers at lr_mult 1", _only_fc8),
    "bias_lr_mult": Source(2.0, f"{_PROTOTXT}: bias lr_mult 2"),
    "augment.flip": Source(True, f"{_PROTOTXT} transform_param mirror: true"),
    "augment.scale_range": Source([1.0, 1.0], f"{_PROTOTXT}: no random scaling (v2 Table 4 '+Aug' "
                                              "adds it for ResNet-101 only)"),
    "eval.protocol": Source("whole pad 513", "test.prototxt crop_size: 513 (images padded to 513x513)"),
    "pretrained": Source(True, "v2 Sec. 4.1: ImageNet-pretrained VGG-16"),
}

# Table 4 rows (ResNet-101): kazuto1011/deeplab-pytorch's reproduction of the reference, with
# multi-scale inputs (MSC, v2 Sec. 4.1: scales 1, 0.75, 0.5, max fusion; models/msc.py) in
# training and evaluation; the loss is summed over each scale and the fusion at stride 8.
MSC_SCALES = (1.0, 0.75, 0.5)
RESNET101 = {"optim": {"lr": 2.5e-4, "bn": "frozen"}, "model": {"msc_scales": MSC_SCALES},
             "data": {"scale_range": (0.5, 1.5), "scale_step": 0.25, "augment": "deeplab"}}
NEEDS_COCO = "needs MS-COCO pre-training (Table 4: MSC + COCO + Aug), which this recipe does not have"
RESNET101_NOTES = (
    "Table 4's LargeFOV/ASPP numbers include MS-COCO pre-training (kazuto1011 starts from a "
    "COCO-trained DeepLab v1 ResNet-101; here timm's ImageNet weights): the table shows them without a Δ",
    "loss (MSC rows): summed over the three scales and the fusion at stride 8 on shrunk labels, as the "
    "reference; the 'loss' note above concerns the single-scale rows",
)
_KAZUTO = "kazuto1011/deeplab-pytorch configs/voc12.yaml"
RESNET101_SOURCES = {
    "lr": Source(2.5e-4, f"{_KAZUTO} SOLVER.LR"),
    "bn": Source("frozen", "kazuto1011/deeplab-pytorch main.py (BatchNorm kept in eval mode)"),
    "weight_decay": Source(5e-4, f"{_KAZUTO} SOLVER.WEIGHT_DECAY"),
    "global_batch": Source(10, f"{_KAZUTO} BATCH_SIZE.TRAIN 5 x ITER_SIZE 2"),
    "head_layers": Source("ASPP classifier convs", "v2 ResNet-101 prototxt fc1_voc12_c0..3 at lr_mult 10",
                          lambda layers: list(layers) == ["branches"]),
    "augment.flip": Source(True, "kazuto1011 libs/datasets/base.py (random flip)"),
    "augment.scale_range": Source([0.5, 1.5], f"v2 Table 4 '+Aug'; {_KAZUTO} DATASET.SCALES"),
    "augment.scale_step": Source(0.25, f"{_KAZUTO} DATASET.SCALES [0.5, 0.75, 1.0, 1.25, 1.5] "
                                       "(random.choice in libs/datasets/base.py)"),
}

# The dense CRF (v2 Sec. 3.3): kazuto1011's parameters (lightning_modules.crf.CRFParams), unless
# a cell's cross-validated ones are given (python -m experiments.crf_search; --crf-params-from).
CRF = dataclasses.replace(
    PAPER, eval=dataclasses.replace(PAPER.eval, crf=dataclasses.asdict(CRFParams())),
    notes=PAPER.notes + ("crf: kazuto1011's ResNet-101 parameters for every model unless --crf-params-from "
                         "gives a cell's cross-validated ones (python -m experiments.crf_search; card: "
                         "eval.crf_params_from); the paper cross-validated them per model",),
)

# DeepLab v1 (ICLR'15) Sec. 4.1, for its Table 2 (fc6 kernel, input stride, width):
# "mini-batch of 20 images and initial learning rate of 0.001 (0.01 for the final classifier
# layer), multiplying the learning rate by 0.1 at every 2000 iterations ... momentum of 0.9 and
# a weight decay of 0.0005"; 321 crops with mirroring (the released prototxts); the table is
# evaluated after the dense CRF, whose before-CRF column v2 Table 1 reports.
V1 = Recipe(
    data=Data(crop_size=321, global_batch=20, scale_range=(1.0, 1.0), augment="flip"),
    optim=Optim(optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4, lr_schedule="step",
                lr_steps=(2000, 4000), lr_gamma=0.1, head_lr_mult=10.0, bias_lr_mult=2.0),
    trainer=Trainer(max_steps=6000),
    eval=Eval(mode="whole", pad_to=513, crf=dataclasses.asdict(CRFParams())),
    notes=(
        *PAPER.notes,
        "max_steps: 6,000 (three steps of 2,000), as v2 Table 2's 'step' row of this model; v1 "
        "does not give the iteration count, and v2 Table 2 gives that row batch 30, v1's text 20",
        "crf: the v2 ResNet-101 parameters for every model; v1 cross-validated them per model",
    ),
)

CRF_SOURCES = {
    **SOURCES,
    "eval.crf_params_from": Source("cross-validated per model", "v1 Sec. 4.1 / v2 Sec. 4.1: coarse-to-fine "
                                   "search on 100 val images", lambda path: path is not None),
}

_V1 = "DeepLab v1 Sec. 4.1"
V1_SOURCES = {
    **SOURCES,
    "global_batch": Source(20, f"{_V1} 'mini-batch of 20 images'"),
    "lr_schedule": Source("step", f"{_V1} 'multiplying the learning rate by 0.1 at every 2000 iterations'"),
    "max_steps": Source(None, f"{_V1}: not given"),
    "eval.crf_params_from": Source("cross-validated per model", f"{_V1}: dense CRF parameters by "
                                   "cross-validation (python -m experiments.crf_search)",
                                   lambda path: path is not None),
}
