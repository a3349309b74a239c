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
