"""FCN-32s vs FCN-16s vs FCN-8s — Long et al., CVPR 2015, Table 2 (skip fusion from pool4, pool3),
and FCN-32s-fixed: only the classifier ``score_fr`` is trained (``optim.train_only``), the rest of
the net frozen as it starts (ImageNet; on the smoke preset, random features).

Stage-wise, as the paper (Sec. 4.2): FCN-16s starts from the final FCN-32s of the same seed and
FCN-8s from FCN-16s (``init_from``; the runner trains parents first), each at 1/100 of the
previous learning rate. "FCN-8s at-once" is the reference code's alternative (not in the
paper's table): all skips trained together from ImageNet, pool4/pool3 scaled by 0.01/0.0001.
The paper preset trains on SBD train and evaluates on seg11valid, whole images, 20 per batch.
The smoke preset uses the synthetic ``thin`` task, whose classes are easy to recognise but sit
on 1–3 px structures that only fine predictions can outline.

    # CPU smoke (default; synthetic data, 3 seeds)
    python experiments/fcn_skip_ablation.py
    # what a run will do: every cell's recipe card (JSON lines + a table); reads and writes nothing
    python experiments/fcn_skip_ablation.py --data voc --data-root /data --dry-run
    # one GPU, real data (VOC 2012 + SBD: SBD train -> seg11valid), 20 accumulated whole images
    python experiments/fcn_skip_ablation.py --data voc --data-root /data --precision bf16-mixed
    # 4 GPUs x 1 image x 5 accumulation steps (DDP; the paper's batch 20), one cell (SLURM array
    # task: FCN-8s needs FCN-16s seed 1 finished), then the table
    python experiments/fcn_skip_ablation.py --data voc --data-root /data --devices 4 --accumulate 5
    python experiments/fcn_skip_ablation.py --data voc --data-root /data --variant FCN-8s --seed 1
    python experiments/fcn_skip_ablation.py collect --data voc --data-root /data
    # SLURM: one job array per stage (32s/at-once, then 16s, then 8s, each after the previous), then collect
    GPUS_PER_NODE=4 experiments/slurm/submit.sh experiments/fcn_skip_ablation.py --data voc --data-root /data --accumulate 5
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.recipes import fcn  # noqa: E402
from experiments.runner import main  # noqa: E402
from experiments.spec import Ablation, Claim, Variant  # noqa: E402

ABLATION = Ablation(
    name="fcn_skip",
    title="FCN: 32s vs 16s vs 8s",
    synthetic_task="thin",
    variants={
        "FCN-32s-fixed": Variant("fcn32s", {}, "fcn.table2.fcn32s_fixed",
                                 recipe={"optim": {"train_only": ("score_fr",)}}),
        "FCN-32s": Variant("fcn32s", {}, "fcn.table2.fcn32s"),
        "FCN-16s": Variant("fcn16s", {}, "fcn.table2.fcn16s", recipe={"init_from": "FCN-32s"}),
        "FCN-8s": Variant("fcn8s", {}, "fcn.table2.fcn8s", recipe={"init_from": "FCN-16s"}),
        "FCN-8s at-once": Variant("fcn8s", {"skip_scales": fcn.AT_ONCE_SKIP_SCALES}, None,
                                  recipe={"notes": fcn.AT_ONCE_NOTES}),
    },
    paper_data="voc",
    paper=fcn.PAPER,
    sources=fcn.SOURCES,
    # 1000 steps at lr 5e-3: at 300 steps / 2e-3 no FCN variant had left the all-background
    # solution yet (VGG16-BN from scratch). The stages keep AdamW's lr: the paper's ÷100 per
    # stage is for SGD fine-tuning a converged ImageNet-initialised net.
    smoke={"optim": {"lr": 5e-3, "stage_lr_factor": 1.0}, "trainer": {"max_steps": 1000, "val_every": 500}},
    claims=(
        Claim("FCN-32s", "FCN-16s", ">", source="FCN Table 2"),
        Claim("FCN-16s", "FCN-8s", ">", source="FCN Table 2"),
        # Sec. 4.2: the skips "improve the fine structure"; no boundary number in the paper
        Claim("FCN-32s", "FCN-16s", ">", "trimap_miou", source="FCN Sec. 4.2, Fig. 4"),
        Claim("FCN-16s", "FCN-8s", ">", "trimap_miou", source="FCN Sec. 4.2, Fig. 4"),
    ),
)

if __name__ == "__main__":
    main(ABLATION)
