"""The synthetic instance task built for Mask R-CNN's RoIAlign vs RoIPool comparison (He et
al., ICCV 2017, Table 2c): :class:`SyntheticInstances`, its export to the VOC 2012 layout
(:func:`export_synthetic_instances`, ``python -m datamodules.instance export --out DIR``, or
``python -m datamodules.synthetic.instances export --out DIR``) and :func:`instances_to_target`,
which builds the target dict of an item both here and in the VOC reader (kept here so that this
module needs nothing from that one).

The item format, the VOC ``SegmentationObject`` reader and the datamodule are in
:mod:`datamodules.instance`, which re-exports every name defined here. Not imported by
``datamodules.synthetic``'s ``__init__``, so that ``python -m`` runs this module only once.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.synthetic._draw import _finish, _grey_background, _hsv, _smooth_noise
from datamodules.voc import VOC_PALETTE


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
