"""The ``context`` and ``context_tokens`` tasks: PSPNet's pyramid pooling (CVPR'17, Table 1 and
the mismatched relationship of Sec. 1 / Fig. 2). One file: :class:`ContextTokens` reuses
:class:`ContextScenes`' classes, objects and haze and differs only in where the scene is
shown (a border frame vs a count of marks over the whole image)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from datamodules.constants import IGNORE_INDEX
from datamodules.synthetic._draw import (
    _finish,
    _hsv,
    _outer_band,
    _place,
    _smooth_noise,
    _square_stamp,
    _stamp,
)
from datamodules.synthetic.base import SyntheticSegmentation


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
