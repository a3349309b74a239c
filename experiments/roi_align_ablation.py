"""RoIPool vs RoIAlign in Mask R-CNN — He et al., ICCV 2017, Table 2c (mask AP, ResNet-50-C4,
COCO minival); Table 2d repeats it at stride 32 (C5) with box AP too.

RoIPool rounds each region to the feature grid and its bins to whole cells before max-pooling
them; RoIAlign samples the continuous bins bilinearly (``roi_layer``, for the box and the mask
head alike; ``models/mask_rcnn.py``). "RoIAlign" is the paper's layer (``aligned=False``, as
Detectron and torchvision); "RoIAlign (aligned)" adds Detectron2's half-pixel correction, which
the paper does not have. The other rows of Table 2c: "RoIWarp" rounds the box like RoIPool and
samples it bilinearly (max or average over the samples, the table's "agg."), "RoIAlign (max)"
takes the maximum of RoIAlign's four samples per bin. ``python -m tools.roi_quantisation`` draws
what RoIPool and RoIAlign read.

Differences from the paper, on purpose: the backbone is ResNet-50-FPN (the paper's final
model, Sec. 3.1 / Table 3; Table 2c used ResNet-50-C4) and the real data is VOC 2012
``SegmentationObject`` (1,464 train images), not COCO, so the paper column is a reference for
the direction and size of the gap, never a target (no Δ is shown). The smoke preset trains a
width-1/8 network from scratch on ``SyntheticInstances`` (thin stars, rings and arcs 12-40 px
across, ``datamodules/synthetic/instances.py``), where a 2 px error costs a mask far more than a
box.

    # CPU smoke (default; synthetic data, 3 seeds; one thread per process is fastest on
    # shared cores: OMP_NUM_THREADS=1)
    python experiments/roi_align_ablation.py
    # what a run will do: every cell's recipe card (JSON lines + a table); reads and writes nothing
    python experiments/roi_align_ablation.py --data voc --data-root /data --dry-run
    # one GPU, real data (VOC 2012 SegmentationObject), the paper's recipe, ImageNet backbone
    python experiments/roi_align_ablation.py --data voc --data-root /data --accumulate 8
    # 8 GPUs × 2 images (the paper's batch 16), or one (variant, seed) cell, then the table
    python experiments/roi_align_ablation.py --data voc --data-root /data --devices 8
    python experiments/roi_align_ablation.py --data voc --data-root /data --variant RoIPool --seed 0
    python experiments/roi_align_ablation.py collect --data voc --data-root /data
    # SLURM: a job array over the unfinished (variant, seed) cells, then a collect job
    GPUS_PER_NODE=8 experiments/slurm/submit.sh experiments/roi_align_ablation.py --data voc --data-root /data
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.recipes import mask_rcnn  # noqa: E402
from experiments.runner import main  # noqa: E402
from experiments.spec import Ablation, Claim, Variant  # noqa: E402

ABLATION = Ablation(
    name="roi_align",
    title="Mask R-CNN: RoIPool vs RoIAlign",
    task="instance",
    synthetic_task="instances",
    paper_data="coco",
    variants={
        "RoIPool": Variant("mask_rcnn", {"roi_layer": "RoIPool"}, "mask_rcnn.table2c.roipool"),
        "RoIAlign": Variant("mask_rcnn", {"roi_layer": "RoIAlign", "aligned": False},
                            "mask_rcnn.table2c.roialign"),
        "RoIWarp": Variant("mask_rcnn", {"roi_layer": "RoIWarp", "roi_aggregation": "max"},
                           "mask_rcnn.table2c.roiwarp"),
        "RoIWarp (avg)": Variant("mask_rcnn", {"roi_layer": "RoIWarp", "roi_aggregation": "avg"},
                                 "mask_rcnn.table2c.roiwarp_ave"),
        "RoIAlign (max)": Variant("mask_rcnn", {"roi_layer": "RoIAlign", "aligned": False, "roi_aggregation": "max"},
                                  "mask_rcnn.table2c.roialign_max"),
        "RoIAlign (aligned)": Variant("mask_rcnn", {"roi_layer": "RoIAlign", "aligned": True}),
    },
    paper=mask_rcnn.PAPER,
    sources=mask_rcnn.SOURCES,
    # Whole 128 px images (no resizing), anchors 8-128 px for objects of 12-40 px, fewer
    # proposals; 300 steps. One cell (RoIAlign, seed 0, one thread) took 167 s in the runner
    # with the 2 cores shared by other jobs (load 8); ~0.2 s per step when less loaded.
    smoke={"model": {"frozen_bn": False, "min_size": 128, "max_size": 128, "anchor_sizes": (8, 16, 32, 64, 128),
                     "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
                     "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100,
                     "box_batch_size_per_image": 128, "box_detections_per_img": 50},
           "data": {"global_batch": 4, "val_batch_size": 8, "num_train": 400, "num_val": 50,
                    "image_size": 128}},
    # COCO AP per resample from the per-image records (lightning_modules/per_image_ap.py)
    claims=(
        Claim("RoIPool", "RoIAlign", ">", "mask_ap", source="Mask R-CNN Table 2c"),
        # Table 2d (stride 32) is the only one with box AP: RoIAlign helps boxes too (+5.8)
        Claim("RoIPool", "RoIAlign", ">", "box_ap", paper=("mask_rcnn.table2d.roipool", "mask_rcnn.table2d.roialign"),
              source="Mask R-CNN Table 2d"),
    ),
)

if __name__ == "__main__":
    main(ABLATION)
