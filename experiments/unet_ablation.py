"""U-Net: valid padding with overlap-tile inference vs same padding, each with and without the
border weight map — Ronneberger et al., MICCAI 2015, Sec. 2 (Fig. 2: unpadded convs, mirrored
context, seamless tiles) and Sec. 3 (Eq. 2: the weight map that "forces the network to learn
the small separation borders between touching cells").

"valid" is the paper's network: ``forward`` mirror-pads each image by the 92-px context margin
and is exactly overlap-tile inference with one tile (``models.unet.overlap_tile_predict`` with
several tiles gives the same logits, tested), so ``eval_mode=whole`` already evaluates the
overlap-tile strategy. "same" zero-pads inside every conv. The paper reports no such table
(its Table 2 is ISBI cell tracking, not comparable data): every paper column is empty. The
smoke task ``touching`` packs cells whose 1–2 px separating borders are labelled background:
mIoU barely sees them, so read ``trimap mIoU`` beside it (within ``trimap_width`` px of label
boundaries: 1 px in the smoke preset, where a 5-px band would cover most of a 6–12 px cell).

    # CPU smoke (default; synthetic data, 3 seeds)
    python experiments/unet_ablation.py
    # what a run will do: every cell's recipe card (JSON lines + a table); reads and writes nothing
    python experiments/unet_ablation.py --data voc --data-root /data --dry-run
    # one GPU, real data (SBD-augmented VOC; the paper's cell data is not supported)
    python experiments/unet_ablation.py --data voc --data-root /data --precision bf16-mixed
    # one cell (SLURM array task; one tile per batch, as the paper: one GPU per cell), the table
    python experiments/unet_ablation.py --data voc --data-root /data --variant "valid + weights" --seed 1
    python experiments/unet_ablation.py collect --data voc --data-root /data
    # SLURM: a job array over the unfinished (variant, seed) cells, then a collect job
    GPUS_PER_NODE=1 experiments/slurm/submit.sh experiments/unet_ablation.py --data voc --data-root /data
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.recipe import Source  # noqa: E402
from experiments.recipes import unet  # noqa: E402
from experiments.runner import main  # noqa: E402
from experiments.spec import Ablation, Claim, Variant  # noqa: E402

VARIANTS = {
    f"{padding}{' + weights' if weights else ''}": Variant(
        "unet", {"padding": padding}, None, recipe={"optim": {"border_weight": weights}},
        # the ablated knob: the rows without Eq. 2's weights are the comparison, not a deviation
        sources={} if weights else {"border_weight": Source(False, "this ablation's row without Eq. 2")})
    for padding in ("valid", "same") for weights in (False, True)
}

ABLATION = Ablation(
    name="unet",
    title="U-Net: valid + overlap-tile vs same padding, ± border weight map",
    synthetic_task="touching",
    variants=VARIANTS,
    paper_data="voc",
    paper=unet.PAPER,
    sources=unet.SOURCES,
    # Valid padding runs each 128-px image as a 316-px input (92 px of mirrored context a
    # side): ~3x the cost. A 1-px trimap band: the borders between touching cells.
    smoke={"optim": {"lr": 5e-3}, "eval": {"trimap_width": 1},
           "trainer": {"max_steps": 80, "val_every": 80}},
    # Sec. 3: the weight map "forces the network to learn the small separation borders"; no table
    claims=tuple(Claim(p, f"{p} + weights", ">", "trimap_miou", source="U-Net Sec. 3, Eq. 2")
                 for p in ("valid", "same")),
)

if __name__ == "__main__":
    main(ABLATION)
