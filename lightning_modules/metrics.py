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

Beside the matrices, :class:`PerImageCounts` keeps each evaluated image's per-class counts
(intersection n_ii, labels t_i, predictions sum_j n_ji, for all pixels and within the trimap
band): every one of the four metrics needs only the diagonal, the row sums and the column sums of
the matrix, so the dataset-level metrics of *any subset or resample* of the images are
recomputed exactly from them (``lightning_modules/per_image.py``, ``experiments/stats.py``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.utilities import dim_zero_cat

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
    ``lightning_modules.checkerboard.CheckerboardEvaluator``. Optionally ``per_image()`` returns
    the per-image counts of the evaluator's own predictions (``lightning_modules.per_image``;
    the CRF's), stored as ``last_per_image[key]``; ``module.batch_indices`` holds the batch's
    dataset indices for it. ``final_only = True`` (optional) runs it only when the final weights
    are evaluated — a stand-alone validate/test, or the training loop's validation at
    ``max_steps`` — not in the validations along the way (the dense CRF: minutes per pass over
    VOC val on a CPU, for a number only the final evaluation reports).
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
    return metrics_from_counts(cm.diag(), cm.sum(1), cm.sum(0))


def metrics_from_counts(tp: torch.Tensor, label_count: torch.Tensor, pred_count: torch.Tensor) -> dict[str, object]:
    """:func:`metrics_from_confusion` from the matrix's diagonal ``tp``, row sums ``label_count``
    (t_i) and column sums ``pred_count``: all the four metrics need (so per-image counts of a
    subset of images give that subset's metrics exactly, ``lightning_modules/per_image.py``)."""
    tp, label_count, pred_count = (torch.as_tensor(x).double() for x in (tp, label_count, pred_count))
    union = label_count + pred_count - tp
    total = label_count.sum()
    nan = torch.tensor(float("nan"), dtype=tp.dtype)
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


def image_class_counts(preds: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per image and class: (intersection, label pixels, predicted pixels), an N×3×C int64 tensor.

    Pixels labelled 255 are left out (as by the confusion matrix); ``target`` must hold only
    classes and 255 (:class:`ConfusionMatrix` checks that first in :func:`segmentation_metrics`).
    Summed over images these are the diagonal, row sums and column sums of the confusion matrix.
    """
    n, c = target.shape[0], num_classes
    valid = target != IGNORE_INDEX
    image = torch.arange(n, device=target.device).view(n, *([1] * (target.dim() - 1))).expand_as(target)
    key = image[valid] * c + target[valid]
    pred = preds[valid]
    hit = target[valid] == pred
    counts = [torch.bincount(key[hit], minlength=n * c), torch.bincount(key, minlength=n * c),
              torch.bincount(image[valid] * c + pred, minlength=n * c)]
    return torch.stack(counts).view(3, n, c).transpose(0, 1)


class PerImageCounts(Metric):
    """Every evaluated image's :func:`image_class_counts`, over all labelled pixels and within the
    trimap band, with the image's dataset index: ``compute()`` returns ``(index N, counts N×2×3×C)``
    gathered from every process (in rank order; ``lightning_modules.per_image`` sorts and checks).

    ``update(preds, target, index)``: ``index`` are the batch's dataset indices (the module knows
    them from the evaluation sampler); without it, the running position on this process is used,
    which is the dataset index for one process and a sequential loader only. ``-1`` marks an
    unknown index (the per-image counts are then not reported).
    """

    full_state_update = False

    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.num_classes, self.width = num_classes, width
        self.add_state("image_index", default=[], dist_reduce_fx="cat")
        self.add_state("image_counts", default=[], dist_reduce_fx="cat")
        self._seen = 0

    def update(self, preds: torch.Tensor, target: torch.Tensor, index=None) -> None:
        n = target.shape[0]
        if index is None:
            index = torch.arange(self._seen, self._seen + n)
        index = torch.as_tensor(index, dtype=torch.long, device=target.device).reshape(-1)
        if index.numel() != n:
            raise ValueError(f"{index.numel()} image indices for a batch of {n} images")
        self._seen += n
        full = image_class_counts(preds, target, self.num_classes)
        band = image_class_counts(preds, trimap_target(target, self.width), self.num_classes)
        self.image_index.append(index)
        self.image_counts.append(torch.stack([full, band], 1))

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return dim_zero_cat(self.image_index), dim_zero_cat(self.image_counts)

    def reset(self) -> None:
        super().reset()
        self._seen = 0


def segmentation_metrics(num_classes: int, trimap_width: int) -> MetricCollection:
    """One evaluation's dataset-level confusion matrices, updated with ``(preds, masks)`` (and
    ``index=`` the images' dataset indices): ``cm`` over every labelled pixel, ``trimap_cm``
    within ``trimap_width`` px of a boundary, and ``per_image`` (:class:`PerImageCounts`)."""
    # compute_groups=False: the two matrices have the same type and shape; torchmetrics would
    # merge their states if they happened to be equal after the first batch
    return MetricCollection({"cm": confusion_matrix_metric(num_classes),
                             "trimap_cm": TrimapConfusionMatrix(num_classes, trimap_width),
                             "per_image": PerImageCounts(num_classes, trimap_width)},
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
