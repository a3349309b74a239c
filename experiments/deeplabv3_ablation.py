"""DeepLab v3 (Chen et al., arXiv:1706.05587): multi-grid, ASPP rates, image pooling, and the
output stride at evaluation — Tables 5 and 6 (ResNet-101, VOC 2012 val).

Every variant is ASPP at output stride 16 on a dilated ResNet whose last block uses
``multi_grid`` rates; "+ image pooling" adds the global-average branch (Table 5, last row);
"eval OS 8" evaluates that model at output stride 8 with the ASPP rates doubled (Table 6, first
row): an evaluation-only variant (``weights_from``), it trains nothing and evaluates the "+ image
pooling" cell's final weights of the same seed, as do "MS" (scales 0.5–1.75) and "MS + flip"
(Table 6's next two rows); "crop 321" trains it on 321 crops instead of 513 (Sec. 4.3: 77.21
-> 67.22; on the smoke preset 100-px crops of the 160-px images). The smoke preset uses the synthetic ``multiscale`` task and a
width-scaled ResNet-50 (ResNet-101 is twice as slow on a CPU; the paper's Table 1 also uses 50).

    # CPU smoke (default; synthetic data, 3 seeds)
    python experiments/deeplabv3_ablation.py
    # what a run will do: every cell's recipe card (JSON lines + a table); reads and writes nothing
    python experiments/deeplabv3_ablation.py --data voc --data-root /data --dry-run
    # one GPU, real data (VOC 2012 + SBD train_aug), the paper's recipe (crop 513, batch 16, 30K)
    python experiments/deeplabv3_ablation.py --data voc --data-root /data --precision bf16-mixed
    # 4 GPUs (DDP + SyncBN: the paper's batch 16), one (variant, seed) cell, the table
    python experiments/deeplabv3_ablation.py --data voc --data-root /data --devices 4
    python experiments/deeplabv3_ablation.py --data voc --data-root /data --variant "MG(1,2,4)" --seed 0
    python experiments/deeplabv3_ablation.py collect --data voc --data-root /data
    # SLURM: a job array over the unfinished (variant, seed) cells, then a collect job
    GPUS_PER_NODE=4 experiments/slurm/submit.sh experiments/deeplabv3_ablation.py --data voc --data-root /data
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.recipe import Source  # noqa: E402
from experiments.recipes import deeplab_v3  # noqa: E402
from experiments.runner import main  # noqa: E402
from experiments.spec import Ablation, Claim, Variant  # noqa: E402
from lightning_modules.inference import DEEPLAB_V3_SCALES  # noqa: E402


def v3(multi_grid, atrous_rates=(6, 12, 18), image_pooling=False) -> dict:
    return {"output_stride": 16, "multi_grid": multi_grid, "atrous_rates": atrous_rates,
            "image_pooling": image_pooling}


def ms_os8(flip: bool) -> dict:
    """Table 6's "+MS" (and "+Flip"): scales 0.5:0.25:1.75 at output stride 8, whole images."""
    return {"output_stride": 8, "mode": "ms_flip", "scales": DEEPLAB_V3_SCALES, "flip": flip, "pad_to": None}


BEST = v3((1, 2, 4), image_pooling=True)
POOL = "MG(1,2,4) + image pooling"
ABLATION = Ablation(
    name="deeplabv3",
    title="DeepLab v3: multi-grid, ASPP rates, image pooling, eval output stride",
    synthetic_task="multiscale",
    variants={
        "MG(1,1,1)": Variant("deeplab_v3", v3((1, 1, 1)), "deeplab_v3.table5.mg111_aspp"),
        "MG(1,2,1)": Variant("deeplab_v3", v3((1, 2, 1)), "deeplab_v3.table5.mg121_aspp"),
        "MG(1,2,4)": Variant("deeplab_v3", v3((1, 2, 4)), "deeplab_v3.table5.mg124_aspp"),
        "MG(1,2,4) rates+24": Variant("deeplab_v3", v3((1, 2, 4), (6, 12, 18, 24)), "deeplab_v3.table5.mg124_aspp24"),
        "MG(1,2,4) + image pooling": Variant("deeplab_v3", BEST, "deeplab_v3.table5.mg124_aspp_pool"),
        "+ image pooling, eval OS 8": Variant("deeplab_v3", BEST, "deeplab_v3.table6.eval_os8",
                                              recipe={"eval": {"output_stride": 8}, "weights_from": POOL}),
        # Table 6's next rows: the same weights at OS 8 over scales 0.5-1.75 (v3 Sec. 4.3), then with flips
        "+ image pooling, eval OS 8, MS": Variant("deeplab_v3", BEST, "deeplab_v3.table6.eval_os8_ms",
                                                  recipe={"eval": ms_os8(flip=False), "weights_from": POOL}),
        "+ image pooling, eval OS 8, MS + flip": Variant("deeplab_v3", BEST, "deeplab_v3.table6.eval_os8_ms_flip",
                                                         recipe={"eval": ms_os8(flip=True), "weights_from": POOL}),
        "+ image pooling, crop 321": Variant("deeplab_v3", BEST, "deeplab_v3.table6.crop321",
                                             recipe={"data": {"crop_size": 321}}, smoke={"data": {"crop_size": 100}},
                                             sources={"crop_size": Source(321, "v3 Sec. 4.3: the crop-321 row")}),
    },
    paper_data="voc",
    paper=deeplab_v3.PAPER,          # ResNet-101, as Tables 3, 5 and 6
    sources=deeplab_v3.SOURCES,
    # ResNet-50 at 1/8 width: a ResNet-101 trains too slowly from scratch on a CPU
    smoke={"model": {"backbone": "resnet50"}},
    claims=(
        Claim("MG(1,1,1)", "MG(1,2,1)", ">", source="DeepLab v3 Table 5"),
        Claim("MG(1,2,1)", "MG(1,2,4)", ">", source="DeepLab v3 Table 5"),
        Claim("MG(1,2,4)", "MG(1,2,4) rates+24", "≈", source="DeepLab v3 Table 5 (rate 24: -0.12)"),
        Claim("MG(1,2,4)", "MG(1,2,4) + image pooling", ">", source="DeepLab v3 Table 5"),
        Claim("MG(1,2,4) + image pooling", "+ image pooling, eval OS 8", ">", source="DeepLab v3 Table 6"),
        Claim("+ image pooling, eval OS 8", "+ image pooling, eval OS 8, MS", ">", source="DeepLab v3 Table 6"),
        Claim("+ image pooling, eval OS 8, MS", "+ image pooling, eval OS 8, MS + flip", ">", source="DeepLab v3 Table 6"),
    ),
)

if __name__ == "__main__":
    main(ABLATION)
