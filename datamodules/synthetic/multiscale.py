"""The ``multiscale`` task: DeepLab v2's ASPP (TPAMI'17, Table 3: LargeFOV vs ASPP-S vs
ASPP-L): shape classes at radii 4 px .. 0.3 * image size, told apart only by the outline."""

from __future__ import annotations

import math

import numpy as np

from datamodules.constants import IGNORE_INDEX
from datamodules.synthetic._draw import (
    _finish,
    _grey_background,
    _hsv,
    _outer_band,
    _place,
    _smooth_noise,
)
from datamodules.synthetic.base import SyntheticSegmentation


class MultiScaleShapes(SyntheticSegmentation):
    """DeepLab ASPP: the same shape classes at sizes spanning > 10x, classified by outline.

    Classes are shapes (disc, square, equilateral triangle; squares and triangles randomly
    rotated) of equal area for a given size r (area = pi r^2), with r log-uniform from 4 px to
    0.3 * image_size (48 px at the default 160): per image one large (top third of the log
    range), 1-3 medium and 3-8 small objects, non-overlapping and entirely inside the image.
    Colour (any hue), texture and noise are drawn from ONE distribution for all classes, and
    size and position are class-independent, so nothing inside an object tells its class: a
    pixel is classified only by features whose receptive field reaches the object's outline,
    i.e. at a distance from 0 up to about 1.6 r, which ranges continuously over ~4-75 px.
    One 3x3 atrous layer at rate 12 on a stride-8 map (LargeFOV) samples the centre and eight
    taps 96 px away: they land beyond most outlines (in background or other objects) while
    the outlines of the many medium objects lie between the centre and the taps, and a small
    object amid its neighbours gets only the centre tap's evidence. Rates {2,4,8,12} or
    {6,12,18,24} (ASPP-S/L) sample several distances at once, so some branch sees the outline
    whatever the size. Small objects come in clusters of mixed classes, so a field made only
    of far taps mixes their neighbours' evidence. The void band is 2 px outside each object;
    objects are kept >= 6 px apart so bands never touch another object.
    """

    task, task_id = "multiscale", 2
    class_names = ("background", "disc", "square", "triangle")
    palette = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200)]
    default_image_size, min_image_size = 160, 96
    band_width, gap, min_radius, max_radius_frac = 2, 6.0, 4.0, 0.3
    # circumradius / r for equal area pi r^2: disc 1, square sqrt(pi/2), triangle see below
    _circum = (1.0, math.sqrt(math.pi / 2), math.sqrt(4 * math.pi / (3 * math.sqrt(3))))

    def _draw(self, seq):
        rng, s = np.random.default_rng(seq), self.image_size
        img = _grey_background(rng, s)
        texture = 1 + 0.15 * _smooth_noise(rng, s, 6)
        mask = np.zeros((s, s), np.uint8)
        lo, hi = math.log(self.min_radius), math.log(self.max_radius_frac * s)
        third = (hi - lo) / 3
        sizes = [np.exp(rng.uniform(hi - third, hi, 1)),
                 np.exp(rng.uniform(lo + third, hi - third, rng.integers(1, 4))),
                 np.exp(rng.uniform(lo, lo + third, rng.integers(3, 9)))]
        placed: list[tuple[float, float, float]] = []
        for r in np.concatenate(sizes):
            cls = int(rng.integers(1, 4))
            circ = self._circum[cls - 1] * r
            theta = rng.uniform(0, 2 * math.pi)
            centre = _place(rng, s, circ, 2, placed, self.gap)
            if centre is None:
                continue  # no room left: drop this object
            cy, cx = centre
            placed.append((cy, cx, circ))
            y0, x0 = max(0, int(cy - circ) - 1), max(0, int(cx - circ) - 1)
            y1, x1 = min(s, int(cy + circ) + 2), min(s, int(cx + circ) + 2)
            dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            dy -= cy
            dx -= cx
            inside = self._inside(cls, r, theta, dy, dx)
            colour = _hsv(rng.uniform(), rng.uniform(0.45, 0.9), rng.uniform(0.55, 0.95))
            region = img[y0:y1, x0:x1]
            region[inside] = colour * texture[y0:y1, x0:x1][inside][:, None]
            mask[y0:y1, x0:x1][inside] = cls
        img += 10 * rng.standard_normal(img.shape, dtype=np.float32)
        mask[_outer_band(mask > 0, self.band_width)] = IGNORE_INDEX
        return _finish(img), mask

    @staticmethod
    def _inside(cls: int, r: float, theta: float, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        if cls == 1:
            return dy**2 + dx**2 <= r**2
        c, sn = math.cos(theta), math.sin(theta)
        if cls == 2:
            half = r * math.sqrt(math.pi) / 2
            return (np.abs(c * dx + sn * dy) <= half) & (np.abs(-sn * dx + c * dy) <= half)
        inradius = r * math.sqrt(math.pi / (3 * math.sqrt(3)))
        out = np.ones(dy.shape, bool)
        for k in range(3):  # inside all three edge half-planes
            a = theta + k * 2 * math.pi / 3
            out &= math.cos(a) * dx + math.sin(a) * dy <= inradius
        return out
