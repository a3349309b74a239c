"""DeepLab v3+'s decoder design (Chen et al., ECCV 2018, Sec. 4.1): the 1×1 projection of the
low-level features (Table 1) and the 3×3 convs that refine the concatenation (Table 2), on
ResNet-101 at output stride 16 (VOC 2012 val).

``--table 1``: ``low_level_channels`` 8 … 64 with one [3×3, 256] conv. ``--table 2`` (48 channels):
[3×3, 256] × 1, 2 (the paper's choice), 3; [3×3, 128]; [1×1, 256]; and the U-Net-like
"Conv2 + Conv3" decoder (``low_level_features=("conv3", "conv2")``: stride 8, then 4; one
[3×3, 256] per step, as the text describes it). The smoke preset uses the synthetic ``thin`` task,
as ``deeplabv3plus_ablation.py`` (which holds Tables 3 and 5).

    # CPU smoke (default --table 1; synthetic data, 3 seeds)
    python experiments/deeplabv3plus_decoder_ablation.py
    python experiments/deeplabv3plus_decoder_ablation.py --table 2
    # what a run will do: every cell's recipe card (JSON lines + a table); reads and writes nothing
    python experiments/deeplabv3plus_decoder_ablation.py --data voc --data-root /data --table 2 --dry-run
    # one GPU, real data (VOC 2012 + SBD train_aug), the paper's recipe
    python experiments/deeplabv3plus_decoder_ablation.py --data voc --data-root /data --precision bf16-mixed
    # 4 GPUs x 4 images (DDP + SyncBN: the paper's batch 16), one (variant, seed) cell, the table
    python experiments/deeplabv3plus_decoder_ablation.py --data voc --data-root /data --devices 4
    python experiments/deeplabv3plus_decoder_ablation.py --data voc --data-root /data --variant "low-level 32" --seed 0
    python experiments/deeplabv3plus_decoder_ablation.py collect --data voc --data-root /data
    # SLURM: a job array over the unfinished (variant, seed) cells, then a collect job
    GPUS_PER_NODE=4 experiments/slurm/submit.sh experiments/deeplabv3plus_decoder_ablation.py --data voc --data-root /data --table 2
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.recipes import deeplab_v3  # noqa: E402
from experiments.runner import main  # noqa: E402
from experiments.spec import Ablation, Claim, Option, Variant  # noqa: E402

R101 = {"backbone": "resnet101", "output_stride": 16, "multi_grid": (1, 2, 4), "separable": False}


def decoder(key: str, low_level_channels: int = 48, decoder_convs: int = 1, **extra) -> Variant:
    kwargs = {**R101, "low_level_channels": low_level_channels, "decoder_convs": decoder_convs, **extra}
    return Variant("deeplab_v3plus", kwargs, f"deeplab_v3plus.{key}")


def variants(table: str) -> dict[str, Variant]:
    if table == "1":
        return {f"low-level {c}": decoder(f"table1.ll{c}", c) for c in (8, 16, 32, 48, 64)}
    return {
        "[3x3, 256]": decoder("table2.one_conv"),
        "[3x3, 256] x 2": decoder("table2.two_convs", decoder_convs=2),
        "[3x3, 256] x 3": decoder("table2.three_convs", decoder_convs=3),
        "[3x3, 128]": decoder("table2.conv128", decoder_channels=128),
        "[1x1, 256]": decoder("table2.conv1x1", decoder_kernel_size=1),
        "Conv2 + Conv3, [3x3, 256]": decoder("table2.conv2_conv3", low_level_features=("conv3", "conv2")),
    }


ABLATION = Ablation(
    name="deeplabv3plus_decoder",
    title="DeepLab v3+: decoder low-level channels and refinement convs",
    synthetic_task="thin",
    variants=variants("1"),
    paper_data="voc",
    claims=(  # each --table's own claims; the others' are skipped (experiments/claims.py)
        Claim("low-level 8", "low-level 48", ">", source="DeepLab v3+ Table 1"),
        Claim("low-level 32", "low-level 48", "≈", source="DeepLab v3+ Table 1 (48 chosen; 32 within 0.05)"),
        Claim("[3x3, 256]", "[3x3, 256] x 2", ">", source="DeepLab v3+ Table 2"),
        Claim("[3x3, 256] x 2", "[3x3, 256] x 3", "<", source="DeepLab v3+ Table 2"),
        Claim("[3x3, 128]", "[3x3, 256]", ">", source="DeepLab v3+ Table 2"),
    ),
    paper=deeplab_v3.PAPER,   # v3+ Sec. 4: trained as v3 (crop 513, batch 16, lr 0.007, 30K at OS 16)
    options={"table": Option(("1", "2"), "1", variants,
                             "1: low-level projection channels; 2: decoder convs and low-level features")},
    sources=deeplab_v3.SOURCES,
)

if __name__ == "__main__":
    main(ABLATION)
