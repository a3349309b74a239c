"""DeepLab LargeFOV vs ASPP-S vs ASPP-L — DeepLab v2 (Chen et al., TPAMI 2017), Table 3 (VGG-16);
``--backbone resnet101`` gives LargeFOV vs ASPP on ResNet-101 (Table 4), and Table 4's first row
("base": no MSC, COCO or random scaling; a 3×3 rate-1 classifier, as the paper does not describe
its head). Table 4's other rows add MSC and COCO pre-training, which do not exist here (README).

LargeFOV is one 3×3 fc6 at rate 12; ASPP sums the class scores of parallel branches at rates
ASPP-S = (2, 4, 8, 12) or ASPP-L = (6, 12, 18, 24). The smoke preset uses the synthetic
``multiscale`` task, where one class appears at sizes spanning more than 10×.

    # CPU smoke (default; synthetic data, 3 seeds)
    python experiments/aspp_ablation.py
    # what a run will do: every cell's recipe card (JSON lines + a table); reads and writes nothing
    python experiments/aspp_ablation.py --data voc --data-root /data --dry-run
    # one GPU, real data (VOC 2012 + SBD train_aug), the paper's recipe
    python experiments/aspp_ablation.py --data voc --data-root /data --precision bf16-mixed
    # ResNet-101 rows of Table 4
    python experiments/aspp_ablation.py --data voc --data-root /data --backbone resnet101
    # 2 GPUs x 5 images (DDP, SyncBN; the paper's batch 10), or one (variant, seed) cell as a SLURM array task, then the table
    python experiments/aspp_ablation.py --data voc --data-root /data --devices 2
    python experiments/aspp_ablation.py --data voc --data-root /data --variant ASPP-L --seed 0
    python experiments/aspp_ablation.py collect --data voc --data-root /data
    # SLURM: a job array over the unfinished (variant, seed) cells, then a collect job
    GPUS_PER_NODE=2 experiments/slurm/submit.sh experiments/aspp_ablation.py --data voc --data-root /data
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.recipe import Source  # noqa: E402
from experiments.recipes import deeplab  # noqa: E402
from experiments.runner import main  # noqa: E402
from experiments.spec import Ablation, Claim, Option, Variant  # noqa: E402


def variants(backbone: str) -> dict[str, Variant]:
    if backbone == "vgg16":  # Table 3
        return {
            "LargeFOV": Variant("deeplab_largefov", {}, "deeplab_v2.table3.largefov"),
            "ASPP-S": Variant("deeplab_v2", {"backbone": "vgg16", "atrous_rates": (2, 4, 8, 12)},
                              "deeplab_v2.table3.aspp_s"),
            "ASPP-L": Variant("deeplab_v2", {"backbone": "vgg16", "atrous_rates": (6, 12, 18, 24)},
                              "deeplab_v2.table3.aspp_l"),
        }
    # Table 4: LargeFOV = a single rate-12 branch on the dilated ResNet; kazuto1011's recipe with
    # multi-scale inputs (MSC); the paper's numbers also need COCO pre-training: no Δ
    r101 = {**deeplab.RESNET101, "notes": deeplab.RESNET101_NOTES}
    # the first row: no MSC, no COCO, no "Aug" (random scaling)
    base = {"optim": deeplab.RESNET101["optim"], "data": {"scale_range": (1.0, 1.0)}}
    base_sources = {**{k: v for k, v in deeplab.RESNET101_SOURCES.items() if k != "augment.scale_step"},
                    "augment.scale_range": Source([1.0, 1.0], "v2 Table 4: the base row comes before '+Aug'")}
    return {
        "base-R101": Variant("deeplab_v2", {"backbone": backbone, "atrous_rates": (1,)},
                             "deeplab_v2.table4.base", recipe=base, sources=base_sources),
        "LargeFOV-R101": Variant("deeplab_v2", {"backbone": backbone, "atrous_rates": (12,)},
                                 "deeplab_v2.table4.largefov", recipe=r101, sources=deeplab.RESNET101_SOURCES,
                                 not_comparable=deeplab.NEEDS_COCO),
        "ASPP-L-R101": Variant("deeplab_v2", {"backbone": backbone, "atrous_rates": (6, 12, 18, 24)},
                               "deeplab_v2.table4.aspp", recipe=r101, sources=deeplab.RESNET101_SOURCES,
                               not_comparable=deeplab.NEEDS_COCO),
    }


ABLATION = Ablation(
    name="aspp",
    title="DeepLab v2: LargeFOV vs ASPP",
    synthetic_task="multiscale",
    variants=variants("vgg16"),
    paper_data="voc",
    paper=deeplab.PAPER,
    sources=deeplab.SOURCES,
    options={"backbone": Option(("vgg16", "resnet101"), "vgg16", variants,
                                "vgg16: Table 3 (LargeFOV, ASPP-S, ASPP-L); resnet101: Table 4")},
    claims=(
        Claim("LargeFOV", "ASPP-S", ">", source="DeepLab v2 Table 3"),
        Claim("LargeFOV", "ASPP-L", ">", source="DeepLab v2 Table 3"),
        Claim("ASPP-S", "ASPP-L", ">", source="DeepLab v2 Table 3"),
        Claim("LargeFOV-R101", "ASPP-L-R101", ">", source="DeepLab v2 Table 4"),
    ),
)

if __name__ == "__main__":
    main(ABLATION)
