"""A checkerboard-artefact statistic for dense predictions (Odena, Dumoulin & Olah, "Deconvolution
and Checkerboard Artifacts", Distill 2016).

A transposed convolution with stride ``s`` whose kernel does not overlap evenly (kernel size not
divisible by the stride, e.g. 3 with stride 2) paints some output positions with more kernel
taps than others, so the prediction depends on the pixel's position ``(i mod s, j mod s)``
within the stride cell. In the spectrum that is energy at the aliasing frequencies of the
stride, ``(k·H/s, l·W/s)`` for ``k, l = 0..s−1``, ``(k, l) ≠ (0, 0)``: the peaks a stride-``s``
periodic pattern produces. A resize-convolution (or any spatially smooth map) puts almost no
energy there.

:func:`checkerboard_energy` is the fraction of the (mean-removed) spectral energy of the
class-probability maps that sits at those peaks, pooled over the classes::

    E = Σ_c Σ_{(k,l)≠(0,0)} |F_c(kH/s, lW/s)|²  /  Σ_c Σ_{all (u,v)} |F_c(u, v)|²

with ``F_c`` the 2-D DFT of ``p_c − mean(p_c)``. By Parseval this equals the variance of the
``s×s`` *phase means* (the mean of ``p_c`` over all pixels with the same ``(i mod s, j mod s)``)
over the total variance: the share of the prediction's variance that is explained by the
position within the stride cell, in [0, 1]. An exact ±checkerboard of period ``s`` gives 1, a
constant map 0 (by convention), a smooth map about 0 (a linear ramp across ``W`` pixels gives
``(s² − 1)/W²``), white noise ``(s² − 1)/(H·W − 1)`` in expectation — the floor to read small
values against. Choices:

- Probabilities, not logits: the artefact that matters is the one in the predicted map, and
  logits of confident pixels can oscillate without changing the prediction.
- Pooled over classes, not averaged per class: each class's ratio is scale-free, so an absent
  class with a 1e-4 ripple would count as much as the foreground; pooling weighs each class by
  its variance.
- Rows/columns beyond the last multiple of ``s`` are dropped, so the peaks fall on DFT bins.
- Period in *output pixels*: a 2× layer acting at stride ``t`` of the input repeats every
  ``2t`` output pixels (FCN-8s's last learned 2× layer: 16; a U-Net's last up-conv: 2), and a
  pattern of period ``p`` is also one of every multiple of ``p``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn
from torchmetrics import CatMetric, MeanMetric, MetricCollection


def checkerboard_energy(
    probs: torch.Tensor, period: int, from_logits: bool = False, eps: float = 1e-12
) -> torch.Tensor:
    """Per-image fraction of the prediction's variance at the stride-``period`` aliasing peaks.

    ``probs``: N×C×H×W class probabilities (softmax outputs, or the ``ms_flip`` evaluation's
    averaged probabilities); with ``from_logits=True``, logits (softmax is taken over C).
    Returns a float tensor of N values in [0, 1]; 0 for a constant prediction.
    """
    if probs.dim() != 4:
        raise ValueError(f"probs must be N×C×H×W, got shape {tuple(probs.shape)}")
    if period < 2:
        raise ValueError(f"period must be >= 2, got {period}")
    n, c, h, w = probs.shape
    h, w = h - h % period, w - w % period
    if h == 0 or w == 0:
        size = f"{probs.shape[-2]}×{probs.shape[-1]}"
        raise ValueError(f"a {size} map is smaller than the period {period}")
    p = probs[..., :h, :w].double()
    if from_logits:
        p = p.softmax(1)
    p = p - p.mean((-2, -1), keepdim=True)
    phases = p.view(n, c, h // period, period, w // period, period).mean((2, 4))
    periodic = phases.square().mean((-2, -1)).sum(1)  # per image: Σ_c mean over the s×s phases
    total = p.square().mean((-2, -1)).sum(1)
    ratio = periodic / total.clamp(min=eps)
    return torch.where(total > eps, ratio, torch.zeros_like(total)).float()


class CheckerboardEvaluator(nn.Module):
    """Mean over evaluated images of :func:`checkerboard_energy` at ``period`` (an
    :class:`~lightning_modules.metrics.Evaluator`): adds ``checkerboard`` and
    ``checkerboard_period`` to ``last_metrics[stage]``, and each image's value (with its dataset
    index, ``module.batch_indices``) to the stage's per-image file (``per_image()``), so that
    ``experiments/stats.py`` can resample the images: the reported number is their mean."""

    name = None

    def __init__(self, period: int) -> None:
        super().__init__()
        if not isinstance(period, int) or period < 2:
            raise ValueError(f"CheckerboardEvaluator period must be an int >= 2 (output pixels), got {period!r}")
        self.period = period
        self.mean = MeanMetric()  # a synced sum and count
        self.values = CatMetric(nan_strategy="disable")  # per image, gathered across processes
        self.index = CatMetric(nan_strategy="disable")

    def setup(self, metrics: MetricCollection) -> None:
        pass

    def update(self, images: torch.Tensor, probs: torch.Tensor, masks: torch.Tensor, module) -> None:
        energy = checkerboard_energy(probs.float(), self.period)
        self.mean.update(energy)
        self.values.update(energy.double())
        index = getattr(module, "batch_indices", None)
        self.index.update((index if index is not None else torch.full_like(energy, -1)).double())

    def compute(self) -> dict[str, object]:
        return {"checkerboard": float(self.mean.compute()), "checkerboard_period": self.period}

    def per_image(self) -> dict[str, np.ndarray] | None:
        """``index`` (N,) and ``checkerboard`` (N,) sorted by dataset index; None (with a warning)
        when an index is unknown or repeated. Merged into the stage's per-image counts."""
        if not self.values.update_count:
            return None
        values = self.values.compute().reshape(-1).cpu().numpy()
        index = self.index.compute().reshape(-1).cpu().numpy().astype(np.int64)
        if (index < 0).any() or len(np.unique(index)) != len(index):
            warnings.warn("per-image checkerboard values not reported: the evaluation order is unknown or an "
                          "image was evaluated twice", stacklevel=2)
            return None
        order = np.argsort(index)
        return {"index": index[order], "checkerboard": values[order]}

    def reset(self) -> None:
        self.mean.reset()
        self.values.reset()
        self.index.reset()

    def extra_repr(self) -> str:
        return f"period={self.period}"


__all__ = ["CheckerboardEvaluator", "checkerboard_energy"]
