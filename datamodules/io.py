"""Checked readers for segmentation images and label masks.

``read_image`` returns a uint8 3×H×W RGB tensor whatever the file holds: JPEGs are decoded
with ``torchvision.io.decode_jpeg`` (libjpeg-turbo straight into a tensor; ~1.3× Pillow's
decode-only throughput on VOC-sized images in ``benchmarks/data_pipeline.py``; it also converts
greyscale and CMYK JPEGs), everything else (PNG, BMP, 16-bit, palette, RGBA, ...) goes through
Pillow. ``read_mask`` returns the class indices of a palette
('P') or greyscale ('L') PNG as an int64 H×W tensor, never the colours.

Every failure raises ``CorruptSampleError`` (a ``ValueError``) whose message names the file,
what was expected and what was found, so a bad file among 10k shows up as one readable line,
not a deep DataLoader trace; datasets with ``skip_corrupt=True`` catch exactly this type.
Missing files raise ``FileNotFoundError`` naming the path.

torchvision 0.29 deprecated its image decoders in favour of TorchCodec; its
``DeprecationWarning`` is silenced around the one call, and when a later torchvision drops
``decode_jpeg`` the reader falls back to Pillow on its own (the same pixels on the test
fixtures, ``tests/test_io.py``: both are libjpeg-turbo with its default IDCT and upsampling).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

try:
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - torchvision without image ops
    decode_jpeg = None

__all__ = [
    "CheckedSegmentationDataset",
    "CorruptSampleError",
    "check_label_values",
    "check_same_size",
    "read_image",
    "read_mask",
]

log = logging.getLogger(__name__)

_JPEG_MAGIC = b"\xff\xd8\xff"
_INTEGER_MASK_MODES = ("P", "L", "I", "I;16", "I;16L", "I;16B")


class CorruptSampleError(ValueError):
    """A file that exists but cannot be used: unreadable, wrong mode, wrong size or values."""


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None


def read_image(path: str | os.PathLike, decoder: str = "torchvision") -> torch.Tensor:
    """Read any image file as an RGB uint8 tensor of shape 3×H×W.

    ``decoder="torchvision"`` decodes JPEGs with libjpeg-turbo via torchvision and everything
    else with Pillow; ``decoder="pil"`` always uses Pillow (the benchmark compares the two).
    Greyscale, palette, RGBA (alpha dropped), CMYK and 16-bit images become RGB; EXIF
    orientation is ignored, as the label masks are drawn on the stored pixel grid.
    """
    if decoder not in ("torchvision", "pil"):
        raise ValueError(f"decoder must be 'torchvision' or 'pil', got {decoder!r}")
    data = _read_bytes(path)
    if not data:
        raise CorruptSampleError(f"{path}: image file is empty (0 bytes)")
    if decoder == "torchvision" and decode_jpeg is not None and data.startswith(_JPEG_MAGIC):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_jpeg(
                    torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB
                )
        except RuntimeError:
            pass  # unusual JPEG flavours (e.g. 12-bit): Pillow tries next and names the error
    return _read_image_pil(path)


def _read_image_pil(path: str | os.PathLike) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            im.load()
            arr = _pil_to_rgb_array(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error ...
        raise CorruptSampleError(
            f"{path}: cannot decode image (corrupt or truncated file?): {type(e).__name__}: {e}"
        ) from e
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _pil_to_rgb_array(im: Image.Image) -> np.ndarray:
    if im.mode == "RGB":
        return np.asarray(im)
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "F"):
        # convert("RGB") would clip 16-bit values at 255; rescale the range instead.
        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0 if a.max(initial=0) <= 65535 else a * (255.0 / a.max())
        elif im.mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if im.mode in ("P", "PA") and "transparency" in im.info:
        im = im.convert("RGBA")  # avoids Pillow's warning about bytes transparency
    return np.asarray(im.convert("RGB"))


def read_mask(path: str | os.PathLike) -> torch.Tensor:
    """Read a label PNG as int64 H×W class indices.

    Palette ('P') images give their indices (not colours), 'L' and 16/32-bit integer images
    their values. An RGB(A) mask means someone converted the palette to colours: that is an
    error, as colours cannot be mapped back to classes safely.
    """
    try:
        with Image.open(path) as im:
            if im.mode not in _INTEGER_MASK_MODES:
                raise CorruptSampleError(
                    f"{path}: label mask has mode {im.mode!r}; expected palette indices "
                    f"(a 'P' or 'L' PNG). An RGB mask usually means the palette was converted to "
                    f"colours: use the original annotation PNGs, whose pixels are class indices."
                )
            im.load()
            arr = np.array(im)
    except CorruptSampleError:
        raise
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except Exception as e:
        raise CorruptSampleError(
            f"{path}: cannot decode label mask (corrupt or truncated file?): "
            f"{type(e).__name__}: {e}"
        ) from e
    if arr.ndim != 2:
        raise CorruptSampleError(f"{path}: label mask must be H×W, got shape {arr.shape}")
    return torch.from_numpy(arr.astype(np.int64))


def check_same_size(image: torch.Tensor, mask: torch.Tensor, image_path: Path, mask_path: Path):
    """Raise ``CorruptSampleError`` naming both files when image and mask sizes differ."""
    if tuple(image.shape[-2:]) != tuple(mask.shape[-2:]):
        ih, iw = image.shape[-2:]
        mh, mw = mask.shape[-2:]
        raise CorruptSampleError(
            f"image {image_path} is {iw}×{ih} (W×H) but its mask {mask_path} is {mw}×{mh}; "
            f"they must match pixel for pixel"
        )


def check_label_values(mask: torch.Tensor, valid: torch.Tensor, path: Path, expected: str):
    """Raise ``CorruptSampleError`` naming the file and the offending values.

    ``valid`` is a bool lookup table indexed by label value (length > every allowed value).
    """
    if mask.numel() == 0:
        return
    lo, hi = int(mask.min()), int(mask.max())
    if lo >= 0 and hi < len(valid) and bool(valid[mask].all()):
        return
    values = torch.unique(mask)
    bad = [v for v in values.tolist() if v < 0 or v >= len(valid) or not valid[v]]
    raise CorruptSampleError(
        f"{path}: label values {bad[:20]}{' ...' if len(bad) > 20 else ''} are outside the "
        f"expected {expected}"
    )


class CheckedSegmentationDataset(Dataset):
    """Shared item logic of the file-backed datasets: ``load(index)`` (implemented by the
    subclass) returns the checked raw pair; ``__getitem__`` adds ``skip_corrupt`` and the
    optional joint ``transforms``.

    With ``skip_corrupt=True`` an item whose ``load`` raises ``CorruptSampleError`` is replaced
    by the next valid one (index + 1, wrapping around), a warning is logged, and ``skipped``
    counts the distinct bad items found *in this process* (each DataLoader worker keeps its own
    count); known-bad items are not read again. Other errors always propagate.
    """

    def __init__(
        self,
        transforms: Callable[[torch.Tensor, torch.Tensor], Any] | None,
        skip_corrupt: bool,
        check_labels: bool,
    ) -> None:
        self.transforms = transforms
        self.skip_corrupt = skip_corrupt
        self.check_labels = check_labels
        self.skipped = 0
        self._bad: set[int] = set()
        self.ids: list[str] = []
        self.image_decoder = "torchvision"  # or "pil": see read_image (benchmarks compare them)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image, mask = self._load_skipping(index) if self.skip_corrupt else self.load(index)
        return (image, mask) if self.transforms is None else self.transforms(image, mask)

    def _load_skipping(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        for step in range(n):
            j = (index + step) % n
            if j in self._bad:
                continue
            try:
                return self.load(j)
            except CorruptSampleError as e:
                self._bad.add(j)
                self.skipped += 1
                log.warning(
                    "skip_corrupt: skipping item %d (%s) of %s; %d corrupt item(s) skipped so far "
                    "in this process: %s",
                    j,
                    self.ids[j],
                    type(self).__name__,
                    self.skipped,
                    e,
                )
        raise CorruptSampleError(f"{type(self).__name__}: all {n} items are corrupt")
