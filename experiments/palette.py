"""Class-index masks as colours: the dataset palette with void (255) white, and its inverse.

Used by the prediction grid of :mod:`experiments.figures` and by the notebooks; :mod:`experiments.results_folder` loads the cells and samples they colour.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from datamodules.constants import IGNORE_INDEX

VOID_COLOR = (255, 255, 255)  # no palette here uses white; VOC's own void colour is (224, 224, 192)


def _lut(palette: Sequence[Sequence[int]], void_color: Sequence[int]) -> np.ndarray:
    if len(palette) > IGNORE_INDEX:
        raise ValueError(f"a palette of {len(palette)} colours leaves no room for void (255)")
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8).reshape(-1, 3)
    lut[IGNORE_INDEX] = void_color
    return lut


def colorize(mask, palette: Sequence[Sequence[int]], void_color=VOID_COLOR) -> np.ndarray:
    """H×W class indices (255 = void) → H×W×3 uint8 RGB in ``palette``, void ``void_color``."""
    mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(np.int64)
    bad = (mask < 0) | ((mask >= len(palette)) & (mask != IGNORE_INDEX))
    if bad.any():
        raise ValueError(f"mask values {np.unique(mask[bad])[:8].tolist()} have no colour in a "
                         f"palette of {len(palette)} classes")
    return _lut(palette, void_color)[mask]


def decolorize(rgb, palette: Sequence[Sequence[int]], void_color=VOID_COLOR) -> np.ndarray:
    """Inverse of :func:`colorize`: H×W×3 RGB → H×W int64 indices; unknown colours raise."""
    lut = _lut(palette, void_color)
    index = np.r_[np.arange(len(palette)), IGNORE_INDEX]
    codes = lut[index].astype(np.int64) @ np.array([65536, 256, 1])
    if len(set(codes.tolist())) != len(codes):
        raise ValueError("palette colours (with the void colour) are not distinct")
    rgb = np.asarray(rgb)
    pixels = rgb[..., :3].astype(np.int64) @ np.array([65536, 256, 1])
    order = np.argsort(codes)
    pos = np.clip(np.searchsorted(codes[order], pixels), 0, len(codes) - 1)
    found = codes[order][pos] == pixels
    if not found.all():
        raise ValueError(f"{int((~found).sum())} pixels have colours outside the palette")
    return index[order][pos]


def difference_map(pred_a, pred_b, mask) -> np.ndarray:
    """Where two predictions differ, who is right: H×W×3 uint8.

    Grey: both agree; blue: only A right; orange: only B right; red: they differ and both are
    wrong; white: void (not scored) pixels.
    """
    a, b, m = (np.asarray(x) for x in (pred_a, pred_b, mask))
    out = np.full(m.shape + (3,), 200, np.uint8)
    differ = a != b
    out[differ & (a == m)] = (31, 119, 180)
    out[differ & (b == m)] = (255, 127, 14)
    out[differ & (a != m) & (b != m)] = (214, 39, 40)
    out[m == IGNORE_INDEX] = VOID_COLOR
    return out
