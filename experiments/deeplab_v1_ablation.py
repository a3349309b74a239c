"""DeepLab v1's field of view: fc6 kernel, input stride and width — Chen et al., ICLR 2015,
Table 2 (VGG-16, VOC 2012 val, after the dense CRF; before it: DeepLab v2 Table 1).

"Input stride" is the atrous rate of fc6 on the stride-8 pool5 map (Sec. 3.1 / 4.1): the 7×7
ImageNet fc6 at rate 4 (DeepLab-CRF-7x7, 4096 channels, 134.3M parameters), decimated to 4×4 at
rate 4 (DeepLab-CRF, 65.1M) or rate 8 (DeepLab-CRF-4x4, 65.1M), or to 3×3 × 1024 at rate 12
(DeepLab-CRF-LargeFOV, 20.5M). Trained with v1's step schedule (lr × 0.1 every 2,000 iterations,
``experiments/recipes/deeplab.py`` ``V1``) and evaluated before and after the CRF. Every row keeps
the LargeFOV prototxt's parameter-free ``pool5a``. The smoke preset uses the synthetic
``multiscale`` task (as the ASPP ablation), where the field of view decides the large objects.

    # CPU smoke (default; synthetic data, 3 seeds)
    python experiments/deeplab_v1_ablation.py
    # what a run will do: every cell's recipe card (JSON lines + a table); reads and writes nothing
    python experiments/deeplab_v1_ablation.py --data voc --data-root /data --dry-run
    # one GPU, real data (VOC 2012 + SBD train_aug), the paper's recipe; CRF on the CPU
    python experiments/deeplab_v1_ablation.py --data voc --data-root /data --precision bf16-mixed --workers 8
    # 4 GPUs x 5 images (the paper's batch 20), one (variant, seed) cell, the table
    python experiments/deeplab_v1_ablation.py --data voc --data-root /data --devices 4
    python experiments/deeplab_v1_ablation.py --data voc --data-root /data --variant DeepLab-CRF-7x7 --seed 0
    python experiments/deeplab_v1_ablation.py collect --data voc --data-root /data
    # SLURM: a job array over the unfinished (variant, seed) cells, then a collect job
    GPUS_PER_NODE=4 experiments/slurm/submit.sh experiments/deeplab_v1_ablation.py --data voc --data-root /data
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.recipes import deeplab  # noqa: E402
from experiments.runner import main  # noqa: E402
from experiments.spec import Ablation, Claim, Variant  # noqa: E402


def fc6(kernel: int, input_stride: int, channels: int) -> dict:
    return {"fc6_kernel_size": kernel, "fc6_dilation": input_stride, "fc_channels": channels}


ABLATION = Ablation(
    name="deeplab_v1",
    title="DeepLab v1: fc6 kernel size, input stride (atrous rate) and width",
    synthetic_task="multiscale",
    variants={
        "DeepLab-CRF-7x7": Variant("deeplab_largefov", fc6(7, 4, 4096), "deeplab_v1.table2.k7x7"),
        "DeepLab-CRF": Variant("deeplab_largefov", fc6(4, 4, 4096), "deeplab_v1.table2.k4x4_stride4"),
        "DeepLab-CRF-4x4": Variant("deeplab_largefov", fc6(4, 8, 4096), "deeplab_v1.table2.k4x4"),
        "DeepLab-CRF-LargeFOV": Variant("deeplab_largefov", fc6(3, 12, 1024), "deeplab_v1.table2.largefov"),
    },
    paper_data="voc",
    claims=(
        Claim("DeepLab-CRF", "DeepLab-CRF-4x4", ">",
              source="DeepLab v1 Table 2: the 4x4 fc6 at input stride 8 vs 4 (a larger field of view)"),
        Claim("DeepLab-CRF-7x7", "DeepLab-CRF-LargeFOV", "≈", eval_a="val_crf", eval_b="val_crf",
              source="DeepLab v1 Table 2: LargeFOV equals the 7x7 fc6 after the CRF with 3.4x fewer parameters"),
        Claim("DeepLab-CRF-LargeFOV", "DeepLab-CRF-LargeFOV", ">", eval_b="val_crf",
              source="DeepLab v1 Table 2 / v2 Table 1: the dense CRF on LargeFOV"),
    ),
    paper=deeplab.V1,
    sources=deeplab.V1_SOURCES,
)

if __name__ == "__main__":
    main(ABLATION)
