"""Tiny datasets written in the exact on-disk formats of the real ones (helpers, not tests).

- VOC 2012: JPEGs, palette ('P') PNG masks carrying the VOC palette with 255 object boundaries,
  ``ImageSets/Segmentation/*.txt`` lists.
- SBD: ``benchmark_RELEASE/dataset/cls/*.mat`` as MATLAB v5 files holding a struct ``GTcls`` with
  fields Boundaries (20×1 cell of sparse matrices), Segmentation (uint8 H×W, 0..20, no 255) and
  CategoriesPresent, as the real release; plus ``img/*.jpg`` and ``train.txt``/``val.txt``.
- SegmentationClassAug: PNGs of class indices (palette or 'L').
- ADEChallengeData2016: JPEG images and 'L' PNG annotations with raw values 0..150.

Images are smooth gradients with a little noise (JPEG-friendly, like photos, not white noise);
masks are a few rectangles of given classes. Sizes are small and differ per id, so that
collation, padding and size checks are exercised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image

from datamodules.voc import VOC_PALETTE

VOC_FLAT_PALETTE = [c for rgb in VOC_PALETTE for c in rgb]


def image_array(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3)
    slope = rng.uniform(-2, 2, (3, 2))
    arr = base + x[..., None] * slope[:, 0] + y[..., None] * slope[:, 1]
    arr += rng.normal(0, 8, (h, w, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def label_array(
    h: int, w: int, classes: list[int], seed: int = 0, boundary: int | None = 255
) -> np.ndarray:
    """Background 0 with one rectangle per class; a 1-px ``boundary`` ring around each."""
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    for c in classes:
        y0, x0 = int(rng.integers(0, max(1, h - 8))), int(rng.integers(0, max(1, w - 8)))
        y1, x1 = (
            min(h, y0 + int(rng.integers(6, max(7, h // 2)))),
            min(w, x0 + int(rng.integers(6, max(7, w // 2)))),
        )
        if boundary is not None:
            m[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = boundary
        m[y0:y1, x0:x1] = c
    return m


def write_jpeg(path: Path, arr: np.ndarray, mode: str = "RGB", quality: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).convert(mode).save(path, quality=quality)
    return path


def write_palette_png(path: Path, mask: np.ndarray, palette: list[int] = VOC_FLAT_PALETTE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(palette)
    im.save(path)
    return path


def write_l_png(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(path)
    return path


def write_sbd_mat(path: Path, seg: np.ndarray) -> Path:
    """An SBD ``cls/*.mat``: MATLAB v5 (compressed), struct GTcls{Boundaries, Segmentation,
    CategoriesPresent}, read back by ``loadmat(..., squeeze_me=True, struct_as_record=False)``
    as a ``mat_struct`` whose ``.Segmentation`` is the uint8 H×W mask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seg = seg.astype(np.uint8)
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = scipy.sparse.csc_matrix((seg == k + 1).astype(np.float64))
    present = np.array([[c] for c in np.unique(seg) if c != 0], dtype=np.uint8)
    gt = {"Boundaries": boundaries, "Segmentation": seg, "CategoriesPresent": present}
    scipy.io.savemat(path, {"GTcls": gt}, do_compression=True)
    return path


def size_of(image_id: str) -> tuple[int, int]:
    """A deterministic small (H, W) per id, different across ids."""
    k = sum(map(ord, image_id))
    return 24 + k % 9, 32 + k % 13


def _seed(image_id: str) -> int:
    return sum(i * ord(c) for i, c in enumerate(image_id, 1))


def make_voc(
    root: Path,
    train: list[str],
    val: list[str],
    extra_images: list[str] = (),
    mask_class: dict[str, int] | None = None,
) -> Path:
    """VOCdevkit/VOC2012 with images and masks for ``train`` and ``val`` and only images for
    ``extra_images`` (VOC has JPEGs for all SBD images). ``mask_class[id]`` forces the
    foreground class of that id's mask (to tell mask sources apart)."""
    voc = root / "VOCdevkit" / "VOC2012"
    mask_class = mask_class or {}
    for i in [*train, *val, *extra_images]:
        write_jpeg(voc / "JPEGImages" / f"{i}.jpg", image_array(*size_of(i), seed=_seed(i)))
    for i in [*train, *val]:
        cls = mask_class.get(i, 1 + _seed(i) % 20)
        write_palette_png(
            voc / "SegmentationClass" / f"{i}.png", label_array(*size_of(i), [cls], _seed(i))
        )
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in val))
    (lists / "trainval.txt").write_text("".join(f"{i}\n" for i in [*train, *val]))
    return root


def make_sbd(
    root: Path, train: list[str], val: list[str], mask_class: dict[str, int] | None = None
) -> Path:
    """benchmark_RELEASE/dataset with img/, cls/*.mat (no 255: SBD has no boundary label)."""
    ds = root / "benchmark_RELEASE" / "dataset"
    mask_class = mask_class or {}
    for i in [*train, *val]:
        write_jpeg(ds / "img" / f"{i}.jpg", image_array(*size_of(i), seed=_seed(i)))
        cls = mask_class.get(i, 1 + _seed(i) % 20)
        write_sbd_mat(
            ds / "cls" / f"{i}.mat", label_array(*size_of(i), [cls], _seed(i), boundary=None)
        )
    (ds / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (ds / "val.txt").write_text("".join(f"{i}\n" for i in val))
    return root


def make_aug(
    root: Path,
    ids: list[str],
    mask_class: dict[str, int] | None = None,
    mode: str = "P",
    inside_voc: bool = False,
) -> Path:
    """SegmentationClassAug/*.png (under root, or under VOCdevkit/VOC2012 if ``inside_voc``)."""
    folder = (root / "VOCdevkit" / "VOC2012" if inside_voc else root) / "SegmentationClassAug"
    mask_class = mask_class or {}
    for i in ids:
        m = label_array(
            *size_of(i), [mask_class.get(i, 1 + _seed(i) % 20)], _seed(i), boundary=None
        )
        (write_palette_png if mode == "P" else write_l_png)(folder / f"{i}.png", m)
    return root


def make_ade20k(root: Path, n_train: int = 3, n_val: int = 2) -> Path:
    """ADEChallengeData2016 with 'L' annotations holding raw labels 0..150 (0 and 150 always
    present, so the reduction's edge cases are exercised)."""
    base = root / "ADEChallengeData2016"
    for split, n, prefix in (("training", n_train, "ADE_train"), ("validation", n_val, "ADE_val")):
        for k in range(1, n + 1):
            stem = f"{prefix}_{k:08d}"
            h, w = size_of(stem)
            write_jpeg(base / "images" / split / f"{stem}.jpg", image_array(h, w, seed=k))
            m = label_array(h, w, [1, 150, 1 + (k * 37) % 150], seed=k, boundary=None)
            write_l_png(base / "annotations" / split / f"{stem}.png", m)
    return root


def fast_dev_run(datamodule) -> list[tuple]:
    """``Trainer(fast_dev_run=True).fit`` of a 1×1-conv LightningModule (cross-entropy with
    ``ignore_index=255``) on CPU; returns what each step saw: (stage, image shape, mask shape,
    mask dtype, label values)."""
    import lightning as L
    import torch
    from torch import nn
    from torch.nn import functional as F

    from datamodules.constants import IGNORE_INDEX

    class Tiny(L.LightningModule):
        def __init__(self, num_classes: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, num_classes, 1)
            self.seen: list[tuple] = []

        def _step(self, batch, stage):
            x, y = batch
            self.seen.append(
                (stage, tuple(x.shape), tuple(y.shape), y.dtype, set(y.unique().tolist()))
            )
            return F.cross_entropy(self.conv(x), y, ignore_index=IGNORE_INDEX)

        def training_step(self, batch, batch_idx):
            return self._step(batch, "train")

        def validation_step(self, batch, batch_idx):
            self._step(batch, "val")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    model = Tiny(datamodule.num_classes)
    trainer = L.Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)
    return model.seen
