"""Synthetic, procedural segmentation tasks that each isolate ONE architectural property.

No real dataset can be downloaded on the development machines, so the ablations of
FCN (Long et al., CVPR'15, Table 2: 32s vs 16s vs 8s skips), DeepLab v2 (TPAMI'17, Table 3:
LargeFOV vs ASPP-S vs ASPP-L) and PSPNet (CVPR'17, Table 1 and the "boat vs car" mismatched
relationship of Sec. 1 / Fig. 2) run first on small tasks where the property each paper argues
for decides the score:

=============  ======================================  ========================================
task           property (paper)                        why it is decisive
=============  ======================================  ========================================
``thin``       output resolution / skips (FCN)         class is a local colour; objects are
                                                       1-3 px lines and 3-8 px dots
``multiscale`` multi-rate context (DeepLab ASPP)       class is the outline's shape; the same
                                                       shapes come at radii 4 px .. 0.3 * size
``context``    global context (PSPNet pyramid pool)    identical objects take their class from
                                                       the scene around them
``touching``   thin separating borders (U-Net Eq. 2)   touching cells split by 1-2 px
                                                       background borders; mIoU barely sees them
=============  ======================================  ========================================

Every item ``i`` of split ``s`` is drawn from ``numpy.random.default_rng(SeedSequence((task,
seed, s, i)))``, so it is the same in every process, worker and run, and generated on the fly
(about 1-2 ms for 128 x 128). Items are ``(uint8 3 x H x W tensor, int64 H x W mask)`` with
``IGNORE_INDEX`` (255) on a band just *outside* each object, like VOC's void outlines but
never eating a thin or small object (VOC's band straddles the contour and would erase a 2 px
line). Drawing is aliasing-free: a pixel is in an object exactly where its label says so.

The datamodules default to ``augment="flip"`` and ``crop_size = image_size``: random rescaling
would change the designed pixel widths and size ranges, and random crops would clip shapes
(``multiscale``) or cut away the scene that names the object (``context``). Flips change
nothing a class depends on. ``export_synthetic`` writes the same items in the real VOC 2012 or
ADE20K on-disk layouts, so the real-data loaders can be exercised end to end::

    python -m datamodules.synthetic export --task thin --layout voc --out data/synth_voc
"""

from __future__ import annotations

import argparse
import colorsys
import functools
import math
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from datamodules.base import SegmentationDataModule
from datamodules.constants import IGNORE_INDEX

_SPLITS = {"train": 0, "val": 1, "test": 2}


# --------------------------------------------------------------------------- drawing helpers
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


# --------------------------------------------------------------------------- datasets
class SyntheticSegmentation(Dataset):
    """Base class: deterministic per-item RNG, tensor conversion, class metadata."""

    task: str = ""
    task_id: int = 0
    class_names: tuple[str, ...] = ()
    palette: list[tuple[int, int, int]] = []
    default_image_size: int = 128
    min_image_size: int = 64

    def __init__(self, split: str = "train", num_items: int = 100, image_size: int | None = None,
                 seed: int = 0) -> None:
        if split not in _SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLITS)}")
        image_size = self.default_image_size if image_size is None else int(image_size)
        if image_size < self.min_image_size:
            raise ValueError(f"{self.task!r} needs image_size >= {self.min_image_size}, "
                             f"got {image_size}")
        if num_items < 0:
            raise ValueError(f"num_items must be >= 0, got {num_items}")
        self.split, self.num_items, self.image_size, self.seed = split, num_items, image_size, seed

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.num_items

    def seed_sequence(self, index: int) -> np.random.SeedSequence:
        return np.random.SeedSequence((self.task_id, self.seed, _SPLITS[self.split], index))

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item `index` as numpy: (H x W x 3 uint8 image, H x W uint8 mask with 255 = void)."""
        if not 0 <= index < self.num_items:
            raise IndexError(f"index {index} out of range for {self.num_items} items")
        return self._draw(self.seed_sequence(index))

    def _draw(self, seq: np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = self.generate(index)
        return (torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
                torch.from_numpy(mask.astype(np.int64)))


class ThinStructures(SyntheticSegmentation):
    """FCN skip connections: thin, small objects whose class is a LOCAL colour cue.

    Foreground classes are four hues (red, green, blue, yellow, jittered per object, plus pixel
    noise), painted as quadratic Bezier curves 1-3 px wide (straight to strongly bent) and
    discs 3-8 px across, on a textured grey background that also carries achromatic curves of
    the same widths (labelled background, so "is a line" is not the cue; hue is). Identity is
    readable from one pixel's neighbourhood, so even a stride-32 network recognises the
    classes, but a stride-32 score map upsampled is a 32-px blur that cannot outline a 2 px
    line: nearly all foreground lies within 2 px of background. FCN-16s/8s fuse stride-16/8
    scores and outline more. A stride-s map scoring each class present in its cell, upsampled
    bilinearly (the best FCN-like non-learned oracle), reaches mIoU 0.79 / 0.50 / 0.29 / 0.15
    at s = 4 / 8 / 16 / 32. The void band is one pixel *outside* each object (a VOC-style band
    straddling the contour would leave thin lines all-void); crossing curves keep the label of
    the one painted last, exactly as drawn. At 128 px about 6% of pixels are foreground and 6%
    void.
    """

    task, task_id = "thin", 1
    class_names = ("background", "red", "green", "blue", "yellow")
    palette = [(0, 0, 0), (220, 40, 40), (40, 180, 60), (50, 90, 230), (230, 200, 40)]
    _hues = (0.0, 1 / 3, 0.62, 0.15)  # red, green, blue, yellow
    band_width = 1

    def _draw(self, seq):
        rng, s = np.random.default_rng(seq), self.image_size
        img = _grey_background(rng, s)
        mask = np.zeros((s, s), np.uint8)
        for _ in range(rng.integers(2, 6)):  # achromatic distractor curves: background
            rr, cc = _stamp(_bezier(rng, s, 0.2 * s, 0.7 * s), _square_stamp(rng.integers(1, 4)), s)
            img[rr, cc] = rng.choice([rng.uniform(10, 50), rng.uniform(200, 245)])
        n_curves, n_dots = rng.integers(5, 11), rng.integers(6, 16)
        for k in range(n_curves + n_dots):
            cls = int(rng.integers(1, 5))
            if k < n_curves:
                pts = _bezier(rng, s, 0.25 * s, 0.8 * s)
                stamp = _square_stamp(int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3])))
            else:
                pts = rng.uniform(0, s, (1, 2))
                stamp = _disc_stamp(int(rng.integers(3, 9)))
            rr, cc = _stamp(pts, stamp, s)
            colour = _hsv(self._hues[cls - 1] + rng.normal(0, 0.02), rng.uniform(0.7, 0.95),
                          rng.uniform(0.75, 1.0))
            img[rr, cc] = colour
            mask[rr, cc] = cls
        img += 12 * rng.standard_normal(img.shape, dtype=np.float32)
        mask[_outer_band(mask > 0, self.band_width)] = IGNORE_INDEX
        return _finish(img), mask


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


class ContextScenes(SyntheticSegmentation):
    """PSPNet pyramid pooling: identical objects whose class is set by a scene seen only far away.

    Classes: "water", "road" (the two scenes), "boat" (object on water), "car" (object on road)
    -- the mismatched-relationship case of the PSPNet paper. The scene is visible only in a
    frame of ``frame_width`` px (about 6% of the side) along the image border: water (blue with
    wave ripples) or road (grey asphalt grain with dashed lane marks). Inside the frame the scene
    is covered by a haze that is identical in both scenes, and the haze is labelled with the
    scene it covers (a pixel of fog over water is water), so every interior pixel -- haze or
    object -- takes its class from the frame alone. Objects are 1-2 rotated superellipses whose
    long axis is 36-64% of the side (aspect 0.6-1), inside the hazy interior, with a saturated
    non-blue colour. The object and haze layers come from RNG streams independent of the
    scene's, so all interior pixels are bit-identical whichever scene is drawn
    (``render(index, scene=...)``; tested): nothing inside the frame leaks the scene.

    What it decides and what it does not: a *local* network (receptive field smaller than the
    distance to the frame, 56 px from the centre at the default 128 px) is at chance (50%) on
    the central haze and objects, while a global pooling bin sees the frame wherever it is. But
    PSPNet's dilated ResNet-50 is not local: its theoretical receptive field is ~500 px
    (``tools/receptive_field.py``), and although its *effective* field at initialisation is far
    smaller (95% of the gradient mass within ~21 px; ~52 px after training on the previous
    version of this task), training enlarges it to what the task needs: the no-pyramid baseline
    reached 99.6 mIoU at 192 px too (frame 84 px from the centre; README). Putting the scene
    beyond the theoretical field needs images over ~600 px, beyond a CPU smoke budget.
    The void band is 2 px outside each object.
    """

    task, task_id = "context", 3
    class_names = ("water", "road", "boat", "car")
    palette = [(40, 110, 190), (128, 128, 128), (250, 190, 30), (200, 30, 30)]
    band_width = 2

    @property
    def frame_width(self) -> int:
        return max(4, round(0.06 * self.image_size))

    def render(self, index: int, scene: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Item `index`, optionally forced into scene 0 (water) or 1 (road)."""
        if not 0 <= index < self.num_items:
            raise IndexError(f"index {index} out of range for {self.num_items} items")
        return self._draw(self.seed_sequence(index), scene)

    def _draw(self, seq, scene=None):
        obj_ss, scene_ss, haze_ss = seq.spawn(3)
        scene_rng = np.random.default_rng(scene_ss)
        drawn_scene = int(scene_rng.integers(2))
        scene = drawn_scene if scene is None else int(scene)
        img = self._water(scene_rng) if scene == 0 else self._road(scene_rng)
        f = self.frame_width
        img[f:-f, f:-f] = self._haze(np.random.default_rng(haze_ss))[f:-f, f:-f]
        obj_img, fg = self._objects(np.random.default_rng(obj_ss))
        img[fg] = obj_img[fg]
        mask = np.full(fg.shape, scene, np.uint8)
        mask[fg] = 2 + scene
        mask[_outer_band(fg, self.band_width)] = IGNORE_INDEX
        return _finish(img), mask

    def _haze(self, rng):
        """Pale, low-contrast fog: the same in both scenes, unlike either scene's texture."""
        s = self.image_size
        lum = rng.uniform(190, 215) + 10 * _smooth_noise(rng, s, 24)
        img = lum[..., None] * np.array([1.0, 0.97, 0.9], np.float32)
        return img + 4 * rng.standard_normal(img.shape, dtype=np.float32)

    def _objects(self, rng):
        s = self.image_size
        fg = np.zeros((s, s), bool)
        placed: list[tuple[float, float, float]] = []
        t = np.linspace(0, 2 * math.pi, 256, endpoint=False)
        for _ in range(1 + int(rng.random() < 0.4)):
            a = rng.uniform(0.18, 0.32) * s
            b, p, theta = a * rng.uniform(0.6, 1.0), rng.uniform(2, 5), rng.uniform(0, math.pi)
            c, sn = math.cos(theta), math.sin(theta)
            # outline points give the true extent: a superellipse's corners reach past a
            ou = a * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** (2 / p)
            ov = b * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** (2 / p)
            hx, hy = np.abs(c * ou - sn * ov).max(), np.abs(sn * ou + c * ov).max()
            radius = float(np.hypot(ou, ov).max())
            # inside the hazy interior, clear of the frame by the void band and more
            centre = _place(rng, s, radius, self.frame_width + 3, placed, 6, extent=(hy, hx))
            if centre is None:
                continue
            cy, cx = centre
            placed.append((cy, cx, radius))
            y0, x0 = int(cy - hy) - 1, int(cx - hx) - 1
            yy, xx = np.mgrid[y0:int(cy + hy) + 2, x0:int(cx + hx) + 2].astype(np.float32)
            u, v = c * (xx - cx) + sn * (yy - cy), -sn * (xx - cx) + c * (yy - cy)
            fg[y0:y0 + yy.shape[0], x0:x0 + yy.shape[1]] |= (
                np.abs(u / a) ** p + np.abs(v / b) ** p <= 1)
        hue = rng.uniform(-0.2, 0.45)  # excludes cyan/blue, the water hues
        colour = _hsv(hue, rng.uniform(0.55, 0.9), rng.uniform(0.6, 0.95))
        img = colour * (1 + 0.12 * _smooth_noise(rng, s, 6))[..., None]
        img += 8 * rng.standard_normal(img.shape, dtype=np.float32)
        return img, fg

    def _water(self, rng):
        s = self.image_size
        yy, xx = np.mgrid[:s, :s].astype(np.float32)
        ang = rng.uniform(-0.25, 0.25)
        phase = 2 * math.pi * ((yy * math.cos(ang) + xx * math.sin(ang)) / rng.uniform(6, 12)
                               + 0.3 * _smooth_noise(rng, s, 16))
        colour = _hsv(rng.uniform(0.54, 0.6), rng.uniform(0.5, 0.8), rng.uniform(0.45, 0.75))
        img = colour * (1 + 0.18 * np.sin(phase))[..., None]
        return img + 6 * rng.standard_normal(img.shape, dtype=np.float32)

    def _road(self, rng):
        s = self.image_size
        lum = rng.uniform(80, 130) + 8 * _smooth_noise(rng, s, 20)
        img = lum[..., None] + 4 * _smooth_noise(rng, s, 32, channels=3)
        for _ in range(rng.integers(1, 4)):  # dashed lane markings
            vertical, pos = rng.random() < 0.5, rng.uniform(0.1 * s, 0.9 * s)
            dash, period = rng.uniform(8, 16), rng.uniform(18, 28)
            t = np.arange(s)
            on = t[((t + rng.uniform(0, period)) % period) < dash]
            width = int(rng.integers(2, 4))
            pts = np.stack([on, np.full(on.shape, pos)], 1)
            rr, cc = _stamp(pts if vertical else pts[:, ::-1], _square_stamp(width), s)
            img[rr, cc] = (235, 235, 235) if rng.random() < 0.5 else (230, 190, 40)
        return img + 14 * rng.standard_normal(img.shape, dtype=np.float32)


class ContextTokens(ContextScenes):
    """PSPNet pyramid pooling, global version: the scene is a statistic of the whole image.

    Same classes, objects and haze as :class:`ContextScenes`, but no frame: the haze covers the
    whole image, and ``num_tokens`` (15) small marks are scattered over it outside the objects,
    each either a blue wave or a white/yellow lane dash. The scene is *water* when waves are the
    majority and *road* otherwise; every pixel but the objects' is labelled with the scene, the
    objects with the scene's object class (boat / car). The count of waves is drawn from 5..10,
    so the majority is often 8 to 7: a single mark says little (its type agrees with the scene
    60% of the time), and only counting the marks of the *whole* image decides any pixel. A
    global average pool over a mark detector computes that count wherever the pixel is; a
    network without global context must integrate it through its receptive field, which weights
    marks near the pixel far more than distant ones (Luo et al.). Object, haze, mark positions
    and mark shapes come from RNG streams independent of the scene's: ``render(index, scene)``
    flips every mark's type and nothing else (tested).
    """

    task, task_id = "context_tokens", 5
    num_tokens = 15

    @property
    def frame_width(self) -> int:  # no frame: objects only keep clear of the border
        return 0

    def _draw(self, seq, scene=None):
        obj_ss, scene_ss, haze_ss, token_ss = seq.spawn(4)
        n_wave = int(np.random.default_rng(scene_ss).integers(5, 11))
        drawn_scene = 0 if 2 * n_wave > self.num_tokens else 1
        scene = drawn_scene if scene is None else int(scene)
        img = self._haze(np.random.default_rng(haze_ss))
        obj_img, fg = self._objects(np.random.default_rng(obj_ss))
        img[fg] = obj_img[fg]
        trng = np.random.default_rng(token_ss)
        waves = trng.permutation(self.num_tokens) < n_wave
        if scene != drawn_scene:  # the other scene: every mark changes type, nothing else moves
            waves = ~waves
        self._marks(img, fg, waves, trng)
        mask = np.full(fg.shape, scene, np.uint8)
        mask[fg] = 2 + scene
        mask[_outer_band(fg, self.band_width)] = IGNORE_INDEX
        return _finish(img), mask

    def _marks(self, img, fg, waves, rng) -> None:
        """Draw one mark per entry of ``waves`` (True: wave, False: lane dash) clear of objects."""
        s = self.image_size
        length = max(7, s // 14)
        keep_out = ndimage.maximum_filter(fg.view(np.uint8), size=2 * (self.band_width + length) + 1) > 0
        taken = np.zeros_like(fg)
        t = np.arange(length, dtype=np.float32) - (length - 1) / 2
        for wave in waves:
            for _ in range(100):  # rejection sampling; positions do not depend on the type
                cy, cx = rng.uniform(length, s - length, 2)
                if not keep_out[int(cy), int(cx)] and not taken[int(cy), int(cx)]:
                    break
            angle = rng.uniform(0, math.pi)
            bend = 1.5 * np.sin(2 * math.pi * t / length)
            yy = cy + t * math.sin(angle) + bend * math.cos(angle)
            xx = cx + t * math.cos(angle) - bend * math.sin(angle)
            straight = np.stack([cy + t * math.sin(angle), cx + t * math.cos(angle)], 1)
            rr, cc = _stamp(np.stack([yy, xx], 1) if wave else straight, _square_stamp(2), s)
            lane = (235, 235, 235) if rng.random() < 0.5 else (230, 190, 40)
            img[rr, cc] = _hsv(rng.uniform(0.55, 0.6), 0.8, 0.8) if wave else lane
            y0, x0 = int(cy) - length, int(cx) - length
            taken[max(0, y0):y0 + 2 * length, max(0, x0):x0 + 2 * length] = True


class TouchingCells(SyntheticSegmentation):
    """U-Net's border weight map: touching cells separated only by thin background borders.

    The setting of Ronneberger et al. (MICCAI'15, Sec. 3 and Fig. 3, the HeLa / ISBI cell
    images): clusters of 3-9 cells, each cell an ellipse of radius 6-12 px (aspect 0.7-1,
    slightly wobbly outline), packed so that neighbouring cells overlap and are split along
    their weighted Voronoi boundary; each such contact is carved into a 1 or 2 px border
    (one per image) labelled *background*, exactly like the thin gaps Fig. 3c labels between
    touching HeLa cells. Classes are two cell types ("cell_a", "cell_b"), told apart by their
    stain colour (magenta vs green, jittered per cell), so recognising a cell is easy: what is
    hard is the separating border, drawn as a darker membrane line (0.55-0.75 of the cells'
    brightness, under 12 grey levels of pixel noise) inside an otherwise continuous cluster.

    What it isolates: missing a border merges two cells into one connected region. At 128 px
    an image holds ~16 cells, most touching a neighbour, but the separating borders are only
    ~1% of the labelled pixels and belong to the majority class, so labelling every one of
    them as cell still scores mIoU ~0.95 (tested), while a boundary-focused metric (mIoU
    within a few px of label boundaries) and the number of merged cells do move. Eq. 2's
    weight map puts ``w0·exp(-(d1+d2)²/2σ²) ≈ 9`` on exactly these pixels (``d1 + d2`` =
    2-3 px), which is what the paper argues for.
    Every separated cell is a 4-connected component of its class region (the borders cut all
    4-adjacencies between different cells; tested), so ``unet_weight_map`` on the class map
    finds the same cells as with instance ids. Cells lie entirely inside the image.

    Void (255): a 1 px band just *outside* each cluster's outer contour (VOC-style
    annotation uncertainty at an object/background contour), never on a separating border,
    which stays labelled: the boundary the task is about is always scored.
    ``instances(index)`` returns the cell ids (0 = background and borders).
    """

    task, task_id = "touching", 4
    class_names = ("background", "cell_a", "cell_b")
    palette = [(0, 0, 0), (200, 60, 160), (60, 170, 90)]
    _hues = (0.86, 0.38)  # magenta, green
    band_width = 1
    min_radius, max_radius = 6.0, 12.0

    def instances(self, index: int) -> np.ndarray:
        """Cell ids of item `index` (H x W int32; 0 = background, borders and void)."""
        if not 0 <= index < self.num_items:
            raise IndexError(f"index {index} out of range for {self.num_items} items")
        return self._draw(self.seed_sequence(index), with_instances=True)[2]

    def _cells(self, rng):
        """(centre y, centre x, radius) of every cell, clustered so that neighbours overlap."""
        s, lo, hi = self.image_size, self.min_radius, self.max_radius
        cells: list[tuple[float, float, float]] = []
        for _ in range(int(rng.integers(3, 6))):  # clusters
            r = rng.uniform(lo, hi)
            centre = _place(rng, s, 1.25 * r, 2, cells, 4)  # 1.25: the wobbly outline
            if centre is None:
                continue
            cells.append((*centre, r))
            members = [len(cells) - 1]
            for _ in range(int(rng.integers(2, 9))):
                r = rng.uniform(lo, hi)
                py, px, pr = cells[members[int(rng.integers(len(members)))]]
                ang = rng.uniform(0, 2 * math.pi)
                dist = (pr + r) * rng.uniform(0.65, 0.85)  # overlapping discs: they will touch
                cy, cx = py + dist * math.sin(ang), px + dist * math.cos(ang)
                if not (1.25 * r + 2 <= min(cy, cx) and max(cy, cx) <= s - 1.25 * r - 2):
                    continue
                if any(math.hypot(cy - y, cx - x) < 0.6 * (r + rr) for y, x, rr in cells):
                    continue
                cells.append((cy, cx, r))
                members.append(len(cells) - 1)
        return cells

    def _draw(self, seq, with_instances=False):
        rng, s = np.random.default_rng(seq), self.image_size
        cells = self._cells(rng)
        yy, xx = np.mgrid[:s, :s].astype(np.float32)
        wobble = np.clip(0.06 * _smooth_noise(rng, s, 4), -0.2, 0.2)
        best = np.full((s, s), np.inf, np.float32)
        inst = np.zeros((s, s), np.int32)
        for k, (cy, cx, r) in enumerate(cells, 1):
            theta, aspect = rng.uniform(0, math.pi), rng.uniform(0.7, 1.0)
            c, sn = math.cos(theta), math.sin(theta)
            box = (slice(max(int(cy - 1.25 * r) - 1, 0), int(cy + 1.25 * r) + 2),
                   slice(max(int(cx - 1.25 * r) - 1, 0), int(cx + 1.25 * r) + 2))
            dy, dx = yy[box] - cy, xx[box] - cx
            u, v = c * dx + sn * dy, -sn * dx + c * dy
            d = np.sqrt(u**2 + (v / aspect) ** 2) / r  # < 1 inside the cell; never past its radius
            closer = (d < best[box]) & (d + wobble[box] <= 1.0)
            best[box][closer], inst[box][closer] = d[closer], k
        # carve the contacts: a pixel is border if a 4-neighbour belongs to another cell
        right = (inst[:, :-1] != inst[:, 1:]) & (inst[:, :-1] > 0) & (inst[:, 1:] > 0)
        down = (inst[:-1] != inst[1:]) & (inst[:-1] > 0) & (inst[1:] > 0)
        border = np.zeros((s, s), bool)
        border[:, :-1] |= right
        border[:-1] |= down
        if rng.random() < 0.5:  # 2 px: both sides of each contact
            border[:, 1:] |= right
            border[1:] |= down
        inst[border] = 0
        classes = rng.integers(1, 3, len(cells) + 1)
        classes[0] = 0
        mask = classes[inst].astype(np.uint8)

        img = _grey_background(rng, s)
        texture = 1 + 0.12 * _smooth_noise(rng, s, 5)
        colours = np.zeros((len(cells) + 1, 3), np.float32)
        for k in range(1, len(cells) + 1):
            hue = self._hues[classes[k] - 1] + rng.normal(0, 0.02)
            colours[k] = _hsv(hue, rng.uniform(0.45, 0.75), rng.uniform(0.7, 0.95))
        cell = inst > 0
        img[cell] = colours[inst[cell]] * texture[cell, None]
        # membrane: a darker shade of a cell it separates (grey_dilation: a neighbour's id)
        near = ndimage.grey_dilation(inst, size=3)
        img[border] = rng.uniform(0.55, 0.75) * colours[near[border]] * texture[border, None]
        img += 12 * rng.standard_normal(img.shape, dtype=np.float32)
        mask[_outer_band(inst > 0, self.band_width) & ~border] = IGNORE_INDEX
        return (_finish(img), mask, inst) if with_instances else (_finish(img), mask)


SYNTHETIC_TASKS: dict[str, type[SyntheticSegmentation]] = {
    "thin": ThinStructures,
    "multiscale": MultiScaleShapes,
    "context": ContextScenes,
    "context_tokens": ContextTokens,
    "touching": TouchingCells,
}


def _task_class(task: str) -> type[SyntheticSegmentation]:
    if task not in SYNTHETIC_TASKS:
        raise ValueError(
            f"unknown synthetic task {task!r}; expected one of {sorted(SYNTHETIC_TASKS)}")
    return SYNTHETIC_TASKS[task]


# --------------------------------------------------------------------------- datamodules
class SyntheticDataModule(SegmentationDataModule):
    """Shared wiring of the three synthetic datamodules; see the dataset classes for the tasks.

    ``image_size`` defaults to the task's (128; 160 for ``multiscale``) and ``crop_size`` to
    ``image_size``; ``scale_range=(1.0, 1.0)`` and ``augment="flip"`` keep the designed pixel
    scales (see the module docstring). Generation costs 1-2 ms per item, so ``num_workers=0``
    is the fastest choice on a laptop; all items have one size, so validation batches too.

    ``data_seed`` fixes the generated items; ``seed`` (the run's seed) only drives the training
    shuffle and augmentation, so every seed of every variant sees the same images.
    """

    dataset_class: type[SyntheticSegmentation] = SyntheticSegmentation

    def __init__(
        self,
        num_train: int = 1000,
        num_val: int = 100,
        image_size: int | None = None,
        seed: int = 0,
        data_seed: int = 0,
        batch_size: int = 8,
        val_batch_size: int = 8,
        crop_size: int | None = None,
        scale_range: tuple[float, float] = (1.0, 1.0),
        augment: str = "flip",
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
    ) -> None:
        image_size = self.dataset_class.default_image_size if image_size is None else image_size
        super().__init__(
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            crop_size=image_size if crop_size is None else crop_size,
            scale_range=scale_range,
            augment=augment,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            seed=seed,
        )
        self.num_train, self.num_val = num_train, num_val
        self.image_size, self.data_seed = image_size, data_seed

    def make_datasets(self, stage: str | None = None) -> None:
        make = self.dataset_class
        self.train_set = make("train", self.num_train, self.image_size, self.data_seed)
        self.val_set = make("val", self.num_val, self.image_size, self.data_seed)


class ThinStructuresDataModule(SyntheticDataModule):
    """:class:`ThinStructures` -- FCN-32s vs 16s vs 8s."""

    dataset_class = ThinStructures
    class_names, palette = ThinStructures.class_names, ThinStructures.palette
    num_classes = len(class_names)


class MultiScaleDataModule(SyntheticDataModule):
    """:class:`MultiScaleShapes` -- DeepLab LargeFOV vs ASPP-S vs ASPP-L."""

    dataset_class = MultiScaleShapes
    class_names, palette = MultiScaleShapes.class_names, MultiScaleShapes.palette
    num_classes = len(class_names)


class ContextDataModule(SyntheticDataModule):
    """:class:`ContextScenes` -- PSPNet bins (none vs 1 vs 1-2-3-6)."""

    dataset_class = ContextScenes
    class_names, palette = ContextScenes.class_names, ContextScenes.palette
    num_classes = len(class_names)


class ContextTokensDataModule(SyntheticDataModule):
    """:class:`ContextTokens` -- PSPNet bins, with the scene a count over the whole image."""

    dataset_class = ContextTokens
    class_names, palette = ContextTokens.class_names, ContextTokens.palette
    num_classes = len(class_names)


class TouchingCellsDataModule(SyntheticDataModule):
    """:class:`TouchingCells` -- U-Net valid vs same padding, with and without border weights."""

    dataset_class = TouchingCells
    class_names, palette = TouchingCells.class_names, TouchingCells.palette
    num_classes = len(class_names)


SYNTHETIC_DATAMODULES: dict[str, type[SyntheticDataModule]] = {
    "thin": ThinStructuresDataModule,
    "multiscale": MultiScaleDataModule,
    "context": ContextDataModule,
    "context_tokens": ContextTokensDataModule,
    "touching": TouchingCellsDataModule,
}


def build_synthetic_datamodule(task: str, **kwargs) -> SyntheticDataModule:
    """Datamodule of synthetic `task` (a key of ``SYNTHETIC_TASKS``) with its keyword args."""
    _task_class(task)
    return SYNTHETIC_DATAMODULES[task](**kwargs)


# --------------------------------------------------------------------------- export
def _voc_palette() -> list[int]:
    from datamodules.voc import VOC_PALETTE  # one source of truth for the VOC colours

    flat = np.asarray(VOC_PALETTE, dtype=np.uint8).reshape(-1).tolist()
    return flat + [0] * (768 - len(flat))


def export_synthetic(
    task: str,
    out_dir: str | Path,
    layout: str = "voc",
    num_train: int = 200,
    num_val: int = 50,
    image_size: int | None = None,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Write `task`'s train and val items in the real VOC 2012 or ADE20K layout under `out_dir`.

    VOC: ``VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette PNG,
    255 = void), ImageSets/Segmentation/{train,val,trainval}.txt}``. ADE20K:
    ``ADEChallengeData2016/{images,annotations}/{training,validation}/<id>.{jpg,png}`` with
    class k stored as k + 1 and void as 0 (ADE's "other"). JPEGs are quality 95 without chroma
    subsampling, which would smear the 1 px coloured lines of ``thin``. A non-empty `out_dir`
    is refused unless `force`; then earlier ``synth_*`` files of the written folders are
    replaced. Returns `out_dir`.
    """
    from PIL import Image

    cls = _task_class(task)
    if layout not in ("voc", "ade20k"):
        raise ValueError(f"unknown layout {layout!r}; expected 'voc' or 'ade20k'")
    if layout == "ade20k" and len(cls.class_names) > 150:
        raise ValueError(f"ADE20K stores at most 150 classes; {task!r} has {len(cls.class_names)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"output directory {out} is not empty; pass force=True (--force) "
                              "to write into it")
    palette = _voc_palette() if layout == "voc" else None
    voc = out / "VOCdevkit" / "VOC2012"
    ade = out / "ADEChallengeData2016"
    ids: dict[str, list[str]] = {}
    for split, n in (("train", num_train), ("val", num_val)):
        ds = cls(split, n, image_size, seed)
        if layout == "voc":
            img_dir, ann_dir = voc / "JPEGImages", voc / "SegmentationClass"
        else:
            folder = "training" if split == "train" else "validation"
            img_dir, ann_dir = ade / "images" / folder, ade / "annotations" / folder
        for d in (img_dir, ann_dir):
            d.mkdir(parents=True, exist_ok=True)
            for stale in d.glob(f"synth_{task}_{split}_*"):
                stale.unlink()
        ids[split] = []
        for i in range(n):
            name = f"synth_{task}_{split}_{i:06d}"
            img, mask = ds.generate(i)
            Image.fromarray(img).save(img_dir / f"{name}.jpg", quality=95, subsampling=0)
            if layout == "voc":
                ann = Image.fromarray(mask, mode="P")
                ann.putpalette(palette)
            else:
                shifted = np.where(mask == IGNORE_INDEX, 0, mask.astype(np.int64) + 1)
                ann = Image.fromarray(shifted.astype(np.uint8), mode="L")
            ann.save(ann_dir / f"{name}.png")
            ids[split].append(name)
    if layout == "voc":
        sets = voc / "ImageSets" / "Segmentation"
        sets.mkdir(parents=True, exist_ok=True)
        for split, names in (*ids.items(), ("trainval", ids["train"] + ids["val"])):
            (sets / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datamodules.synthetic",
                                     description="Synthetic segmentation tasks.")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write a task in the VOC 2012 or ADE20K on-disk layout")
    exp.add_argument("--task", required=True, choices=sorted(SYNTHETIC_TASKS))
    exp.add_argument("--layout", required=True, choices=["voc", "ade20k"])
    exp.add_argument("--out", required=True, type=Path, help="output directory")
    exp.add_argument("--num-train", type=int, default=200)
    exp.add_argument("--num-val", type=int, default=50)
    exp.add_argument("--image-size", type=int, default=None,
                     help="default: the task's (128; 160 for multiscale)")
    exp.add_argument("--seed", type=int, default=0)
    exp.add_argument("--force", action="store_true", help="write into a non-empty --out")
    args = parser.parse_args(argv)
    try:
        root = export_synthetic(args.task, args.out, args.layout, args.num_train, args.num_val,
                                args.image_size, args.seed, args.force)
    except (ValueError, FileExistsError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"wrote {args.num_train} train + {args.num_val} val {args.task!r} items "
          f"({args.layout} layout) to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
