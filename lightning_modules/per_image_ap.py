"""Per-image COCO AP records: what recomputing COCO box and mask AP on any resample of the images needs.

Why not counts. A semantic metric is a function of summed per-image counts
(``lightning_modules/per_image.py``). COCO AP is not: for each class it ranks *every* detection of
the whole set by score, walks down the ranking accumulating true and false positives, and
averages the interpolated precision at 101 recall levels over the classes and the IoU thresholds
0.50:0.05:0.95 (Lin et al., "Microsoft COCO", ECCV 2014; ``pycocotools.cocoeval``). A resample of
the images changes the ranking's membership, so what must be stored per image is the input of
that accumulation: COCOeval's own per-image matching (``COCOeval.evaluateImg``), which matches
the detections of one image and class to its ground truth greedily by score at each IoU
threshold. That matching depends on the image alone, so it is computed once.

What is stored, for each IoU type (``box_`` for "bbox", ``mask_`` for "segm"), from a
``COCOeval.evaluate()`` on COCO objects built from the same synced states, as torchmetrics builds
them for the reported AP (torchmetrics keeps none of its own, so the per-image matching runs a
second time: about the cost of the evaluation's matching again; area "all", the last
``maxDets``): for each kept detection its image (row of ``index``), class, score and, per IoU
threshold, whether it counts as a true positive (matched and not ignored) or a false positive
(neither matched nor ignored; an ignored detection is neither); per image and class the number of
non-ignored ground-truth instances (``gt_count``). Plus the IoU and recall thresholds and the
class ids. Detections are stored class by class in COCOeval's image order, each image's in its
score order, so that :func:`average_precision` reproduces ``COCOeval.accumulate`` +
``summarize`` exactly (tested against the reported numbers, bit for bit).

A resample is a weight per image (its multiplicity): every detection of an image counts with
that weight in the running true/false-positive sums and every ground-truth instance in the
recall's denominator. An image drawn k times is k copies of its detections at the same score;
copies sit next to each other in the ranking, and the interpolated precision of a run of equal
detections is the one after the run (precision rises along a run of true positives and recall
does not move along a run of false positives), so weighted sums give exactly the AP of the
expanded set. A class whose resampled ground truth is empty is left out of the mean, as COCOeval
leaves out a class without ground truth.

The records travel in the run's ``per_image_<key>.npz`` (``experiments/cell.py``), beside the
``index``/``image_id`` of the images, and ``experiments/stats.py`` resamples them.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision

IOU_TYPES = {"bbox": "box", "segm": "mask"}
# metric name -> (prefix, IoU threshold or None for the mean over all thresholds)
METRICS = {f"{prefix}_ap{suffix}": (prefix, thr)
           for prefix in ("box", "mask") for suffix, thr in (("", None), ("50", 0.5), ("75", 0.75))}
RECORD_KEYS = ("det_image", "det_label", "det_score", "det_tp", "det_fp", "gt_count")


class PerImageMeanAveragePrecision(MeanAveragePrecision):
    """torchmetrics' COCO box and mask AP that also keeps the per-image records of the evaluation.

    ``update(preds, target, index=...)`` takes each image's dataset index; after ``compute()``
    (synced across processes, like the AP itself) ``records`` holds :func:`records_from_cocoeval`'s
    arrays plus ``index`` (N,), or None when a record could not be made (with a warning).
    """

    def __init__(self, backend: str = "pycocotools", **kwargs) -> None:
        super().__init__(iou_type=("bbox", "segm"), backend=backend, **kwargs)
        self._backend_name = backend
        # one (1,) tensor per image, reduced like the detections (gathered item by item, no
        # reduction), so after a sync it stays in the same order as the images
        self.add_state("image_index", default=[], dist_reduce_fx=None)
        self.records: dict[str, np.ndarray] | None = None

    def update(self, preds: list[dict], target: list[dict], index: Sequence[int] | torch.Tensor | None = None) -> None:
        super().update(preds, target)
        if index is None:
            index = [-1] * len(target)
        for i in (index.tolist() if isinstance(index, torch.Tensor) else index):
            self.image_index.append(torch.tensor([int(i)], dtype=torch.long, device=self.device))

    def compute(self) -> dict:
        result = super().compute()
        self.records = self._records()
        return result

    def reset(self) -> None:
        super().reset()
        self.records = None

    def _records(self) -> dict[str, np.ndarray] | None:
        index = (torch.cat([t.reshape(-1) for t in self.image_index]).cpu().numpy()
                 if self.image_index else np.zeros(0, np.int64))
        if len(index) == 0:
            return None
        if (index < 0).any() or len(np.unique(index)) != len(index):
            warnings.warn("per-image AP records not reported: the evaluation order is unknown or an image was "
                          "evaluated twice (a padded or shuffling sampler)", stacklevel=3)
            return None
        if self._backend_name != "pycocotools" or not hasattr(self._coco_backend, "_get_coco_datasets"):
            warnings.warn(f"per-image AP records need the pycocotools backend of torchmetrics >= 1.5 "
                          f"(backend here: {self._backend_name!r}); not reported", stacklevel=3)
            return None
        out: dict[str, np.ndarray] = {}
        # built once for both IoU types, as torchmetrics does
        coco_preds, coco_target = self._coco_backend._get_coco_datasets(
            self.groundtruth_labels, self.groundtruth_box, self.groundtruth_mask, self.groundtruth_crowds,
            self.groundtruth_area, self.detection_labels, self.detection_box, self.detection_mask,
            self.detection_scores, self.iou_type, average=self.average)
        for i_type, prefix in IOU_TYPES.items():
            for anno in coco_preds.dataset["annotations"]:  # as torchmetrics does for two IoU types
                anno["area"] = anno[f"area_{i_type}"]
            if not coco_target.imgs:
                return None
            coco_eval = self._coco_backend.cocoeval(coco_target, coco_preds, iouType=i_type)
            coco_eval.params.iouThrs = np.array(self.iou_thresholds, dtype=np.float64)
            coco_eval.params.recThrs = np.array(self.rec_thresholds, dtype=np.float64)
            coco_eval.params.maxDets = self.max_detection_thresholds
            with contextlib.redirect_stdout(io.StringIO()):
                coco_eval.evaluate()
            for key, value in records_from_cocoeval(coco_eval).items():
                out[f"{prefix}_{key}"] = value
        image_ids = out.pop("box_image_ids")
        if not np.array_equal(image_ids, out.pop("mask_image_ids")):
            raise RuntimeError("box and mask evaluations saw different images: a bug")
        out["index"] = index[image_ids]  # COCO image id = position in the (synced) state lists
        # the rows in dataset order, as the semantic per-image counts
        order = np.argsort(out["index"], kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        out["index"] = out["index"][order]
        for prefix in IOU_TYPES.values():
            out[f"{prefix}_gt_count"] = out[f"{prefix}_gt_count"][order]
            out[f"{prefix}_det_image"] = rank[out[f"{prefix}_det_image"]]
        out["image_order"] = rank  # row of each image in COCOeval's order: the tie order of the ranking
        return out


def records_from_cocoeval(coco_eval) -> dict[str, np.ndarray]:
    """The per-image records of an evaluated ``COCOeval`` (``evaluate()`` run, ``accumulate()`` not
    needed): area range "all", at most ``maxDets[-1]`` detections an image. Image rows follow
    ``params.imgIds``; ``image_ids`` gives them."""
    p = coco_eval.params
    if p.areaRngLbl[0] != "all" or not p.useCats:
        raise ValueError("per-image AP records need COCOeval's default area ranges and useCats=1")
    cats, images = list(p.catIds), list(p.imgIds)
    n_images, n_areas, thresholds = len(images), len(p.areaRng), len(p.iouThrs)
    max_det = p.maxDets[-1]
    det_image, det_label, det_score, det_tp, det_fp = [], [], [], [], []
    gt_count = np.zeros((n_images, len(cats)), np.int64)
    for k, cat in enumerate(cats):
        for i in range(n_images):
            e = coco_eval.evalImgs[k * n_areas * n_images + i]  # area index 0: "all"
            if e is None:
                continue
            gt_count[i, k] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
            scores = np.asarray(e["dtScores"][:max_det], dtype=np.float64)
            if not len(scores):
                continue
            matched, ignored = e["dtMatches"][:, :max_det], e["dtIgnore"][:, :max_det]
            det_tp.append(np.logical_and(matched, np.logical_not(ignored)).T)
            det_fp.append(np.logical_and(np.logical_not(matched), np.logical_not(ignored)).T)
            det_image.append(np.full(len(scores), i, np.int64))
            det_label.append(np.full(len(scores), cat, np.int64))
            det_score.append(scores)

    def cat(parts, shape, dtype):
        return np.concatenate(parts) if parts else np.zeros(shape, dtype)

    return {"det_image": cat(det_image, (0,), np.int64), "det_label": cat(det_label, (0,), np.int64),
            "det_score": cat(det_score, (0,), np.float64),
            "det_tp": cat(det_tp, (0, thresholds), bool), "det_fp": cat(det_fp, (0, thresholds), bool),
            "gt_count": gt_count, "labels": np.asarray(cats, np.int64),
            "iou_thresholds": np.asarray(p.iouThrs, np.float64), "rec_thresholds": np.asarray(p.recThrs, np.float64),
            "image_ids": np.asarray(images, np.int64)}


# --------------------------------------------------------------------------- AP of weighted records
class Ranking:
    """One class's detections of one or more runs on the same N images, in COCOeval's ranking
    order (score descending, ``mergesort``: ties keep the stored order, i.e. COCOeval's image
    order, the first run's detections before the second's), reduced to what AP needs.

    A detection belongs to a *unit* ``run * N + image``; a row of weights over the units says how
    often each unit's detections count (a bootstrap: the image multiplicities of one run; the
    randomisation test: each image's detections from run A or run B). AP only reads the
    precision at the true positives (recall moves only there, and along a run of false positives
    precision only falls), so per IoU threshold ``t`` this keeps the units of the true positives
    in ranking order (``tp_units[t]``) and, as a sparse (units × true positives) matrix, how many
    false positives of each unit come before each true positive and after the previous one
    (``fp_between[t]``). Running sums at the true positives are then a cumulative sum of the
    true positives' weights and of ``weights @ fp_between``: exact integers with unit weights.
    """

    def __init__(self, runs: Sequence[dict[str, np.ndarray]], prefix: str, label: int, thresholds: np.ndarray):
        from scipy import sparse

        n = len(runs[0]["index"])
        parts = [(r, np.flatnonzero(rec[f"{prefix}_det_label"] == label)) for r, rec in enumerate(runs)]
        score = np.concatenate([runs[r][f"{prefix}_det_score"][sel] for r, sel in parts])
        order = np.argsort(-score, kind="mergesort")
        unit = np.concatenate([r * n + runs[r][f"{prefix}_det_image"][sel] for r, sel in parts])[order]
        tp = np.concatenate([runs[r][f"{prefix}_det_tp"][sel][:, thresholds] for r, sel in parts])[order]
        fp = np.concatenate([runs[r][f"{prefix}_det_fp"][sel][:, thresholds] for r, sel in parts])[order]
        self.units = len(runs) * n
        self.tp_units, self.fp_between = [], []
        for t in range(len(thresholds)):
            positions = np.flatnonzero(tp[:, t])
            false = np.flatnonzero(fp[:, t])
            segment = np.searchsorted(positions, false)  # the first true positive after each false one
            keep = segment < len(positions)               # false positives after the last: no effect
            self.tp_units.append(unit[positions])
            self.fp_between.append(sparse.csr_matrix(
                (np.ones(int(keep.sum())), (unit[false[keep]], segment[keep])),
                shape=(self.units, len(positions))))


def threshold_index(records: dict[str, np.ndarray], metric: str) -> tuple[str, np.ndarray]:
    """(prefix, indices of the IoU thresholds) of ``metric`` (``mask_ap``, ``box_ap50``, ...), as
    COCOeval.summarize selects them (exact equality with the threshold)."""
    if metric not in METRICS:
        raise ValueError(f"unknown instance metric {metric!r}; expected one of {sorted(METRICS)}")
    prefix, thr = METRICS[metric]
    thresholds = records[f"{prefix}_iou_thresholds"]
    index = np.arange(len(thresholds)) if thr is None else np.flatnonzero(thresholds == thr)
    if not len(index):
        raise ValueError(f"{metric}: IoU threshold {thr} not among the evaluated {thresholds.tolist()}")
    return prefix, index


def rankings(runs: Sequence[dict[str, np.ndarray]], metric: str) -> tuple[list[Ranking], np.ndarray, np.ndarray]:
    """Per class the :class:`Ranking` of ``runs`` (records on the same images), the ground-truth
    counts (N, K) and the recall thresholds. Raises when the runs' images or ground truth differ."""
    prefix, index = threshold_index(runs[0], metric)
    first = runs[0]
    for other in runs[1:]:
        for key in ("index", f"{prefix}_gt_count", f"{prefix}_labels", f"{prefix}_iou_thresholds"):
            if not np.array_equal(first[key], other[key]):
                raise ValueError(f"the runs' {key} differ: AP records of different images or ground truth")
    labels = first[f"{prefix}_labels"]
    return ([Ranking(runs, prefix, int(label), index) for label in labels], first[f"{prefix}_gt_count"],
            first[f"{prefix}_rec_thresholds"])


def average_precision(ranks: Sequence[Ranking], gt_count: np.ndarray, rec_thrs: np.ndarray,
                      unit_weights: np.ndarray, gt_weights: np.ndarray) -> np.ndarray:
    """COCO AP (fraction) of R weighted rows: ``unit_weights`` (R, units) how much each unit's
    detections count (see :class:`Ranking`), ``gt_weights`` (R, N) each image's weight for the
    ground truth. A class with no weighted ground truth is left out of a row (nan when none is
    left). With unit weights this is ``COCOeval.accumulate`` + ``summarize``, the same values."""
    rows = gt_weights.shape[0]
    npig = gt_weights @ gt_count.astype(np.float64)  # (R, K)
    tables = []
    for k, rank in enumerate(ranks):
        has_gt = npig[:, k] > 0
        denominator = np.where(has_gt, npig[:, k], 1.0)
        q = np.stack([_interpolated(np.cumsum(unit_weights[:, tp_units], axis=1),
                                    np.cumsum((fp_between.T @ unit_weights.T).T, axis=1),
                                    denominator, rec_thrs)
                      for tp_units, fp_between in zip(rank.tp_units, rank.fp_between)], 1)  # (R, T, n_rec)
        q[~has_gt] = -1.0
        tables.append(q)
    precision = np.stack(tables, -1) if tables else np.full((rows, 1, len(rec_thrs), 0), -1.0)  # (R, T, 101, K)
    out = np.full(rows, np.nan)
    for r in range(rows):
        s = precision[r]
        if (s > -1).any():
            out[r] = np.mean(s[s > -1])
    return out


def run_ap(records: dict[str, np.ndarray], metric: str) -> float:
    """``metric`` of one run's records on all its images (what the run reported, in float64)."""
    ranks, gt_count, rec_thrs = rankings([records], metric)
    ones = np.ones((1, len(records["index"])))
    return float(average_precision(ranks, gt_count, rec_thrs, ones, ones)[0])


def _interpolated(tp_sum: np.ndarray, fp_sum: np.ndarray, npig: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """COCOeval.accumulate's interpolated precision at ``rec_thrs``, from the running sums (R, P)
    at the true positives and ground-truth counts (R,) > 0: (R, len(rec_thrs)), the same values.

    COCOeval takes, for each recall threshold, the precision envelope (right-to-left running
    maximum) at the first detection whose recall reaches it (``searchsorted(rc, thr, "left")``),
    0 past the end: the largest precision among the detections whose recall reaches it, which is
    always one at a true positive. Vectorised: the first such true positive is the number whose
    recall is below the threshold, i.e. whose count of thresholds <= their recall (``b``) is <=
    the threshold's position; a histogram of ``b`` per row, summed up, gives it for all thresholds.
    """
    rows, nd = tp_sum.shape
    n_rec = len(rec_thrs)
    if nd == 0:
        return np.zeros((rows, n_rec))
    rc = tp_sum / npig[:, None]
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # the precision envelope, right to left
    b = np.searchsorted(rec_thrs, rc, side="right")  # (R, P) in 0..n_rec
    below = np.bincount((b + (np.arange(rows) * (n_rec + 1))[:, None]).ravel(), minlength=rows * (n_rec + 1))
    first = below.reshape(rows, n_rec + 1).cumsum(1)[:, :n_rec]  # (R, n_rec)
    q = np.take_along_axis(pr, np.minimum(first, nd - 1), axis=1)
    return np.where(first < nd, q, 0.0)
