"""FCN (Long, Shelhamer & Darrell, CVPR 2015), Sec. 4.2, 4.3 "Optimization" and Sec. 4.1, with
the reference code (shelhamer/fcn.berkeleyvision.org) where the paper is silent.

- Data (Sec. 4.3 "More training data", Table 2; reference ``data/pascal/README.md``): trained
  on SBD train (8,498 images, ``sbd_train``) and evaluated on ``seg11valid`` (736 VOC 2011 val
  images not in SBD train; the list ships with the reference code, ``datamodules/lists``).
- Whole images, no augmentation (Sec. 4.3 "Patch sampling": whole-image training; "Augmentation":
  random mirroring and translation jitter gave no noticeable improvement).
- SGD, momentum 0.9, minibatch 20 images, fixed learning rate 1e-4 for FCN-VGG16 (Sec. 4.3).
  The 20 whole images, of different sizes, are 20 accumulated batches of one image (``trainer.
  accumulate=20``): the reference Caffe nets feed one whole image per forward pass. (With
  ``--accumulate 1`` a batch of 20 is padded to its largest image, ``pad_collate``.)
- Weight decay 5e-4 (Sec. 4.3: "5^-4"), doubled learning rate for biases (Sec. 4.3).
- Stage-wise (Sec. 4.2): FCN-16s starts from the final FCN-32s, FCN-8s from FCN-16s
  (``init_from``, ``experiments/stages.py``), each with "the learning rate ... decreased by a
  factor of 100" (``stage_lr_factor``; the reference solvers: base_lr 1e-10, 1e-12, 1e-14).
- The score layers are zero-initialised and the 2x upsampling initialised to bilinear and
  learned (Sec. 3.3, 4.2): the model's defaults (``models/fcn.py``).
"""

from experiments.recipe import Data, Eval, Optim, Recipe, Trainer

PAPER = Recipe(
    data=Data(train_split="sbd_train", val_split="seg11valid", crop_size=None, global_batch=20,
              scale_range=(1.0, 1.0), augment="none"),
    optim=Optim(optimizer="sgd", lr=1e-4, momentum=0.9, weight_decay=5e-4, lr_schedule="constant",
                bias_lr_mult=2.0, stage_lr_factor=0.01),
    trainer=Trainer(max_steps=20000, accumulate=20),
    eval=Eval(mode="whole"),
    notes=(
        "batch: 20 whole images as 20 accumulated single-image batches (the reference feeds one whole "
        "image at a time); the loss is the mean over each image's labelled pixels, averaged over the 20 "
        "images (a padded batch of 20 would average over all pixels of the batch)",
        "max_steps: 20,000 per stage is ours (the paper gives no iteration count for batch 20; the "
        "reference trains each stage 100,000 single-image iterations at momentum 0.99 on an unnormalised "
        "loss, and the at-once net 300,000)",
        "model: paper_padding=False (the reference's pad-100 + crop geometry is available as a knob)",
    ),
)

# FCN-8s "at-once" (reference voc-fcn8s-atonce/net.py): all skips trained together from ImageNet,
# pool4 and pool3 scaled by fixed 0.01 and 0.0001 before their score layers.
AT_ONCE_SKIP_SCALES = (0.01, 0.0001)
AT_ONCE_NOTES = (
    "at-once: not in the paper (reference voc-fcn8s-atonce); the reference trains it 300,000 "
    "iterations, as long as the three stages together; here max_steps is one stage's",
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
    "lr": Source("1e-4, ÷100 per stage", "Sec. 4.3 'fixed learning rates of ... 10^-4 ... for FCN-VGG16'; "
                 "Sec. 4.2 'The learning rate is decreased by a factor of 100' for each finer stage",
                 lambda lr: lr in (1e-4, 1e-6, 1e-8)),
    "momentum": Source(0.9, "Sec. 4.3"),
    "weight_decay": Source(5e-4, "Sec. 4.3 'weight decay of 5^-4 or 2^-4'"),
    "lr_schedule": Source("constant", "Sec. 4.3 (fixed learning rate)"),
    "bias_lr_mult": Source(2.0, "Sec. 4.3 'doubled learning rate for biases'"),
    "augment.flip": Source(False, "Sec. 4.3 'Augmentation': mirroring and jittering gave no improvement, not used"),
    "eval.protocol": Source("whole", "Sec. 4 (whole images)"),
    "pretrained": Source(True, "Sec. 4.1: ILSVRC-pretrained VGG-16"),
}
