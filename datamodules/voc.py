"""PASCAL VOC 2012 semantic segmentation, with the SBD-augmented ``train_aug`` split.

Every paper reproduced here (FCN on SBD, DeepLab v1-v3+, PSPNet) trains on ``train_aug``:
VOC train plus the Semantic Boundaries Dataset (Hariharan et al., ICCV 2011) minus VOC val,
10,582 images; without it mIoU drops by several points, so asking for it without the data is
an error, not a warning. Split sizes on the real data: train 1,464, val 1,449, trainval 2,913,
train_aug 10,582. Label 255 marks VOC's object boundaries and is ignored (``IGNORE_INDEX``);
SBD masks have no boundary label.

The FCN paper's data protocol (Long et al., CVPR 2015, Sec. 4; reference code
``data/pascal/README.md``) has two more splits:

- ``sbd_train``: SBD's own ``train.txt`` (8,498 images), images and masks from the SBD release
  (``img/*.jpg``, ``cls/*.mat``), as the reference ``SBDDSegDataLayer`` reads them;
- ``seg11valid``: the 736 VOC 2011 val images that are not in SBD train, listed in
  ``datamodules/lists/seg11valid.txt`` (shipped with the code, copied from the FCN reference
  code; see the README there), read from the VOC 2012 tree (which contains every VOC 2011
  image) with VOC's boundary-labelled masks.

Expected layout under ``root``::

    VOCdevkit/VOC2012/JPEGImages/*.jpg
    VOCdevkit/VOC2012/SegmentationClass/*.png            (palette PNGs, 0..20 and 255)
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    benchmark_RELEASE/dataset/{img/*.jpg, cls/*.mat, train.txt, val.txt}   (SBD, for train_aug)
    SegmentationClassAug/*.png    (alternative to SBD: DeepLab's PNG conversion of SBD,
                                   also accepted as VOCdevkit/VOC2012/SegmentationClassAug)

``train_aug`` is computed from the list files, (VOC train ∪ SBD train ∪ SBD val ∪ the stems of
SegmentationClassAug) − VOC val, not read from a shipped list. For each id the mask comes from,
in order of precedence: VOC ``SegmentationClass/<id>.png`` (the official, boundary-labelled
annotation), SBD ``cls/<id>.mat`` (the original SBD release), ``SegmentationClassAug/<id>.png``
(a derived conversion); the image from VOC ``JPEGImages`` when present there, else SBD ``img/``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch

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

__all__ = [
    "VOC_CLASSES",
    "VOC_PALETTE",
    "VOCDataModule",
    "VOCSegmentation",
    "bitget_palette",
    "read_sbd_mat",
]

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def bitget_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The VOC devkit's ``labelcolormap``: bits of the index spread over R, G, B, MSB first."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


VOC_PALETTE = bitget_palette(256)  # 0 black, 1 (128, 0, 0), ..., 255 (224, 224, 192)

SPLITS = ("train", "val", "trainval", "train_aug", "sbd_train", "seg11valid")
EXPECTED_SIZES = {"train": 1464, "val": 1449, "trainval": 2913, "train_aug": 10582,
                  "sbd_train": 8498, "seg11valid": 736}
# FCN's validation ids (shelhamer/fcn.berkeleyvision.org data/pascal/seg11valid.txt; lists/README.md)
SEG11VALID_LIST = Path(__file__).resolve().parent / "lists" / "seg11valid.txt"
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
SBD_URL = "http://home.bharathh.info/pubs/codes/SBD/download.html (benchmark.tgz)"
AUG_URL = "https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip"

LAYOUT = f"""expected layout:
  <root>/VOCdevkit/VOC2012/JPEGImages/*.jpg
  <root>/VOCdevkit/VOC2012/SegmentationClass/*.png
  <root>/VOCdevkit/VOC2012/ImageSets/Segmentation/{{train,val,trainval}}.txt
  <root>/benchmark_RELEASE/dataset/{{img/*.jpg, cls/*.mat, train.txt, val.txt}}  (SBD)
  <root>/SegmentationClassAug/*.png  (alternative to SBD for train_aug)
download: python -m datamodules.download voc2012 sbd --root <root>   (or by hand:)
  VOC2012: {VOC_URL}
  SBD: {SBD_URL}
  SegmentationClassAug (optional alternative to SBD): {AUG_URL}"""

_VALID = torch.zeros(256, dtype=torch.bool)
_VALID[: len(VOC_CLASSES)] = True
_VALID[IGNORE_INDEX] = True


def _stems(folder: Path, suffix: str) -> set[str]:
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as it:
        return {e.name[: -len(suffix)] for e in it if e.name.endswith(suffix)}


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} not found\n{LAYOUT}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"split list {path} is empty; expected one image id per line")
    seen: set[str] = set()
    repeated = sorted({i for i in ids if i in seen or seen.add(i)})
    if repeated:
        # a repeated id would be trained on, or scored, twice
        shown = ", ".join(repeated[:20]) + (", ..." if len(repeated) > 20 else "")
        raise ValueError(f"split list {path} lists {len(repeated)} image id(s) more than once: {shown}; "
                         f"each id must appear once")
    return ids


def read_sbd_mat(path: str | os.PathLike) -> torch.Tensor:
    """Read the ``GTcls.Segmentation`` mask (uint8 H×W, 0..20) of an SBD ``cls/*.mat`` file."""
    try:
        mat = scipy.io.loadmat(
            path, squeeze_me=True, struct_as_record=False, variable_names=["GTcls"]
        )
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except Exception as e:
        raise CorruptSampleError(
            f"{path}: cannot read SBD .mat file (corrupt or truncated?): {type(e).__name__}: {e}"
        ) from e
    seg = getattr(mat.get("GTcls"), "Segmentation", None)
    if not isinstance(seg, np.ndarray) or seg.ndim != 2 or seg.dtype.kind not in "iub":
        found = [name for name, _, _ in scipy.io.whosmat(path)]
        raise CorruptSampleError(
            f"{path}: expected a MATLAB struct 'GTcls' with an integer H×W field 'Segmentation' "
            f"(SBD cls/*.mat format); found variables {found}, GTcls.Segmentation: "
            f"{type(seg).__name__}{getattr(seg, 'shape', '')}"
        )
    return torch.from_numpy(seg.astype(np.int64))


class VOCSegmentation(CheckedSegmentationDataset):
    """VOC 2012 segmentation split: items are (uint8 3×H×W image, int64 H×W mask) or
    ``transforms(image, mask)``.

    ``split``: "train" (1,464), "val" (1,449), "trainval" (2,913), "train_aug" (10,582), or
    FCN's "sbd_train" (8,498) and "seg11valid" (736); see the module docstring for the layout,
    the mask precedence of ``train_aug`` and the sources of the FCN splits.

    Layout problems (missing root, list files, listed images/masks) raise at construction.
    Per-item problems (undecodable file, RGB mask, image/mask size mismatch, labels outside
    {0..20, 255} when ``check_labels``) raise ``CorruptSampleError`` naming the file. With
    ``skip_corrupt=True`` such an item is replaced by the next valid one (index + 1, wrapping),
    a warning is logged and ``self.skipped`` counts the distinct bad items found *in this
    process* (each DataLoader worker has its own copy); known-bad items are not re-read.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transforms: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
        skip_corrupt: bool = False,
        check_labels: bool = True,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.split = split
        super().__init__(transforms, skip_corrupt, check_labels)

        voc = self._check_root()
        lists = voc / "ImageSets" / "Segmentation"
        voc_jpg = _stems(voc / "JPEGImages", ".jpg")
        voc_png = _stems(voc / "SegmentationClass", ".png")
        sbd = self.root / "benchmark_RELEASE" / "dataset"
        aug = next(
            (
                d
                for d in (self.root / "SegmentationClassAug", voc / "SegmentationClassAug")
                if d.is_dir()
            ),
            None,
        )
        if split == "seg11valid":
            ids = _read_list(SEG11VALID_LIST)
            mask_sources = [(voc / "SegmentationClass", ".png", voc_png)]
            image_sources = [(voc / "JPEGImages", voc_jpg)]
        elif split == "sbd_train":
            if not ((sbd / "train.txt").is_file() and (sbd / "cls").is_dir()):
                raise FileNotFoundError(
                    f"split='sbd_train' (FCN's 8,498 training images) needs the SBD release at "
                    f"{sbd} (train.txt, cls/*.mat, img/*.jpg); DeepLab's SegmentationClassAug "
                    f"has no SBD train list. Download it with 'python -m datamodules.download sbd "
                    f"--root {self.root}' (or from {SBD_URL}).\n{LAYOUT}"
                )
            ids = _read_list(sbd / "train.txt")
            # the reference's SBDDSegDataLayer: SBD's image and SBD's .mat mask, never VOC's
            mask_sources = [(sbd / "cls", ".mat", _stems(sbd / "cls", ".mat"))]
            image_sources = [(sbd / "img", _stems(sbd / "img", ".jpg"))]
        elif split != "train_aug":
            ids = _read_list(lists / f"{split}.txt")
            mask_sources = [(voc / "SegmentationClass", ".png", voc_png)]
            image_sources = [(voc / "JPEGImages", voc_jpg)]
        else:
            has_sbd = (sbd / "train.txt").is_file() and (sbd / "cls").is_dir()
            if not has_sbd and aug is None:
                raise FileNotFoundError(
                    f"split='train_aug' needs the SBD annotations, but neither {sbd} "
                    f"(with train.txt, val.txt, cls/, img/) nor "
                    f"{self.root / 'SegmentationClassAug'} "
                    f"exists. The papers' numbers are trained on train_aug (10,582 images); "
                    f"VOC 'train' alone has 1,464 and loses several mIoU points. Download SBD with "
                    f"'python -m datamodules.download sbd --root {self.root}' (or from {SBD_URL}; or "
                    f"DeepLab's SegmentationClassAug from {AUG_URL}, extracted into {self.root}), or "
                    f"train on VOC train only with `--set data.train_split=train`.\n{LAYOUT}"
                )
            members = set(_read_list(lists / "train.txt"))
            if has_sbd:
                members |= set(_read_list(sbd / "train.txt")) | set(_read_list(sbd / "val.txt"))
            aug_png = _stems(aug, ".png") if aug is not None else set()
            members |= aug_png
            members -= set(_read_list(lists / "val.txt"))
            ids = sorted(members)
            mask_sources = [(voc / "SegmentationClass", ".png", voc_png)]
            if has_sbd:
                mask_sources.append((sbd / "cls", ".mat", _stems(sbd / "cls", ".mat")))
            if aug is not None:
                mask_sources.append((aug, ".png", aug_png))
            image_sources = [
                (voc / "JPEGImages", voc_jpg),
                (sbd / "img", _stems(sbd / "img", ".jpg")),
            ]

        self.ids = ids
        self.images: list[str] = []
        self.masks: list[str] = []
        missing: list[str] = []
        for i in ids:
            img = next((str(d / f"{i}.jpg") for d, have in image_sources if i in have), None)
            msk = next((str(d / f"{i}{s}") for d, s, have in mask_sources if i in have), None)
            if img is None:
                missing.append(f"image of id {i!r} (expected {image_sources[0][0] / f'{i}.jpg'})")
            if msk is None:
                exp = " or ".join(str(d / f"{i}{s}") for d, s, _ in mask_sources)
                missing.append(f"mask of id {i!r} (expected {exp})")
            self.images.append(img)
            self.masks.append(msk)
        if missing:
            shown = "\n  ".join(missing[:10])
            raise FileNotFoundError(
                f"VOC split {split!r}: {len(missing)} file(s) listed in the split are missing:\n"
                f"  {shown}{chr(10) + '  ...' if len(missing) > 10 else ''}\n"
                f"Incomplete download or extraction? {LAYOUT}"
            )
        log.info(
            "VOC %s: %d images (the full dataset has %d) from %s",
            split,
            len(ids),
            EXPECTED_SIZES[split],
            self.root,
        )

    def _check_root(self) -> Path:
        voc = self.root / "VOCdevkit" / "VOC2012"
        need = [voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets" / "Segmentation"]
        if not self.root.is_dir():
            raise FileNotFoundError(f"VOC root {self.root} does not exist\n{LAYOUT}")
        absent = [p for p in need if not p.is_dir()]
        if absent:
            found = sorted(p.name for p in self.root.iterdir())[:12]
            hint = ""
            if (self.root / "JPEGImages").is_dir() or (self.root / "VOC2012").is_dir():
                hint = " (root should be the folder that CONTAINS VOCdevkit/, not VOCdevkit itself)"
            raise FileNotFoundError(
                f"VOC root {self.root} has the wrong layout{hint}: missing "
                f"{', '.join(str(p) for p in absent)}; found {found}\n{LAYOUT}"
            )
        return voc

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw, checked (image, mask) pair: never transformed, never skipped."""
        img_path, mask_path = self.images[index], self.masks[index]
        image = read_image(img_path, self.image_decoder)
        mask = read_sbd_mat(mask_path) if mask_path.endswith(".mat") else read_mask(mask_path)
        check_same_size(image, mask, img_path, mask_path)
        if self.check_labels:
            check_label_values(mask, _VALID, mask_path, "VOC labels {0..20, 255}")
        return image, mask


class VOCDataModule(SegmentationDataModule):
    """VOC 2012: train on ``train_split`` (default the 10,582-image ``train_aug``), evaluate on
    ``val_split`` (1,449 full images at their original resolution). ``skip_corrupt`` applies to
    the training set only. Base kwargs as in ``SegmentationDataModule`` (crop 321 by default,
    as DeepLab v2; v3/v3+ use 513 and PSPNet 473: the paper presets live in the runner).

    ``download=True``: ``prepare_data`` fetches what is missing into ``root`` with
    ``datamodules.download`` (VOC 2012, plus SBD for ``train_aug`` unless a
    ``SegmentationClassAug`` folder is already there); a complete tree is only checked. It runs
    once per job, on global rank 0 (``prepare_data_per_node = False``: ``root`` is usually a
    shared filesystem, where one downloader per node would write the same files); the other
    ranks wait at Lightning's barrier. With node-local disks, set ``prepare_data_per_node``
    back to True."""

    num_classes = len(VOC_CLASSES)
    class_names = VOC_CLASSES
    palette = VOC_PALETTE[: len(VOC_CLASSES)]

    def __init__(
        self,
        root: str,
        train_split: str = "train_aug",
        val_split: str = "val",
        skip_corrupt: bool = False,
        download: bool = False,
        **kwargs: Any,
    ) -> None:
        # a plain str before save_hyperparameters (in super().__init__) records it: hyperparameters
        # go into every checkpoint, and weights-only checkpoint loading refuses pathlib.Path
        root = os.fspath(root)
        super().__init__(**kwargs)
        self.root = root
        self.train_split = train_split
        self.val_split = val_split
        self.skip_corrupt = skip_corrupt
        self.download = download
        self.prepare_data_per_node = False

    def prepare_data(self) -> None:
        if not self.download:
            return
        from datamodules.download import download

        names = ["voc2012"]
        has_aug = any(
            d.is_dir()
            for d in (
                Path(self.root) / "SegmentationClassAug",
                Path(self.root) / "VOCdevkit" / "VOC2012" / "SegmentationClassAug",
            )
        )
        if ("train_aug" in (self.train_split, self.val_split) and not has_aug) or "sbd_train" in (
            self.train_split, self.val_split
        ):
            names.append("sbd")
        download(names, Path(self.root))

    def make_datasets(self, stage: str | None) -> None:
        if stage in (None, "fit"):
            if self.train_split not in ("train_aug", "sbd_train"):
                log.warning(
                    "VOC: training on %r, not 'train_aug' (10,582 images): the papers' numbers "
                    "need the SBD-augmented set",
                    self.train_split,
                )
            self.train_set = VOCSegmentation(
                self.root, self.train_split, skip_corrupt=self.skip_corrupt
            )
        # Never skip in evaluation: a substituted image would be counted twice.
        self.val_set = VOCSegmentation(self.root, self.val_split)
