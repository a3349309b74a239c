"""The checkerboard statistic (lightning_modules/checkerboard.py): its definition (equal to the
spectral form), its fixed points, and that it separates a deliberately bad transposed conv from
resize-convolution on the same input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.checkerboard import checkerboard_energy
from models.blocks import BilinearUpsample, ResizeConv


def _smooth(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random maps: 4×4 Gaussian noise upsampled bicubically to size×size."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, c, 4, 4, generator=g) * 3
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)


def _spectral(probs: torch.Tensor, period: int) -> torch.Tensor:
    """The definition in the docstring, literally: energy at the aliasing peaks / all energy."""
    p = probs.double() - probs.double().mean((-2, -1), keepdim=True)
    energy = torch.fft.fft2(p).abs().square()
    h, w = p.shape[-2:]
    ky = torch.arange(period) * (h // period)
    kx = torch.arange(period) * (w // period)
    peaks = energy[..., ky[:, None], kx[None, :]].sum((-2, -1)).sum(1) - energy[..., 0, 0].sum(1)
    return peaks / energy.sum((-2, -1)).sum(1)


@pytest.mark.parametrize("period,size", [(2, (32, 48)), (4, (24, 40)), (16, (64, 64))])
def test_equals_the_spectral_definition(period, size):
    g = torch.Generator().manual_seed(period)
    probs = torch.rand(3, 4, *size, generator=g)
    probs = probs / probs.sum(1, keepdim=True)
    torch.testing.assert_close(checkerboard_energy(probs, period),
                               _spectral(probs, period).float())
    logits = torch.randn(3, 4, *size, generator=g)
    torch.testing.assert_close(checkerboard_energy(logits, period, from_logits=True),
                               _spectral(logits.softmax(1), period).float())


def test_fixed_points_checkerboard_constant_smooth_and_noise():
    i, j = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    board = ((i + j) % 2).float()
    probs = torch.stack([board, 1 - board])[None]
    assert checkerboard_energy(probs, 2).item() == pytest.approx(1.0)
    # a checkerboard of 2×2 blocks has period 4
    blocks = ((i // 2 + j // 2) % 2).float()
    assert checkerboard_energy(torch.stack([blocks, 1 - blocks])[None], 4) == pytest.approx(1.0)
    assert checkerboard_energy(torch.full((2, 3, 16, 16), 0.7), 2).tolist() == [0.0, 0.0]
    ramp = j.float().expand(1, 1, 32, 32) / 31
    two = torch.cat([ramp, 1 - ramp], 1)
    assert checkerboard_energy(two, 2).item() == pytest.approx(3 / (32**2 - 1))
    assert checkerboard_energy(_smooth(4, 3, 64), 2, from_logits=True).max() < 1e-3
    noise = torch.rand(64, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    floor = checkerboard_energy(noise, 2).mean().item()
    assert floor == pytest.approx(3 / 255, rel=0.2)  # (s² − 1) / (H·W − 1) in expectation


def test_odd_sizes_drop_the_remainder_and_errors_are_named():
    x = torch.randn(1, 3, 33, 35)
    torch.testing.assert_close(checkerboard_energy(x, 4), checkerboard_energy(x[..., :32, :32], 4))
    with pytest.raises(ValueError, match="period"):
        checkerboard_energy(x, 1)
    with pytest.raises(ValueError, match="N×C×H×W"):
        checkerboard_energy(x[0], 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uneven_transposed_conv_scores_higher_than_resize_conv(seed):
    """Odena et al.'s case: kernel 3, stride 2 (3 not divisible by 2) paints even and odd output
    positions with 1 vs 2 taps per axis. Same weights, same smooth input, as a resize-conv (the
    3×3 conv after a 2× bilinear resize): the transposed conv's checkerboard statistic is far
    higher. A bilinear 4×4 stride-2 transposed conv (even overlap, FCN's init) has none."""
    torch.manual_seed(seed)
    x = _smooth(2, 4, 24, seed)
    deconv = nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1, bias=False)
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    with torch.no_grad():
        deconv.weight.uniform_(0.0, 0.5)
        conv.weight.copy_(deconv.weight.transpose(0, 1).flip(-2, -1))  # the same taps
        bad = checkerboard_energy(deconv(x), 2, from_logits=True)
        resized = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        good = checkerboard_energy(conv(resized), 2, from_logits=True)
        block = ResizeConv(4, 2)
        block[1].weight.copy_(conv.weight)
        good_block = checkerboard_energy(block(x), 2, from_logits=True)
        even = checkerboard_energy(BilinearUpsample(4, 2)(x), 2, from_logits=True)
    assert deconv(x).shape == conv(resized).shape == block(x).shape == (2, 4, 48, 48)
    # measured: bad 0.017-0.067 (the content's variance dominates), the others < 0.001
    assert (bad > 0.01).all() and (bad > 20 * good).all() and (bad > 20 * good_block).all()
    assert (good < 0.002).all() and (even < 0.002).all()


def test_evaluator_averages_over_images_and_resets():
    from lightning_modules.checkerboard import CheckerboardEvaluator

    ev = CheckerboardEvaluator(2)
    a, b = torch.rand(2, 3, 8, 8).softmax(1), torch.rand(1, 3, 8, 8).softmax(1)
    ev.update(None, a, None, None)
    ev.update(None, b, None, None)
    expected = checkerboard_energy(torch.cat([a, b]), 2).mean().item()
    assert ev.compute() == {"checkerboard": pytest.approx(expected), "checkerboard_period": 2}
    ev.reset()
    ev.update(None, b, None, None)
    assert ev.compute()["checkerboard"] == pytest.approx(checkerboard_energy(b, 2).item())
    with pytest.raises(ValueError, match="period"):
        CheckerboardEvaluator(1)


def test_label_baseline_tool_softer_edges_score_lower(capsys):
    """tools/checkerboard_baseline.py: the labels' own statistic (no upsampling at all) is well
    above 0, and blurring them lowers it: the level a smooth-but-sharp prediction reads."""
    from tools.checkerboard_baseline import label_baseline, main

    values = label_baseline("thin", 64, 4, 16, (3, 5))
    assert set(values) == {"labels", "blur 3", "blur 5"}
    assert all(v.shape == (4,) and ((v >= 0) & (v <= 1)).all() for v in values.values())
    assert values["labels"].mean() > values["blur 3"].mean() > values["blur 5"].mean() > 0
    main(["--image-size", "64", "--num", "4", "--blur", "3"])
    assert "labels:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--task", "nope", "--num", "2"])
