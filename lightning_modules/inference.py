"""Evaluation protocols. The protocol changes the numbers, so every result records which was used.

- ``whole``      — one forward pass on the full image (DeepLab v1/v2, FCN; our default).
- ``ms_flip``    — average of softmax probabilities over scales and horizontal flips
                   (DeepLab v2 "MSC" at test time, DeepLab v3 Table 6 "+MS +flip", PSPNet
                   "+MS"; scales 0.5–1.75 as in v3/v3+).
- ``sliding``    — overlapping crop-size windows, logits averaged where they overlap (PSPNet /
                   hszhao semseg and mmsegmentation's "slide" mode, stride = 2/3 of the crop).

Each function takes a model returning ``{"out": logits at input size}`` and a normalised batch
N×3×H×W, and returns class scores N×C×H×W at the batch's size (logits for ``whole`` and
``sliding``, averaged probabilities for ``ms_flip``; argmax is what the metrics use).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

EVAL_MODES = ("whole", "ms_flip", "sliding")
DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def predict_whole(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model(images)["out"]


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


def predict_sliding(
    model: nn.Module, images: torch.Tensor, num_classes: int, crop: int, stride: int | None = None
) -> torch.Tensor:
    stride = stride or max(1, (2 * crop) // 3)
    n, _, h, w = images.shape
    # Images smaller than a window are padded with 0 (= the mean colour after normalisation)
    # and the padding is cut off again; the model always sees crop×crop inputs as in training.
    ph, pw = max(h, crop), max(w, crop)
    x = F.pad(images, (0, pw - w, 0, ph - h)) if (ph, pw) != (h, w) else images
    logits = images.new_zeros(n, num_classes, ph, pw, dtype=torch.float32)
    count = images.new_zeros(1, 1, ph, pw, dtype=torch.float32)
    for y0, x0 in sliding_windows(ph, pw, crop, stride):
        window = x[..., y0 : y0 + crop, x0 : x0 + crop]
        logits[..., y0 : y0 + crop, x0 : x0 + crop] += model(window)["out"].float()
        count[..., y0 : y0 + crop, x0 : x0 + crop] += 1
    return (logits / count)[..., :h, :w]


def predict(
    model: nn.Module,
    images: torch.Tensor,
    mode: str,
    num_classes: int,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    crop: int | None = None,
    stride: int | None = None,
) -> torch.Tensor:
    if mode == "whole":
        return predict_whole(model, images)
    if mode == "ms_flip":
        return predict_multiscale(model, images, scales, flip)
    if mode == "sliding":
        if crop is None:
            raise ValueError("eval_mode='sliding' needs the crop size (eval_crop) of the windows")
        return predict_sliding(model, images, num_classes, crop, stride)
    raise ValueError(f"eval_mode must be one of {EVAL_MODES}, got {mode!r}")
