"""Task kinds and datasets: plain dicts from names to what builds them.

- ``TASKS``: ``semantic`` (:class:`lightning_modules.SegmentationModule`, mIoU first) and
  ``instance`` (:class:`lightning_modules.instance.InstanceSegmentationModule`, COCO mask AP
  first). Each names its datasets, its module builder and its metrics.
- a task's ``datasets``: ``synthetic`` / ``voc`` / ``ade20k`` → a :class:`DatasetKind` that
  builds the LightningDataModule from a resolved :class:`experiments.recipe.Data` section and
  knows its class count (a dry run needs it without reading any file).

Metric keys are those of the module's ``last_metrics["val"]`` (fractions in [0, 1], except
``checkerboard``, a ratio); the table shows the primary metric as mean ± std over seeds next
to the paper's number, and the other metrics that the cells recorded as means.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from experiments.recipe import Data, Recipe, RecipeError

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

SYNTHETIC_ONLY = ("image_size", "num_train", "num_val")


@dataclass(frozen=True)
class DatasetKind:
    name: str
    # (root, synthetic_task, seed, per-device batch, data section) -> LightningDataModule
    build: Callable[..., Any]
    num_classes: Callable[[str], int]          # synthetic_task -> classes (others ignore it)
    train_split: str                           # the defaults the card shows
    val_split: str
    splits: tuple[str, ...] = ()               # valid split names; () = fixed train/val
    needs_root: bool = True

    def check(self, data: Data) -> None:
        """Settings this dataset cannot honour are errors, not silently dropped."""
        if self.needs_root:
            for key in SYNTHETIC_ONLY:
                if getattr(data, key) is not None:
                    raise RecipeError(f"data.{key} applies to synthetic data only ({self.name} keeps its own)")
        for key in ("train_split", "val_split"):
            value = getattr(data, key)
            if value is not None and value not in self.splits:
                valid = self.splits or (getattr(self, key),)
                raise RecipeError(f"data.{key}={value!r} is not a split of {self.name}; expected one of {list(valid)}")

    def splits_of(self, data: Data) -> tuple[str, str]:
        return data.train_split or self.train_split, data.val_split or self.val_split


def _common(data: Data, batch: int) -> dict[str, Any]:
    return {"batch_size": batch, "val_batch_size": data.val_batch_size, "num_workers": data.num_workers}


def _augmented(data: Data) -> dict[str, Any]:
    return {"crop_size": data.crop_size, "scale_range": data.scale_range, "scale_step": data.scale_step,
            "augment": data.augment}


def _synthetic(root, task: str, seed: int, batch: int, data: Data):
    from datamodules.synthetic import SyntheticDataModule

    sizes = {k: getattr(data, k) for k in SYNTHETIC_ONLY if getattr(data, k) is not None}
    aug = {k: v for k, v in _augmented(data).items() if v is not None}
    return SyntheticDataModule(task=task, seed=seed, **_common(data, batch), **aug, **sizes)


def _voc(root, task, seed: int, batch: int, data: Data):
    from datamodules.voc import VOCDataModule

    train, val = VOC.splits_of(data)
    return VOCDataModule(root, train_split=train, val_split=val, seed=seed, **_common(data, batch),
                         **_augmented(data))


def _ade20k(root, task, seed: int, batch: int, data: Data):
    from datamodules.ade20k import ADE20KDataModule

    return ADE20KDataModule(root, seed=seed, **_common(data, batch), **_augmented(data))


def _instances(kind: str):
    def build(root, task, seed: int, batch: int, data: Data):
        from datamodules.instance import InstanceDataModule

        train, val = (data.train_split or "train", data.val_split or "val")
        sizes = {k: getattr(data, k) for k in SYNTHETIC_ONLY if getattr(data, k) is not None}
        return InstanceDataModule(kind, root, seed=seed, augment=data.augment, train_split=train,
                                  val_split=val, **_common(data, batch), **sizes)
    return build


def _synthetic_classes(task: str) -> int:
    from datamodules.synthetic import SYNTHETIC_TASKS

    return len(SYNTHETIC_TASKS[task].class_names)


def _synthetic_instance_classes(task: str) -> int:
    from datamodules.synthetic.instances import SyntheticInstances

    return len(SyntheticInstances.class_names)


SYNTHETIC = DatasetKind("synthetic", _synthetic, _synthetic_classes, "train", "val", needs_root=False)
VOC = DatasetKind("voc", _voc, lambda task: 21, "train_aug", "val",
                  ("train", "val", "trainval", "train_aug", "sbd_train", "seg11valid"))
ADE20K = DatasetKind("ade20k", _ade20k, lambda task: 150, "training", "validation")
SYNTHETIC_INSTANCES = DatasetKind("synthetic", _instances("synthetic"), _synthetic_instance_classes,
                                  "train", "val", needs_root=False)
VOC_INSTANCES = DatasetKind("voc", _instances("voc"), lambda task: 21, "train", "val", ("train", "val", "trainval"))


_SCHEDULE = ("optimizer", "lr", "momentum", "weight_decay", "lr_schedule", "poly_power", "lr_steps",
             "lr_gamma", "warmup_steps", "head_lr_mult", "bias_lr_mult")


def _semantic_module(model, num_classes: int, class_names, recipe: Recipe):
    """SegmentationModule from the recipe: every optim field by name, the evaluation protocol,
    and the evaluators (dense CRF, checkerboard statistic) the recipe asks for."""
    from experiments.card import check_model_fits_recipe
    from lightning_modules.segmentation import SegmentationModule

    check_model_fits_recipe(model, recipe)
    o, e = recipe.optim, recipe.eval
    evaluators = []
    if e.crf is not None:
        from lightning_modules.crf import CRFEvaluator, CRFParams

        evaluators.append(CRFEvaluator(CRFParams(**e.crf)))
    if e.checkerboard_period is not None:
        from lightning_modules.checkerboard import CheckerboardEvaluator

        evaluators.append(CheckerboardEvaluator(e.checkerboard_period))
    return SegmentationModule(
        model, num_classes, class_names=tuple(class_names),
        **{k: getattr(o, k) for k in (*_SCHEDULE, "aux_weight", "bn", "bn_momentum", "border_weight", "train_only")},
        **semantic_eval_kwargs(e), evaluators=evaluators, channels_last=recipe.trainer.channels_last,
    )


def semantic_eval_kwargs(e) -> dict[str, Any]:
    """The SegmentationModule arguments that say how it evaluates, from a recipe's ``eval``."""
    return dict(eval_mode=e.mode, eval_scales=e.scales, eval_flip=e.flip, eval_window=e.window,
                eval_stride=e.stride, eval_pad_to=e.pad_to, eval_base_size=e.base_size,
                eval_output_stride=e.output_stride, trimap_width=e.trimap_width)


def _instance_module(model, num_classes: int, class_names, recipe: Recipe):
    """InstanceSegmentationModule: the optimisation fields (COCO AP is its only evaluation)."""
    from lightning_modules.instance import InstanceSegmentationModule

    if recipe.optim.aux_weight or recipe.optim.border_weight or recipe.eval.crf is not None or recipe.optim.train_only:
        raise RecipeError("optim.aux_weight, optim.border_weight, optim.train_only and eval.crf do not apply "
                          "to Mask R-CNN")
    from torchvision.ops import FrozenBatchNorm2d

    frozen = any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    if frozen != (recipe.optim.bn == "frozen"):  # torchvision freezes BN inside the model
        raise RecipeError(f"optim.bn={recipe.optim.bn!r}, but this Mask R-CNN was built with "
                          f"{'frozen' if frozen else 'trained'} BatchNorm; set model.frozen_bn to match")
    return InstanceSegmentationModule(model, num_classes, class_names=tuple(class_names),
                                      **{k: getattr(recipe.optim, k) for k in _SCHEDULE},
                                      channels_last=recipe.trainer.channels_last)


@dataclass(frozen=True)
class Task:
    name: str
    primary: str                   # the metric the table leads with and the best checkpoint tracks
    secondary: tuple[str, ...]     # shown when the cells recorded them, in this order
    datasets: dict[str, DatasetKind]
    build_module: Callable[..., Any]           # (model, num_classes, class_names, recipe)

    @property
    def monitor(self) -> str:
        return f"val/{self.primary}"

    def dataset(self, name: str) -> DatasetKind:
        if name not in self.datasets:
            raise RecipeError(f"the {self.name} task has no dataset {name!r}; expected one of {sorted(self.datasets)}")
        return self.datasets[name]


TASKS: dict[str, Task] = {
    "semantic": Task("semantic", "miou", ("trimap_miou", "pixel_acc", "mean_acc", "fwiou", "checkerboard"),
                     {"synthetic": SYNTHETIC, "voc": VOC, "ade20k": ADE20K}, _semantic_module),
    "instance": Task("instance", "mask_ap", ("mask_ap50", "mask_ap75", "box_ap", "box_ap50", "box_ap75"),
                     {"synthetic": SYNTHETIC_INSTANCES, "voc": VOC_INSTANCES}, _instance_module),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]
