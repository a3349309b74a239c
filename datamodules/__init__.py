"""LightningDataModules, datasets and joint transforms. Nothing here knows about models.

- :class:`VOCSegmentation` / :class:`VOCDataModule` — Pascal VOC 2012 with the 10,582-image
  SBD-augmented ``train_aug`` split (computed from the list files).
- :class:`ADE20KSegmentation` / :class:`ADE20KDataModule` — ADEChallengeData2016, 150 classes,
  label 0 ignored and the rest shifted down once.
- Synthetic diagnostic tasks (``datamodules.synthetic``): ``thin`` (FCN skips), ``multiscale``
  (ASPP), ``context`` (PSPNet pyramid pooling), exportable to the VOC/ADE20K layouts with
  ``python -m datamodules.synthetic export``.
"""

from datamodules.ade20k import ADE20K_CLASSES, ADE20KDataModule, ADE20KSegmentation
from datamodules.base import SegmentationDataModule, UnpaddedDistributedSampler
from datamodules.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from datamodules.synthetic import (
    SYNTHETIC_TASKS,
    ContextDataModule,
    MultiScaleDataModule,
    ThinStructuresDataModule,
    build_synthetic_datamodule,
    export_synthetic,
)
from datamodules.voc import VOC_CLASSES, VOC_PALETTE, VOCDataModule, VOCSegmentation

__all__ = [
    "ADE20K_CLASSES",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SYNTHETIC_TASKS",
    "VOC_CLASSES",
    "VOC_PALETTE",
    "ADE20KDataModule",
    "ADE20KSegmentation",
    "ContextDataModule",
    "MultiScaleDataModule",
    "SegmentationDataModule",
    "ThinStructuresDataModule",
    "UnpaddedDistributedSampler",
    "VOCDataModule",
    "VOCSegmentation",
    "build_synthetic_datamodule",
    "export_synthetic",
]
