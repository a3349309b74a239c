"""Per-image confusion counts of an evaluation, gathered across processes in dataset order.

Why: a dataset-level metric (mIoU of one confusion matrix) is not an average of per-image
values, so to ask how sure a difference between two runs is (``experiments/stats.py``: a paired
bootstrap over images) we need, per image, what the matrix is built from. The four metrics of
FCN need only the diagonal, the row sums and the column sums of the matrix, so each image stores
three length-C count vectors (intersection ``tp``, label pixels ``label``, predicted pixels
``pred``; union = label + pred − tp), for all labelled pixels and within the trimap band:
2 × 3 × C integers an image (VOC val: 1,449 × 126), from which the metrics of any subset or
resample are recomputed exactly.

Where: :class:`lightning_modules.metrics.PerImageCounts` sits in the module's metric collection,
so it sees exactly the predictions the confusion matrices see, and the CRF evaluator (which
clones the collection) gets its own after-CRF counts for free. The module tells it each batch's
dataset indices from the evaluation loader's sampler (:func:`evaluation_order`): a sequential
loader, or under DDP ``datamodules.base.UnpaddedDistributedSampler`` (rank r gets r, r+W, ...,
nothing repeated). torchmetrics gathers the rows of all processes on ``compute()``;
:func:`per_image_counts` sorts them by index, checks that every image came once and that the
rows add up to the synced confusion matrices exactly, else it reports nothing (with a warning)
rather than numbers that do not belong to the run.

File: ``<run_dir>/per_image_<key>.npz`` (``key`` = ``val``, ``val_crf``, ...; :func:`write`,
written atomically by ``experiments/cell.py``) with ``index`` (N,), ``tp``, ``label``, ``pred``,
``trimap_tp``, ``trimap_label``, ``trimap_pred`` (N×C int64), ``trimap_width``, ``num_classes``
and, when the dataset names its images, ``image_id`` (N,).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler, SequentialSampler
from torchmetrics import MetricCollection

COUNT_KEYS = ("tp", "label", "pred")


def evaluation_order(loader) -> list[int] | None:
    """The dataset indices this process's evaluation ``loader`` yields, in order; None when the
    order cannot be known (a shuffling or custom sampler, several loaders)."""
    if isinstance(loader, Sequence) and not isinstance(loader, torch.utils.data.DataLoader):
        if len(loader) != 1:
            return None
        loader = loader[0]
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, SequentialSampler):
        return list(range(len(sampler)))
    if isinstance(sampler, DistributedSampler) and not sampler.shuffle:
        return list(iter(sampler))
    return None


def per_image_counts(metrics: MetricCollection) -> dict[str, np.ndarray] | None:
    """The per-image rows of a :func:`~lightning_modules.metrics.segmentation_metrics` collection
    (synced across processes), sorted by dataset index; None, with a warning, when an index is
    unknown or repeated. Raises if the rows do not add up to the confusion matrices."""
    parts = dict(metrics.items(keep_base=True))
    index, counts = (t.cpu() for t in parts["per_image"].compute())
    index = index.reshape(-1)  # torchmetrics' compute() squeezes one element to 0-d: one image
    if len(index) == 0:
        return None
    if (index < 0).any() or len(index.unique()) != len(index):
        warnings.warn("per-image counts not reported: the evaluation order is unknown or an image was "
                      "evaluated twice (a padded or shuffling sampler)", stacklevel=2)
        return None
    order = index.argsort()
    index, counts = index[order], counts[order]
    for j, name in enumerate(("cm", "trimap_cm")):
        cm = parts[name].compute().cpu().long()
        totals = torch.stack([cm.diag(), cm.sum(1), cm.sum(0)])
        if not torch.equal(counts[:, j].sum(0), totals):
            raise RuntimeError(f"per-image counts do not add up to the confusion matrix {name!r}: a bug")
    out = {"index": index.numpy()}
    for j, prefix in enumerate(("", "trimap_")):
        for k, key in enumerate(COUNT_KEYS):
            out[prefix + key] = counts[:, j, k].numpy()
    out["trimap_width"] = np.int64(parts["per_image"].width)
    out["num_classes"] = np.int64(parts["per_image"].num_classes)
    return out


def with_image_ids(rows: dict[str, np.ndarray], ids: Sequence[str] | None) -> dict[str, np.ndarray]:
    """``rows`` plus ``image_id`` (the dataset's name of each image) when the dataset has ids."""
    if ids is None:
        return rows
    return {**rows, "image_id": np.asarray([str(ids[i]) for i in rows["index"]])}


def write(file, rows: dict[str, np.ndarray]) -> None:
    """``rows`` as a compressed ``.npz`` into an open binary file (the cell writes it atomically,
    ``experiments.atomic.write_atomic``)."""
    np.savez_compressed(file, **rows)


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def file_name(key: str) -> str:
    """``per_image_<key>.npz`` for an evaluation key (``val``, ``val_crf``)."""
    return f"per_image_{key}.npz"
