"""``SyntheticDataModule``: any synthetic task (``task``, a key of ``SYNTHETIC_TASKS``) as a
``SegmentationDataModule``."""

from __future__ import annotations

import os

from datamodules.base import SegmentationDataModule
from datamodules.synthetic.tasks import task_class


class SyntheticDataModule(SegmentationDataModule):
    """The datamodule of synthetic `task`; see the dataset classes for the tasks.

    ``num_classes``, ``class_names`` and ``palette`` are the task's. ``image_size`` defaults to
    the task's (128; 160 for ``multiscale``) and ``crop_size`` to ``image_size``;
    ``scale_range=(1.0, 1.0)`` and ``augment="flip"`` keep the designed pixel scales: random
    rescaling would change the designed pixel widths and size ranges, and random crops would
    clip shapes (``multiscale``) or cut away the scene that names the object (``context``);
    flips change nothing a class depends on. All items have one size, so validation batches
    too.

    Each split is generated once per key and served from arrays (``materialize``): from the
    on-disk cache ``cache_dir`` (None: ``$SEGABL_CACHE`` or
    ``~/.cache/segmentation-ablations/synthetic``; False: memory only), which later runs,
    DDP ranks and loader workers share (see ``datamodules.synthetic.cache``). An item then
    costs a copy, not ~10 ms of drawing.

    ``data_seed`` fixes the generated items; ``seed`` (the run's seed) only drives the training
    shuffle and augmentation, so every seed of every variant sees the same images.
    """

    def __init__(
        self,
        task: str,
        num_train: int = 1000,
        num_val: int = 100,
        image_size: int | None = None,
        seed: int = 0,
        data_seed: int = 0,
        batch_size: int = 8,
        val_batch_size: int = 8,
        crop_size: int | None = None,
        scale_range: tuple[float, float] = (1.0, 1.0),
        augment: str = "flip",
        scale_step: float | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        cache_dir: str | os.PathLike | bool | None = None,
    ) -> None:
        dataset_class = task_class(task)
        image_size = dataset_class.default_image_size if image_size is None else image_size
        super().__init__(
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            crop_size=image_size if crop_size is None else crop_size,
            scale_range=scale_range,
            scale_step=scale_step,
            augment=augment,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            seed=seed,
        )
        self.task, self.dataset_class = task, dataset_class
        self.num_classes = len(dataset_class.class_names)
        self.class_names, self.palette = dataset_class.class_names, dataset_class.palette
        self.num_train, self.num_val = num_train, num_val
        self.image_size, self.data_seed = image_size, data_seed
        self.cache_dir = cache_dir

    def make_datasets(self, stage: str | None = None) -> None:
        make = self.dataset_class
        self.train_set = make("train", self.num_train, self.image_size, self.data_seed)
        if stage in (None, "fit"):  # evaluation alone need not build the training split
            self.train_set.materialize(self.cache_dir)
        self.val_set = make("val", self.num_val, self.image_size,
                            self.data_seed).materialize(self.cache_dir)
