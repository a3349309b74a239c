"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) Sec. 3.

- SGD with momentum 0.99, one large tile per batch (572x572 input, 388x388 output).
- Pixel-wise loss weights from Eq. 2 (w0 = 10, sigma = 5 px): ``optim.border_weight``.
- No ImageNet encoder: trained from scratch.
"""

from experiments.recipe import Data, Eval, Optim, Recipe, Trainer

PAPER = Recipe(
    data=Data(crop_size=388, global_batch=1, augment="flip"),
    optim=Optim(optimizer="sgd", lr=0.01, momentum=0.99, lr_schedule="poly", poly_power=0.9, border_weight=True),
    trainer=Trainer(max_steps=20000),
    eval=Eval(mode="whole"),
    pretrained=False,
    notes=(
        "lr, schedule and max_steps are ours: the paper gives none",
        "augment: flips only; the paper uses shifts, rotations, grey-value changes and elastic "
        "deformations, and drop-out at the end of the contracting path",
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
                           "Sec. 3.1 'Data Augmentation'", lambda name: False),
    "pretrained": Source(False, "Sec. 3: trained from scratch"),
}
