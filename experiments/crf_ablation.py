"""DeepLab LargeFOV and ASPP-L before and after the fully-connected CRF — DeepLab v2 (Chen et al.,
TPAMI 2017), Table 3 (VGG-16, VOC 2012 val), which reports both columns.

Every cell is evaluated twice from the same predictions: plain, and after the dense CRF
(Krähenbühl & Koltun 2011; ``lightning_modules/crf.py``), giving two tables: ``results.md`` holds
both, with the paper's before- and after-CRF numbers. The CRF parameters are arguments
(``--crf-param bi_xy_std=50 --crf-param iterations=5``; defaults: the DeepLab v2 reference's),
recorded in every cell's config.json and metrics.json. The smoke preset uses the synthetic
``multiscale`` task (as the ASPP ablation) whose object outlines the CRF can sharpen.

    # CPU smoke (default; synthetic data, 3 seeds)
    python experiments/crf_ablation.py
    # what a run will do: every cell's recipe card (JSON lines + a table); reads and writes nothing
    python experiments/crf_ablation.py --data voc --data-root /data --dry-run
    # one GPU, real data (VOC 2012 + SBD train_aug), the paper's recipe; CRF on the CPU
    python experiments/crf_ablation.py --data voc --data-root /data --precision bf16-mixed --workers 8
    # 2 GPUs x 5 images (the paper's batch 10), one (variant, seed) cell, the table
    python experiments/crf_ablation.py --data voc --data-root /data --devices 2
    python experiments/crf_ablation.py --data voc --data-root /data --variant ASPP-L --seed 0
    python experiments/crf_ablation.py collect --data voc --data-root /data
    # SLURM: a job array over the unfinished (variant, seed) cells, then a collect job
    GPUS_PER_NODE=2 experiments/slurm/submit.sh experiments/crf_ablation.py --data voc --data-root /data
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.aspp_ablation import ABLATION as ASPP  # noqa: E402
from experiments.recipes import deeplab  # noqa: E402
from experiments.runner import main  # noqa: E402
from experiments.spec import Ablation, Claim  # noqa: E402

ABLATION = Ablation(
    name="crf",
    title="DeepLab v2: before and after the dense CRF",
    synthetic_task=ASPP.synthetic_task,
    variants={name: ASPP.variants[name] for name in ("LargeFOV", "ASPP-L")},
    paper_data="voc",
    paper=deeplab.CRF,   # every cell is evaluated before and after the CRF
    claims=(
        Claim("LargeFOV", "LargeFOV", ">", eval_b="val_crf", source="DeepLab v2 Table 3"),
        Claim("ASPP-L", "ASPP-L", ">", eval_b="val_crf", source="DeepLab v2 Table 3"),
        # the CRF sharpens boundaries: plotted as mean IoU in a band around them, no table
        Claim("LargeFOV", "LargeFOV", ">", "trimap_miou", eval_b="val_crf", source="DeepLab v1 Fig. 5 (trimap)"),
        Claim("ASPP-L", "ASPP-L", ">", "trimap_miou", eval_b="val_crf", source="DeepLab v1 Fig. 5 (trimap)"),
        Claim("LargeFOV", "ASPP-L", ">", eval_a="val_crf", eval_b="val_crf", source="DeepLab v2 Table 3"),
    ),
    sources=deeplab.CRF_SOURCES,
)

if __name__ == "__main__":
    main(ABLATION)
