"""ADE20K SceneParsing (ADEChallengeData2016): 150 classes, PSPNet's Table 1-3 benchmark.

20,210 training and 2,000 validation images. Annotations are 'L' PNGs with values 0..150,
0 meaning "other" (not one of the 150 classes). ``reduce_zero_label`` maps 0 to
``IGNORE_INDEX`` and shifts the rest down by one (class 1 "wall" becomes 0); it is applied in
exactly one place, ``ADE20KSegmentation.load``, because reducing twice is a classic silent bug
(the second pass turns wall into 255 and every class into its neighbour).

Layout under ``root``::

    ADEChallengeData2016/images/{training,validation}/*.jpg
    ADEChallengeData2016/annotations/{training,validation}/*.png

Download: ``python -m datamodules.download ade20k --root ROOT`` (or by hand:
http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip)

``ADE20K_CLASSES`` are the first names of objectInfo150.csv, in its order. The palette is
generated, not copied: class i gets the VOC devkit bit-spread colour of index i + 1 (so no
class is black), 150 distinct colours. PSPNet trains ADE20K with 473×473 crops and the
"pspnet" augmentation; those paper presets live in the experiment runner, this module keeps
the base defaults.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from datamodules.base import SegmentationDataModule
from datamodules.constants import IGNORE_INDEX
from datamodules.io import (
    CheckedSegmentationDataset,
    check_label_values,
    check_same_size,
    read_image,
    read_mask,
)
from datamodules.voc import bitget_palette

__all__ = [
    "ADE20K_CLASSES",
    "ADE20K_PALETTE",
    "ADE20KDataModule",
    "ADE20KSegmentation",
    "reduce_zero_label",
]

log = logging.getLogger(__name__)

# fmt: off
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
# fmt: on
ADE20K_PALETTE = bitget_palette(len(ADE20K_CLASSES) + 1)[1:]

SPLITS = {
    "training": "training",
    "validation": "validation",
    "train": "training",
    "val": "validation",
}
EXPECTED_SIZES = {"training": 20210, "validation": 2000}
URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
LAYOUT = f"""expected layout:
  <root>/ADEChallengeData2016/images/{{training,validation}}/*.jpg
  <root>/ADEChallengeData2016/annotations/{{training,validation}}/*.png  ('L' mode, 0..150)
download: python -m datamodules.download ade20k --root <root>   ({URL})"""

_RAW_VALID = torch.ones(len(ADE20K_CLASSES) + 1, dtype=torch.bool)  # raw 0..150


def reduce_zero_label(mask: torch.Tensor) -> torch.Tensor:
    """Raw ADE20K labels 0..150 -> 0..149 with 0 ("other") -> ``IGNORE_INDEX``. Apply once."""
    out = mask - 1
    out[mask == 0] = IGNORE_INDEX
    return out


def _stems(folder: Path, suffixes: tuple[str, ...]) -> dict[str, str]:
    """File stem → file name; two files with one stem (``x.jpg`` and ``x.jpeg``) are an error,
    since which one would be paired with the annotation would depend on directory order."""
    with os.scandir(folder) as it:
        names = sorted(e.name for e in it if e.name.lower().endswith(suffixes))
    stems: dict[str, str] = {}
    clashes: list[str] = []
    for name in names:
        stem = os.path.splitext(name)[0]
        if stem in stems:
            clashes.append(f"{folder / stems[stem]} and {folder / name}")
        else:
            stems[stem] = name
    if clashes:
        shown = "\n  ".join(clashes[:10]) + ("\n  ..." if len(clashes) > 10 else "")
        raise ValueError(f"ADE20K: {len(clashes)} pair(s) of files share a stem, so which one belongs to "
                         f"the annotation is ambiguous; keep one of each:\n  {shown}")
    return stems


class ADE20KSegmentation(CheckedSegmentationDataset):
    """ADE20K split ("training"/"train": 20,210 images, "validation"/"val": 2,000).

    Items: (uint8 3×H×W image, int64 H×W mask in 0..149 ∪ {255}) or ``transforms(image, mask)``.
    Images and annotations are paired by file stem; any unpaired file is an error at
    construction. Per-item errors, ``skip_corrupt`` and ``skipped`` behave as in
    ``VOCSegmentation``; ``check_labels`` rejects raw values above 150.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "training",
        transforms: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
        skip_corrupt: bool = False,
        check_labels: bool = True,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
        self.root = Path(root)
        self.split = SPLITS[split]
        super().__init__(transforms, skip_corrupt, check_labels)

        base = self.root / "ADEChallengeData2016"
        img_dir = base / "images" / self.split
        ann_dir = base / "annotations" / self.split
        if not self.root.is_dir():
            raise FileNotFoundError(f"ADE20K root {self.root} does not exist\n{LAYOUT}")
        absent = [p for p in (img_dir, ann_dir) if not p.is_dir()]
        if absent:
            found = sorted(p.name for p in self.root.iterdir())[:12]
            hint = ""
            if (self.root / "images").is_dir():
                hint = " (root should be the folder that CONTAINS ADEChallengeData2016/)"
            raise FileNotFoundError(
                f"ADE20K root {self.root} has the wrong layout{hint}: missing "
                f"{', '.join(str(p) for p in absent)}; found {found}\n{LAYOUT}"
            )
        images = _stems(img_dir, (".jpg", ".jpeg"))
        anns = _stems(ann_dir, (".png",))
        if not images:
            raise ValueError(f"ADE20K {self.split}: no .jpg images in {img_dir}\n{LAYOUT}")
        unpaired = sorted(
            [str(img_dir / images[s]) for s in images.keys() - anns.keys()]
            + [str(ann_dir / anns[s]) for s in anns.keys() - images.keys()]
        )
        if unpaired:
            shown = "\n  ".join(unpaired[:10])
            raise FileNotFoundError(
                f"ADE20K {self.split}: {len(unpaired)} file(s) have no partner (an image needs "
                f"an annotation with the same stem in {ann_dir} and vice versa):\n  {shown}"
                f"{chr(10) + '  ...' if len(unpaired) > 10 else ''}"
            )
        self.ids = sorted(images)
        self.images = [str(img_dir / images[s]) for s in self.ids]
        self.masks = [str(ann_dir / anns[s]) for s in self.ids]
        log.info(
            "ADE20K %s: %d images (the full dataset has %d) from %s",
            self.split,
            len(self.ids),
            EXPECTED_SIZES[self.split],
            self.root,
        )

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The checked pair with the label reduction applied (the only place it is)."""
        img_path, mask_path = self.images[index], self.masks[index]
        image = read_image(img_path, self.image_decoder)
        raw = read_mask(mask_path)
        check_same_size(image, raw, img_path, mask_path)
        if self.check_labels:
            check_label_values(raw, _RAW_VALID, mask_path, "raw ADE20K labels 0..150")
        return image, reduce_zero_label(raw)


class ADE20KDataModule(SegmentationDataModule):
    """ADE20K: train on "training", evaluate on the 2,000 "validation" images at full size.
    ``skip_corrupt`` applies to the training set only. Base kwargs as in
    ``SegmentationDataModule``. ``download=True``: ``prepare_data`` fetches
    ADEChallengeData2016 into ``root`` when it is missing, once per job (see
    ``VOCDataModule`` for ``prepare_data_per_node``)."""

    num_classes = len(ADE20K_CLASSES)
    class_names = ADE20K_CLASSES
    palette = ADE20K_PALETTE

    def __init__(
        self, root: str, skip_corrupt: bool = False, download: bool = False, **kwargs: Any
    ) -> None:
        # a plain str before save_hyperparameters (in super().__init__) records it: hyperparameters
        # go into every checkpoint, and weights-only checkpoint loading refuses pathlib.Path
        root = os.fspath(root)
        super().__init__(**kwargs)
        self.root = root
        self.skip_corrupt = skip_corrupt
        self.download = download
        self.prepare_data_per_node = False  # root is usually shared: one downloader per job

    def prepare_data(self) -> None:
        if self.download:
            from datamodules.download import download

            download(["ade20k"], Path(self.root))

    def make_datasets(self, stage: str | None) -> None:
        if stage in (None, "fit"):
            self.train_set = ADE20KSegmentation(
                self.root, "training", skip_corrupt=self.skip_corrupt
            )
        self.val_set = ADE20KSegmentation(self.root, "validation")
