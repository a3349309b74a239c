"""Evaluation protocols. The protocol changes the numbers, so every result records which was used.

- ``whole``      — one forward pass on the full image (DeepLab v1/v2, FCN; our default).
                   ``pad_to``: the normalised image is first padded with 0 (the mean colour)
                   at the bottom/right to at least pad_to × pad_to and the prediction cut back
                   (DeepLab's 513 × 513 test protocol: the Caffe test prototxts' 513 crop and
                   the TF code's ``eval_crop_size``, where the network sees a fixed size).
- ``ms_flip``    — average of softmax probabilities over scales and horizontal flips of the
                   image (DeepLab v3 Sec. 4.3 / Table 6 "+MS +Flip" and v3+ Sec. 4 "MS + Flip":
                   scales {0.5, 0.75, 1.0, 1.25, 1.5, 1.75}, :data:`DEEPLAB_V3_SCALES`). As the
                   official ``model.py`` ``predict_labels_multi_scale`` does, the probabilities
                   (not the logits) are averaged, and with ``pad_to`` the image is padded to
                   513 first and the padded image is scaled.
- ``sliding``    — overlapping windows, logits averaged where they overlap (mmsegmentation's
                   "slide" mode, stride = 2/3 of the window), images smaller than a window padded
                   bottom/right.
- ``semseg``     — hszhao/semseg's test protocol for PSPNet (``tool/test.py``, functions
                   ``test``, ``scale_process`` and ``net_process``; ``config/ade20k/
                   ade20k_pspnet50.yaml`` TEST: ``base_size: 512``, ``test_h/test_w: 473``,
                   ``scales: [1.0]``, "ms as [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]"). For every scale
                   s: the image is resized (bilinear) so that its LONG side is
                   ``round(s * base_size)`` (``test``: ``new_w = round(long_size/float(h)*w)`` if
                   h > w, else ``new_h = round(long_size/float(w)*h)``); it is padded
                   symmetrically with the mean colour to at least window × window
                   (``copyMakeBorder(..., pad_h_half, pad_h - pad_h_half, ...)``); windows of side
                   ``window`` are placed on the ceil-based grid ``grid = ceil((H - window) /
                   stride) + 1``, ``start = min(i * stride, H - window)`` with ``stride =
                   ceil(window * 2/3)`` (``stride_rate=2/3``); each window's softmax is averaged
                   with that of its horizontal flip (``net_process(flip=True)``); the window
                   probabilities are averaged where they overlap, the padding cut off, and the
                   scores resized (bilinear) to the original image size; the scales' scores are
                   averaged. ``scales=(1.0,)`` is their single-scale "ss" row (PSPNet Table 1),
                   :data:`SEMSEG_MS_SCALES` their "ms" row (PSPNet "+MS").

All resizing is bilinear with half-pixel centres (``align_corners=False``, as OpenCV's
``INTER_LINEAR``). Resizing or padding the normalised image with 0 equals doing it to the raw
image with the mean colour (normalisation is a per-channel affine map).

:func:`predict_probs` takes a model returning ``{"out": logits at input size}`` and a
normalised batch N×3×H×W, and always returns class probabilities N×C×H×W at the batch's size:
the argmax, the dense CRF and the checkerboard statistic all start from them.
:data:`EVAL_PROTOCOLS` names the protocols the command line offers (``--eval-mode``), and
:func:`protocol_label` is the short description stored with every result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

EVAL_MODES = ("whole", "ms_flip", "sliding", "semseg")
DEEPLAB_V3_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)    # DeepLab v3 Sec. 4.3, v3+ Sec. 4
SEMSEG_MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)     # hszhao/semseg config TEST.scales "ms"
DEFAULT_SCALES = DEEPLAB_V3_SCALES
SEMSEG_BASE_SIZE, SEMSEG_WINDOW = 512, 473               # hszhao/semseg ADE20K/VOC TEST section

# The named protocols of ``--eval-mode``: the Eval fields each one sets. Fields it leaves out
# are kept from the recipe (``pad_to`` for whole/ms_flip, ``window``/``stride``/``base_size``
# for semseg), so e.g. DeepLab's 513 padding survives ``--eval-mode ms_flip``.
EVAL_PROTOCOLS: dict[str, dict] = {
    "whole": {"mode": "whole", "scales": (1.0,), "flip": False, "window": None, "stride": None,
              "base_size": None},
    "ms_flip": {"mode": "ms_flip", "scales": DEEPLAB_V3_SCALES, "flip": True, "window": None, "stride": None,
                "base_size": None},
    "sliding": {"mode": "sliding", "scales": (1.0,), "flip": False, "pad_to": None, "base_size": None},
    "semseg": {"mode": "semseg", "scales": (1.0,), "flip": True, "pad_to": None},
    "semseg_ms": {"mode": "semseg", "scales": SEMSEG_MS_SCALES, "flip": True, "pad_to": None},
}


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def predict_multiscale(
    model: nn.Module, images: torch.Tensor, scales: Sequence[float] = DEFAULT_SCALES, flip: bool = True
) -> torch.Tensor:
    h, w = images.shape[-2:]
    probs = None
    for scale in scales:
        x = resize(images, (max(1, round(h * scale)), max(1, round(w * scale))))
        views = [x, x.flip(-1)] if flip else [x]
        for k, view in enumerate(views):
            logits = model(view)["out"]
            if k == 1:
                logits = logits.flip(-1)
            p = resize(logits.float(), (h, w)).softmax(1)
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


# --------------------------------------------------------------------------- hszhao/semseg
def semseg_stride(window: int, stride: int | None = None) -> int:
    """``int(np.ceil(crop_h * stride_rate))`` with ``stride_rate=2/3`` unless given."""
    return stride if stride is not None else int(math.ceil(window * 2 / 3))


def semseg_resized_size(height: int, width: int, long_size: int) -> tuple[int, int]:
    """``test()`` in tool/test.py: the long side becomes ``long_size``, the other is rounded."""
    if height > width:
        return long_size, round(long_size / float(height) * width)
    return round(long_size / float(width) * height), long_size


def semseg_starts(size: int, window: int, stride: int) -> list[int]:
    """``scale_process``: ``grid = ceil((size - window) / stride) + 1`` windows, each starting at
    ``s = i * stride``, moved back so that it ends at ``min(s + window, size)``."""
    grid = int(math.ceil(float(size - window) / stride) + 1)
    return [min(i * stride + window, size) - window for i in range(grid)]


def _semseg_net(model: nn.Module, x: torch.Tensor, flip: bool) -> torch.Tensor:
    """``net_process``: softmax of the window, averaged with that of its flipped copy."""
    views = torch.cat([x, x.flip(-1)], 0) if flip else x
    logits = model(views)["out"].float()
    probs = resize(logits, tuple(x.shape[-2:])).softmax(1)
    if flip:
        n = x.shape[0]
        return (probs[:n] + probs[n:].flip(-1)) / 2
    return probs


def _semseg_scale(model: nn.Module, image: torch.Tensor, window: int, stride: int, flip: bool,
                  out_size: tuple[int, int]) -> torch.Tensor:
    """``scale_process``: mean-padded sliding windows on one resized batch, probabilities back
    at ``out_size``."""
    n, _, h, w = image.shape
    pad_h, pad_w = max(window - h, 0), max(window - w, 0)
    top, left = pad_h // 2, pad_w // 2     # int(pad_h / 2): the rest goes to the bottom/right
    if pad_h or pad_w:
        image = F.pad(image, (left, pad_w - left, top, pad_h - top))   # 0 = the mean colour
    new_h, new_w = image.shape[-2:]
    probs = count = None
    for s_h in semseg_starts(new_h, window, stride):
        for s_w in semseg_starts(new_w, window, stride):
            p = _semseg_net(model, image[..., s_h : s_h + window, s_w : s_w + window], flip)
            if probs is None:
                probs = p.new_zeros(n, p.shape[1], new_h, new_w)
                count = p.new_zeros(1, 1, new_h, new_w)
            probs[..., s_h : s_h + window, s_w : s_w + window] += p
            count[..., s_h : s_h + window, s_w : s_w + window] += 1
    probs = (probs / count)[..., top : top + h, left : left + w]
    return resize(probs, out_size)


def predict_semseg(model: nn.Module, images: torch.Tensor, base_size: int, window: int,
                   stride: int | None = None, scales: Sequence[float] = (1.0,), flip: bool = True) -> torch.Tensor:
    """hszhao/semseg ``tool/test.py`` (see the module docstring): class probabilities at the
    batch's size, averaged over ``scales`` of ``base_size``."""
    stride = semseg_stride(window, stride)
    h, w = images.shape[-2:]
    total = None
    for scale in scales:
        size = semseg_resized_size(h, w, round(scale * base_size))
        p = _semseg_scale(model, resize(images, size), window, stride, flip, (h, w))
        total = p if total is None else total + p
    return total / len(scales)


# --------------------------------------------------------------------------- whole image
def pad_to_size(images: torch.Tensor, pad_to: int | None) -> torch.Tensor:
    """Bottom/right zero (mean-colour) padding to at least pad_to × pad_to."""
    h, w = images.shape[-2:]
    if pad_to is None or (h >= pad_to and w >= pad_to):
        return images
    return F.pad(images, (0, max(0, pad_to - w), 0, max(0, pad_to - h)))


def predict_whole(model: nn.Module, images: torch.Tensor, pad_to: int | None = None) -> torch.Tensor:
    """Logits of one forward pass, on the image padded to at least pad_to × pad_to if given."""
    h, w = images.shape[-2:]
    return model(pad_to_size(images, pad_to))["out"][..., :h, :w]


def check_protocol(mode: str, scales: Sequence[float] = (1.0,), flip: bool = False, window: int | None = None,
                   stride: int | None = None, pad_to: int | None = None, base_size: int | None = None,
                   prefix: str = "eval_") -> None:
    """Raise a ValueError naming the first argument of the protocol that is invalid or would be
    ignored by ``mode`` (arguments named with ``prefix``, as the LightningModule spells them)."""
    windowed = mode in ("sliding", "semseg")
    multi = mode in ("ms_flip", "semseg")
    checks = [
        (mode in EVAL_MODES, f"{prefix}mode must be one of {EVAL_MODES}, got {mode!r}"),
        (not windowed or (window or 0) > 0, f"{prefix}mode={mode!r} needs {prefix}window (the window side, > 0)"),
        (windowed or (window is None and stride is None),
         f"{prefix}window/{prefix}stride apply to {prefix}mode='sliding' or 'semseg' only, got {mode!r}"),
        (stride is None or 0 < stride <= (window or 0),
         f"{prefix}stride must be in 1..{prefix}window={window}, got {stride}"),
        (mode != "semseg" or (base_size or 0) > 0,
         f"{prefix}mode='semseg' needs {prefix}base_size (the long side images are resized to, > 0)"),
        (mode == "semseg" or base_size is None,
         f"{prefix}base_size applies to {prefix}mode='semseg' only, got {mode!r}"),
        (len(scales) > 0 and all(s > 0 for s in scales), f"{prefix}scales must be > 0, got {tuple(scales)}"),
        (multi or (tuple(scales) == (1.0,) and not flip),
         f"{prefix}scales/{prefix}flip apply to {prefix}mode='ms_flip' or 'semseg' only, got {mode!r}"),
        (pad_to is None or (mode in ("whole", "ms_flip") and pad_to > 0),
         f"{prefix}pad_to must be > 0 and applies to {prefix}mode='whole' or 'ms_flip' only, "
         f"got {pad_to} with {mode!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def protocol_label(mode: str, scales: Sequence[float] = (1.0,), flip: bool = False, window: int | None = None,
                   stride: int | None = None, pad_to: int | None = None, base_size: int | None = None) -> str:
    """A short description of the protocol, stored with every result (metrics.json, tables)."""
    scales_text = "" if tuple(scales) == (1.0,) else " scales " + ",".join(f"{s:g}" for s in scales)
    pad = f" pad {pad_to}" if pad_to else ""
    if mode == "whole":
        return "whole" + pad
    if mode == "ms_flip":
        return "ms_flip" + scales_text + (" + flip" if flip else "") + pad
    if mode == "sliding":
        return f"sliding {window} stride {stride or max(1, (2 * window) // 3)}"
    return (f"semseg long side {base_size}, {window} windows stride {semseg_stride(window, stride)}"
            + (" + flip" if flip else "") + scales_text)


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
    base_size: int | None = None,
) -> torch.Tensor:
    """Class probabilities N×C×H×W (float32) of a normalised batch under the protocol ``mode``."""
    check_protocol(mode, scales, flip, window, stride, pad_to, base_size, prefix="")
    if mode == "whole":
        return predict_whole(model, images, pad_to).float().softmax(1)
    if mode == "ms_flip":
        h, w = images.shape[-2:]
        return predict_multiscale(model, pad_to_size(images, pad_to), scales, flip)[..., :h, :w]
    if mode == "semseg":
        return predict_semseg(model, images, base_size, window, stride, scales, flip)
    return predict_sliding(model, images, window, stride).softmax(1)
