"""DeepLab-LargeFOV's learning policy, batch size and iterations — DeepLab v2 (Chen et al., TPAMI
2017), Table 2 (VGG-16, VOC 2012 val, before CRF).

One model (``deeplab_largefov``: 3×3 fc6 at rate 12, 1024 channels), five training recipes:
v1's "step" policy (× 0.1 every 2,000 iterations) against "poly" (power 0.9), batch 30 against
10, 6K / 10K / 20K iterations; the last row is the v2 recipe (``experiments/recipes/deeplab.py``).
Each row is a recipe override of its variant; on the smoke preset the rows keep their ratios
(steps × 300/20K, batch 24 vs 8, steps of the step policy at 1/3 and 2/3). The smoke preset uses
the synthetic ``multiscale`` task, as the ASPP ablation.

    # CPU smoke (default; synthetic data, 3 seeds)
    python experiments/deeplab_v2_schedule_ablation.py
    # what a run will do: every cell's recipe card (JSON lines + a table); reads and writes nothing
    python experiments/deeplab_v2_schedule_ablation.py --data voc --data-root /data --dry-run
    # one GPU, real data (VOC 2012 + SBD train_aug), the paper's recipes
    python experiments/deeplab_v2_schedule_ablation.py --data voc --data-root /data --precision bf16-mixed
    # 2 GPUs (15 or 5 images each: 2 divides both batches), one (variant, seed) cell, the table
    python experiments/deeplab_v2_schedule_ablation.py --data voc --data-root /data --devices 2
    python experiments/deeplab_v2_schedule_ablation.py --data voc --data-root /data --variant "step, batch 30, 6K" --seed 0
    python experiments/deeplab_v2_schedule_ablation.py collect --data voc --data-root /data
    # SLURM: a job array over the unfinished (variant, seed) cells, then a collect job
    GPUS_PER_NODE=2 experiments/slurm/submit.sh experiments/deeplab_v2_schedule_ablation.py --data voc --data-root /data
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.recipe import Source  # noqa: E402
from experiments.recipes import deeplab  # noqa: E402
from experiments.runner import main  # noqa: E402
from experiments.spec import Ablation, Claim, Variant  # noqa: E402

SMOKE_SCALE = 300 / 20000  # the smoke preset's 300 steps stand for the paper's 20K


def row(policy: str, batch: int, iterations: int, key: str) -> Variant:
    def recipe(steps: int, global_batch: int, every: int) -> dict:
        out = {"data": {"global_batch": global_batch}, "trainer": {"max_steps": steps}}
        if policy == "step":  # × 0.1 every `every` iterations (v1 Sec. 4.1)
            out["optim"] = {"lr_schedule": "step", "lr_steps": tuple(range(every, steps, every))}
        return out

    smoke_steps = round(iterations * SMOKE_SCALE)
    table = "v2 Table 2, this row"
    sources = {"global_batch": Source(batch, table), "max_steps": Source(iterations, table),
               "lr_schedule": Source(policy, f"{table} ('step': x0.1 every 2,000 iterations, v1 Sec. 4.1)")}
    return Variant("deeplab_largefov", {}, f"deeplab_v2.table2.{key}", recipe=recipe(iterations, batch, 2000),
                   smoke=recipe(smoke_steps, batch * 8 // 10, round(2000 * SMOKE_SCALE)), sources=sources)


ABLATION = Ablation(
    name="deeplab_v2_schedule",
    title="DeepLab v2: learning policy, batch size and iterations (LargeFOV)",
    synthetic_task="multiscale",
    variants={
        "step, batch 30, 6K": row("step", 30, 6000, "step_b30_6k"),
        "poly, batch 30, 6K": row("poly", 30, 6000, "poly_b30_6k"),
        "poly, batch 30, 10K": row("poly", 30, 10000, "poly_b30_10k"),
        "poly, batch 10, 10K": row("poly", 10, 10000, "poly_b10_10k"),
        "poly, batch 10, 20K": row("poly", 10, 20000, "poly_b10_20k"),
    },
    paper_data="voc",
    claims=(
        Claim("step, batch 30, 6K", "poly, batch 30, 6K", ">", source="DeepLab v2 Table 2: poly vs step policy"),
        Claim("poly, batch 30, 6K", "poly, batch 30, 10K", ">", source="DeepLab v2 Table 2: more iterations"),
        Claim("poly, batch 30, 10K", "poly, batch 10, 10K", "≈", source="DeepLab v2 Table 2: batch 10 vs 30"),
        Claim("poly, batch 10, 10K", "poly, batch 10, 20K", ">", source="DeepLab v2 Table 2: 20K vs 10K at batch 10"),
    ),
    paper=deeplab.PAPER,
    sources=deeplab.SOURCES,
)

if __name__ == "__main__":
    main(ABLATION)
