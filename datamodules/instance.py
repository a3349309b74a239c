"""Instance segmentation data: VOC 2012 ``SegmentationObject`` and a synthetic task built for
Mask R-CNN's RoIAlign vs RoIPool comparison (He et al., ICCV 2017, Table 2c).

Items are ``(uint8 3×H×W image, target)`` with ``target`` = ``{"boxes": float32 N×4 (x1, y1,
x2, y2) pixel corners, x2/y2 exclusive as COCO's [x, y, w, h] with w = pixel extent,
"labels": int64 N (1..C-1), "masks": uint8 N×H×W, "image_id": int (index in the split)}``;
the datamodule turns the image into float [0, 1] (Mask R-CNN normalises internally) and
batches ``(list of images, list of targets)`` as torchvision detection expects.

VOC 2012 layout under ``root`` (the ``VOCtrainval_11-May-2012.tar`` release; SBD has no
instance PNGs, so there is no ``train_aug`` here: train 1,464, val 1,449 images)::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationObject/<id>.png   palette PNG: 0 background, 1..K instances,
                                                    255 void boundary (belongs to no instance)
    VOCdevkit/VOC2012/SegmentationClass/<id>.png    palette PNG: class 0..20 per pixel, 255 void
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt

An instance's class is the ``SegmentationClass`` value on its pixels, which must be one class
in 1..20; anything else is an error naming both files. Write the synthetic task in that
layout (the VOC reader reads the annotations back exactly; images are JPEGs at quality 100,
without chroma subsampling, about 1 grey level off)::

    python -m datamodules.instance export --out data/synth_instances

The synthetic task (``SyntheticInstances``, ``export_synthetic_instances``, the ``export``
command's ``main``, ``instances_to_target``) lives in :mod:`datamodules.synthetic.instances`;
every name is re-exported here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from datamodules.base import SegmentationDataModule
from datamodules.constants import IGNORE_INDEX
from datamodules.io import (
    CheckedSegmentationDataset,
    CorruptSampleError,
    check_label_values,
    check_same_size,
    read_image,
    read_mask,
)
from datamodules.synthetic.instances import (
    SyntheticInstances,
    export_synthetic_instances,
    instances_to_target,
    main,
)
from datamodules.voc import VOC_CLASSES

__all__ = [
    # datamodules.synthetic.instances
    "SyntheticInstances", "export_synthetic_instances", "instances_to_target", "main",
    # the VOC reader and the datamodule (this module)
    "LAYOUT", "VOCInstanceSegmentation", "detection_collate", "InstanceTransform",
    "InstanceDataModule", "build_instance_datamodule",
]

LAYOUT = """expected layout:
  <root>/VOCdevkit/VOC2012/JPEGImages/*.jpg
  <root>/VOCdevkit/VOC2012/SegmentationObject/*.png   (instance ids 1..K, 255 void)
  <root>/VOCdevkit/VOC2012/SegmentationClass/*.png    (classes 0..20, 255 void)
  <root>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
download: python -m datamodules.download voc2012 --root <root>
  (http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar)"""

_VALID_CLASS = torch.zeros(256, dtype=torch.bool)
_VALID_CLASS[: len(VOC_CLASSES)] = True
_VALID_CLASS[IGNORE_INDEX] = True


class VOCInstanceSegmentation(CheckedSegmentationDataset):
    """VOC 2012 instances (see the module docstring); ``transforms(image, target)`` if given.

    Layout problems raise ``FileNotFoundError`` at construction, an empty split list
    ``ValueError``; a bad item (undecodable file, size mismatch, class values outside
    {0..20, 255}, an instance without exactly one class) ``CorruptSampleError`` naming the file.
    ``skip_corrupt`` as in ``datamodules.io.CheckedSegmentationDataset``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 transforms: Callable[[torch.Tensor, dict], Any] | None = None,
                 skip_corrupt: bool = False) -> None:
        super().__init__(transforms, skip_corrupt, check_labels=True)
        self.root, self.split = Path(root), split
        voc = self.root / "VOCdevkit" / "VOC2012"
        if not self.root.is_dir():
            raise FileNotFoundError(f"VOC root {self.root} does not exist\n{LAYOUT}")
        need = [voc / d for d in ("JPEGImages", "SegmentationObject", "SegmentationClass")]
        need.append(voc / "ImageSets" / "Segmentation" / f"{split}.txt")
        absent = [str(p) for p in need if not p.exists()]
        if absent:
            raise FileNotFoundError(f"VOC root {self.root} lacks {', '.join(absent)}\n{LAYOUT}")
        listed = need[-1].read_text().split()
        if not listed:
            raise ValueError(f"split list {need[-1]} is empty; expected one image id per line")
        self.ids = listed
        self.files = [(voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationObject" / f"{i}.png",
                       voc / "SegmentationClass" / f"{i}.png") for i in listed]
        missing = [str(p) for trio in self.files for p in trio if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"VOC split {split!r}: {len(missing)} listed file(s) missing: "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}\n{LAYOUT}")

    def load(self, index: int) -> tuple[torch.Tensor, dict]:
        img_path, obj_path, cls_path = self.files[index]
        image = read_image(img_path, self.image_decoder)
        objects, classes = read_mask(obj_path), read_mask(cls_path)
        check_same_size(image, objects, img_path, obj_path)
        check_same_size(image, classes, img_path, cls_path)
        check_label_values(classes, _VALID_CLASS, cls_path, "VOC classes {0..20, 255}")
        check_label_values(objects, torch.ones(256, dtype=torch.bool), obj_path, "ids 0..255")
        ids = [k for k in torch.unique(objects).tolist() if k not in (0, IGNORE_INDEX)]
        remap = torch.zeros(256, dtype=torch.int64)  # instance ids made consecutive 1..K
        labels = []
        for new, k in enumerate(ids, start=1):
            values = torch.unique(classes[objects == k]).tolist()
            if len(values) != 1 or not 1 <= values[0] < len(VOC_CLASSES):
                raise CorruptSampleError(
                    f"{obj_path}: instance {k} covers class values {values} in {cls_path}; "
                    f"expected exactly one class in 1..{len(VOC_CLASSES) - 1}")
            remap[k] = new
            labels.append(values[0])
        return image, instances_to_target(remap[objects].numpy(), labels, index)


# --------------------------------------------------------------------------- datamodule
def detection_collate(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list, list]:
    """(list of images, list of targets): images keep their own sizes (Mask R-CNN batches them)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class InstanceTransform:
    """uint8 → float [0, 1]; with ``flip``, a horizontal flip of image, masks and boxes with
    probability 0.5 (torch's RNG, seeded per worker by ``seed_worker``)."""

    def __init__(self, flip: bool) -> None:
        self.flip = flip

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        image = image.float() / 255.0
        if self.flip and float(torch.rand(())) < 0.5:
            w = image.shape[-1]
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
            target = {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}
            image = image.flip(-1)
        return image, target


class InstanceDataModule(SegmentationDataModule):
    """``kind="synthetic"`` (:class:`SyntheticInstances`, ``num_train``/``num_val`` items of
    ``image_size`` px; ``data_seed`` fixes the items, ``seed`` only the shuffle and flips) or
    ``kind="voc"`` (``root``; ``num_train``/``num_val`` None = whole splits, else the first n).
    The shuffle, resumable sampler, DDP evaluation sampler and worker seeding are
    ``SegmentationDataModule``'s. ``num_classes`` counts the background (VOC: 21).
    ``download=True`` (VOC only): ``prepare_data`` fetches VOC 2012 into ``root`` when missing,
    once per job (see ``VOCDataModule`` for ``prepare_data_per_node``)."""

    def __init__(self, kind: str = "synthetic", root: str | None = None, seed: int = 0,
                 batch_size: int = 4, val_batch_size: int = 4, num_workers: int = 0,
                 num_train: int | None = None, num_val: int | None = None,
                 image_size: int | None = None, data_seed: int = 0, augment: str = "flip",
                 train_split: str = "train", val_split: str = "val", skip_corrupt: bool = False,
                 pin_memory: bool | None = None, persistent_workers: bool = True,
                 download: bool = False) -> None:
        if kind not in ("synthetic", "voc"):
            raise ValueError(f"kind must be 'synthetic' or 'voc', got {kind!r}")
        if augment not in ("flip", "none"):
            raise ValueError(f"augment must be 'flip' or 'none' for instances, got {augment!r}")
        if kind == "voc" and root is None:
            raise ValueError(f"kind='voc' needs root (the folder containing VOCdevkit)\n{LAYOUT}")
        if kind == "voc" and image_size is not None:
            raise ValueError("image_size applies to synthetic data only (VOC keeps its sizes)")
        root = None if root is None else os.fspath(root)
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, augment=augment,
                         num_workers=num_workers, pin_memory=pin_memory,
                         persistent_workers=persistent_workers, seed=seed)
        self.kind, self.root, self.data_seed = kind, root, data_seed
        self.num_train, self.num_val, self.image_size = num_train, num_val, image_size or 128
        self.train_split, self.val_split, self.skip_corrupt = train_split, val_split, skip_corrupt
        self.class_names = SyntheticInstances.class_names if kind == "synthetic" else VOC_CLASSES
        self.num_classes = len(self.class_names)
        self.download = download
        self.prepare_data_per_node = False  # root is usually shared: one downloader per job

    def prepare_data(self) -> None:
        if self.download and self.kind == "voc":
            from datamodules.download import download

            download(["voc2012"], Path(self.root))

    def _dataset(self, split: str, n: int | None, default_n: int) -> Dataset:
        if self.kind == "synthetic":
            n = default_n if n is None else n
            return SyntheticInstances(split, n, self.image_size, self.data_seed)
        skip = self.skip_corrupt and split == self.train_split  # never in evaluation
        ds = VOCInstanceSegmentation(self.root, split, skip_corrupt=skip)
        return ds if n is None else torch.utils.data.Subset(ds, range(min(n, len(ds))))

    def make_datasets(self, stage: str | None) -> None:
        if stage in (None, "fit"):
            self.train_set = self._dataset(self.train_split, self.num_train, 400)
        self.val_set = self._dataset(self.val_split, self.num_val, 50)

    def build_train_transform(self) -> InstanceTransform:
        return InstanceTransform(flip=self.augment == "flip")

    def build_eval_transform(self) -> InstanceTransform:
        return InstanceTransform(flip=False)

    def _loader_kwargs(self) -> dict[str, Any]:
        return {**super()._loader_kwargs(), "collate_fn": detection_collate}


def build_instance_datamodule(kind: str, root: str | None, seed: int,
                              **data_kwargs: Any) -> InstanceDataModule:
    """The runner's entry point: ``kind`` "synthetic" | "voc", data kwargs as the datamodule's."""
    return InstanceDataModule(kind, root, seed=seed, **data_kwargs)


if __name__ == "__main__":
    main(sys.argv[1:])
