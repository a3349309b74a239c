"""Multi-scale inputs with max fusion (MSC): DeepLab v2 (Chen et al., TPAMI 2017) Sec. 4.1
("Multi-scale inputs", the "MSC" column of Table 4), as kazuto1011/deeplab-pytorch
``libs/models/msc.py`` (its ``DeepLabV2_ResNet101_MSC``) trains and evaluates it.

The image is fed to the network at scales 1, 0.75 and 0.5 (one set of parameters) and the
score maps are fused by taking the maximum response across scales at each position, in
training and in testing.

Matched to the reference code:

- the scaled inputs are ``F.interpolate(x, scale_factor=s, mode="bilinear",
  align_corners=False)`` (the scale-1 input is ``x`` itself);
- each scale's *score map* (the network's stride-8 logits, before any upsampling) is resized
  bilinearly (``align_corners=False``) to the size of the scale-1 score map and the maps are
  fused by the element-wise maximum;
- training returns every scale's score map at its own size plus the fused one; the loss is the
  SUM of the cross-entropies of each of them against labels shrunk nearest-neighbour to that
  map's size (``main.py``: ``resize_labels`` with PIL's NEAREST; here
  ``lightning_modules.segmentation.resize_labels``);
- evaluation uses the fused map, upsampled bilinearly to the image.

``msc_forward`` returns the model contract ``{"out": fused logits at the input's H×W}`` and, in
training, ``"msc"``: ``[score map of each scale ..., fused score map]`` at stride 8.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

PAPER_SCALES = (1.0, 0.75, 0.5)


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    scales = tuple(float(s) for s in scales)
    if not scales or scales[0] != 1.0 or min(scales) <= 0 or len(set(scales)) != len(scales):
        raise ValueError(f"msc_scales must start with 1.0 (the original image, whose score map the "
                         f"others are fused onto) and hold distinct positive scales, got {scales}")
    return scales


def msc_scores(scores: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
               scales: Sequence[float]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(score map of each scale at its own size, their element-wise max at the scale-1 size)."""
    maps = [scores(x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
            for s in scales]
    size = maps[0].shape[-2:]
    resized = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
               for m in maps]
    return maps, torch.stack(resized).max(dim=0).values


def msc_forward(scores: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scales: Sequence[float],
                training: bool) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """``{"out": fused logits at x's size}`` (+ ``"msc"``: per-scale and fused score maps, in training)."""
    maps, fused = msc_scores(scores, x, scales)
    out: dict[str, torch.Tensor | list[torch.Tensor]] = {
        "out": F.interpolate(fused, size=x.shape[-2:], mode="bilinear", align_corners=False)}
    if training:
        out["msc"] = [*maps, fused]
    return out
