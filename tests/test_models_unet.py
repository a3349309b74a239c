"""U-Net (Ronneberger et al. MICCAI'15): shared tester, Fig. 1 sizes and parameter count,
overlap-tile inference (Fig. 2) and the Eq. 2 weight map."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.unet import (
    UNet,
    mirror_pad,
    overlap_tile_predict,
    valid_input_size,
    valid_output_size,
)
from models.unet_weights import unet_weight_map
from tests.model_checks import check_segmentation_model, count_parameters

UPSAMPLINGS = ["transposed", "resize_conv", "bilinear"]
VARIANTS = [(p, u) for p in ("valid", "same") for u in UPSAMPLINGS]


# --- architecture -------------------------------------------------------------------------------
@pytest.mark.parametrize("padding,upsampling", VARIANTS)
def test_shared_tester_odd_size(padding, upsampling):
    model = UNet(num_classes=5, base_channels=8, width=0.5, padding=padding, upsampling=upsampling)
    check_segmentation_model(model, 5)


@pytest.mark.parametrize("padding,upsampling", VARIANTS)
def test_shared_tester_grey_with_batch_norm(padding, upsampling):
    model = UNet(num_classes=2, in_channels=1, base_channels=4, padding=padding,
                 upsampling=upsampling, batch_norm=True, dropout=0.5)
    check_segmentation_model(model, 2, size=(1, 1, 64, 64))


def test_parameter_count_of_the_paper_network():
    assert count_parameters(UNet(num_classes=2, in_channels=1)) == 31_030_658


def test_paper_sizes_fig1():
    assert valid_output_size(572) == 388
    assert valid_input_size(388) == 572
    assert UNet(num_classes=2, base_channels=2).context_margin() == 92  # (572 - 388) / 2
    for illegal in (570, 573, 100):
        with pytest.raises(ValueError):
            valid_output_size(illegal)


@pytest.mark.parametrize("upsampling", UPSAMPLINGS)
def test_valid_input_size_is_smallest_legal(upsampling):
    for out in (1, 30, 97, 388):
        size = valid_input_size(out, upsampling=upsampling)
        assert valid_output_size(size, upsampling=upsampling) >= out
        smaller = [s for s in range(1, size) if _legal(s, upsampling)]
        assert all(valid_output_size(s, upsampling=upsampling) < out for s in smaller)


def _legal(size: int, upsampling: str) -> bool:
    try:
        valid_output_size(size, upsampling=upsampling)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("upsampling", UPSAMPLINGS)
def test_forward_valid_size_and_illegal_input(upsampling):
    model = UNet(num_classes=3, in_channels=1, base_channels=2, upsampling=upsampling).eval()
    with torch.no_grad():
        out = model.forward_valid(torch.randn(1, 1, 252, 268))
    assert out.shape[-2:] == (valid_output_size(252, upsampling=upsampling),
                              valid_output_size(268, upsampling=upsampling))
    with pytest.raises(ValueError):
        model.forward_valid(torch.randn(1, 1, 250, 252))
    with pytest.raises(RuntimeError):
        UNet(num_classes=3, padding="same").forward_valid(torch.randn(1, 3, 252, 252))


def test_resize_conv_up_is_resize_then_conv():
    """The 1×1 conv runs before the resize; with interpolation weights summing to 1 that is the
    same map as Odena et al.'s resize-then-convolve (bias included)."""
    model = UNet(num_classes=2, base_channels=4, padding="same", upsampling="resize_conv")
    conv, resize = model.up[0]
    x = torch.randn(1, conv.in_channels, 6, 9)
    with torch.no_grad():
        upsampled = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        torch.testing.assert_close(model.up[0](x), conv(upsampled))
        valid = UNet(num_classes=2, base_channels=4, upsampling="resize_conv").up[0]
        assert valid(x).shape[-2:] == (10, 16)  # the two extrapolated border pixels are dropped
        torch.testing.assert_close(valid(x), valid[0](upsampled)[..., 1:-1, 1:-1])


def test_fixed_bilinear_up_has_no_weights_and_the_decoder_takes_the_extra_channels():
    model = UNet(num_classes=2, base_channels=4, upsampling="bilinear")
    assert all(sum(p.numel() for p in up.parameters()) == 0 for up in model.up)
    # level k: concatenation of the skip (4·2^k) and the un-halved up-sampled map (4·2^(k+1))
    assert [lvl[0].in_channels for lvl in model.decoder] == [96, 48, 24, 12]
    x = torch.randn(1, 32, 6, 9)
    with torch.no_grad():
        ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        torch.testing.assert_close(model.up[1](x), ref[..., 1:-1, 1:-1])
    resize_conv = count_parameters(UNet(num_classes=2, base_channels=4, upsampling="resize_conv"))
    transposed = count_parameters(UNet(num_classes=2, base_channels=4))
    assert count_parameters(model) > resize_conv and transposed > resize_conv


def test_bad_knobs():
    with pytest.raises(ValueError):
        UNet(num_classes=2, padding="reflect")
    with pytest.raises(ValueError):
        UNet(num_classes=2, upsampling="nearest")


@pytest.mark.parametrize("upsampling", UPSAMPLINGS)
def test_valid_forward_agrees_with_forward_valid_in_the_interior(upsampling):
    """Where the receptive field lies inside x and the pooling grids coincide, ``forward`` (mirror
    padded by the context margin, anchored top-left) and ``forward_valid`` on a crop agree."""
    torch.manual_seed(0)
    model = UNet(num_classes=2, in_channels=1, base_channels=2, upsampling=upsampling)
    model.double().eval()  # float64: equal up to rounding, not up to conv-algorithm noise
    margin, m = model.context_margin(), 2**model.depth
    x = torch.randn(1, 1, 270, 270, dtype=torch.float64)
    size = 252
    out_size = model.valid_output_size(size)
    with torch.no_grad():
        full = model(x)["out"]
        shift = -margin % m  # crop start on the same pooling grid as forward's padded input
        crop = model.forward_valid(x[..., shift : shift + size, shift : shift + size])
        region = full[..., shift + margin : shift + margin + out_size,
                      shift + margin : shift + margin + out_size]
        torch.testing.assert_close(crop, region)
        # on another grid the max pools see other windows: the agreement above is not trivial
        s = shift + 1
        other = model.forward_valid(x[..., s : s + size, s : s + size])
        region = full[..., s + margin : s + margin + out_size, s + margin : s + margin + out_size]
        assert not torch.allclose(other, region)


# --- mirror padding and overlap-tile --------------------------------------------------------------
def test_mirror_pad_matches_reflect_and_extends_periodically():
    x = torch.randn(2, 3, 7, 9)
    torch.testing.assert_close(mirror_pad(x, (3, 8, 6, 2)), F.pad(x, (3, 8, 6, 2), mode="reflect"))
    ramp = torch.arange(4.0).view(1, 1, 1, 4)
    padded = mirror_pad(ramp, (7, 5, 2, 0))
    expected = torch.tensor([1.0, 0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2])
    assert padded.shape == (1, 1, 3, 16)
    torch.testing.assert_close(padded[0, 0], expected.expand(3, 16))
    assert (mirror_pad(torch.ones(1, 1, 1, 1) * 5, (2, 2, 2, 2)) == 5).all()


def test_overlap_tile_covers_every_pixel_exactly_once():
    model = UNet(num_classes=3, in_channels=1, base_channels=2)
    in_tile = model.valid_input_size(48)
    calls = []

    def ones(x):  # counting model: every tile contributes 1 wherever it writes
        calls.append(tuple(x.shape[-2:]))
        out_size = model.valid_output_size(x.shape[-1])
        return torch.ones(x.shape[0], 3, out_size, out_size)

    model.forward_valid = ones
    coverage = overlap_tile_predict(model, torch.zeros(1, 130, 101), tile_size=40)  # 40 -> 48
    assert coverage.shape == (3, 130, 101)
    assert (coverage == 1).all()
    assert calls == [(in_tile, in_tile)] * (math.ceil(130 / 48) * math.ceil(101 / 48))


def test_overlap_tile_of_same_padding_covers_every_pixel_exactly_once():
    model = UNet(num_classes=3, in_channels=1, base_channels=2, depth=3, padding="same")
    in_tile, margin = model.tile_geometry(32)
    assert margin % 8 == 0 and margin >= model.receptive_radius() and in_tile == 32 + 2 * margin
    calls = []

    def ones(x):  # a same-padded model: output at the input's size
        calls.append(tuple(x.shape[-2:]))
        return torch.ones(x.shape[0], 3, *x.shape[-2:])

    model._unet = ones
    coverage = overlap_tile_predict(model, torch.zeros(2, 1, 70, 33), tile_size=30)  # -> 32
    assert coverage.shape == (2, 3, 70, 33) and (coverage == 1).all()
    assert calls == [(in_tile, in_tile)] * (3 * 2)


@pytest.mark.parametrize("upsampling", UPSAMPLINGS)
def test_overlap_tile_of_same_padding_equals_whole_image_inference_in_the_interior(upsampling):
    """Tiles with the receptive-field margin reproduce whole-image inference of a same-padded
    net exactly where its receptive field lies inside the image; at the image border they see
    mirrored context instead of zero padding, so there the two differ (as they should)."""
    torch.manual_seed(0)
    model = UNet(num_classes=2, in_channels=1, base_channels=2, depth=2, padding="same",
                 upsampling=upsampling)
    model.double().eval()
    with torch.no_grad():  # non-zero biases, so zero padding is visibly not mirrored content
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.normal_()
    r = model.receptive_radius()
    h, w = 2 * r + 30, 2 * r + 21
    image = torch.randn(1, 1, h, w, dtype=torch.float64)
    tiled = overlap_tile_predict(model, image, tile_size=24)  # 4×3 tiles
    with torch.no_grad():
        whole = model(image)["out"]
    assert tiled.shape == whole.shape == (1, 2, h, w)
    inner = (..., slice(r, h - r), slice(r, w - r))
    torch.testing.assert_close(tiled[inner], whole[inner])
    assert not torch.allclose(tiled[..., :2, :], whole[..., :2, :])


@pytest.mark.parametrize("upsampling", UPSAMPLINGS)
def test_receptive_radius_of_same_padding_is_the_measured_one(upsampling):
    """Gradient of one output row w.r.t. the input, at every position within a pooling cell: the
    farthest input row reached is exactly ``receptive_radius()``."""
    torch.manual_seed(0)
    model = UNet(num_classes=1, in_channels=1, base_channels=2, depth=2, padding="same",
                 upsampling=upsampling).double().eval()
    r, m = model.receptive_radius(), 2**model.depth
    size = 4 * r + 4 * m
    reach = 0
    for phase in range(m):
        x = torch.randn(1, 1, size, 8, dtype=torch.float64, requires_grad=True)
        row = (size // 2 // m) * m + phase
        grad = torch.autograd.grad(model._unet(x)[0, 0, row].sum(), x)[0][0, 0].abs().sum(1)
        rows = grad.nonzero().flatten()
        reach = max(reach, row - int(rows.min()), int(rows.max()) - row)
    assert reach == r


@pytest.mark.parametrize("upsampling", UPSAMPLINGS)
def test_overlap_tile_equals_whole_image_valid_inference(upsampling):
    torch.manual_seed(0)
    model = UNet(num_classes=2, in_channels=1, base_channels=2, upsampling=upsampling)
    model.double().eval()
    h, w = 90, 61  # 2×2 tiles of 48
    image = torch.randn(2, 1, h, w, dtype=torch.float64)
    tiled = overlap_tile_predict(model, image, tile_size=48)
    margin = model.context_margin()
    size_h, size_w = model.valid_input_size(h), model.valid_input_size(w)
    with torch.no_grad():
        padded = mirror_pad(image, (margin, size_w - w - margin, margin, size_h - h - margin))
        whole = model.forward_valid(padded)[..., :h, :w]
        torch.testing.assert_close(tiled, whole)
        torch.testing.assert_close(tiled, model(image)["out"])


# --- weight map (Eq. 2) ---------------------------------------------------------------------------
def _stripes():
    """Two full-height cells: columns 0-3 and 12-15 of an 8×20 map (distances are horizontal)."""
    inst = torch.zeros(8, 20, dtype=torch.int64)
    inst[:, 0:4], inst[:, 12:16] = 1, 2
    return inst


def test_weight_map_by_hand_one_dimensional():
    inst = _stripes()
    w = unet_weight_map(inst > 0, instances=inst)
    assert w.dtype == torch.float32 and w.shape == (8, 20)
    wc_bg, wc_fg = 160 / (2 * 96), 160 / (2 * 64)  # N / (K · n_c)
    # column 8: nearest pixels of the cells are in columns 12 (d1 = 4) and 3 (d2 = 5)
    expected = wc_bg + 10 * math.exp(-((4 + 5) ** 2) / (2 * 5**2))
    assert w[0, 8].item() == pytest.approx(expected, rel=1e-5)
    # column 17: d1 = 17 - 15 = 2, d2 = 17 - 3 = 14
    assert w[5, 17].item() == pytest.approx(wc_bg + 10 * math.exp(-((2 + 14) ** 2) / 50), rel=1e-5)
    assert torch.allclose(w[inst > 0], torch.tensor(wc_fg))  # no border term on cells


def test_weight_map_peaks_in_the_gap_between_touching_cells():
    inst = torch.zeros(64, 64, dtype=torch.int64)
    inst[10:30, 10:30], inst[10:30, 31:51] = 1, 2  # one-pixel gap in column 30
    w = unet_weight_map(inst > 0, instances=inst)
    wc_bg = 64 * 64 / (2 * (64 * 64 - 800))
    gap = w[10:30, 30]
    assert torch.allclose(gap, torch.tensor(wc_bg + 10 * math.exp(-4 / 50)))  # d1 = d2 = 1
    assert w.max() == gap.max() and (w[inst == 0] < gap.min()).sum() == (inst == 0).sum() - 20
    assert w[63, 0].item() == pytest.approx(wc_bg, abs=1e-6)  # far from both cells: only w_c


def test_class_map_cells_are_connected_components():
    cls = torch.zeros(40, 40, dtype=torch.int64)
    cls[5:15, 5:15], cls[5:15, 18:30], cls[25:35, 5:35] = 1, 1, 2
    inst = torch.zeros_like(cls)
    inst[5:15, 5:15], inst[5:15, 18:30], inst[25:35, 5:35] = 1, 2, 3
    torch.testing.assert_close(unet_weight_map(cls), unet_weight_map(cls, instances=inst))
    single = torch.zeros_like(cls)
    single[5:15, 5:15] = 1  # one cell: no second-nearest cell, so no border term
    torch.testing.assert_close(unet_weight_map(single), unet_weight_map(single, w0=0.0))


def test_class_weights_balance_and_ignore():
    gen = torch.Generator().manual_seed(0)
    cls = torch.randint(0, 3, (32, 48), generator=gen)
    cls[cls == 2] = torch.where(torch.rand(int((cls == 2).sum()), generator=gen) < 0.8, 2, 255)
    w = unet_weight_map(cls, w0=0.0)
    totals = torch.stack([w[cls == c].sum() for c in range(3)])
    torch.testing.assert_close(totals, totals.mean().expand(3))
    assert (w[cls == 255] == 0).all() and w[cls != 255].mean().item() == pytest.approx(1.0)
    fixed = unet_weight_map(cls, w0=0.0, class_weights=[0.5, 2.0, 3.0])
    torch.testing.assert_close(fixed[cls != 255], torch.tensor([0.5, 2.0, 3.0])[cls[cls != 255]])
    with pytest.raises(ValueError):
        unet_weight_map(cls, class_weights=[1.0, 1.0])


def test_weight_map_matches_brute_force_over_all_cells():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    inst = np.zeros((96, 96), dtype=np.int64)
    for k in range(1, 13):
        y, x = rng.integers(0, 84, size=2)
        inst[y : y + rng.integers(4, 12), x : x + rng.integers(4, 12)] = k
    ids = [i for i in range(1, 13) if (inst == i).any()]
    dist = np.sort(np.stack([ndimage.distance_transform_edt(inst != i) for i in ids]), axis=0)
    border = np.where(inst == 0, 10 * np.exp(-((dist[0] + dist[1]) ** 2) / 50), 0)
    w = unet_weight_map(torch.from_numpy(inst), w0=10.0, sigma=5.0, class_weights=[1.0] * 13,
                        instances=torch.from_numpy(inst))
    torch.testing.assert_close(w, torch.from_numpy(1.0 + border).float(), atol=1e-5, rtol=1e-5)
