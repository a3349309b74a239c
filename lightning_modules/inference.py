"""Evaluation protocols. The protocol changes the numbers, so every result records which was used.

- ``whole``      — one forward pass on the full image (DeepLab v1/v2, FCN; our default).
                   ``pad_to``: the normalised image is first padded with 0 (the mean colour)
                   at the bottom/right to at least pad_to × pad_to and the prediction cut back
                   (DeepLab's 513 × 513 test protocol, where the network sees a fixed size).
- ``ms_flip``    — average of softmax probabilities over scales and horizontal flips
                   (DeepLab v2 "MSC" at test time, DeepLab v3 Table 6 "+MS +flip", PSPNet
                   "+MS"; scales 0.5–1.75 as in v3/v3+).
- ``sliding``    — overlapping windows, logits averaged where they overlap (PSPNet / hszhao
                   semseg and mmsegmentation's "slide" mode, stride = 2/3 of the window).

:func:`predict_probs` takes a model returning ``{"out": logits at input size}`` and a
normalised batch N×3×H×W, and always returns class probabilities N×C×H×W at the batch's size
(the softmax of the logits for ``whole`` and ``sliding``, the averaged probabilities for
``ms_flip``): the argmax, the dense CRF and the checkerboard statistic all start from them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

EVAL_MODES = ("whole", "ms_flip", "sliding")
DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def predict_multiscale(
    model: nn.Module, images: torch.Tensor, scales: Sequence[float] = DEFAULT_SCALES, flip: bool = True
) -> torch.Tensor:
    h, w = images.shape[-2:]
    probs = None
    for scale in scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        views = [x, x.flip(-1)] if flip else [x]
        for k, view in enumerate(views):
            logits = model(view)["out"]
            if k == 1:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            p = logits.float().softmax(1)
            probs = p if probs is None else probs + p
    return probs / (len(scales) * (2 if flip else 1))


def sliding_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of windows of size ``crop`` covering an image of at least crop×crop.

    The last window in each direction is moved back to end exactly at the border, so every
    pixel is covered and no window leaves the image.
    """
    if stride <= 0 or stride > crop:
        raise ValueError(f"sliding stride must be in 1..crop={crop}, got {stride}")

    def starts(size: int) -> list[int]:
        if size <= crop:
            return [0]
        out = list(range(0, size - crop, stride))
        return out + [size - crop]

    return [(y, x) for y in starts(height) for x in starts(width)]


def predict_sliding(model: nn.Module, images: torch.Tensor, crop: int, stride: int | None = None) -> torch.Tensor:
    """Logits averaged over overlapping crop×crop windows."""
    stride = stride or max(1, (2 * crop) // 3)
    n, _, h, w = images.shape
    # Images smaller than a window are padded with 0 (= the mean colour after normalisation)
    # and the padding is cut off again; the model always sees crop×crop inputs as in training.
    ph, pw = max(h, crop), max(w, crop)
    x = F.pad(images, (0, pw - w, 0, ph - h)) if (ph, pw) != (h, w) else images
    logits, count = None, images.new_zeros(1, 1, ph, pw, dtype=torch.float32)
    for y0, x0 in sliding_windows(ph, pw, crop, stride):
        out = model(x[..., y0 : y0 + crop, x0 : x0 + crop])["out"].float()
        if logits is None:
            logits = out.new_zeros(n, out.shape[1], ph, pw)
        logits[..., y0 : y0 + crop, x0 : x0 + crop] += out
        count[..., y0 : y0 + crop, x0 : x0 + crop] += 1
    return (logits / count)[..., :h, :w]


def predict_whole(model: nn.Module, images: torch.Tensor, pad_to: int | None = None) -> torch.Tensor:
    """Logits of one forward pass, on the image padded to at least pad_to × pad_to if given."""
    h, w = images.shape[-2:]
    if pad_to is not None and (h < pad_to or w < pad_to):
        images = F.pad(images, (0, max(0, pad_to - w), 0, max(0, pad_to - h)))
    return model(images)["out"][..., :h, :w]


def check_protocol(mode: str, scales: Sequence[float] = (1.0,), flip: bool = False, window: int | None = None,
                   stride: int | None = None, pad_to: int | None = None, prefix: str = "eval_") -> None:
    """Raise a ValueError naming the first argument of the protocol that is invalid or would be
    ignored by ``mode`` (arguments named with ``prefix``, as the LightningModule spells them)."""
    sliding = mode == "sliding"
    checks = [
        (mode in EVAL_MODES, f"{prefix}mode must be one of {EVAL_MODES}, got {mode!r}"),
        (not sliding or (window or 0) > 0, f"{prefix}mode='sliding' needs {prefix}window (the window side, > 0)"),
        (sliding or (window is None and stride is None),
         f"{prefix}window/{prefix}stride apply to {prefix}mode='sliding' only, got {mode!r}"),
        (stride is None or 0 < stride <= (window or 0),
         f"{prefix}stride must be in 1..{prefix}window={window}, got {stride}"),
        (len(scales) > 0 and all(s > 0 for s in scales), f"{prefix}scales must be > 0, got {tuple(scales)}"),
        (mode == "ms_flip" or (tuple(scales) == (1.0,) and not flip),
         f"{prefix}scales/{prefix}flip apply to {prefix}mode='ms_flip' only, got {mode!r}"),
        (pad_to is None or (mode == "whole" and pad_to > 0),
         f"{prefix}pad_to must be > 0 and applies to {prefix}mode='whole' only, got {pad_to} with {mode!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def predict_probs(
    model: nn.Module,
    images: torch.Tensor,
    mode: str = "whole",
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | None = None,
    stride: int | None = None,
    pad_to: int | None = None,
) -> torch.Tensor:
    """Class probabilities N×C×H×W (float32) of a normalised batch under the protocol ``mode``."""
    check_protocol(mode, scales, flip, window, stride, pad_to, prefix="")
    if mode == "whole":
        return predict_whole(model, images, pad_to).float().softmax(1)
    if mode == "ms_flip":
        return predict_multiscale(model, images, scales, flip)
    return predict_sliding(model, images, window, stride).softmax(1)
