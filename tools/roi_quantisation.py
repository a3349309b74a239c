"""Which feature cells RoIPool reads and where RoIAlign samples, for one box: Mask R-CNN
(He et al., ICCV 2017) Sec. 3 "RoIAlign" and Fig. 3, computed exactly as torchvision's kernels.

RoIPool (Fast R-CNN) quantises twice: the box corners are rounded to the feature grid
(``round(x · spatial_scale)``, the end corner counted as an inclusive cell, as Caffe's pixel
indices were), then each of the k × k bins is floor/ceil-ed to whole cells, and the bin takes
the max over those cells. RoIAlign keeps the box and the bins continuous and averages bilinear
samples at ``sampling_ratio`` × ``sampling_ratio`` regular points per bin. With ``aligned=False``
(the paper's layer, Detectron's and torchvision's Mask R-CNN) a box coordinate c lands at
feature index c · scale, where cell i's value sits at index i, i.e. at the centre of the cell
that covers [i, i+1) of the scaled image: the samples are shifted half a cell down-right of the
box; ``aligned=True`` (Detectron2) subtracts that half cell.

Coordinates: ``roi_pool_cells`` returns cell index ranges; ``roi_align_points`` returns (y, x)
in feature index units (cell i's value at i), which is what ``bilinear`` interpolates. The
figure draws everything in scaled-image units, where cell i covers [i, i+1)::

    python -m tools.roi_quantisation --out results/figures/roi_quantisation.png
    python -m tools.roi_quantisation --box 37 21 131 107 --scale 0.0625 --output-size 7 --out fig.png

``tests/test_instance_roi.py`` checks both against ``torchvision.ops.roi_pool`` / ``roi_align``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels


def c_round(x: float) -> int:
    """C's ``round``: halves away from zero (Python's ``round`` goes to even)."""
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def roi_pool_cells(box: Box, spatial_scale: float, output_size: int | tuple[int, int],
                   feature_size: tuple[int, int]) -> np.ndarray:
    """Cells each RoIPool bin reads, as an (out_h, out_w, 4) int array of half-open ranges
    (y0, y1, x0, x1), clipped to the ``feature_size`` (H, W) map; y1 <= y0 or x1 <= x0 means an
    empty bin (output 0). Mirrors torchvision's ``roi_pool`` kernel, float32 included."""
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    h, w = feature_size
    f32 = np.float32
    x1, y1, x2, y2 = (c_round(float(f32(c) * f32(spatial_scale))) for c in box)
    roi_h, roi_w = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)  # inclusive end cell
    bin_h, bin_w = f32(roi_h) / f32(oh), f32(roi_w) / f32(ow)
    out = np.zeros((oh, ow, 4), np.int64)
    for ph in range(oh):
        y0 = min(max(int(math.floor(f32(ph) * bin_h)) + y1, 0), h)
        ye = min(max(int(math.ceil(f32(ph + 1) * bin_h)) + y1, 0), h)
        for pw in range(ow):
            x0 = min(max(int(math.floor(f32(pw) * bin_w)) + x1, 0), w)
            xe = min(max(int(math.ceil(f32(pw + 1) * bin_w)) + x1, 0), w)
            out[ph, pw] = (y0, ye, x0, xe)
    return out


def roi_align_points(box: Box, spatial_scale: float, output_size: int | tuple[int, int],
                     sampling_ratio: int = 2, aligned: bool = False) -> np.ndarray:
    """Sample points of each RoIAlign bin: (out_h, out_w, n, 2) array of (y, x) in feature
    index units (cell i's value at i); the bin's output is the mean of ``bilinear`` at them.
    ``sampling_ratio`` 0 = ceil(bin size) points per axis, as torchvision's kernel."""
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (c * spatial_scale - offset for c in box)
    rh, rw = y2 - y1, x2 - x1
    if not aligned:  # the paper's layer forces at least a 1×1-cell RoI
        rh, rw = max(rh, 1.0), max(rw, 1.0)
    bh, bw = rh / oh, rw / ow
    gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / oh)
    gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / ow)
    ys = y1 + np.arange(oh)[:, None] * bh + (np.arange(gh)[None] + 0.5) * bh / gh  # (oh, gh)
    xs = x1 + np.arange(ow)[:, None] * bw + (np.arange(gw)[None] + 0.5) * bw / gw  # (ow, gw)
    yy = np.broadcast_to(ys[:, None, :, None], (oh, ow, gh, gw))
    xx = np.broadcast_to(xs[None, :, None, :], (oh, ow, gh, gw))
    return np.stack([yy, xx], -1).reshape(oh, ow, gh * gw, 2)


def bilinear(feature: np.ndarray, y: float, x: float) -> np.ndarray:
    """torchvision's RoIAlign interpolation of a (C, H, W) map at index coordinates (y, x):
    0 outside [-1, H] × [-1, W], clamped to the border cells within."""
    _, h, w = feature.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(feature.shape[0], feature.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * feature[:, y0, x0] + (1 - ly) * lx * feature[:, y0, x1]
            + ly * (1 - lx) * feature[:, y1, x0] + ly * lx * feature[:, y1, x1])


def draw(box: Box, spatial_scale: float, feature_size: tuple[int, int], output_size: int,
         sampling_ratio: int, out: Path) -> Path:
    """Two panels in scaled-image units (cell i covers [i, i+1)): RoIPool's quantised bins and
    the cells they read; RoIAlign's bins and sample points, ``aligned`` False and True."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    h, w = feature_size
    bx = [c * spatial_scale for c in box]
    fig, axes = plt.subplots(1, 2, figsize=(12, 6))
    titles = ("RoIPool: box and bins rounded to cells, max per bin",
              "RoIAlign: continuous bins, bilinear samples averaged")
    for ax, title in zip(axes, titles, strict=True):
        for i in range(h + 1):
            ax.axhline(i, color="0.85", lw=0.8)
        for j in range(w + 1):
            ax.axvline(j, color="0.85", lw=0.8)
        ax.add_patch(Rectangle((bx[0], bx[1]), bx[2] - bx[0], bx[3] - bx[1], fill=False, ec="k",
                               lw=2.5, label="true box"))
        ax.set(xlim=(-0.5, w + 0.5), ylim=(h + 0.5, -0.5), aspect="equal", title=title)
    cells = roi_pool_cells(box, spatial_scale, output_size, feature_size)
    colours = plt.cm.tab10(np.arange(10))
    for ph in range(output_size):
        for pw in range(output_size):
            y0, y1, x0, x1 = cells[ph, pw]
            c = colours[(ph + pw) % 2 * 3]
            axes[0].add_patch(Rectangle((x0 + 0.06, y0 + 0.06), x1 - x0 - 0.12, y1 - y0 - 0.12,
                                        fc=(*c[:3], 0.18), ec=c, lw=1.2))
    q = cells[0, 0, 2], cells[0, 0, 0], cells[-1, -1, 3], cells[-1, -1, 1]
    axes[0].add_patch(Rectangle((q[0], q[1]), q[2] - q[0], q[3] - q[1], fill=False, ec="tab:red",
                                lw=2, ls="--", label="cells read (quantised RoI)"))
    for k in range(output_size + 1):  # the true (continuous) bin boundaries
        x, y = bx[0] + k * (bx[2] - bx[0]) / output_size, bx[1] + k * (bx[3] - bx[1]) / output_size
        axes[1].plot([x, x], [bx[1], bx[3]], c="tab:blue", lw=0.8)
        axes[1].plot([bx[0], bx[2]], [y, y], c="tab:blue", lw=0.8)
    for aligned, marker, colour in ((False, "o", "tab:orange"), (True, "x", "tab:green")):
        pts = roi_align_points(box, spatial_scale, output_size, sampling_ratio, aligned)
        pts = pts.reshape(-1, 2) + 0.5  # index units (value of cell i at i) -> drawing units
        who = "Detectron2" if aligned else "paper"
        axes[1].scatter(pts[:, 1], pts[:, 0], marker=marker, s=22, c=colour,
                        label=f"samples, aligned={aligned} ({who})")
    for ax in axes:
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"box {tuple(round(c, 1) for c in box)} px, spatial_scale {spatial_scale:g}, "
                 f"{output_size}×{output_size} bins, sampling_ratio {sampling_ratio}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--box", type=float, nargs=4, default=(37.0, 21.0, 131.0, 107.0),
                   metavar=("X1", "Y1", "X2", "Y2"), help="in image pixels")
    p.add_argument("--scale", type=float, default=1 / 16, help="spatial_scale = 1 / feature stride")
    p.add_argument("--feature-size", type=int, nargs=2, default=(10, 11), metavar=("H", "W"))
    p.add_argument("--output-size", type=int, default=2, help="bins per side (Fig. 3: 2)")
    p.add_argument("--sampling-ratio", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("results/figures/roi_quantisation.png"))
    a = p.parse_args(argv)
    box = tuple(a.box)
    cells = roi_pool_cells(box, a.scale, a.output_size, tuple(a.feature_size))
    true_edges = [(box[0] + k * (box[2] - box[0]) / a.output_size) * a.scale
                  for k in range(a.output_size + 1)]
    pool_edges = [cells[0, k, 2] for k in range(a.output_size)] + [cells[0, -1, 3]]
    shift = max(abs(t - q) for t, q in zip(true_edges, pool_edges, strict=True)) / a.scale
    print(f"RoIPool reads cells x {pool_edges[0]}..{pool_edges[-1] - 1}, "
          f"y {cells[0, 0, 0]}..{cells[-1, 0, 1] - 1}; "
          f"its x bin edges are up to {shift:.1f} image px from the true ones")
    out = draw(box, a.scale, tuple(a.feature_size), a.output_size, a.sampling_ratio, a.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
