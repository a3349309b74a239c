"""What the runner needs to know about a kind of task: its data, its LightningModule, its metrics.

Two tasks share one runner, one run-directory layout and one results table:

- ``semantic``: :class:`lightning_modules.SegmentationModule` (with the paper recipes of
  ``lightning_modules.recipes``), the semantic datamodules, mIoU first.
- ``instance``: :class:`lightning_modules.instance.InstanceSegmentationModule` (Mask R-CNN),
  :mod:`datamodules.instance`, COCO mask AP first.

Metric keys are those of the module's ``last_metrics["val"]`` (fractions in [0, 1], except
``checkerboard``, a ratio); the table shows the primary metric as mean ± std over seeds next
to the paper's number, and the other metrics that the cells recorded as means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# metric key -> (column header, multiply by for display)
METRIC_LABELS: dict[str, tuple[str, float]] = {
    "miou": ("mIoU", 100.0),
    "trimap_miou": ("trimap mIoU", 100.0),
    "pixel_acc": ("pixel acc", 100.0),
    "mean_acc": ("mean acc", 100.0),
    "fwiou": ("fwIoU", 100.0),
    "checkerboard": ("checkerboard ×1000", 1000.0),
    "mask_ap": ("mask AP", 100.0),
    "mask_ap50": ("mask AP50", 100.0),
    "mask_ap75": ("mask AP75", 100.0),
    "box_ap": ("box AP", 100.0),
    "box_ap50": ("box AP50", 100.0),
    "box_ap75": ("box AP75", 100.0),
}


@dataclass(frozen=True)
class Task:
    name: str
    primary: str                   # the metric the table leads with and the best checkpoint tracks
    secondary: tuple[str, ...]     # shown when the cells recorded them, in this order

    @property
    def monitor(self) -> str:
        return f"val/{self.primary}"

    def make_datamodule(self, kind: str, root: str | None, synthetic_task: str, seed: int, data: dict[str, Any]):
        if self.name == "instance":
            from datamodules.instance import build_instance_datamodule

            return build_instance_datamodule(kind, root, seed=seed, **data)
        if kind == "synthetic":
            from datamodules.synthetic import build_synthetic_datamodule

            return build_synthetic_datamodule(synthetic_task, seed=seed, **data)
        if kind == "voc":
            from datamodules.voc import VOCDataModule

            return VOCDataModule(root, seed=seed, **data)
        if kind == "ade20k":
            from datamodules.ade20k import ADE20KDataModule

            return ADE20KDataModule(root, seed=seed, **data)
        raise ValueError(f"unknown dataset kind {kind!r}; expected synthetic, voc or ade20k")

    def build_module(self, model_name: str, model, num_classes: int, class_names, module: dict[str, Any]):
        if self.name == "instance":
            from lightning_modules.instance import InstanceSegmentationModule

            return InstanceSegmentationModule(model, num_classes, class_names=tuple(class_names), **module)
        from lightning_modules import RECIPES

        return RECIPES[model_name](model, num_classes, class_names=tuple(class_names), **module_arguments(module))


def module_arguments(module: dict[str, Any]) -> dict[str, Any]:
    """A cell's recorded (JSON) module settings as ``SegmentationModule`` arguments: ``crf`` (the
    dense-CRF parameters) and ``checkerboard_period`` become evaluators."""
    from lightning_modules.checkerboard import CheckerboardEvaluator
    from lightning_modules.crf import CRFEvaluator, CRFParams

    kwargs = dict(module)
    crf, period = kwargs.pop("crf", None), kwargs.pop("checkerboard_period", None)
    evaluators = list(kwargs.pop("evaluators", ()))
    if crf is not None:
        evaluators.append(CRFEvaluator(CRFParams(**crf)))
    if period is not None:
        evaluators.append(CheckerboardEvaluator(period))
    return {**kwargs, "evaluators": evaluators} if evaluators else kwargs


TASKS: dict[str, Task] = {
    "semantic": Task("semantic", "miou", ("trimap_miou", "pixel_acc", "mean_acc", "fwiou", "checkerboard")),
    "instance": Task("instance", "mask_ap", ("mask_ap50", "mask_ap75", "box_ap", "box_ap50", "box_ap75")),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]
