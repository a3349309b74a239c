"""RoIPool vs RoIAlign exactly: ``tools/roi_quantisation.py`` against torchvision's kernels, and
where theory says the two layers agree (a grid-aligned box, one cell per bin) or do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import roi_align, roi_pool

from tools.roi_quantisation import bilinear, c_round, main, roi_align_points, roi_pool_cells

S = 0.25  # spatial_scale: a stride-4 map (FPN's P2)
FH, FW = 12, 14


def ramp(ay: float = 3.0, ax: float = 1.0) -> torch.Tensor:
    """A 1×1×FH×FW feature map whose value at index (y, x) is ay·y + ax·x: it encodes position."""
    y, x = torch.meshgrid(torch.arange(FH, dtype=torch.float32), torch.arange(FW, dtype=torch.float32), indexing="ij")
    return (ay * y + ax * x)[None, None]


def rois(box) -> torch.Tensor:
    return torch.tensor([[0.0, *box]], dtype=torch.float32)


def test_c_round_halves_away_from_zero():
    assert [c_round(v) for v in (0.5, 1.5, 2.5, -0.5, -1.5, 2.49)] == [1, 2, 3, -1, -2, 2]


def test_cells_and_points_match_torchvision_on_random_maps_and_boxes():
    rng = np.random.default_rng(0)
    feat = rng.standard_normal((2, FH, FW)).astype(np.float32)
    ft = torch.from_numpy(feat)[None]
    for _ in range(60):  # boxes partly outside the map, tiny and large; sampling 0 (adaptive) .. 3
        x1, y1 = rng.uniform(-10, 50, 2)
        box = tuple(float(c) for c in rois((x1, y1, x1 + rng.uniform(0.5, 60), y1 + rng.uniform(0.5, 60)))[0, 1:])
        k, sr, aligned = int(rng.integers(1, 8)), int(rng.integers(0, 4)), bool(rng.integers(2))
        cells = roi_pool_cells(box, S, k, (FH, FW))
        expected = np.zeros((2, k, k), np.float32)
        for i in range(k):
            for j in range(k):
                y0, y1_, x0, x1_ = cells[i, j]
                if y1_ > y0 and x1_ > x0:
                    expected[:, i, j] = feat[:, y0:y1_, x0:x1_].max((1, 2))
        np.testing.assert_array_equal(roi_pool(ft, rois(box), k, S)[0].numpy(), expected)
        pts = roi_align_points(box, S, k, sr, aligned)
        expected = np.stack([[np.mean([bilinear(feat, *p) for p in pts[i, j]], 0) for j in range(k)]
                             for i in range(k)]).transpose(2, 0, 1)
        np.testing.assert_allclose(roi_align(ft, rois(box), k, S, sr, aligned)[0].numpy(), expected, atol=1e-5)


def test_on_a_ramp_roialign_is_the_ramp_at_the_sample_centroid_and_roipool_at_the_farthest_cell():
    box, k = (9.0, 5.0, 31.0, 27.0), 3
    f = ramp()
    pts = roi_align_points(box, S, k, 2, aligned=False)
    centroid = pts.mean(2)  # a linear map's mean over points = its value at their mean
    np.testing.assert_allclose(roi_align(f, rois(box), k, S, 2, False)[0, 0].numpy(),
                               3 * centroid[..., 0] + centroid[..., 1], rtol=1e-5)
    cells = roi_pool_cells(box, S, k, (FH, FW))
    farthest = 3 * (cells[..., 1] - 1) + (cells[..., 3] - 1)  # increasing ramp: max at the last cell
    np.testing.assert_array_equal(roi_pool(f, rois(box), k, S)[0, 0].numpy(), farthest)


@pytest.mark.parametrize("a,k", [(2, 4), (5, 3)])
def test_grid_aligned_box_one_cell_per_bin_both_layers_read_the_cells(a, k):
    """The k×k cells a..a+k-1 (any feature values): RoIPool gets them from the box whose end
    corner is the last cell's index (its inclusive Caffe convention); RoIAlign from the box
    whose corners are the cells' outer corners (a/S, (a+k)/S), one sample at each bin centre,
    with ``aligned=True``. The paper's ``aligned=False`` samples that box half a cell down-right
    and needs it shifted by half a cell to read the same values."""
    feat = torch.randn(1, 3, FH, FW)
    cells = feat[0, :, a:a + k, a:a + k]
    torch.testing.assert_close(roi_pool(feat, rois([a / S, a / S, (a + k - 1) / S, (a + k - 1) / S]), k, S)[0], cells)
    corners = rois([a / S, a / S, (a + k) / S, (a + k) / S])
    torch.testing.assert_close(roi_align(feat, corners, k, S, 1, aligned=True)[0], cells)
    assert not torch.allclose(roi_align(feat, corners, k, S, 1, aligned=False)[0], cells, atol=1e-3)
    np.testing.assert_allclose(roi_align(ramp(), corners, k, S, 1, aligned=False)[0, 0].numpy(),
                               ramp()[0, 0, a:a + k, a:a + k].numpy() + 0.5 * (3 + 1), rtol=1e-6)
    shifted = rois([(a - 0.5) / S, (a - 0.5) / S, (a + k - 0.5) / S, (a + k - 0.5) / S])
    torch.testing.assert_close(roi_align(feat, shifted, k, S, 1, aligned=False)[0], cells)


def test_misaligned_box_roipool_snaps_back_roialign_follows():
    """Shifting a box by 0.3 cell (1.2 px at stride 4) leaves RoIPool's output unchanged: both
    boxes round to the same cells, the shift is lost. RoIAlign's output on the ramp moves by
    exactly 0.3 · slope: the position is kept. The two layers then disagree."""
    base, d = [8.0, 8.0, 28.0, 28.0], 0.3 / S
    moved = [c + d for c in base]
    f = ramp()
    assert np.array_equal(roi_pool_cells(tuple(base), S, 5, (FH, FW)), roi_pool_cells(tuple(moved), S, 5, (FH, FW)))
    torch.testing.assert_close(roi_pool(f, rois(moved), 5, S), roi_pool(f, rois(base), 5, S))
    for aligned in (False, True):
        shift = roi_align(f, rois(moved), 5, S, 2, aligned) - roi_align(f, rois(base), 5, S, 2, aligned)
        torch.testing.assert_close(shift, torch.full_like(shift, 0.3 * (3 + 1)))
    assert not torch.allclose(roi_align(f, rois(moved), 5, S, 2, False), roi_pool(f, rois(moved), 5, S), atol=0.1)


def test_figure_cli(tmp_path, capsys):
    out = tmp_path / "fig" / "roi.png"
    main(["--out", str(out), "--box", "37", "21", "131", "107", "--output-size", "2"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "RoIPool reads cells x 2..8, y 1..7" in capsys.readouterr().out
