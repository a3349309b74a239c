"""DeepLab v3 / v3+, PSPNet and their backbones (dilated ResNet, aligned Xception-65).

Forward tests use ``width=1/16`` on the shared tester's odd 97×131 input; parameter counts are
taken at the paper's width on the ``meta`` device (no memory, no forward).
"""

from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.xception_aligned import XceptionAligned
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP as TorchvisionASPP

from models.backbones.resnet import dilated_resnet
from models.backbones.xception import aligned_xception65, xception65_block_cfg
from models.blocks import SeparableConv2d
from models.deeplab_v3 import ASPP, DeepLabV3, DeepLabV3Plus
from models.pspnet import PSPNet
from tests.model_checks import ODD_SIZE, check_segmentation_model, count_parameters

W = 1 / 16
NC = 5


# ---------------------------------------------------------------- shared tester, every variant
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),  # ResNet-101, OS 16, multi-grid (1, 2, 4), ASPP (6, 12, 18) + image pooling
        dict(output_stride=8, backbone="resnet50"),
        dict(image_pooling=False, backbone="resnet50"),
        dict(atrous_rates=(6, 12, 18, 24), backbone="resnet50", output_stride=8),
        dict(multi_grid=(1, 1, 1), backbone="resnet50"),
        dict(multi_grid=(1, 2, 1), backbone="resnet50", output_stride=8),
        dict(multi_grid=(1, 2, 4), backbone="resnet50", image_pooling=False),
        dict(backbone="xception65"),
    ],
    ids=str,
)
def test_deeplab_v3_variants(kwargs):
    check_segmentation_model(DeepLabV3(NC, width=W, **kwargs), NC, expect_aux=False)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(output_stride=8),
        dict(low_level_channels=16, decoder_convs=1),
        dict(low_level_channels=64, separable=False),
        dict(backbone="resnet101"),
        dict(backbone="resnet50", output_stride=8, separable=True, low_level_channels=16),
        dict(backbone="resnet50", decoder_convs=1, multi_grid=(1, 2, 1), image_pooling=False),
        dict(decoder_convs=0, atrous_rates=(6, 12, 18, 24)),
    ],
    ids=str,
)
def test_deeplab_v3plus_variants(kwargs):
    check_segmentation_model(DeepLabV3Plus(NC, width=W, **kwargs), NC, expect_aux=False)


# Every Table 1 combination on ResNet-50, with and without the auxiliary head; ResNet-101 twice.
PSP_VARIANTS = [
    (bins, pooling, reduction, "resnet50", aux)
    for bins in [(), (1,), (1, 2, 3, 6)]
    for pooling in ["avg", "max"]
    for reduction in ([True] if bins == () else [True, False])
    for aux in [True, False]
] + [((1, 2, 3, 6), "avg", True, "resnet101", True), ((), "max", True, "resnet101", False)]


@pytest.mark.parametrize("bins,pooling,reduction,backbone,aux", PSP_VARIANTS, ids=str)
def test_pspnet_variants(bins, pooling, reduction, backbone, aux):
    model = PSPNet(NC, backbone, bins=bins, pooling=pooling, reduction=reduction, aux=aux, width=W)
    check_segmentation_model(model, NC, expect_aux=aux)
    in_ch = model.backbone.channels["layer4"]
    level = in_ch // len(bins) if (reduction and bins) else in_ch
    assert model.head[0][0].in_channels == in_ch + len(bins) * level
    pool_types = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    pools = [m for m in model.ppm.modules() if isinstance(m, pool_types)]
    expected = nn.AdaptiveAvgPool2d if pooling == "avg" else nn.AdaptiveMaxPool2d
    assert [type(p) for p in pools] == [expected] * len(bins)
    assert [p.output_size for p in pools] == list(bins)
    assert any(isinstance(m, nn.Conv2d) for m in model.ppm.modules()) == (reduction and bins != ())


def test_pspnet_aux_in_eval_and_bad_pooling():
    model = PSPNet(NC, width=W).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 33, 41))
    assert set(out) == {"out", "aux"} and out["aux"].shape == (1, NC, 33, 41)
    with pytest.raises(ValueError, match="pooling"):
        PSPNet(NC, pooling="median", width=W)


# ---------------------------------------------------------------- output strides and dilations
def _strides(feats, size=ODD_SIZE[2:]):
    def stride(f):
        hw = tuple(f.shape[-2:])
        matches = [s for s in (2, 4, 8, 16, 32) if hw == tuple(math.ceil(d / s) for d in size)]
        return matches[0] if matches else None

    return {name: stride(f) for name, f in feats.items()}


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("depth,deep_stem", [(50, True), (101, False)])
def test_resnet_output_stride(output_stride, depth, deep_stem):
    backbone = dilated_resnet(depth, output_stride, deep_stem=deep_stem, width=W).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, *ODD_SIZE[1:]))
    assert _strides(feats) == backbone.stage_strides == {
        "layer1": 4, "layer2": 8, "layer3": min(16, output_stride), "layer4": output_stride}
    assert list(feats) == list(backbone.stage_strides)  # shallow to deep
    assert {k: f.shape[1] for k, f in feats.items()} == backbone.channels == {
        "layer1": 16, "layer2": 32, "layer3": 64, "layer4": 128}
    assert backbone.output_stride == output_stride


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_xception_output_stride(output_stride):
    backbone = aligned_xception65(output_stride, width=W).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, *ODD_SIZE[1:]))
    entry = min(16, output_stride)
    assert _strides(feats) == backbone.stage_strides == {
        "low_level": 4, "entry": entry, "middle": entry, "exit": output_stride}
    assert list(feats) == list(backbone.stage_strides)  # shallow to deep
    assert {k: f.shape[1] for k, f in feats.items()} == backbone.channels == {
        "low_level": 16, "entry": 46, "middle": 46, "exit": 128}  # 256, 728, 2048 at width 1


def test_xception_matches_timm():
    """Same weights → same final features as timm's own XceptionAligned forward (xception65's
    configuration at width 1/8 with our stem); the low-level tap is the pre-ReLU version of
    timm's stride-4 intermediate. (Width 1 shapes = timm's xception65: see the pretrained test.)"""
    ours = aligned_xception65(16, width=1 / 8)
    _randomise_bn(ours)
    ref = XceptionAligned(xception65_block_cfg(1 / 8), num_classes=0, output_stride=16,
                          norm_layer=partial(nn.BatchNorm2d, eps=1e-3))
    ref.stem = copy.deepcopy(ours.stem)
    ref.load_state_dict(ours.state_dict())
    ours.eval(), ref.eval()
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        feats = ours(x)
        low, final = feats["low_level"], feats["exit"]
        torch.testing.assert_close(final, ref.forward_features(x))
        if hasattr(ref, "forward_intermediates"):
            (ref_low,) = ref.forward_intermediates(x, indices=[1], intermediates_only=True)
            torch.testing.assert_close(low.relu(), ref_low)
            assert (low < 0).any()  # really before the ReLU


@pytest.mark.parametrize("output_stride,base", [(8, 4), (16, 2), (32, 1)])
@pytest.mark.parametrize("multi_grid", [(1, 1, 1), (1, 2, 1), (1, 2, 4)])
def test_multi_grid_sets_dilations(output_stride, base, multi_grid):
    model = DeepLabV3(NC, "resnet50", output_stride, multi_grid=multi_grid, width=W)
    body = model.backbone
    for block, grid in zip(body.layer4, multi_grid, strict=True):
        rate = base * grid
        assert block.conv2.dilation == (rate, rate) and block.conv2.padding == (rate, rate)
        assert block.conv2.stride == (1, 1) or output_stride == 32
    layer3_rate = 2 if output_stride == 8 else 1
    assert all(b.conv2.dilation == (layer3_rate,) * 2 for b in body.layer3)
    with pytest.raises(ValueError, match="multi_grid"):
        dilated_resnet(50, output_stride, multi_grid=(1, 2), width=W)


def test_atrous_rates_default_and_widths():
    for os_, rates in [(16, (6, 12, 18)), (8, (12, 24, 36))]:
        model = DeepLabV3(NC, "resnet50", os_, width=W)
        dilations = [b[0].dilation[0] for b in model.encoder.aspp.convs[1:-1]]
        assert tuple(dilations) == rates
    aspp = ASPP(32, (6, 12, 18, 24), out_channels=8, image_pooling=False)
    assert len(aspp.convs) == 5 and aspp.project[0].in_channels == 5 * 8
    sep = ASPP(32, (6, 12), out_channels=8, separable=True)
    assert [type(b) for b in sep.convs[1:3]] == [SeparableConv2d] * 2
    assert sep.convs[2][0].dilation == (12, 12) and sep.convs[2][0].groups == 32


def test_deeplab_v3plus_structure():
    model = DeepLabV3Plus(NC, low_level_channels=64, decoder_convs=1, width=1 / 8)
    assert model.decoder.reduce[0].out_channels == 8 and model.decoder.reduce[0].in_channels == 32
    assert len(model.decoder.refine) == 1 and isinstance(model.decoder.refine[0], SeparableConv2d)
    assert model.decoder.refine[0][0].in_channels == 32 + 8  # ASPP 256/8 + low-level 64/8
    plain = DeepLabV3Plus(NC, "resnet50", width=1 / 8)  # ResNet default: no separable convs
    assert not any(isinstance(m, SeparableConv2d) for m in plain.modules())
    assert plain.decoder.reduce[0].in_channels == plain.backbone.channels["layer1"]  # stride 4
    assert (model.low_level_stage, plain.low_level_stage) == ("low_level", "layer1")
    assert (model.encoder.feature_stage, plain.encoder.feature_stage) == ("exit", "layer4")
    with pytest.raises(ValueError, match="multi_grid"):
        DeepLabV3Plus(NC, "xception65", multi_grid=(1, 2, 4), width=W)
    with pytest.raises(ValueError, match="backbone"):
        DeepLabV3Plus(NC, "vgg16", width=W)


# ---------------------------------------------------------------- cross-check against torchvision
def _randomise_bn(module: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("rates", [(6, 12, 18), (12, 24, 36), (6, 12, 18, 24)])
def test_aspp_matches_torchvision(rates):
    torch.manual_seed(0)
    peer = TorchvisionASPP(64, list(rates), out_channels=32)
    _randomise_bn(peer)
    ours = ASPP(64, rates, out_channels=32)
    ours.load_state_dict(peer.state_dict())  # strict: same module layout
    peer.eval(), ours.eval()
    x = torch.randn(2, 64, 29, 37)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), peer(x))
        other = ASPP(64, tuple(2 * r for r in rates), out_channels=32)
        other.load_state_dict(peer.state_dict())
        assert not torch.allclose(other.eval()(x), peer(x), atol=1e-3)  # rates matter


def test_deeplab_v3_head_matches_torchvision():
    """Our model's output = torchvision ASPP (same rates, our weights) + our 1×1 classifier,
    upsampled: the paper's head (no extra 3×3 conv, unlike torchvision's DeepLabHead)."""
    model = DeepLabV3(NC, "resnet50", output_stride=8, width=W)
    _randomise_bn(model)
    aspp = model.encoder.aspp
    peer = TorchvisionASPP(model.backbone.channels["layer4"], [12, 24, 36], aspp.out_channels)
    peer.load_state_dict(aspp.state_dict())
    model.eval(), peer.eval()
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        expected = F.interpolate(model.classifier(peer(model.features(x))), size=x.shape[-2:],
                                 mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(x)["out"], expected)


# ---------------------------------------------------------------- parameter counts of the papers' models
@pytest.mark.parametrize(
    "build,with_aux,without_aux",
    [
        (lambda: PSPNet(150, "resnet50"), 49.18e6, 46.78e6),
        (lambda: PSPNet(150, "resnet101"), 68.17e6, 65.77e6),
        (lambda: DeepLabV3Plus(21, "xception65"), 41.06e6, None),
        (lambda: DeepLabV3Plus(21, "xception65", separable=False), 54.71e6, None),
    ],
)
def test_parameter_counts(build, with_aux, without_aux):
    with torch.device("meta"):
        model = build()
    total = count_parameters(model)
    assert abs(total - with_aux) <= 0.005e6, total  # the table's rounding to 0.01M
    if without_aux is not None:
        assert abs(total - count_parameters(model.aux_head) - without_aux) <= 0.005e6


# ---------------------------------------------------------------- pretrained weights from a file
def _save(tmp_path, timm_name):
    state = timm.create_model(timm_name).state_dict()
    path = tmp_path / f"{timm_name}.pth"
    torch.save(state, path)
    return path, state


def _assert_loaded(backbone: nn.Module, state: dict, skip: str) -> None:
    own = backbone.state_dict()
    keys = [k for k in state if not k.startswith(skip)]
    assert sorted(keys) == sorted(own)
    for k in keys:
        torch.testing.assert_close(own[k], state[k], msg=k)


def test_pretrained_from_file(tmp_path):
    path, state = _save(tmp_path, "resnet50")
    _assert_loaded(DeepLabV3(NC, "resnet50", pretrained=str(path)).backbone, state, "fc.")
    deep_path, deep_state = _save(tmp_path, "resnet50s")
    _assert_loaded(PSPNet(NC, pretrained=deep_path).backbone, deep_state, "fc.")
    # PSPNet's deep stem cannot take plain ResNet-50 weights, nor the reverse
    with pytest.raises(ValueError, match="resnet50.pth"):
        PSPNet(NC, pretrained=path)
    with pytest.raises(ValueError, match="resnet50s.pth"):
        DeepLabV3(NC, "resnet50", pretrained=deep_path)
    with pytest.raises(ValueError, match="width"):
        PSPNet(NC, pretrained=deep_path, width=0.5)


def test_pretrained_xception_from_file(tmp_path):
    path, state = _save(tmp_path, "xception65")
    _assert_loaded(DeepLabV3Plus(NC, pretrained=path).backbone, state, "head.")
    with pytest.raises(ValueError, match="xception65.pth"):
        DeepLabV3Plus(NC, "resnet50", pretrained=path)


# ---------------------------------------------------------------- the registry
def test_build_model_entry_points():
    from models import build_model

    assert isinstance(build_model("pspnet", NC, width=W, bins=(1, 2)), PSPNet)
    assert isinstance(build_model("deeplab_v3", NC, width=W, output_stride=8), DeepLabV3)
    model = build_model("deeplab_v3plus", NC, width=W, low_level_channels=16)
    assert isinstance(model, DeepLabV3Plus) and model.decoder.reduce[0].out_channels == 1


@pytest.mark.parametrize("model_cls", [DeepLabV3, DeepLabV3Plus])
@pytest.mark.parametrize("train_os, eval_os", [(16, 8), (8, 16), (16, 32)])
def test_set_output_stride_equals_a_network_built_at_that_stride(model_cls, train_os, eval_os):
    """v3 Table 6 / v3+ Table 3: same weights, evaluated at another output stride (ASPP rates
    scale with it: the paper's (6, 12, 18) at OS 16 are "doubled" at OS 8)."""
    torch.manual_seed(0)
    trained = model_cls(3, backbone="resnet50", output_stride=train_os, multi_grid=(1, 2, 4), width=0.125).eval()
    built = model_cls(3, backbone="resnet50", output_stride=eval_os, multi_grid=(1, 2, 4), width=0.125).eval()
    built.load_state_dict(trained.state_dict())
    x = torch.randn(*ODD_SIZE)
    before = trained(x)["out"]
    trained.set_output_stride(eval_os)
    assert trained.output_stride == eval_os and trained.backbone.output_stride == eval_os
    torch.testing.assert_close(trained(x)["out"], built(x)["out"])
    assert [m.dilation for m in trained.backbone.layer4 if hasattr(m, "dilation")] == \
           [m.dilation for m in built.backbone.layer4 if hasattr(m, "dilation")]
    trained.set_output_stride(train_os)  # and back, exactly
    torch.testing.assert_close(trained(x)["out"], before)


def test_set_output_stride_works_for_xception_and_needs_a_backbone_that_can():
    """v3+ Table 5: Xception-65 trained at output stride 16, evaluated at 8 = built at 8."""
    torch.manual_seed(0)
    model = DeepLabV3(3, backbone="xception65", width=0.0625).eval()
    ref = DeepLabV3(3, backbone="xception65", width=0.0625, output_stride=8).eval()
    ref.load_state_dict(model.state_dict())
    model.set_output_stride(8)
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["out"], ref(x)["out"])
    model.encoder.backbone = nn.Identity()  # a backbone that cannot re-stride itself
    with pytest.raises(NotImplementedError, match="ResNet and Xception"):
        model.set_output_stride(16)


# ---------------------------------------------------------------- width 1/4, plain and deep stems
@pytest.mark.parametrize("deep_stem", [False, True], ids=["plain-stem", "deep-stem"])
def test_resnet_quarter_width_first_block_projects_the_stem(deep_stem):
    """At width 1/4 layer1 is 16 × 4 = 64 wide, timm's fixed 7×7 stem width, so timm builds no
    projection shortcut; the scaled 16-channel plain stem needs one (it used to crash here)."""
    backbone = dilated_resnet(50, 8, deep_stem=deep_stem, width=0.25)
    first = backbone.layer1[0]
    stem_out = 32 if deep_stem else 16  # deep stem: 16, 16, 32 channels
    assert first.conv1.in_channels == first.downsample[0].in_channels == stem_out
    assert first.downsample[0].out_channels == backbone.channels["layer1"] == 64


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("deeplab_v2", dict(backbone="resnet50")),  # plain 7×7 stem
        ("deeplab_v3", dict(backbone="resnet50")),
        ("deeplab_v3plus", dict(backbone="resnet50")),
        ("pspnet", dict(backbone="resnet50")),  # deep 3×3 stem
    ],
    ids=str,
)
def test_resnet_models_at_quarter_width(name, kwargs):
    from models import build_model

    check_segmentation_model(build_model(name, NC, width=0.25, **kwargs), NC, (2, 3, 33, 41))
