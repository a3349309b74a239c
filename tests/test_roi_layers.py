"""Mask R-CNN Table 2c's other RoI layers against hand computations on small feature maps:
RoIWarp (box rounded like RoIPool, then RoIAlign's bilinear samples) and max aggregation over
RoIAlign's sample points (``models/mask_rcnn.py``)."""

from __future__ import annotations

import sys

import pytest
import torch
from torchvision.ops import roi_align

from models.mask_rcnn import MultiScaleRoIExtractor, c_round, quantise_rois, roi_align_max

H, W = 6, 8


def ramp() -> torch.Tensor:
    """1×1×H×W map with value 10·y + x at (y, x): bilinear sampling of it is exact, 10·py + px."""
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    return (10 * y + x)[None, None]


def rois(*box: float) -> torch.Tensor:
    return torch.tensor([[0.0, *box]])


def extractor(layer: str, aggregation: str | None = None) -> MultiScaleRoIExtractor:
    return MultiScaleRoIExtractor(["0"], 2, layer, sampling_ratio=2, roi_aggregation=aggregation)


def pool(layer: str, aggregation: str | None, feature: torch.Tensor, box, scale: float) -> torch.Tensor:
    return extractor(layer, aggregation).pool(feature, rois(*box), scale)[0, 0]


def test_roialign_max_and_avg_on_a_ramp_by_hand():
    # box (1, 1)-(5, 4) at scale 1, 2×2 bins of 2 × 1.5 cells, 2×2 samples per bin:
    # x = 1.5, 2.5 | 3.5, 4.5 and y = 1.375, 2.125 | 2.875, 3.625
    box = (1.0, 1.0, 5.0, 4.0)
    expected_max = torch.tensor([[10 * 2.125 + 2.5, 10 * 2.125 + 4.5], [10 * 3.625 + 2.5, 10 * 3.625 + 4.5]])
    expected_avg = torch.tensor([[10 * 1.75 + 2.0, 10 * 1.75 + 4.0], [10 * 3.25 + 2.0, 10 * 3.25 + 4.0]])
    torch.testing.assert_close(pool("RoIAlign", "max", ramp(), box, 1.0), expected_max)
    torch.testing.assert_close(pool("RoIAlign", None, ramp(), box, 1.0), expected_avg)  # the paper's default


def test_roialign_max_is_the_largest_bilinear_sample_not_a_cell_by_hand():
    # one bump of height 1 at (y, x) = (2, 3); bilinear value (1 - |y - 2|)(1 - |x - 3|) within a cell.
    # box (2, 1)-(5, 4), one bin of 3×3 cells, samples x = 2.75, 4.25 and y = 1.75, 3.25: only
    # (1.75, 2.75) sees the bump, 0.25 · 0.25 off its centre in each direction -> 0.75 · 0.75
    f = torch.zeros(1, 1, H, W)
    f[0, 0, 2, 3] = 1.0
    box = rois(2.0, 1.0, 5.0, 4.0)
    assert roi_align_max(f, box, 1, 1.0, 2)[0, 0, 0, 0].item() == pytest.approx(0.5625)
    assert roi_align(f, box, 1, 1.0, 2)[0, 0, 0, 0].item() == pytest.approx(0.5625 / 4)


def test_roiwarp_rounds_the_box_then_samples_bilinearly_by_hand():
    # box (1.3, 0.6)-(9.4, 7.2) at scale 1/2 -> (0.65, 0.3)-(4.7, 3.6) -> rounded (1, 0)-(5, 4):
    # bins of 2 × 2 cells, samples x = 1.5, 2.5 | 3.5, 4.5 and y = 0.5, 1.5 | 2.5, 3.5
    box = (1.3, 0.6, 9.4, 7.2)
    torch.testing.assert_close(quantise_rois(rois(*box), 0.5), rois(2.0, 0.0, 10.0, 8.0))
    torch.testing.assert_close(pool("RoIWarp", None, ramp(), box, 0.5),  # its own aggregation: max
                               torch.tensor([[17.5, 19.5], [37.5, 39.5]]))
    torch.testing.assert_close(pool("RoIWarp", "avg", ramp(), box, 0.5), torch.tensor([[12.0, 14.0], [32.0, 34.0]]))
    # RoIAlign samples the unrounded box: bin 0 centre (1.1250, 1.6625) -> 12.9125, not 12
    assert pool("RoIAlign", "avg", ramp(), box, 0.5)[0, 0].item() == pytest.approx(12.9125)


def test_caffe_rounding_and_the_max_calls_average_to_torchvision_roialign(monkeypatch):
    assert c_round(torch.tensor([0.5, 1.5, 2.5, -0.5, 2.49])).tolist() == [1, 2, 3, -1, 2]
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 3, 12, 14, generator=g)
    boxes = torch.tensor([[0, 3.0, 5.0, 31.0, 27.0], [1, -4.0, 2.0, 9.0, 60.0], [0, 10.0, 10.0, 10.3, 10.2]])
    for aligned in (False, True):
        for sr in (1, 2, 3):
            mx = roi_align_max(f, boxes, (3, 4), 0.25, sr, aligned)
            avg = roi_align(f, boxes, (3, 4), 0.25, sr, aligned)
            assert (mx >= avg - 1e-5).all()
    # the sr² single-sample calls averaged are torchvision's roi_align with sr samples
    calls = []
    module = sys.modules["models.mask_rcnn"]  # ``models.mask_rcnn`` is also the builder's name
    monkeypatch.setattr(module, "roi_align", lambda *a: calls.append(roi_align(*a)) or calls[-1])
    roi_align_max(f, boxes, (3, 4), 0.25, 2, False)
    assert len(calls) == 4
    torch.testing.assert_close(torch.stack(calls).mean(0), roi_align(f, boxes, (3, 4), 0.25, 2, False))


def test_max_aggregation_passes_gradients_and_bad_combinations_are_refused():
    f = ramp().requires_grad_()
    roi_align_max(f, rois(1.0, 1.0, 5.0, 4.0), 2, 1.0, 2).sum().backward()
    assert f.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="RoIPool"):
        extractor("RoIPool", "avg")
    with pytest.raises(ValueError, match="sampling_ratio"):
        MultiScaleRoIExtractor(["0"], 2, "RoIAlign", sampling_ratio=0, roi_aggregation="max")
    with pytest.raises(ValueError, match="aligned"):
        MultiScaleRoIExtractor(["0"], 2, "RoIWarp", aligned=True)
