"""Pixel-wise loss weights of U-Net (Ronneberger et al. MICCAI'15, Sec. 3, Eq. 2 and Fig. 3c–d).

    w(x) = w_c(x) + w0 · exp(−(d1(x) + d2(x))² / (2σ²))

``w_c`` balances the class frequencies; ``d1``/``d2`` are the distances from a background pixel
to the border of the nearest and of the second-nearest cell, so the second term is large only in
the thin gaps separating touching cells and makes the network learn those borders. The paper sets
``w0 = 10`` and ``σ ≈ 5`` pixels.

Choices the paper leaves open, made here:
- Cells: the ids of ``instances`` when given (0 = background); otherwise the connected components
  (4-connectivity) of every non-background class region of ``mask``. Touching cells of one class
  merge in a class map: pass instance ids to separate them.
- The border term is added on background pixels only (it exists to weight the gaps; inside a cell
  ``d1 = 0`` would put weight on every cell pixel near a neighbour).
- ``d`` is the Euclidean distance between pixel centres to the nearest pixel of the cell
  (``scipy.ndimage.distance_transform_edt``), so a background pixel touching a cell has ``d = 1``.
- ``w_c`` by default gives every class present the same total weight:
  ``w_c = N / (K · n_c)`` over the ``N`` labelled pixels and ``K`` classes present (mean 1).
- ``ignore_index`` pixels get weight 0 (the loss ignores them anyway).

Each cell's distance map is computed in its bounding box grown by ``6σ``: the exact distances
inside, and outside it ``d > 6σ`` so the term is below ``w0·e^{-18}`` and is set to 0. That keeps
the cost near the cells' area instead of (number of cells)·H·W.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def _cells_from_classes(labels: np.ndarray, background: np.ndarray):
    from scipy import ndimage

    cells = np.zeros(labels.shape, dtype=np.int64)
    count = 0
    for c in np.unique(labels[~background]):
        comp, n = ndimage.label(labels == c)
        cells[comp > 0] = comp[comp > 0] + count
        count += n
    return cells


def unet_weight_map(
    mask: torch.Tensor,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: Sequence[float] | torch.Tensor | None = None,
    ignore_index: int = 255,  # = datamodules.constants.IGNORE_INDEX; models never import data code
    instances: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weight map of Eq. 2 for one H×W label map; float32 H×W on ``mask``'s device.

    ``mask``: class ids (0 = background, ``ignore_index`` = void), or an instance map for the
    paper's two-class cell setting (then pass ``mask = inst > 0`` and ``instances = inst`` to
    balance cell vs background rather than individual cells). ``class_weights``: fixed ``w_c``
    indexed by class id, instead of the frequency balancing. ``instances``: H×W cell ids.
    """
    from scipy import ndimage

    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    labels = torch.as_tensor(mask).detach().cpu().numpy().astype(np.int64)
    if labels.ndim != 2:
        raise ValueError(f"mask must be H×W, got shape {labels.shape}")
    labelled = labels != ignore_index

    weight = np.zeros(labels.shape, dtype=np.float64)
    if class_weights is None:
        classes, counts = np.unique(labels[labelled], return_counts=True)
        balance = labelled.sum() / (len(classes) * counts.astype(np.float64))
        weight[labelled] = balance[np.searchsorted(classes, labels[labelled])]
    else:
        table = torch.as_tensor(class_weights, dtype=torch.float64).cpu().numpy()
        if labels[labelled].size and labels[labelled].max() >= len(table):
            raise ValueError(f"class {labels[labelled].max()} has no entry in class_weights")
        weight[labelled] = table[labels[labelled]]

    if instances is None:
        cells = _cells_from_classes(labels, ~labelled | (labels == 0))
    else:
        cells = torch.as_tensor(instances).detach().cpu().numpy().astype(np.int64)
        if cells.shape != labels.shape:
            raise ValueError(f"instances {cells.shape} and mask {labels.shape} differ in shape")
    background = labelled & (cells == 0)

    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    reach = int(np.ceil(6 * sigma))
    h, w = labels.shape
    for box, cell_id in zip(ndimage.find_objects(cells), range(1, cells.max(initial=0) + 1),
                            strict=False):
        if box is None:  # unused id
            continue
        rows = slice(max(box[0].start - reach, 0), min(box[0].stop + reach, h))
        cols = slice(max(box[1].start - reach, 0), min(box[1].stop + reach, w))
        dist = ndimage.distance_transform_edt(cells[rows, cols] != cell_id)
        near, second = d1[rows, cols], d2[rows, cols]  # views: updated in place
        np.minimum(second, np.maximum(near, dist), out=second)
        np.minimum(near, dist, out=near)
    with np.errstate(over="ignore", invalid="ignore"):
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    weight += np.where(background, border, 0.0)
    device = mask.device if isinstance(mask, torch.Tensor) else None
    return torch.from_numpy(weight.astype(np.float32)).to(device)
