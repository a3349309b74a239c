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
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
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
from datamodules.synthetic import _finish, _grey_background, _hsv, _smooth_noise
from datamodules.voc import VOC_CLASSES, VOC_PALETTE

LAYOUT = """expected layout:
  <root>/VOCdevkit/VOC2012/JPEGImages/*.jpg
  <root>/VOCdevkit/VOC2012/SegmentationObject/*.png   (instance ids 1..K, 255 void)
  <root>/VOCdevkit/VOC2012/SegmentationClass/*.png    (classes 0..20, 255 void)
  <root>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
download: http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"""

_VALID_CLASS = torch.zeros(256, dtype=torch.bool)
_VALID_CLASS[: len(VOC_CLASSES)] = True
_VALID_CLASS[IGNORE_INDEX] = True


def instances_to_target(ids: np.ndarray, classes: Sequence[int], image_id: int) -> dict:
    """Target dict from an H×W map of instance ids 1..K (``classes[k-1]`` the class of id k;
    other values: no instance). Boxes are the masks' pixel extents, x2/y2 exclusive."""
    masks = ids[None] == np.arange(1, len(classes) + 1).reshape(-1, 1, 1)
    boxes = np.zeros((len(classes), 4), np.float32)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        boxes[i] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    return {"boxes": torch.from_numpy(boxes),
            "labels": torch.as_tensor(list(classes), dtype=torch.int64),
            "masks": torch.from_numpy(masks.view(np.uint8)), "image_id": image_id}


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


class SyntheticInstances(Dataset):
    """Instances whose masks must be precise relative to the feature grid: what RoIAlign fixes.

    Class is a hue (red, green, blue; shade jittered per object, so touching instances of one
    class still differ), readable from any pixel: recognition is easy and the score measures
    localisation. Shapes are class-independent and irregular: stars with 3-6 arms that taper
    to 1-3 px, and rings / arcs 2-4 px thick, 12-40 px across, i.e. 3-10 cells of FPN's P2
    (stride 4, where Eq. 1 assigns every such box) and 1.5-5 cells of P3. A box barely moves
    when its corners are rounded to the grid, but a 2 px (half a P2 cell) shift of a thin arm
    or ring loses much of its mask IoU, so quantisation costs mask AP (above all AP75) more
    than box AP, as in Table 2c/2d. 3-8 objects per image, some placed touching or overlapping
    an earlier one (later ones occlude; an instance is its visible pixels, and objects less
    than 40% visible are dropped). No void pixels: masks are exact.

    Item ``i`` of split ``s`` comes from ``SeedSequence((4, data_seed, s, i))``: identical in
    every process, worker and run.
    """

    class_names = ("background", "red", "green", "blue")
    _hues = (0.0, 1 / 3, 0.62)
    _splits = {"train": 0, "val": 1}

    def __init__(self, split: str = "train", num_items: int = 400, image_size: int = 128,
                 data_seed: int = 0) -> None:
        if split not in self._splits:
            raise ValueError(f"split must be one of {sorted(self._splits)}, got {split!r}")
        if image_size < 64:
            raise ValueError(f"image_size must be >= 64, got {image_size}")
        self.split, self.num_items = split, num_items
        self.image_size, self.data_seed = image_size, data_seed

    def __len__(self) -> int:
        return self.num_items

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(H×W×3 uint8 image, H×W uint8 instance ids 0..K, class of each id 1..K)."""
        if not 0 <= index < self.num_items:
            raise IndexError(f"index {index} out of range for {self.num_items} items")
        seq = np.random.SeedSequence((4, self.data_seed, self._splits[self.split], index))
        rng = np.random.default_rng(seq)
        s = self.image_size
        img = _grey_background(rng, s)
        yy, xx = np.mgrid[:s, :s].astype(np.float32)
        shapes, placed = [], []
        for _ in range(rng.integers(3, 9)):
            r = rng.uniform(6, 20)
            if placed and rng.random() < 0.5:  # touch or overlap an earlier object
                py, px, pr = placed[rng.integers(len(placed))]
                ang, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0.6, 1.0) * (r + pr)
                cy, cx = np.clip([py + dist * math.sin(ang), px + dist * math.cos(ang)], r, s - r)
            else:
                cy, cx = rng.uniform(r, s - r, 2)
            placed.append((cy, cx, r))
            y0, x0 = max(0, int(cy - r) - 1), max(0, int(cx - r) - 1)
            y1, x1 = min(s, int(cy + r) + 2), min(s, int(cx + r) + 2)
            dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
            inside = np.zeros((s, s), bool)
            inside[y0:y1, x0:x1] = self._shape(rng, r, dy, dx)
            cls = int(rng.integers(1, 4))
            hue = self._hues[cls - 1] + rng.normal(0, 0.02)
            colour = _hsv(hue, rng.uniform(0.6, 0.95), rng.uniform(0.5, 1.0))
            shapes.append((inside, cls, colour))
        texture = 1 + 0.1 * _smooth_noise(rng, s, 6)
        noise = 8 * rng.standard_normal(img.shape, dtype=np.float32)
        order = [i for i, (inside, _, _) in enumerate(shapes) if inside.sum() >= 16]
        for _ in range(2):  # drop mostly hidden objects; the rest only become more visible
            top = np.zeros((s, s), np.int64)
            for i in order:
                top[shapes[i][0]] = i + 1
            order = [i for i in order if (top == i + 1).sum() >= 0.4 * shapes[i][0].sum()]
        ids = np.zeros((s, s), np.uint8)
        classes = []
        for new, i in enumerate(order, start=1):
            inside, cls, colour = shapes[i]
            ids[inside] = new
            img[inside] = colour * texture[inside][:, None]
            classes.append(cls)
        return _finish(img + noise), ids, classes

    @staticmethod
    def _shape(rng: np.random.Generator, r: float, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        """A star (r(θ) between inner·r and r, arms sharpened by p) or a ring / arc, given the
        offsets (dy, dx) of the pixels from its centre."""
        rho, theta = np.hypot(dy, dx), np.arctan2(dy, dx)
        if rng.random() < 0.6:
            k, phase = rng.integers(3, 7), rng.uniform(0, 2 * math.pi)
            inner, p = rng.uniform(0.2, 0.45), rng.uniform(1.5, 4)
            return rho <= r * (inner + (1 - inner) * ((1 + np.cos(k * theta + phase)) / 2) ** p)
        thick, start = rng.uniform(2, 4), rng.uniform(-math.pi, math.pi)
        span = rng.uniform(1.2, 2) * math.pi
        return (rho <= r) & (rho >= r - thick) & (((theta - start) % (2 * math.pi)) <= span)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        img, ids, classes = self.generate(index)
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return image, instances_to_target(ids, classes, index)


def export_synthetic_instances(out: str | os.PathLike, num_train: int = 400, num_val: int = 50,
                               image_size: int = 128, data_seed: int = 0) -> Path:
    """Write ``SyntheticInstances`` in the VOC 2012 layout under ``out``; returns ``out``."""
    from PIL import Image

    voc = Path(out) / "VOCdevkit" / "VOC2012"
    flat_palette = [c for rgb in VOC_PALETTE for c in rgb]
    for sub in ("JPEGImages", "SegmentationObject", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for split, n in (("train", num_train), ("val", num_val)):
        ds = SyntheticInstances(split, n, image_size, data_seed)
        names = [f"synth_{split}_{i:06d}" for i in range(n)]
        for i, name in enumerate(names):
            img, ids, classes = ds.generate(i)
            jpeg = voc / "JPEGImages" / f"{name}.jpg"
            Image.fromarray(img).save(jpeg, quality=100, subsampling=0)
            class_map = np.zeros_like(ids)
            for k, c in enumerate(classes, start=1):
                class_map[ids == k] = c
            for sub, arr in (("SegmentationObject", ids), ("SegmentationClass", class_map)):
                png = Image.fromarray(arr, mode="P")
                png.putpalette(flat_palette)
                png.save(voc / sub / f"{name}.png")
        split_list = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        split_list.write_text("".join(f"{n}\n" for n in names))
    return Path(out)


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
    ``SegmentationDataModule``'s. ``num_classes`` counts the background (VOC: 21)."""

    def __init__(self, kind: str = "synthetic", root: str | None = None, seed: int = 0,
                 batch_size: int = 4, val_batch_size: int = 4, num_workers: int = 0,
                 num_train: int | None = None, num_val: int | None = None,
                 image_size: int | None = None, data_seed: int = 0, augment: str = "flip",
                 train_split: str = "train", val_split: str = "val", skip_corrupt: bool = False,
                 pin_memory: bool | None = None, persistent_workers: bool = True) -> None:
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write SyntheticInstances in the VOC 2012 layout")
    p.add_argument("command", choices=["export"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num-train", type=int, default=400)
    p.add_argument("--num-val", type=int, default=50)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--data-seed", type=int, default=0)
    a = p.parse_args(argv)
    export_synthetic_instances(a.out, a.num_train, a.num_val, a.image_size, a.data_seed)
    print(f"wrote {a.num_train} train + {a.num_val} val items to {a.out} (VOC 2012 layout)")


if __name__ == "__main__":
    main(sys.argv[1:])
