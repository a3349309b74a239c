"""PSPNet pyramid pooling: baseline vs B1 / B1236 × AVE / MAX, ± dimension reduction (DR) —
Zhao et al., CVPR 2017, Table 1 (ResNet-50, ADE20K val, single scale).

The smoke preset uses the synthetic ``context_tokens`` task: identical-looking objects (and the
background) whose class is given by the scene, and the scene is the majority of small marks
scattered over the whole image, so only context from the whole image decides any pixel
(``datamodules/synthetic/context.py``). ``--synthetic-task context`` runs the variant of the
task whose scene is visible only in a border frame (see the README for why that one cannot
separate them).

    # CPU smoke (default; synthetic data, 3 seeds)
    python experiments/psp_bins_ablation.py
    # what a run will do: every cell's recipe card (JSON lines + a table); reads and writes nothing
    python experiments/psp_bins_ablation.py --data ade20k --data-root /data --dry-run
    # one GPU, real data (ADE20K), the paper's recipe
    python experiments/psp_bins_ablation.py --data ade20k --data-root /data --precision bf16-mixed
    # 4 GPUs (DDP + SyncBN: the paper's batch 16), one cell (SLURM array task), the table
    python experiments/psp_bins_ablation.py --data ade20k --data-root /data --devices 4
    python experiments/psp_bins_ablation.py --data ade20k --data-root /data --variant "B1236 AVE DR" --seed 0
    python experiments/psp_bins_ablation.py collect --data ade20k --data-root /data
    # SLURM: a job array over the unfinished (variant, seed) cells, then a collect job
    GPUS_PER_NODE=4 experiments/slurm/submit.sh experiments/psp_bins_ablation.py --data ade20k --data-root /data
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.recipes import pspnet  # noqa: E402
from experiments.runner import main  # noqa: E402
from experiments.spec import Ablation, Claim, Variant  # noqa: E402


def psp(bins: tuple[int, ...], pooling: str = "avg", reduction: bool = False) -> dict:
    return {"backbone": "resnet50", "bins": bins, "pooling": pooling, "reduction": reduction}


ABLATION = Ablation(
    name="psp_bins",
    title="PSPNet: pyramid pooling bins, pooling type and dimension reduction",
    synthetic_task="context_tokens",
    variants={
        "baseline": Variant("pspnet", psp(()), "pspnet.table1.baseline"),
        "B1 MAX": Variant("pspnet", psp((1,), "max"), "pspnet.table1.b1_max"),
        "B1 AVE": Variant("pspnet", psp((1,), "avg"), "pspnet.table1.b1_ave"),
        "B1236 MAX": Variant("pspnet", psp((1, 2, 3, 6), "max"), "pspnet.table1.b1236_max"),
        "B1236 AVE": Variant("pspnet", psp((1, 2, 3, 6), "avg"), "pspnet.table1.b1236_ave"),
        "B1236 MAX DR": Variant("pspnet", psp((1, 2, 3, 6), "max", True), "pspnet.table1.b1236_max_dr"),
        "B1236 AVE DR": Variant("pspnet", psp((1, 2, 3, 6), "avg", True), "pspnet.table1.b1236_ave_dr"),
    },
    paper_data="ade20k",
    paper=pspnet.PAPER,
    claims=tuple(Claim(a, b, ">", source="PSPNet Table 1") for a, b in (
        ("baseline", "B1 AVE"), ("baseline", "B1236 AVE"),                # global context helps
        ("B1 MAX", "B1 AVE"), ("B1236 MAX", "B1236 AVE"), ("B1236 MAX DR", "B1236 AVE DR"),  # AVE > MAX
        ("B1 AVE", "B1236 AVE"),                                          # the pyramid beats one bin
        ("B1236 AVE", "B1236 AVE DR"))),                                  # dimension reduction helps
    sources=pspnet.SOURCES,
)

if __name__ == "__main__":
    main(ABLATION)
