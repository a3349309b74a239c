"""LightningDataModules, datasets and joint transforms. Nothing here knows about models.

- :class:`VOCSegmentation` / :class:`VOCDataModule` — Pascal VOC 2012 with the 10,582-image
  SBD-augmented ``train_aug`` split (computed from the list files).
- :class:`ADE20KSegmentation` / :class:`ADE20KDataModule` — ADEChallengeData2016, 150 classes,
  label 0 ignored and the rest shifted down once.
- Synthetic diagnostic tasks (the ``datamodules.synthetic`` package, one
  :class:`SyntheticDataModule` for all): ``thin`` (FCN skips), ``multiscale`` (ASPP),
  ``context`` and ``context_tokens`` (PSPNet pyramid pooling), ``touching`` (U-Net border
  weights), exportable to the VOC/ADE20K layouts with ``python -m datamodules.synthetic export``.
- ``python -m datamodules.download {voc2012,sbd,voc_aug_png,ade20k,all} --root DIR`` fetches,
  checks and unpacks the real datasets (``datamodules.download``, ``datamodules.archives``);
  ``... download verify --root DIR`` checks a tree (``datamodules.verify``). Not imported here.
- Instance segmentation (``datamodules.instance``): VOC ``SegmentationObject`` and the synthetic
  instance task for Mask R-CNN (``datamodules.synthetic.instances``); not imported here.
"""

from datamodules.ade20k import ADE20K_CLASSES, ADE20KDataModule, ADE20KSegmentation
from datamodules.base import SegmentationDataModule, UnpaddedDistributedSampler
from datamodules.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from datamodules.synthetic import SYNTHETIC_TASKS, SyntheticDataModule, export_synthetic
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
    "SegmentationDataModule",
    "SyntheticDataModule",
    "UnpaddedDistributedSampler",
    "VOCDataModule",
    "VOCSegmentation",
    "export_synthetic",
]
