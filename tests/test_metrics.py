"""The FCN-paper metrics against a confusion matrix computed by hand."""

import math

import pytest
import torch

from lightning_modules.metrics import confusion_matrix_metric, metrics_from_confusion


def test_metrics_match_hand_computation():
    # rows = label, cols = prediction; class 3 never occurs in labels nor predictions
    cm = torch.tensor([[50, 10, 0, 0],
                       [5, 30, 5, 0],
                       [0, 0, 0, 0],     # class 2: only predicted (5 false positives)
                       [0, 0, 0, 0]])
    m = metrics_from_confusion(cm)
    total = 100
    assert m["pixel_acc"] == pytest.approx(80 / total)
    # mean accuracy over classes present in the labels (0 and 1)
    assert m["mean_acc"] == pytest.approx((50 / 60 + 30 / 40) / 2)
    iou0 = 50 / (60 + 55 - 50)
    iou1 = 30 / (40 + 40 - 30)
    iou2 = 0 / (0 + 5 - 0)
    # class 2 is present (predicted) so it counts with IoU 0; class 3 is undefined and left out
    assert m["miou"] == pytest.approx((iou0 + iou1 + iou2) / 3)
    assert m["fwiou"] == pytest.approx(0.6 * iou0 + 0.4 * iou1)
    assert math.isnan(m["iou_per_class"][3]) and m["iou_per_class"][2] == 0


def test_confusion_metric_ignores_255_and_accumulates_over_batches():
    metric = confusion_matrix_metric(3)
    metric.update(torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 1], [255, 1]]))
    metric.update(torch.tensor([[1]]), torch.tensor([[255]]))
    metric.update(torch.tensor([[2, 0]]), torch.tensor([[2, 2]]))
    cm = metric.compute()
    expected = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 0, 1]])
    assert torch.equal(cm, expected)
    # dataset-level, not the mean of per-batch IoUs
    m = metrics_from_confusion(cm)
    assert m["pixel_acc"] == pytest.approx(3 / 5)


def test_out_of_range_label_is_an_error_not_remapped():
    metric = confusion_matrix_metric(3)
    with pytest.raises(ValueError, match=r"\[7\] are outside 0..2"):
        metric.update(torch.tensor([[0, 1]]), torch.tensor([[0, 7]]))


def test_empty_confusion_matrix_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        metrics_from_confusion(torch.zeros(3, 3))


def test_trimap_band_matches_hand_computation():
    from lightning_modules.metrics import boundary_band, trimap_target

    # one vertical edge between columns 2 and 3 of a 4×6 label map
    target = torch.tensor([[0, 0, 0, 1, 1, 1]] * 4)[None]
    band0 = boundary_band(target, 0)[0]
    assert band0.tolist() == [[False, False, True, True, False, False]] * 4  # both sides of the edge
    band1 = boundary_band(target, 1)[0]
    assert band1.tolist() == [[False, True, True, True, True, False]] * 4
    assert boundary_band(target, 5)[0].all()
    # void pixels count as a boundary (VOC's void bands) but stay ignored by the metric
    void = torch.zeros(1, 5, 5, dtype=torch.long)
    void[0, 2, 2] = 255
    band = boundary_band(void, 0)[0]
    assert band.sum() == 9 and band[1:4, 1:4].all()
    t = trimap_target(void, 0)[0]
    assert (t == 255).sum() == 25 - 8 and t[2, 2] == 255
    # trimap mIoU by hand: prediction all 0 → in the width-0 band: class 0 has 8 px right,
    # class 1 has 8 px wrong → IoU0 = 8/16, IoU1 = 0 → mIoU 0.25
    cm = confusion_matrix_metric(2)
    cm.update(torch.zeros_like(target), trimap_target(target, 0))
    assert metrics_from_confusion(cm.compute())["miou"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="width"):
        boundary_band(target, -1)


def test_segmentation_metrics_keep_the_plain_and_trimap_matrices_apart():
    from lightning_modules.metrics import segmentation_metrics, summarise, trimap_target

    target = torch.tensor([[0, 0, 0, 1, 1, 1]] * 4)[None]
    metrics = segmentation_metrics(2, trimap_width=0)
    # first batch: the trimap band holds every labelled pixel, so both matrices start equal;
    # they must not be merged into one state (torchmetrics' compute groups)
    narrow = torch.tensor([[0, 1]] * 2)[None]
    metrics.update(torch.zeros_like(narrow), narrow)
    metrics.update(torch.zeros_like(target), target)
    plain, trimap = confusion_matrix_metric(2), confusion_matrix_metric(2)
    for t in (narrow, target):
        plain.update(torch.zeros_like(t), t)
        trimap.update(torch.zeros_like(t), trimap_target(t, 0))
    parts = dict(metrics.items(keep_base=True))
    assert torch.equal(parts["cm"].compute(), plain.compute())
    assert torch.equal(parts["trimap_cm"].compute(), trimap.compute())
    assert not torch.equal(plain.compute(), trimap.compute())
    out = summarise(metrics)
    assert out == {**metrics_from_confusion(plain.compute()), "trimap_width": 0,
                   "trimap_miou": metrics_from_confusion(trimap.compute())["miou"]}
    # a prefixed clone (the CRF evaluator's) summarises the same way and starts empty
    clone = metrics.clone(prefix="crf_")
    clone.reset()
    clone.update(torch.zeros_like(target), target)
    assert summarise(clone)["miou"] == pytest.approx(0.25)
    # a band without any labelled pixel has no trimap score
    one_class = segmentation_metrics(2, trimap_width=0)
    one_class.update(torch.zeros(1, 3, 3, dtype=torch.long), torch.zeros(1, 3, 3, dtype=torch.long))
    assert summarise(one_class)["trimap_miou"] is None
