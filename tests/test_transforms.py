"""Joint transforms: 255 survives everything, masks are never interpolated, fills are right."""

from __future__ import annotations

import pickle

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from datamodules.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from datamodules.transforms import (
    AUGMENTATIONS,
    GaussianBlur,
    RandomScale,
    eval_transforms,
    mean_fill,
    train_transforms,
)


def _sample(h: int = 37, w: int = 53, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    # blocks of a few labels with 255 borders, so interpolation would invent in-between values
    mask = torch.full((h, w), 3, dtype=torch.int64)
    mask[: h // 2, : w // 2] = 7
    mask[h // 2 :, w // 3 :] = 14
    mask[h // 2, :] = IGNORE_INDEX
    mask[:, w // 2] = IGNORE_INDEX
    return image, mask


@pytest.mark.parametrize("augment", AUGMENTATIONS)
@pytest.mark.parametrize("crop", [24, (80, 96)])  # smaller than the image, and larger (padding)
def test_train_outputs_and_labels(augment, crop):
    torch.manual_seed(0)
    t = train_transforms(crop, (0.5, 2.0), augment, color_jitter=(augment == "pspnet"))
    ch, cw = (crop, crop) if isinstance(crop, int) else crop
    image, mask = _sample()
    allowed = set(mask.unique().tolist())
    seen_255 = False
    for _ in range(12):
        x, y = t(image, mask)
        assert type(x) is torch.Tensor and type(y) is torch.Tensor  # no tv_tensor leaks out
        assert x.dtype == torch.float32 and x.shape == (3, ch, cw)
        assert y.dtype == torch.int64 and y.shape == (ch, cw)
        values = set(y.unique().tolist())
        assert values <= allowed, f"{augment}: new label values {values - allowed}"
        seen_255 |= IGNORE_INDEX in values
    assert seen_255


def test_padding_fills_mask_with_255_and_image_with_mean():
    torch.manual_seed(0)
    image, mask = _sample(10, 12)
    mask.fill_(5)  # no 255 in the input: any 255 in the output is padding
    # "unet" rotates every image (its fill is 255 too, beyond the padding): tests/test_unet_recipe.py
    for augment in (a for a in AUGMENTATIONS if a != "unet"):
        x, y = train_transforms(40, (1.0, 1.0), augment)(image, mask)
        pad = y == IGNORE_INDEX
        assert int(pad.sum()) == 40 * 40 - 10 * 12, augment
        assert set(y[~pad].unique().tolist()) == {5}
        # padded image pixels are the mean colour: (round(mean*255)/255 - mean)/std ~ 0
        assert x[:, pad].abs().max() < 0.01, augment
        assert x[:, ~pad].abs().max() > 0.5


def test_mean_fill_is_the_rounded_imagenet_mean():
    assert mean_fill(IMAGENET_MEAN) == (124, 116, 104)


def test_random_scale_resizes_both_by_one_factor_and_mask_nearest():
    image, mask = _sample(40, 60)
    torch.manual_seed(1)
    sizes = set()
    for _ in range(20):
        x, y = RandomScale((0.5, 2.0))(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert x.shape[-2:] == y.shape[-2:]
        h, w = y.shape
        assert 20 <= h <= 80 and abs(w / h - 1.5) < 0.1
        assert set(y.unique().tolist()) <= set(mask.unique().tolist())
        sizes.add((h, w))
    assert len(sizes) > 10  # really random
    # nearest upsampling by 2 is exact replication of a blocky mask
    y = v2.functional.resize(tv_tensors.Mask(mask), [80, 120])
    assert torch.equal(y[::2, ::2], mask)


def test_rotation_and_blur_never_interpolate_the_mask():
    image, mask = _sample(45, 45)
    rot = v2.RandomRotation(
        10,
        interpolation=v2.InterpolationMode.BILINEAR,
        fill={tv_tensors.Image: [124, 116, 104], tv_tensors.Mask: IGNORE_INDEX},
    )
    blur = GaussianBlur(5, sigma=1.1)
    torch.manual_seed(0)
    for _ in range(10):
        x, y = rot(tv_tensors.Image(image), tv_tensors.Mask(mask.to(torch.uint8)))
        assert set(y.unique().tolist()) <= set(mask.unique().tolist())
    x, y = blur(tv_tensors.Image(image), tv_tensors.Mask(mask))
    assert torch.equal(y, mask) and not torch.equal(x, image)


def test_pspnet_rotation_pads_corners_with_255():
    image, mask = _sample(64, 64)
    mask.fill_(2)
    t = train_transforms(64, (1.0, 1.0), "pspnet", rotate_degrees=10, blur=False)
    torch.manual_seed(0)
    corners = [t(image, mask)[1] for _ in range(10)]
    assert any((y == IGNORE_INDEX).any() for y in corners)  # rotated at least once (p=0.5)


def test_flip_moves_image_and_mask_together():
    image, mask = _sample(30, 30)
    image = torch.zeros_like(image)
    image[:, :, :10] = 255  # bright left band
    mask.fill_(0)
    mask[:, :10] = 1
    t = train_transforms(30, (1.0, 1.0), "flip")
    torch.manual_seed(0)
    flipped = 0
    for _ in range(20):
        x, y = t(image, mask)
        assert torch.equal(x[0] > 0, y == 1)
        flipped += int(y[0, -1] == 1)
    assert 0 < flipped < 20


def test_none_is_deterministic_and_eval_keeps_full_mask():
    image, mask = _sample()
    t = train_transforms(24, augment="none")
    a, b = t(image, mask), t(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    x, y = eval_transforms()(image, mask)
    assert torch.equal(y, mask) and y.dtype == torch.int64
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(x, (image / 255.0 - mean) / std, atol=1e-5)


def test_transforms_pickle_for_workers_and_reject_bad_arguments():
    t = train_transforms(32, augment="pspnet")
    image, mask = _sample()
    torch.manual_seed(0)
    a = t(image, mask)
    torch.manual_seed(0)
    b = pickle.loads(pickle.dumps(t))(image, mask)
    assert torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="augment.*'fancy'"):
        train_transforms(32, augment="fancy")
    with pytest.raises(ValueError, match="crop_size"):
        train_transforms((0, 5))
    with pytest.raises(ValueError, match="scale_range"):
        train_transforms(32, (2.0, 0.5))
    with pytest.raises(ValueError, match="0..255"):
        train_transforms(8)(image, torch.full(mask.shape, 300))


def test_separable_blur_matches_torchvision():
    image, _ = _sample(31, 45)
    ours = GaussianBlur(5, sigma=1.1)(tv_tensors.Image(image))
    ref = v2.GaussianBlur(5, sigma=1.1)(tv_tensors.Image(image))
    assert ours.dtype == torch.uint8 and ours.shape == image.shape
    assert (ours.int() - ref.int()).abs().max() <= 1
    assert not torch.equal(ours, image)
    f = torch.rand(3, 20, 24)
    assert torch.allclose(
        GaussianBlur(7, 2.0)(tv_tensors.Image(f)),
        v2.GaussianBlur(7, sigma=2.0)(tv_tensors.Image(f)),
        atol=1e-5,
    )
