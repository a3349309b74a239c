"""Segmentation metrics from one dataset-level confusion matrix.

The four metrics of FCN (Long et al. CVPR'15, Sec. 5 "Metrics"), with n_ij the number of pixels
of class i predicted as class j, t_i = sum_j n_ij the pixels of class i, and n_cl classes:

- pixel accuracy          sum_i n_ii / sum_i t_i
- mean accuracy           (1/n_cl) sum_i n_ii / t_i
- mean IU                 (1/n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)
- frequency weighted IU   (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

Classes that never occur in the labels nor the predictions of the whole evaluation set have an
undefined IU and are left out of the means (n_cl counts the others); mean accuracy averages over
classes present in the labels. Everything is computed from a single confusion matrix
accumulated over the dataset (torchmetrics ``MulticlassConfusionMatrix`` with
``ignore_index=255``, summed across processes) — never an average of per-image or per-batch IoUs,
which weights small images and rare classes differently and is not what the papers report.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassConfusionMatrix

from datamodules.constants import IGNORE_INDEX


class ConfusionMatrix(MulticlassConfusionMatrix):
    """``MulticlassConfusionMatrix(ignore_index=255)`` that rejects labels outside the classes.

    torchmetrics only fails with an opaque reshape error on such labels (or, with other shapes,
    could count them in a wrong cell); a label that is neither a class nor 255 means the data or
    ``num_classes`` is wrong, and the run must stop saying so.
    """

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        bad = (target != IGNORE_INDEX) & ((target < 0) | (target >= self.num_classes))
        if bad.any():
            values = sorted(set(target[bad].unique().tolist()))[:10]
            raise ValueError(
                f"target labels {values} are outside 0..{self.num_classes - 1} and are not the "
                f"ignore label {IGNORE_INDEX}: check the dataset and num_classes"
            )
        super().update(preds, target)


@runtime_checkable
class Evaluator(Protocol):
    """An extra evaluation handed to ``SegmentationModule(evaluators=[...])``.

    Implementations are ``nn.Module``s whose state lives in torchmetrics metrics, so it moves
    with the LightningModule and is summed across processes on ``compute()``. ``name`` says
    where the results go: ``None`` adds them to ``last_metrics[stage]`` (the checkerboard
    statistic), ``"crf"`` reports them as ``last_metrics[f"{stage}_crf"]``, logged as
    ``f"{stage}_crf/miou"`` etc. Examples: ``lightning_modules.crf.CRFEvaluator``,
    ``lightning_modules.checkerboard.CheckerboardEvaluator``.
    """

    name: str | None

    def setup(self, metrics: MetricCollection) -> None:
        """Called once with the module's (empty) :func:`segmentation_metrics`."""

    def update(self, images: torch.Tensor, probs: torch.Tensor, masks: torch.Tensor, module) -> None:
        """One batch: normalised images N×3×H×W, predicted probabilities N×C×H×W, masks N×H×W."""

    def compute(self) -> dict[str, object]: ...

    def reset(self) -> None: ...


def confusion_matrix_metric(num_classes: int) -> ConfusionMatrix:
    """The dataset-level confusion matrix: rows = label, columns = prediction, 255 ignored."""
    return ConfusionMatrix(num_classes=num_classes, ignore_index=IGNORE_INDEX)


def metrics_from_confusion(cm: torch.Tensor) -> dict[str, object]:
    """FCN's four metrics (as fractions in [0, 1]) and per-class IoU from a C×C count matrix.

    Returns ``pixel_acc``, ``mean_acc``, ``miou``, ``fwiou`` (floats) and ``iou_per_class``,
    ``acc_per_class`` (lists with ``nan`` for classes whose value is undefined).
    """
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square C×C, got shape {tuple(cm.shape)}")
    cm = cm.double()
    tp = cm.diag()
    label_count = cm.sum(1)  # t_i
    pred_count = cm.sum(0)
    union = label_count + pred_count - tp
    total = label_count.sum()
    nan = torch.tensor(float("nan"), dtype=cm.dtype)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(label_count > 0, tp / label_count.clamp(min=1), nan)
    present = union > 0
    if total == 0:
        raise ValueError("confusion matrix is empty: no labelled (non-255) pixel was evaluated")
    freq = label_count / total
    return {
        "pixel_acc": float(tp.sum() / total),
        "mean_acc": float(acc[label_count > 0].mean()),
        "miou": float(iou[present].mean()),
        "fwiou": float((freq[present] * iou[present]).sum()),
        "iou_per_class": iou.tolist(),
        "acc_per_class": acc.tolist(),
    }


def boundary_band(target: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels within ``width`` px of a label boundary: the band of DeepLab's "trimap" evaluation.

    DeepLab v1 Sec. 5 / v2 Sec. 4.1 ("Mean IOU in the band around object boundaries") measure
    accuracy only in a narrow band around boundaries, where the void label of VOC lies. Here a
    boundary pixel is one whose 3×3 neighbourhood holds another label (the void label 255
    included, so VOC's void bands count as boundaries, as in the paper); the band is every pixel
    within Chebyshev distance ``width`` of a boundary pixel (``width=0``: the boundary pixels
    themselves). ``target`` is N×H×W; returns a bool N×H×W mask. Pixels labelled 255 inside the
    band stay ignored by the metric.
    """
    if width < 0:
        raise ValueError(f"trimap width must be >= 0, got {width}")
    t = target.float().unsqueeze(1)
    # max_pool pads with -inf, so image borders are not boundaries
    high = F.max_pool2d(t, 3, stride=1, padding=1)
    low = -F.max_pool2d(-t, 3, stride=1, padding=1)
    boundary = (high != low).float()
    if width > 0:
        boundary = F.max_pool2d(boundary, 2 * width + 1, stride=1, padding=width)
    return boundary.squeeze(1) > 0


def trimap_target(target: torch.Tensor, width: int) -> torch.Tensor:
    """``target`` with every pixel outside the boundary band set to the ignore label."""
    return torch.where(boundary_band(target, width), target, torch.full_like(target, IGNORE_INDEX))


class TrimapConfusionMatrix(ConfusionMatrix):
    """The confusion matrix of the pixels within ``width`` px of a label boundary (the trimap band)."""

    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__(num_classes=num_classes, ignore_index=IGNORE_INDEX)
        self.width = width

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(preds, trimap_target(target, self.width))


def segmentation_metrics(num_classes: int, trimap_width: int) -> MetricCollection:
    """One evaluation's dataset-level confusion matrices, updated with ``(preds, masks)``: ``cm``
    over every labelled pixel and ``trimap_cm`` within ``trimap_width`` px of a boundary."""
    # compute_groups=False: the two matrices have the same type and shape; torchmetrics would
    # merge their states if they happened to be equal after the first batch
    return MetricCollection({"cm": confusion_matrix_metric(num_classes),
                             "trimap_cm": TrimapConfusionMatrix(num_classes, trimap_width)},
                            compute_groups=False)


def summarise(metrics: MetricCollection) -> dict[str, object]:
    """FCN's metrics of a :func:`segmentation_metrics` collection (synced across processes) and
    the trimap mIoU, or ``None`` for a band without a labelled pixel (e.g. one-class images)."""
    parts = dict(metrics.items(keep_base=True))
    result = metrics_from_confusion(parts["cm"].compute())
    trimap = parts["trimap_cm"].compute()
    result["trimap_miou"] = metrics_from_confusion(trimap)["miou"] if trimap.sum() > 0 else None
    result["trimap_width"] = parts["trimap_cm"].width
    return result
