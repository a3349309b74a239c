"""The LightningModule that trains and evaluates Mask R-CNN (``models.mask_rcnn``).

It receives the plain torchvision-style model and owns the loss, the metrics, the optimiser,
the schedule and the logging, as ``SegmentationModule`` does for the semantic models:

- Loss: the sum of torchvision's loss dict (RPN objectness + box regression, R-CNN
  classification + box regression, mask binary cross-entropy), each term logged.
- Optimiser and schedule: exactly ``SegmentationModule``'s (the same code, not a copy;
  ``lightning_modules.optim``): parameter groups (``head_lr_mult`` for everything outside
  ``model.backbone`` (ResNet + FPN), i.e. the RPN and RoI heads; ``bias_lr_mult`` for biases;
  no weight decay on biases and norms), SGD or AdamW, ``lr_schedule`` "poly", "step" or
  "constant" after an optional linear warm-up. The paper's own schedule (He et al. Sec. 3.1:
  lr 0.02, batch 16, ÷10 at 120k of 160k iterations) is ``lr_schedule="step",
  lr_steps=(120000,)``: each step passed multiplies by ``lr_gamma``. All come from
  ``global_step``: a resumed run continues the schedule exactly.
- Metrics: COCO mask and box AP (AP@[.5:.95], AP50, AP75) from torchmetrics'
  ``MeanAveragePrecision`` over the whole validation set, synced across processes, with the
  official COCO evaluation code (``backend``: pycocotools or faster_coco_eval). After every
  validation ``last_metrics = {"val": {"mask_ap", "mask_ap50", "mask_ap75", "box_ap",
  "box_ap50", "box_ap75"}}`` as fractions in [0, 1], logged as ``val/mask_ap`` etc.
- Per-image records (``lightning_modules/per_image_ap.py``): the same evaluation's per-image
  matches, scores and ground-truth counts, from which any resample of the images gives COCO AP
  exactly (checked against the reported numbers every validation), as
  ``last_per_image["val"]``; the cell writes them to ``per_image_val.npz`` for
  ``experiments/stats.py``'s paired bootstrap. Each image's dataset index comes from the
  evaluation loader's sampler (``per_image.evaluation_order``), as for the semantic models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning as L
import torch
from torch import nn

from lightning_modules import optim
from lightning_modules.per_image import evaluation_order
from lightning_modules.per_image_ap import PerImageMeanAveragePrecision, run_ap
from lightning_modules.segmentation import SegmentationModule

METRIC_KEYS = {"mask_ap": "segm_map", "mask_ap50": "segm_map_50", "mask_ap75": "segm_map_75",
               "box_ap": "bbox_map", "box_ap50": "bbox_map_50", "box_ap75": "bbox_map_75"}


def detection_metric(backend: str = "pycocotools") -> PerImageMeanAveragePrecision:
    """COCO box and mask AP over a whole dataset (predicted masks thresholded at 0.5), keeping the
    per-image records a paired bootstrap needs (``lightning_modules/per_image_ap.py``)."""
    return PerImageMeanAveragePrecision(backend=backend)


def to_metric_inputs(outputs: Sequence[dict], targets: Sequence[dict]) -> tuple[list, list]:
    """torchvision detections / our targets → the dicts ``MeanAveragePrecision.update`` takes."""
    preds = [{"boxes": o["boxes"], "scores": o["scores"], "labels": o["labels"],
              "masks": (o["masks"][:, 0] >= 0.5) if o["masks"].dim() == 4 else o["masks"].bool()}
             for o in outputs]
    gts = [{"boxes": t["boxes"], "labels": t["labels"], "masks": t["masks"].bool()}
           for t in targets]
    return preds, gts


class InstanceSegmentationModule(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        optimizer: str = "sgd",
        lr: float = 0.02,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        lr_schedule: str = "poly",
        poly_power: float = 0.9,
        lr_steps: Sequence[int] = (),
        lr_gamma: float = 0.1,
        warmup_steps: int = 0,
        head_lr_mult: float = 1.0,
        bias_lr_mult: float = 1.0,
        channels_last: bool = False,
        backend: str = "pycocotools",
    ) -> None:
        super().__init__()
        optim.check_optimisation(optimizer, lr, momentum, weight_decay, lr_schedule, poly_power, lr_steps,
                                 lr_gamma, warmup_steps, head_lr_mult, bias_lr_mult, model)
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.num_classes = num_classes
        self.val_map = detection_metric(backend)
        self.last_metrics: dict[str, dict] = {}
        self.last_per_image: dict[str, dict] = {}  # "val": the per-image AP records, written by the cell
        self._eval_order: list[int] | None = None
        self._eval_seen = 0
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        return self.model(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(images, targets)
        n = len(images)
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), batch_size=n)
        loss = sum(losses.values())
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=n)
        return loss

    # --- optimisation: SegmentationModule's parameter groups and step-wise schedule --------
    configure_optimizers = SegmentationModule.configure_optimizers
    total_steps = SegmentationModule.total_steps
    lr_factor = SegmentationModule.lr_factor
    apply_lr_schedule = SegmentationModule.apply_lr_schedule

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self.log("train/lr", optim.device_scalar(self, self.apply_lr_schedule()), batch_size=len(batch[0]))

    # --- evaluation: one dataset-level COCO evaluation per validation ------------------------
    _next_indices = SegmentationModule._next_indices  # dataset indices of the next evaluated images

    def on_validation_epoch_start(self) -> None:
        self._eval_seen = 0
        self._eval_order = (evaluation_order(self.trainer.val_dataloaders) or []) if self._trainer is not None else None

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        self.val_map.update(*to_metric_inputs(self.model(images), targets),
                            index=self._next_indices(len(images)))

    def on_validation_epoch_end(self) -> None:
        result = self.val_map.compute()  # synced over processes by torchmetrics
        records = self.val_map.records
        self.val_map.reset()
        self._eval_seen, self._eval_order = 0, None
        metrics = {}
        for key, name in METRIC_KEYS.items():
            value = float(result[name])
            metrics[key] = value if value >= 0 else math.nan  # -1: no ground truth at all
            self.log(f"val/{key}", metrics[key], prog_bar=key == "mask_ap")
            # the records reproduce every reported number (float32, as torchmetrics returns them)
            if records is not None and value >= 0 and torch.tensor(run_ap(records, key)).float() != result[name].float():
                raise RuntimeError(f"per-image AP records give {key} = {run_ap(records, key)}, the evaluation "
                                   f"{value}: a bug")
        self.last_metrics["val"] = metrics
        if records is not None:
            self.last_per_image["val"] = records
