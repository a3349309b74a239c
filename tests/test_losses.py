"""The half-precision cross-entropy (``LowPrecisionCrossEntropy``) against ``F.cross_entropy`` on
fp32 copies of the same logits: losses and gradients, ignored pixels, pixel weights."""

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.segmentation import LowPrecisionCrossEntropy, pixel_cross_entropy, segmentation_loss

IGNORE = 255


def _inputs(dtype, n=3, c=7, h=9, w=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, c, h, w, generator=g)).to(dtype)
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[0, :2] = IGNORE          # some ignored pixels
    target[2] = IGNORE              # an image with no labelled pixel at all
    return logits, target


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_losses_and_gradients_match_the_fp32_reference(dtype):
    logits, target = _inputs(dtype)
    weight = torch.rand(target.shape, generator=torch.Generator().manual_seed(1))
    ours_in = logits.clone().requires_grad_()
    ref_in = logits.clone().requires_grad_()
    ours = LowPrecisionCrossEntropy.apply(ours_in, target, IGNORE)
    ref = F.cross_entropy(ref_in.float(), target, ignore_index=IGNORE, reduction="none")
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-5)
    assert ours.dtype == torch.float32 and (ours[target == IGNORE] == 0).all()
    (ours * weight).sum().backward()
    (ref * weight).sum().backward()
    assert ours_in.grad.dtype == dtype
    # both gradients are rounded to the logits' dtype once; compare in fp32
    tol = {"rtol": 1e-2, "atol": 1e-3} if dtype == torch.bfloat16 else {"rtol": 1e-3, "atol": 1e-4}
    torch.testing.assert_close(ours_in.grad.float(), ref_in.grad.float(), **tol)
    assert (ours_in.grad[2] == 0).all()   # no labelled pixel, no gradient
    assert ours_in.grad.abs().sum() > 0


def test_large_half_logits_take_it_small_ones_and_fp32_do_not(monkeypatch):
    calls = []
    real = LowPrecisionCrossEntropy.apply
    monkeypatch.setattr(LowPrecisionCrossEntropy, "apply", lambda *a: calls.append(1) or real(*a))
    logits, target = _inputs(torch.bfloat16)            # 3x7x9x11: 8 KiB as fp32
    pixel_cross_entropy(logits.clone().requires_grad_(), target)
    assert not calls                                    # small: torch's cross-entropy
    pixel_cross_entropy(logits.clone().requires_grad_(), target, min_bytes=logits.numel() * 4)
    assert len(calls) == 1
    pixel_cross_entropy(logits.float().requires_grad_(), target, min_bytes=0)
    assert len(calls) == 1                              # fp32 logits never


def test_segmentation_loss_agrees_for_half_logits(monkeypatch):
    import lightning_modules.segmentation as seg

    monkeypatch.setattr(seg.pixel_cross_entropy, "__defaults__", (0,))  # every size takes it
    logits, target = _inputs(torch.bfloat16)
    half = logits.clone().requires_grad_()
    full = logits.float().requires_grad_()
    loss_half, loss_full = segmentation_loss(half, target), segmentation_loss(full, target)
    torch.testing.assert_close(loss_half, loss_full, rtol=1e-6, atol=1e-6)
    loss_half.backward()
    loss_full.backward()
    torch.testing.assert_close(half.grad.float(), full.grad, rtol=1e-2, atol=1e-3)


def test_fp32_logits_keep_torchs_cross_entropy_bit_for_bit():
    logits, target = _inputs(torch.float32)
    ref = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    assert torch.equal(pixel_cross_entropy(logits, target), ref)


def test_a_label_outside_the_classes_is_an_error():
    logits, target = _inputs(torch.bfloat16)
    target[1, 0, 0] = 7  # 7 classes: 0..6
    with pytest.raises((RuntimeError, IndexError)):
        pixel_cross_entropy(logits.requires_grad_(), target, min_bytes=0)


def test_logged_scalars_and_label_indices_are_made_once_per_device():
    """Per-step host-to-device copies make the host wait for the GPU; these two are reused."""
    from types import SimpleNamespace

    from lightning_modules.optim import device_scalar
    from lightning_modules.segmentation import resize_labels

    module = SimpleNamespace(device=torch.device("cpu"))
    first = device_scalar(module, 0.5)
    again = device_scalar(module, 0.25)
    assert again is first and float(again) == 0.25
    masks = torch.randint(0, 3, (2, 20, 30))
    a, b = resize_labels(masks, (10, 15)), resize_labels(masks, (10, 15))
    assert torch.equal(a, b) and a.shape == (2, 10, 15)
    from lightning_modules.segmentation import _nearest_index_tensor

    assert _nearest_index_tensor(20, 10, torch.device("cpu")) is _nearest_index_tensor(20, 10, torch.device("cpu"))
