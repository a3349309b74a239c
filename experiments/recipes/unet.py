"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) Sec. 3 and 3.1.

- SGD with momentum 0.99, one large tile per batch (572x572 input, 388x388 output).
- Pixel-wise loss weights from Eq. 2 (w0 = 10, sigma = 5 px): ``optim.border_weight``.
- Data augmentation (Sec. 3.1): shifts, rotations, grey-value variations and elastic
  deformations (random displacements on a coarse 3x3 grid, sigma 10 px, bicubic per-pixel
  displacements): ``data.augment="unet"`` (``datamodules/transforms.py``).
- "Drop-out layers at the end of the contracting path" (Sec. 3.1): ``model.dropout``.
- No ImageNet encoder: trained from scratch.
"""

from experiments.recipe import Data, Eval, Optim, Recipe, Trainer

PAPER = Recipe(
    data=Data(crop_size=388, global_batch=1, augment="unet"),
    optim=Optim(optimizer="sgd", lr=0.01, momentum=0.99, lr_schedule="poly", poly_power=0.9, border_weight=True),
    trainer=Trainer(max_steps=20000),
    eval=Eval(mode="whole"),
    model={"dropout": 0.5},
    pretrained=False,
    notes=(
        "lr, schedule and max_steps are ours: the paper gives none",
        "augment: the rotation range (±15°) and grey-value factors (brightness and contrast ×0.8-1.2) "
        "are ours, the paper names the transformations without ranges; the deformation's 3x3 grid and "
        "σ = 10 px are the paper's",
        "dropout: 0.5 on the deepest encoder level and after the bottleneck (zhixuhao/unet's layout); "
        "the paper gives neither rate nor position beyond 'at the end of the contracting path'",
    ),
)

# The README's Recipes table: the paper's value of each card item and where it is written.
from experiments.recipe import Source  # noqa: E402

SOURCES = {
    "crop_size": Source(388, "Sec. 3: 572x572 input tiles, 388x388 output"),
    "global_batch": Source(1, "Sec. 3 'we use a batch size of a single image'"),
    "optimizer": Source("sgd", "Sec. 3: stochastic gradient descent (Caffe)"),
    "momentum": Source(0.99, "Sec. 3 'high momentum (0.99)'"),
    "lr": Source(None, "not given"),
    "max_steps": Source(None, "not given"),
    "border_weight": Source(True, "Sec. 3, Eq. 2 (w0 = 10, sigma = 5 px)"),
    "augment.name": Source("shift, rotation, grey value, elastic deformation",
                           "Sec. 3.1 'Data Augmentation' (datamodules.transforms augment='unet')",
                           lambda name: name == "unet"),
    "pretrained": Source(False, "Sec. 3: trained from scratch"),
}
