"""DeepLab v3's cascaded atrous blocks (Chen et al., arXiv:1706.05587, Sec. 3.1–3.2, Fig. 3):
output stride (Table 1), cascade depth (Table 2) and multi-grid (Table 3), VOC 2012 val.

``deeplab_v3_cascade`` duplicates ResNet's block4 as block5–7 (``models/deeplab_v3_cascade.py``):
``--table 1`` is ResNet-50 + block7 trained and evaluated at output stride 8 … 256 (256 = no
atrous convolution at all); ``--table 2`` adds 0–3 blocks (block4 … block7) to ResNet-50 and -101
at output stride 16; ``--table 3`` is ResNet-101 + block7 with multi-grid unit rates in block4–7.
No ASPP in any row. The paper's recipe is v3's (crop 513, batch 16, poly, 30K). The smoke preset
uses the synthetic ``multiscale`` task (160 px: the block7 map is 1×1 at output stride 256).

    # CPU smoke (default --table 1; synthetic data, 3 seeds)
    python experiments/deeplabv3_os_ablation.py
    python experiments/deeplabv3_os_ablation.py --table 3
    # what a run will do: every cell's recipe card (JSON lines + a table); reads and writes nothing
    python experiments/deeplabv3_os_ablation.py --data voc --data-root /data --table 2 --dry-run
    # one GPU, real data (VOC 2012 + SBD train_aug), the paper's recipe
    python experiments/deeplabv3_os_ablation.py --data voc --data-root /data --precision bf16-mixed
    # 4 GPUs (DDP + SyncBN: the paper's batch 16), one (variant, seed) cell, the table
    python experiments/deeplabv3_os_ablation.py --data voc --data-root /data --devices 4
    python experiments/deeplabv3_os_ablation.py --data voc --data-root /data --variant "OS 256" --seed 0
    python experiments/deeplabv3_os_ablation.py collect --data voc --data-root /data
    # SLURM: a job array over the unfinished (variant, seed) cells, then a collect job
    GPUS_PER_NODE=4 experiments/slurm/submit.sh experiments/deeplabv3_os_ablation.py --data voc --data-root /data --table 2
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.recipes import deeplab_v3  # noqa: E402
from experiments.runner import main  # noqa: E402
from experiments.spec import Ablation, Claim, Option, Variant  # noqa: E402


def cascade(depth: int, blocks: int = 7, output_stride: int = 16, multi_grid=(1, 1, 1), key: str | None = None):
    kwargs = {"backbone": f"resnet{depth}", "num_blocks": blocks, "output_stride": output_stride,
              "multi_grid": multi_grid}
    return Variant("deeplab_v3_cascade", kwargs, key and f"deeplab_v3.{key}")


def variants(table: str) -> dict[str, Variant]:
    if table == "1":
        return {f"OS {s}": cascade(50, output_stride=s, key=f"table1.os{s}") for s in (8, 16, 32, 64, 128, 256)}
    if table == "2":
        rows = {f"R{d} block{b}": cascade(d, b, key=f"table2.r{d}_block{b}") for d in (50, 101) for b in (4, 5, 6, 7)}
        rows["R50 block7"] = cascade(50, 7, key="table1.os16")  # the same model as Table 1's OS 16 (73.88)
        return rows
    grids = {(1, 1, 1): "mg111", (1, 2, 1): "mg121", (1, 2, 4): "mg124", (2, 2, 2): "mg222"}
    return {f"MG{grid}".replace(" ", ""): cascade(101, multi_grid=grid, key=f"table3.{k}") for grid, k in grids.items()}


ABLATION = Ablation(
    name="deeplabv3_os",
    title="DeepLab v3: cascaded atrous blocks — output stride, depth, multi-grid",
    synthetic_task="multiscale",
    variants=variants("1"),
    paper_data="voc",
    claims=(  # each --table's own claims; the others' are skipped (experiments/claims.py)
        Claim("OS 16", "OS 8", ">", source="DeepLab v3 Table 1"),
        Claim("OS 32", "OS 16", ">", source="DeepLab v3 Table 1"),
        Claim("OS 64", "OS 32", ">", source="DeepLab v3 Table 1"),
        Claim("OS 256", "OS 128", ">", source="DeepLab v3 Table 1"),
        Claim("R50 block4", "R50 block7", ">", source="DeepLab v3 Table 2: cascading blocks 5-7"),
        Claim("R101 block4", "R101 block7", ">", source="DeepLab v3 Table 2: cascading blocks 5-7"),
        Claim("R50 block7", "R101 block7", ">", source="DeepLab v3 Table 2: ResNet-101 vs -50"),
        Claim("MG(1,1,1)", "MG(1,2,1)", ">", source="DeepLab v3 Table 3"),
        Claim("MG(2,2,2)", "MG(1,2,1)", ">", source="DeepLab v3 Table 3"),
    ),
    paper=deeplab_v3.PAPER,
    options={"table": Option(("1", "2", "3"), "1", variants,
                             "1: output stride 8-256 (R-50, block7); 2: block4-7 (R-50/101); 3: multi-grid (R-101)")},
    sources=deeplab_v3.SOURCES,
)

if __name__ == "__main__":
    main(ABLATION)
