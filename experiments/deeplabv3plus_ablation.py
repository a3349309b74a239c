"""DeepLab v3+ (Chen et al., ECCV 2018): decoder vs none, low-level projection channels, decoder
3×3 convs, evaluation output stride, ResNet-101 vs aligned Xception-65, separable vs plain
convs — Tables 1, 2, 3 and 5 (VOC 2012 val). Every row of Tables 1 and 2 (decoder design) is in
``deeplabv3plus_decoder_ablation.py``.

Table 1 varies the 1×1 projection of the stride-4 features (``low_level_channels``) with one
[3×3, 256] decoder conv; Table 2 uses two (``decoder_convs=2``, the final design); Table 3 is
ResNet-101 with/without the decoder at eval output stride 16 and 8 (and the best row, + multi-scale
inputs and flips at 8); Table 5 is Xception-65, evaluated at 16 and re-strided to 8 (its
first rows use plain convs; ``separable=True`` is the paper's final "SC" model). The "eval OS 8"
and "MS + flip" rows are the paper's own trained model evaluated differently: evaluation-only
variants (``weights_from``) that train nothing and evaluate that variant's final weights of the
same seed, so their comparison with it differs by the evaluation alone. The smoke preset
uses the synthetic ``thin`` task: thin structures and small objects, where a stride-16 encoder
alone cannot place boundaries and the stride-4 decoder should help (see the trimap column).

    # CPU smoke (default; synthetic data, 3 seeds)
    python experiments/deeplabv3plus_ablation.py
    # what a run will do: every cell's recipe card (JSON lines + a table); reads and writes nothing
    python experiments/deeplabv3plus_ablation.py --data voc --data-root /data --dry-run
    # one GPU, real data (VOC 2012 + SBD train_aug), the paper's recipe
    python experiments/deeplabv3plus_ablation.py --data voc --data-root /data --precision bf16-mixed
    # 4 GPUs x 4 images (DDP + SyncBN: the paper's batch 16), one (variant, seed) cell, the table
    python experiments/deeplabv3plus_ablation.py --data voc --data-root /data --devices 4
    python experiments/deeplabv3plus_ablation.py --data voc --data-root /data --variant "R101 decoder" --seed 0
    python experiments/deeplabv3plus_ablation.py collect --data voc --data-root /data
    # SLURM: a job array over the unfinished (variant, seed) cells, then a collect job
    GPUS_PER_NODE=4 experiments/slurm/submit.sh experiments/deeplabv3plus_ablation.py --data voc --data-root /data
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.recipes import deeplab_v3  # noqa: E402
from experiments.runner import main  # noqa: E402
from experiments.spec import Ablation, Claim, Variant  # noqa: E402

R101 = {"backbone": "resnet101", "output_stride": 16, "multi_grid": (1, 2, 4), "separable": False}
XCEPTION = {"backbone": "xception65", "output_stride": 16}
# v3+ Sec. 4: scales {0.5, 0.75, 1.0, 1.25, 1.5, 1.75} and left-right flips, at output stride 8
MS_FLIP_OS8 = {"output_stride": 8, "mode": "ms_flip", "scales": (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
               "flip": True, "pad_to": None}
# Xception-65's weight decay 4e-5 (the official train.py default), with its source
XCEPTION_RECIPE = {"recipe": deeplab_v3.XCEPTION, "sources": deeplab_v3.XCEPTION_SOURCES}


def decoder(low_level_channels: int = 48, decoder_convs: int = 2, **extra) -> dict:
    return {**R101, "low_level_channels": low_level_channels, "decoder_convs": decoder_convs, **extra}


ABLATION = Ablation(
    name="deeplabv3plus",
    title="DeepLab v3+: decoder, low-level channels, decoder convs, backbone, separable convs",
    synthetic_task="thin",
    variants={
        "R101 no decoder": Variant("deeplab_v3", R101, "deeplab_v3plus.table3.no_decoder_os16"),
        "R101 decoder": Variant("deeplab_v3plus", decoder(), "deeplab_v3plus.table3.decoder_os16"),
        "R101 decoder, eval OS 8": Variant("deeplab_v3plus", decoder(), "deeplab_v3plus.table3.decoder_os8",
                                           recipe={"eval": {"output_stride": 8}, "weights_from": "R101 decoder"}),
        "R101 no decoder, eval OS 8": Variant("deeplab_v3", R101, "deeplab_v3plus.table3.no_decoder_os8",
                                              recipe={"eval": {"output_stride": 8}, "weights_from": "R101 no decoder"}),
        "R101 decoder, eval OS 8, MS + flip": Variant(
            "deeplab_v3plus", decoder(), "deeplab_v3plus.table3.decoder_os8_ms_flip",
            recipe={"eval": MS_FLIP_OS8, "weights_from": "R101 decoder"}),
        "low-level 16, 1 conv": Variant("deeplab_v3plus", decoder(16, 1), "deeplab_v3plus.table1.ll16"),
        "low-level 48, 1 conv": Variant("deeplab_v3plus", decoder(48, 1), "deeplab_v3plus.table1.ll48"),
        "low-level 64, 1 conv": Variant("deeplab_v3plus", decoder(64, 1), "deeplab_v3plus.table1.ll64"),
        "Xception-65 no decoder": Variant("deeplab_v3", {**XCEPTION, "separable": False},
                                          "deeplab_v3plus.table5.no_decoder_os16", **XCEPTION_RECIPE),
        "Xception-65 decoder": Variant("deeplab_v3plus", {**XCEPTION, "separable": False},
                                       "deeplab_v3plus.table5.decoder_os16", **XCEPTION_RECIPE),
        "Xception-65 decoder, eval OS 8": Variant("deeplab_v3plus", {**XCEPTION, "separable": False},
                                                 "deeplab_v3plus.table5.decoder_os8",
                                                 recipe={**XCEPTION_RECIPE["recipe"], "eval": {"output_stride": 8},
                                                         "weights_from": "Xception-65 decoder"},
                                                 sources=XCEPTION_RECIPE["sources"]),
        "Xception-65 decoder, separable": Variant("deeplab_v3plus", {**XCEPTION, "separable": True},
                                                  **XCEPTION_RECIPE),
    },
    paper_data="voc",
    paper=deeplab_v3.PAPER,   # v3+ Sec. 4: trained as v3 (crop 513, batch 16, lr 0.007, 30K at OS 16)
    sources=deeplab_v3.SOURCES,
    claims=(
        Claim("R101 no decoder", "R101 decoder", ">", source="DeepLab v3+ Table 3"),
        Claim("R101 no decoder", "R101 decoder", ">", "trimap_miou", source="DeepLab v3+ Fig. 5 (trimap)"),
        Claim("R101 decoder", "R101 decoder, eval OS 8", ">", source="DeepLab v3+ Table 3"),
        Claim("R101 decoder, eval OS 8", "R101 decoder, eval OS 8, MS + flip", ">", source="DeepLab v3+ Table 3"),
        Claim("low-level 16, 1 conv", "low-level 48, 1 conv", ">", source="DeepLab v3+ Table 1"),
        Claim("low-level 64, 1 conv", "low-level 48, 1 conv", ">", source="DeepLab v3+ Table 1"),
        Claim("low-level 48, 1 conv", "R101 decoder", ">", source="DeepLab v3+ Table 2 (two 3x3 convs)"),
        Claim("Xception-65 no decoder", "Xception-65 decoder", ">", source="DeepLab v3+ Table 5"),
        Claim("Xception-65 decoder", "Xception-65 decoder, eval OS 8", ">", source="DeepLab v3+ Table 5"),
    ),
)

if __name__ == "__main__":
    main(ABLATION)
