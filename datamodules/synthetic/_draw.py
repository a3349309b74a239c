"""Drawing helpers shared by the synthetic tasks (and ``instances``): value noise, colours,
stamps, curves, placement, backgrounds and the void band.

Every helper draws only from the ``numpy.random.Generator`` it is handed, in a fixed order, so
an item stays a pure function of its seed sequence. Drawing is aliasing-free: a pixel is in an
object exactly where its label says so.
"""

from __future__ import annotations

import colorsys
import functools
import math

import numpy as np
from scipy import ndimage


@functools.lru_cache(maxsize=32)
def _lerp_weights(size: int, cell: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left control point and weights to linearly interpolate points `cell` px apart."""
    t = (np.arange(size) + 0.5) / cell
    i0 = np.floor(t).astype(np.intp)
    w = (t - i0).astype(np.float32)
    return i0, 1.0 - w, w


def _smooth_noise(rng: np.random.Generator, size: int, cell: int, channels: int = 0) -> np.ndarray:
    """Value noise with features about `cell` px wide, roughly unit variance.

    Gathers instead of matrix products: BLAS threads stall when the cores are shared.
    """
    i0, w0, w1 = _lerp_weights(size, cell)
    n = size // cell + 2
    low = rng.standard_normal((n, n, channels) if channels else (n, n), dtype=np.float32)
    along_y = (slice(None), None, None) if channels else (slice(None), None)
    along_x = (None, slice(None), None) if channels else (None, slice(None))
    rows = low[i0] * w0[along_y] + low[i0 + 1] * w1[along_y]
    return (rows[:, i0] * w0[along_x] + rows[:, i0 + 1] * w1[along_x]) * 1.6


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255.0


def _outer_band(fg: np.ndarray, width: int) -> np.ndarray:
    """Pixels outside `fg` within Chebyshev distance `width` of it (the void outline)."""
    grown = ndimage.maximum_filter(fg.view(np.uint8), size=2 * width + 1).astype(bool)
    return grown & ~fg


@functools.lru_cache(maxsize=16)
def _square_stamp(width: int) -> np.ndarray:
    o = np.arange(width) - (width - 1) // 2
    return np.stack(np.meshgrid(o, o, indexing="ij"), -1).reshape(-1, 2)


@functools.lru_cache(maxsize=16)
def _disc_stamp(diameter: int) -> np.ndarray:
    c = (diameter - 1) / 2
    yy, xx = np.mgrid[:diameter, :diameter]
    keep = (yy - c) ** 2 + (xx - c) ** 2 <= (diameter / 2) ** 2
    return np.stack([yy[keep], xx[keep]], -1) - int(c)


def _stamp(points: np.ndarray, stamp: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer (rows, cols) covered by `stamp` placed at every point, clipped to the image."""
    p = (np.round(points).astype(int)[:, None, :] + stamp[None]).reshape(-1, 2)
    p = p[((p >= 0) & (p < size)).all(1)]
    return p[:, 0], p[:, 1]


def _bezier(rng: np.random.Generator, size: int, min_len: float, max_len: float) -> np.ndarray:
    """Points every <= 0.4 px along a random quadratic Bezier curve (straight to strongly bent)."""
    p0 = rng.uniform(-0.1 * size, 1.1 * size, 2)
    length = rng.uniform(min_len, max_len)
    ang = rng.uniform(0, 2 * math.pi)
    d = np.array([math.sin(ang), math.cos(ang)])
    p2 = p0 + length * d
    p1 = (p0 + p2) / 2 + np.array([-d[1], d[0]]) * rng.normal(0, 0.35 * length)
    n = int(2.5 * (np.linalg.norm(p1 - p0) + np.linalg.norm(p2 - p1))) + 2
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _place(rng: np.random.Generator, size: int, radius: float, margin: float,
           placed: list[tuple[float, float, float]], gap: float,
           extent: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """A centre for a shape within `radius` of its centre and `extent` = (half height, half
    width) (default: radius), keeping the shape `margin` px inside the image and `gap` px clear
    of the `placed` (y, x, radius) circles; from 30 random candidates, None if none fits."""
    hy, hx = (radius, radius) if extent is None else extent
    cand = np.stack([rng.uniform(hy + margin, size - hy - margin, 30),
                     rng.uniform(hx + margin, size - hx - margin, 30)], 1)
    if placed:
        other = np.asarray(placed)
        dist = np.hypot(cand[:, None, 0] - other[:, 0], cand[:, None, 1] - other[:, 1])
        ok = (dist >= radius + other[:, 2] + gap).all(1)
        if not ok.any():
            return None
        cand = cand[ok]
    return float(cand[0, 0]), float(cand[0, 1])


def _grey_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured, low-saturation background: multi-scale luminance noise plus a faint tint."""
    lum = rng.uniform(80, 170) + 30 * _smooth_noise(rng, size, 24)
    lum += 14 * _smooth_noise(rng, size, 5)
    return lum[..., None] + 7 * _smooth_noise(rng, size, 32, channels=3)


def _finish(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0, 255).astype(np.uint8)
