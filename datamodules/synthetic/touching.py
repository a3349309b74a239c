"""The ``touching`` task: U-Net's border weight map (Ronneberger et al., MICCAI'15, Eq. 2,
Fig. 3): touching cells split by 1-2 px background borders that mIoU barely sees."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

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
