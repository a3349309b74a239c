"""PSPNet (Zhao et al., CVPR 2017) Sec. 4.1 and hszhao/semseg ``config/ade20k/ade20k_pspnet50.yaml``.

- "poly" learning rate, base 0.01, power 0.9, 10x for the head; momentum 0.9, weight decay 1e-4.
- 150K iterations on ADE20K, batch 16 with BatchNorm synchronised over the GPUs.
- Auxiliary loss weight 0.4 (Table 2).
- Random mirror, resize 0.5-2.0, rotation -10..10 degrees, Gaussian blur; crop 473.
- Evaluation: hszhao/semseg ``tool/test.py`` (``eval.mode="semseg"``, lightning_modules/inference.py):
  the long side resized to ``base_size: 512``, 473x473 windows at stride ceil(2/3 x 473) = 316,
  each averaged with its flip, scores resized back; ``scales: [1.0]`` (Table 1 is single scale).
  Their "ms" row, scales [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] of 512 (PSPNet "+MS"), is
  ``--eval-mode semseg_ms`` or the recipe change ``MS_EVAL``.
"""

from experiments.recipe import Data, Eval, Optim, Recipe, Source, Trainer
from lightning_modules.inference import SEMSEG_BASE_SIZE, SEMSEG_MS_SCALES, SEMSEG_WINDOW

PAPER = Recipe(
    data=Data(crop_size=473, global_batch=16, scale_range=(0.5, 2.0), augment="pspnet"),
    optim=Optim(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, lr_schedule="poly", poly_power=0.9,
                head_lr_mult=10.0, aux_weight=0.4),
    # hszhao/semseg does not validate while training (evaluate: False) and tests once at the end;
    # each validation here is that whole test (2,000 images, sliding windows, flips): every 15K
    # steps (10 in all, the last one the evaluation) instead of the default 2K (75)
    trainer=Trainer(max_steps=150000, val_every=15000),
    eval=Eval(mode="semseg", base_size=SEMSEG_BASE_SIZE, window=SEMSEG_WINDOW, flip=True),
    notes=(
        "pretrained: timm's resnet50s.gluon_in1k deep-stem weights, not the authors' resnet50_v2.pth",
    ),
)
MS_EVAL = {"eval": {"mode": "semseg", "scales": SEMSEG_MS_SCALES, "flip": True}}   # PSPNet "+MS"

_YAML = "hszhao/semseg config/ade20k/ade20k_pspnet50.yaml"
SOURCES = {
    "train_split": Source("training", "Sec. 4.2: ADE20K train, 20,210 images"),
    "val_split": Source("validation", "Sec. 4.2: ADE20K val, 2,000 images"),
    "crop_size": Source(473, f"{_YAML} train_h/train_w: 473"),
    "global_batch": Source(16, f"Sec. 4.1 'batchsize 16'; {_YAML} batch_size: 16"),
    "max_steps": Source(150000, "Sec. 4.1: 150K iterations on ADE20K"),
    "optimizer": Source("sgd", f"{_YAML}"),
    "lr": Source(0.01, f"Sec. 4.1 'base learning rate 0.01'; {_YAML} base_lr"),
    "momentum": Source(0.9, "Sec. 4.1"),
    "weight_decay": Source(1e-4, "Sec. 4.1"),
    "lr_schedule": Source("poly", "Sec. 4.1"),
    "poly_power": Source(0.9, "Sec. 4.1"),
    "head_lr_mult": Source(10.0, "hszhao/semseg tool/train.py (10x for the PPM, head and aux head)"),
    "bn": Source("sync", f"Sec. 4.1; {_YAML} sync_bn: True (statistics over the global batch of 16; "
                 "on one device BN already sees the whole batch)", lambda bn: bn in ("sync", "trained")),
    "aux_weight": Source(0.4, f"Table 2; {_YAML} aux_weight: 0.4"),
    "augment.flip": Source(True, "Sec. 4.1 'random mirror'"),
    "augment.scale_range": Source([0.5, 2.0], f"Sec. 4.1 'random resize between 0.5 and 2'; {_YAML}"),
    "augment.rotate": Source("±10° (p=0.5)", f"Sec. 4.1; {_YAML} rotate_min/max: -10/10"),
    "augment.blur": Source("Gaussian 5×5, σ=1.1 (p=0.5)", "Sec. 4.1 'Gaussian blur'; hszhao/semseg tool/train.py"),
    "eval.protocol": Source("semseg long side 512, 473 windows stride 316 + flip",
                            "hszhao/semseg tool/test.py; config TEST base_size 512, test_h/w 473, scales [1.0]"),
    "pretrained": Source("resnet50_v2.pth", "hszhao/semseg initmodel/resnet50_v2.pth (deep-stem ResNet-50)"),
}
