"""The ``thin`` task: FCN skips (Long et al., CVPR'15, Table 2: 32s vs 16s vs 8s)."""

from __future__ import annotations

import numpy as np

from datamodules.constants import IGNORE_INDEX
from datamodules.synthetic._draw import (
    _bezier,
    _disc_stamp,
    _finish,
    _grey_background,
    _hsv,
    _outer_band,
    _square_stamp,
    _stamp,
)
from datamodules.synthetic.base import SyntheticSegmentation


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
