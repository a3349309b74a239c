"""Learned transposed conv vs resize-conv vs fixed bilinear upsampling, in the FCN-8s and U-Net
decoders — FCN (Long et al. CVPR'15 Sec. 3.3: deconvolution initialised to bilinear, then
learned) against Odena et al., "Deconvolution and Checkerboard Artifacts" (Distill 2016).

No paper has this table; only FCN-8s with learned deconvolutions has a paper number (Table 2).
Besides mIoU the table reports ``checkerboard`` (lightning_modules/checkerboard.py): the share of
the predicted probabilities' variance explained by the pixel's position in a 16×16 cell, i.e.
spectral energy at the aliasing peaks of stride 16. 16 covers both families: FCN-8s's last
learned 2× layer acts at stride 8 (period 16 in output pixels), a U-Net's up-convs repeat every
2, 4, 8 and 16 px. U-Net runs with same padding here (its 128-px images would be ~316 px with
valid padding's context, 6× the cost) and without the border weight map (its loss, not its
decoder; both are ablated in unet_ablation.py). Smoke: synthetic ``thin`` (1-3 px structures:
the upsampling path draws them) and VGG16-BN (plain VGG16 does not train from scratch).

    # CPU smoke (default; synthetic data, 3 seeds)
    python experiments/upsampling_ablation.py
    # what a run will do: every cell's recipe card (JSON lines + a table); reads and writes nothing
    python experiments/upsampling_ablation.py --data voc --data-root /data --dry-run
    # one GPU, real data (SBD-augmented VOC)
    python experiments/upsampling_ablation.py --data voc --data-root /data --precision bf16-mixed
    # 4 GPUs x 5 images (DDP; the paper's batch 20), one cell (SLURM array task), then the table
    python experiments/upsampling_ablation.py --data voc --data-root /data --devices 4
    python experiments/upsampling_ablation.py --data voc --data-root /data --variant "U-Net transposed" --seed 1
    python experiments/upsampling_ablation.py collect --data voc --data-root /data
    # SLURM: a job array over the unfinished (variant, seed) cells, then a collect job
    GPUS_PER_NODE=4 experiments/slurm/submit.sh experiments/upsampling_ablation.py --data voc --data-root /data
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.recipe import Source, override  # noqa: E402
from experiments.recipes import fcn  # noqa: E402
from experiments.runner import main  # noqa: E402
from experiments.spec import Ablation, Claim, Variant  # noqa: E402

MODES = {"transposed": "transposed", "resize-conv": "resize_conv", "bilinear": "bilinear"}
VARIANTS = {
    **{f"FCN-8s {name}": Variant("fcn8s", {"upsampling": mode},
                                 "fcn.table2.fcn8s" if mode == "transposed" else None)
       for name, mode in MODES.items()},
    # U-Net has no ImageNet encoder and no border weights here: only the upsampling differs
    **{f"U-Net {name}": Variant("unet", {"padding": "same", "upsampling": mode}, None,
                                recipe={"pretrained": False, "optim": {"border_weight": False}},
                                sources={"pretrained": Source(False, "U-Net Sec. 3: no ImageNet encoder")})
       for name, mode in MODES.items()},
}

ABLATION = Ablation(
    name="upsampling",
    title="Upsampling: transposed conv vs resize-conv vs bilinear (FCN-8s, U-Net)",
    synthetic_task="thin",
    variants=VARIANTS,
    paper_data="voc",
    # Odena et al. state no numbers; the statistic is lightning_modules/checkerboard.py's, stored
    # per image (its mean over the images is the reported number), so the bootstrap resamples it.
    claims=tuple(
        Claim(f"{net} transposed", f"{net} {other}", "<", "checkerboard",
              source="Odena, Dumoulin & Olah, Distill 2016: resize-convolution and fixed interpolation "
                     "avoid the checkerboard of a transposed convolution")
        for net in ("FCN-8s", "U-Net") for other in ("resize-conv", "bilinear")),
    # FCN's recipe (batch 20, 500-px crops, 20K steps) for both; the checkerboard statistic at
    # the period of the last upsampling
    paper=override(fcn.PAPER, {"eval": {"checkerboard_period": 16}}),
    sources=fcn.SOURCES,
    # 500 steps at lr 5e-3: FCN-8s (VGG16-BN from scratch) still predicts background only at
    # 150 steps and reaches ~62 mIoU at 500 (fcn_skip smoke logs); U-Net is quicker.
    smoke={"optim": {"lr": 5e-3}, "trainer": {"max_steps": 500, "val_every": 500}},
)

if __name__ == "__main__":
    main(ABLATION)
