"""PSPNet's auxiliary loss weight (Table 2) and backbone depth (Table 3) — Zhao et al., CVPR 2017
(ADE20K val, mIoU and pixel accuracy).

``--table 2``: the ResNet-50 baseline (dilated FCN, no pyramid pooling; Table 1's first row)
trained without the auxiliary head or with its loss weighted α = 0.3, 0.4 (the paper's), 0.6,
0.9. ``--table 3``: the full PSPNet (B1236 AVE DR) on deep-stem ResNet-50/101/152, single scale
and with multi-scale testing ("MS": scales 0.5–1.75 and flips, hszhao/semseg; evaluation-only
variants that test the single-scale row's trained weights, ``weights_from``). ResNet-269 is not
available (no ImageNet weights of it exist outside the authors' Caffe model; README). The smoke
preset uses the synthetic ``context_tokens`` task, as ``psp_bins_ablation.py``.

    # CPU smoke (default --table 2; synthetic data, 3 seeds)
    python experiments/psp_aux_depth_ablation.py
    python experiments/psp_aux_depth_ablation.py --table 3
    # what a run will do: every cell's recipe card (JSON lines + a table); reads and writes nothing
    python experiments/psp_aux_depth_ablation.py --data ade20k --data-root /data --table 3 --dry-run
    # one GPU, real data (ADE20K), the paper's recipe
    python experiments/psp_aux_depth_ablation.py --data ade20k --data-root /data --precision bf16-mixed
    # 4 GPUs (DDP + SyncBN: the paper's batch 16), one cell (SLURM array task), the table
    python experiments/psp_aux_depth_ablation.py --data ade20k --data-root /data --devices 4
    python experiments/psp_aux_depth_ablation.py --data ade20k --data-root /data --variant "aux 0.3" --seed 0
    python experiments/psp_aux_depth_ablation.py collect --data ade20k --data-root /data
    # SLURM: a job array over the unfinished (variant, seed) cells, then a collect job
    GPUS_PER_NODE=4 experiments/slurm/submit.sh experiments/psp_aux_depth_ablation.py --data ade20k --data-root /data --table 3
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.recipe import Source  # noqa: E402
from experiments.recipes import pspnet  # noqa: E402
from experiments.runner import main  # noqa: E402
from experiments.spec import Ablation, Claim, Option, Variant  # noqa: E402

MS = pspnet.MS_EVAL   # hszhao/semseg's multi-scale test: 0.5-1.75 x 512, windows + flip


def variants(table: str) -> dict[str, Variant]:
    if table == "2":
        base = {"backbone": "resnet50", "bins": (), "reduction": False}  # Table 1's baseline
        rows = {"no aux": Variant("pspnet", {**base, "aux": False}, "pspnet.table2.none",
                                  recipe={"optim": {"aux_weight": 0.0}},
                                  sources={"aux_weight": Source(0.0, "Table 2, this row")})}
        for alpha in (0.3, 0.4, 0.6, 0.9):
            rows[f"aux {alpha}"] = Variant("pspnet", base, f"pspnet.table2.aux0{round(alpha * 10)}",
                                           recipe={"optim": {"aux_weight": alpha}},
                                           sources={"aux_weight": Source(alpha, "Table 2, this row")})
        return rows
    full = {"bins": (1, 2, 3, 6), "pooling": "avg", "reduction": True}
    rows = {}
    for d in (50, 101, 152):
        rows[f"ResNet{d}"] = Variant("pspnet", {**full, "backbone": f"resnet{d}"}, f"pspnet.table3.r{d}")
    for d in (50, 101, 152):  # ResNet152 + MS: its number is not transcribed (paper_numbers.toml)
        # the same trained model tested at several scales: evaluation only (weights_from)
        rows[f"ResNet{d} + MS"] = Variant("pspnet", {**full, "backbone": f"resnet{d}"},
                                          f"pspnet.table3.r{d}_ms" if d != 152 else None,
                                          recipe={**MS, "weights_from": f"ResNet{d}"})
    return rows


ABLATION = Ablation(
    name="psp_aux_depth",
    title="PSPNet: auxiliary loss weight and backbone depth",
    synthetic_task="context_tokens",
    variants=variants("2"),
    paper_data="ade20k",
    claims=(  # each --table's own claims; the others' are skipped (experiments/claims.py)
        Claim("no aux", "aux 0.4", ">", source="PSPNet Table 2: the auxiliary loss"),
        Claim("aux 0.4", "aux 0.9", "<", source="PSPNet Table 2: 0.4 is the best weight"),
        Claim("ResNet50", "ResNet152", ">", source="PSPNet Table 3: deeper backbones"),
        Claim("ResNet50", "ResNet50 + MS", ">", source="PSPNet Table 3: multi-scale testing"),
    ),
    paper=pspnet.PAPER,
    options={"table": Option(("2", "3"), "2", variants,
                             "2: auxiliary loss weight (R-50 baseline); 3: ResNet depth, + MS")},
    sources=pspnet.SOURCES,
)

if __name__ == "__main__":
    main(ABLATION)
