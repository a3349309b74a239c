"""The evaluation protocols on hand-built models and inputs (lightning_modules/inference.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.inference import (
    EVAL_PROTOCOLS,
    check_protocol,
    predict_probs,
    predict_semseg,
    protocol_label,
    semseg_resized_size,
    semseg_starts,
    sliding_windows,
)


class Conv(nn.Module):
    """A context-seeing model with no left-right symmetry (fixed random 5×5 conv)."""

    def __init__(self, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, classes, 5, padding=2)
        self.seen: list[tuple[int, int]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        return {"out": 3 * self.conv(x)}


# --------------------------------------------------------------------------- a direct transcription
def _resize_hwc(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """cv2.resize(a, (w, h), INTER_LINEAR) stand-in (OpenCV is not a dependency): bilinear with
    half-pixel centres."""
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None].float()
    return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0].numpy().transpose(1, 2, 0)


def reference_semseg(model, image: np.ndarray, classes: int, base_size: int, crop: int,
                     scales, stride_rate: float = 2 / 3) -> np.ndarray:
    """hszhao/semseg tool/test.py ``test``/``scale_process``/``net_process`` line by line, on an
    already normalised H×W×3 image (so the mean colour is 0)."""

    def net_process(image):
        input = torch.from_numpy(image.transpose((2, 0, 1))).float().unsqueeze(0)
        input = torch.cat([input, input.flip(3)], 0)
        with torch.no_grad():
            output = model(input)["out"]
        output = F.softmax(output, dim=1)
        output = (output[0] + output[1].flip(2)) / 2
        return output.numpy().transpose(1, 2, 0)

    def scale_process(image, h, w):
        ori_h, ori_w, _ = image.shape
        pad_h = max(crop - ori_h, 0)
        pad_w = max(crop - ori_w, 0)
        pad_h_half = int(pad_h / 2)
        pad_w_half = int(pad_w / 2)
        if pad_h > 0 or pad_w > 0:
            image = np.pad(image, ((pad_h_half, pad_h - pad_h_half), (pad_w_half, pad_w - pad_w_half), (0, 0)))
        new_h, new_w, _ = image.shape
        stride_h = int(np.ceil(crop * stride_rate))
        stride_w = int(np.ceil(crop * stride_rate))
        grid_h = int(np.ceil(float(new_h - crop) / stride_h) + 1)
        grid_w = int(np.ceil(float(new_w - crop) / stride_w) + 1)
        prediction_crop = np.zeros((new_h, new_w, classes), dtype=float)
        count_crop = np.zeros((new_h, new_w), dtype=float)
        for index_h in range(0, grid_h):
            for index_w in range(0, grid_w):
                s_h = index_h * stride_h
                e_h = min(s_h + crop, new_h)
                s_h = e_h - crop
                s_w = index_w * stride_w
                e_w = min(s_w + crop, new_w)
                s_w = e_w - crop
                image_crop = image[s_h:e_h, s_w:e_w].copy()
                count_crop[s_h:e_h, s_w:e_w] += 1
                prediction_crop[s_h:e_h, s_w:e_w, :] += net_process(image_crop)
        prediction_crop /= np.expand_dims(count_crop, 2)
        prediction_crop = prediction_crop[pad_h_half:pad_h_half + ori_h, pad_w_half:pad_w_half + ori_w]
        return _resize_hwc(prediction_crop, h, w)

    h, w, _ = image.shape
    prediction = np.zeros((h, w, classes), dtype=float)
    for scale in scales:
        long_size = round(scale * base_size)
        new_h = long_size
        new_w = long_size
        if h > w:
            new_w = round(long_size / float(h) * w)
        else:
            new_h = round(long_size / float(w) * h)
        image_scale = _resize_hwc(image, new_h, new_w)
        prediction += scale_process(image_scale, h, w)
    return prediction / len(scales)


@pytest.mark.parametrize("size,base_size,window,scales", [
    ((23, 37), 40, 17, (1.0,)),          # landscape, several windows
    ((41, 19), 36, 15, (1.0,)),          # portrait (h > w branch)
    ((12, 20), 16, 17, (1.0,)),          # smaller than a window: mean-padded symmetrically
    ((23, 37), 40, 17, (0.5, 0.75, 1.0, 1.25)),   # their "ms" loop
])
def test_semseg_equals_a_transcription_of_hszhao_semseg(size, base_size, window, scales):
    model = Conv().eval().requires_grad_(False)
    x = torch.randn(1, 3, *size)
    ours = predict_probs(model, x, "semseg", base_size=base_size, window=window, scales=scales, flip=True)
    theirs = reference_semseg(model, x[0].numpy().transpose(1, 2, 0), 4, base_size, window, scales)
    assert ours.shape == (1, 4, *size)
    np.testing.assert_allclose(ours[0].numpy().transpose(1, 2, 0), theirs, atol=1e-5)


def test_semseg_geometry_is_theirs():
    assert semseg_resized_size(375, 500, 512) == (384, 512)       # a VOC image: long side 512
    assert semseg_resized_size(500, 333, 512) == (512, 341)
    stride = math.ceil(473 * 2 / 3)
    assert stride == 316 and semseg_starts(512, 473, stride) == [0, 39]
    assert semseg_starts(473, 473, stride) == [0]
    for size in (473, 500, 789, 790, 1000, 1105):  # the ceil grid is also "cover, last flush right"
        assert semseg_starts(size, 473, stride) == sorted({y for y, _ in sliding_windows(size, 473, 473, stride)})
    model = Conv().eval().requires_grad_(False)
    predict_probs(model, torch.randn(1, 3, 375, 500), "semseg", base_size=512, window=473, flip=True)
    assert model.seen == [(473, 473)] * 2  # the 384x512 image, padded to 473x512: two windows (x2 flips batched)


def test_sliding_windows_cover_every_pixel_and_average_overlaps():
    class WindowMean(nn.Module):  # each window predicts its own mean value everywhere
        def forward(self, x):
            return {"out": x[:, :1].mean((2, 3), keepdim=True).expand(-1, 2, *x.shape[-2:]) * torch.tensor(
                [1.0, -1.0]).view(1, 2, 1, 1)}

    x = torch.randn(1, 3, 19, 26)
    crop, stride = 10, 6
    expected = torch.zeros(1, 2, 19, 26)
    count = torch.zeros(19, 26)
    for y, xx in sliding_windows(19, 26, crop, stride):
        m = x[0, 0, y:y + crop, xx:xx + crop].mean()
        expected[0, 0, y:y + crop, xx:xx + crop] += m
        expected[0, 1, y:y + crop, xx:xx + crop] -= m
        count[y:y + crop, xx:xx + crop] += 1
    assert count.min() >= 1 and count.max() > 1  # every pixel covered, some twice
    with torch.no_grad():
        probs = predict_probs(WindowMean(), x, "sliding", window=crop, stride=stride)
    torch.testing.assert_close(probs, (expected / count).softmax(1))


@pytest.mark.parametrize("mode,kwargs", [
    ("ms_flip", {"scales": (1.0,), "flip": True}),
    ("semseg", {"base_size": 24, "window": 24, "flip": True}),
])
def test_flip_averaging_is_exact_on_a_symmetric_input(mode, kwargs):
    model = Conv().eval()
    half = torch.randn(1, 3, 16, 12)
    x = torch.cat([half, half.flip(-1)], -1)           # symmetric: x == x.flip(-1)
    with torch.no_grad():
        p = model(x)["out"].softmax(1)
        assert not torch.allclose(p, p.flip(-1), atol=1e-3)  # the model itself is not symmetric
        probs = predict_probs(model, x, mode, **kwargs)
    torch.testing.assert_close(probs, (p + p.flip(-1)) / 2)
    torch.testing.assert_close(probs, probs.flip(-1))


def test_ms_flip_with_pad_to_pads_then_scales_then_crops_back():
    model = Conv().eval()
    x = torch.randn(2, 3, 13, 21)
    with torch.no_grad():
        probs = predict_probs(model, x, "ms_flip", scales=(0.5, 1.0), flip=False, pad_to=32)
        padded = F.pad(x, (0, 11, 0, 19))
        small = F.interpolate(padded, size=(16, 16), mode="bilinear", align_corners=False)
        p_small = F.interpolate(model(small)["out"], size=(32, 32), mode="bilinear", align_corners=False)
        expected = (model(padded)["out"].softmax(1) + p_small.softmax(1)) / 2
    assert probs.shape == (2, 4, 13, 21) and model.seen[0] == (16, 16) and model.seen[1] == (32, 32)
    torch.testing.assert_close(probs, expected[..., :13, :21])


def test_protocol_checks_and_labels():
    with pytest.raises(ValueError, match="base_size"):
        check_protocol("semseg", window=8)
    with pytest.raises(ValueError, match="base_size"):
        check_protocol("whole", base_size=512)
    with pytest.raises(ValueError, match="pad_to"):
        check_protocol("semseg", window=8, base_size=8, pad_to=16)
    check_protocol("semseg", (0.5, 1.0), True, 8, None, None, 16)
    check_protocol("ms_flip", (0.5, 1.0), True, pad_to=513)
    assert protocol_label("whole", pad_to=513) == "whole pad 513"
    assert protocol_label("ms_flip", EVAL_PROTOCOLS["ms_flip"]["scales"], True, pad_to=513) == \
        "ms_flip scales 0.5,0.75,1,1.25,1.5,1.75 + flip pad 513"
    assert protocol_label("semseg", (1.0,), True, 473, None, None, 512) == \
        "semseg long side 512, 473 windows stride 316 + flip"


def test_predict_semseg_batches_like_single_images():
    model = Conv().eval()
    x = torch.randn(3, 3, 20, 30)
    with torch.no_grad():
        batch = predict_semseg(model, x, base_size=24, window=11)
        one = torch.cat([predict_semseg(model, x[i:i + 1], base_size=24, window=11) for i in range(3)])
    torch.testing.assert_close(batch, one)
