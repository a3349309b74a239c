"""FCN-32s/16s/8s, DeepLab v1 LargeFOV and DeepLab v2 ASPP (VGG16 and dilated ResNet).

Forward/backward tests run at ``width=1/16`` (same topology, 1/16 of the channels); parameter
counts are taken at ``width=1`` on the meta device (no memory, no forward).
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from models import build_model
from models.backbones.vgg import VGG16
from models.blocks import BilinearUpsample, ResizeConv, bilinear_kernel
from models.deeplab import ASPP_L, ASPP_S, DeepLabLargeFOV, DeepLabV2
from models.fcn import CAFFE_FINAL_OFFSETS, CAFFE_SKIP_OFFSETS, FCN, fcn8s, fcn16s, fcn32s
from tests.model_checks import check_output_stride, check_segmentation_model, count_parameters

W = 1 / 16
FCNS = {"fcn32s": fcn32s, "fcn16s": fcn16s, "fcn8s": fcn8s}


@pytest.mark.parametrize("learnable", [True, False], ids=["learned-up", "fixed-up"])
@pytest.mark.parametrize("paper_padding", [True, False], ids=["pad100-crop", "same-pad"])
@pytest.mark.parametrize("name", list(FCNS))
def test_fcn_shared_checks(name, paper_padding, learnable):
    model = FCNS[name](num_classes=5, width=W, paper_padding=paper_padding,
                       learnable_upsampling=learnable)
    check_segmentation_model(model, num_classes=5)


@pytest.mark.parametrize("paper_padding", [True, False], ids=["pad100-crop", "same-pad"])
def test_fcn8s_resize_conv_shared_checks(paper_padding):
    model = fcn8s(num_classes=5, width=W, paper_padding=paper_padding, upsampling="resize_conv")
    check_segmentation_model(model, num_classes=5)


DEEPLABS = {
    "largefov": lambda: DeepLabLargeFOV(num_classes=4, width=W),
    "v2-vgg-aspp-s": lambda: DeepLabV2(4, backbone="vgg16", atrous_rates=ASPP_S, width=W),
    "v2-vgg-aspp-l": lambda: DeepLabV2(4, backbone="vgg16", atrous_rates=ASPP_L, width=W),
    "v2-vgg-1rate": lambda: DeepLabV2(4, backbone="vgg16", atrous_rates=(12,), width=W),
    "v2-vgg-5rates": lambda: DeepLabV2(4, backbone="vgg16", atrous_rates=(1, 3, 6, 12, 24),
                                       width=W),
    "v2-resnet101": lambda: DeepLabV2(4, backbone="resnet101", width=W),
    "v2-resnet50": lambda: DeepLabV2(4, backbone="resnet50", atrous_rates=ASPP_S, width=W),
}


@pytest.mark.parametrize("name", list(DEEPLABS))
def test_deeplab_shared_checks(name):
    model = DEEPLABS[name]()
    assert model.output_stride == 8
    check_segmentation_model(model, num_classes=4)
    check_output_stride(model, (1, 3, 64, 50))


@pytest.mark.parametrize("paper_padding", [True, False], ids=["pad100-crop", "same-pad"])
@pytest.mark.parametrize("name", list(FCNS))
def test_fcn_output_is_input_size(name, paper_padding):
    model = FCNS[name](num_classes=3, width=W, paper_padding=paper_padding).eval()
    for size in [(1, 3, 33, 65), (1, 3, 64, 64), (1, 3, 101, 37), (1, 3, 1, 2)]:
        with torch.no_grad():
            out = model(torch.randn(*size))["out"]
        assert out.shape == (1, 3, *size[2:]), (size, out.shape)
    check_output_stride(model, (1, 3, 64, 80))


# --- alignment ------------------------------------------------------------------------------

def _caffe_offsets() -> tuple[dict[str, int], dict[int, int]]:
    """Crop offsets re-derived with Caffe's ``coord_map`` algebra (input = a·output + b)."""
    def conv(a, b, k, s=1, p=0):  # compose "layer input = s·out + (k-1)/2 - p" onto (a, b)
        return a * s, a * ((k - 1) / 2 - p) + b

    def deconv(a, b, k, s):  # the inverse map
        return a / s, b - a * ((k - 1) / 2) / s

    a, b = conv(1, 0, 3, p=100)  # conv1_1; the other 3×3 convs pad 1 and are identities
    pools = {}
    for k in range(1, 6):
        a, b = conv(a, b, 2, s=2)
        pools[f"pool{k}"] = (a, b)
    a, b = conv(*pools["pool5"], 7)  # fc6; fc7 and score_fr are 1×1
    skip, final = {}, {}
    for name in ("", "pool4", "pool3"):
        if name:
            a, b = deconv(a, b, 4, 2)
            pa, pb = pools[name]
            assert pa == a
            skip[name] = int((b - pb) / pa)  # score cell u sits on skip cell u + offset
        stride = int(a)
        fa, fb = deconv(a, b, 2 * stride, stride)
        assert fa == 1
        final[stride] = int(-fb)
    return skip, final


def test_caffe_crop_offsets_match_coord_map_derivation():
    skip, final = _caffe_offsets()
    assert skip == CAFFE_SKIP_OFFSETS == {"pool4": 5, "pool3": 9}
    assert final == CAFFE_FINAL_OFFSETS == {32: 19, 16: 27, 8: 31}


class _FixedFeatures(nn.Module):
    def __init__(self, feats):
        super().__init__()
        self.feats = feats

    def forward(self, x):
        return self.feats


def _centre_of_mass(out: torch.Tensor) -> tuple[float, float]:
    m = out[0, 0].double()
    rows = torch.arange(m.shape[0], dtype=torch.float64)
    cols = torch.arange(m.shape[1], dtype=torch.float64)
    return float((m.sum(1) * rows).sum() / m.sum()), float((m.sum(0) * cols).sum() / m.sum())


@pytest.mark.parametrize("paper_padding", [True, False], ids=["pad100-crop", "same-pad"])
def test_fcn8s_maps_each_cell_onto_its_input_pixels(paper_padding):
    """An impulse in fc7 / pool4 / pool3 must land, after all upsampling and cropping, centred on
    that cell's input pixels: ``s·i + (s-1)/2`` for same padding; for pad 100, the Caffe
    coordinate map (fc7 ``32i + 12.5``, pool4 ``16i - 91.5``, pool3 ``8i - 95.5``). The
    bilinear responses are symmetric, so their centre of mass is that centre."""
    x = torch.zeros(1, 3, 161, 193)
    model = fcn8s(num_classes=1, width=W, paper_padding=paper_padding).eval()
    with torch.no_grad():
        shapes = {k: v.shape for k, v in model.backbone(x).items()}
        for conv in (model.score_fr, *model.score_skips.values()):
            conv.weight.zero_()
            conv.weight[0, 0] = 1.0
    for name, s in (("fc7", 32), ("pool4", 16), ("pool3", 8)):
        if paper_padding:
            b = {"fc7": 12.5, "pool4": -91.5, "pool3": -95.5}[name]
        else:
            b = (s - 1) / 2
        # cells whose centres fall mid-image, away from the borders that would clip the response
        i, j = round((80 - b) / s), round((110 - b) / s)
        feats = {k: torch.zeros(shape) for k, shape in shapes.items()}
        feats[name][0, 0, i, j] = 1.0
        model.backbone = _FixedFeatures(feats)
        with torch.no_grad():
            out = model(x)["out"]
        assert out[0, 0, [0, -1]].abs().sum() == 0 and out[0, 0, :, [0, -1]].abs().sum() == 0
        assert _centre_of_mass(out) == pytest.approx((s * i + b, s * j + b), abs=1e-6), name


# --- initialisation and knobs ----------------------------------------------------------------

@pytest.mark.parametrize("learnable", [True, False])
def test_fcn8s_init_and_learnable_upsampling(learnable):
    model = fcn8s(num_classes=3, width=W, learnable_upsampling=learnable)
    for conv in (model.score_fr, model.score_skips["pool4"], model.score_skips["pool3"]):
        assert conv.weight.abs().sum() == 0 and conv.bias.abs().sum() == 0
    for up in model.upscore_skips:
        assert torch.equal(up.weight, bilinear_kernel(3, 4))
        assert up.weight.requires_grad is learnable
    assert torch.equal(model.upscore.weight, bilinear_kernel(3, 16))
    assert model.upscore.weight.requires_grad is False  # paper: the final layer stays bilinear
    # zero-initialised skips: replacing their scores by zeros changes nothing at init, while
    # replacing them by ones does (the path is wired in)
    x = torch.randn(1, 3, 40, 56)
    model.eval()
    model.score_fr.weight.data.normal_()
    with torch.no_grad():
        before = model(x)["out"]
        hooks = [m.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
                 for m in model.score_skips.values()]
        zeroed = model(x)["out"]
        for h in hooks:
            h.remove()
        model.score_skips["pool3"].register_forward_hook(lambda m, i, o: torch.ones_like(o))
        ones = model(x)["out"]
    assert before.abs().sum() > 0 and torch.equal(before, zeroed)
    assert not torch.allclose(before, ones)


@pytest.mark.parametrize("paper_padding", [True, False], ids=["pad100-crop", "same-pad"])
def test_fcn8s_upsampling_modes_start_as_the_same_function(paper_padding):
    """All three modes are initialised to bilinear upsampling (resize-conv's 3×3 conv to the
    identity), so they differ only in what training does; and only the 2× layers differ."""
    torch.manual_seed(0)
    models = {u: fcn8s(num_classes=3, width=W, paper_padding=paper_padding, upsampling=u).eval()
              for u in ("transposed", "resize_conv", "bilinear")}
    state = models["transposed"].state_dict()
    for key in [k for k in state if k.startswith(("score", "backbone"))]:
        state[key] = torch.randn_like(state[key]) if "score" in key else state[key]
    x = torch.randn(1, 3, 75, 90)
    outs = {}
    for u, model in models.items():
        model.load_state_dict(state, strict=False)  # upscore_skips differ in structure
        with torch.no_grad():
            outs[u] = model(x)["out"]
    assert outs["transposed"].abs().sum() > 0
    torch.testing.assert_close(outs["resize_conv"], outs["transposed"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs["bilinear"], outs["transposed"])
    up = models["resize_conv"].upscore_skips
    assert all(isinstance(m, ResizeConv) and not m[0].weight.requires_grad for m in up)
    assert all(m[1].weight.requires_grad and m[1].kernel_size == (3, 3) for m in up)
    assert [m.weight.requires_grad for m in models["bilinear"].upscore_skips] == [False, False]
    for model in models.values():
        assert isinstance(model.upscore, BilinearUpsample)
        assert not model.upscore.weight.requires_grad


def test_fcn_upsampling_knob_and_the_older_boolean():
    assert fcn8s(3, width=W).upsampling == "transposed"
    assert fcn8s(3, width=W, learnable_upsampling=False).upsampling == "bilinear"
    assert fcn8s(3, width=W, learnable_upsampling=True).upsampling == "transposed"
    assert fcn8s(3, width=W, upsampling="resize_conv", learnable_upsampling=True).upsampling \
        == "resize_conv"
    assert fcn8s(3, width=W, upsampling="bilinear", learnable_upsampling=False).upsampling \
        == "bilinear"
    for up, learnable in (("bilinear", True), ("transposed", False), ("resize_conv", False)):
        with pytest.raises(ValueError, match="contradicts"):
            fcn8s(3, width=W, upsampling=up, learnable_upsampling=learnable)
    with pytest.raises(ValueError, match="upsampling"):
        fcn8s(3, width=W, upsampling="nearest")


def test_fcn_rejects_other_backbones_and_skip_orders():
    with pytest.raises(ValueError, match="vgg16"):
        FCN(num_classes=3, backbone="resnet50", width=W)
    with pytest.raises(ValueError, match="skips"):
        FCN(num_classes=3, skips=("pool3",), width=W)


@pytest.mark.parametrize("dilated", [False, True], ids=["fcn", "deeplab"])
def test_vgg16_declares_its_features(dilated):
    """``forward``'s keys, in order, are ``stage_strides``' and ``channels``', at those strides."""
    backbone = VGG16(width=W, dilated=dilated, fc6_padding=3).eval()
    with torch.no_grad():
        feats = backbone(torch.zeros(1, 3, 96, 128))
    assert list(feats) == list(backbone.stage_strides) == list(backbone.channels)
    expected = {"pool3": 8, "pool4": 8, "pool5": 8, "fc7": 8} if dilated else {
        "pool3": 8, "pool4": 16, "pool5": 32, "fc7": 32}
    assert backbone.stage_strides == expected
    for name, f in feats.items():
        assert f.shape[1:] == (backbone.channels[name], 96 // expected[name], 128 // expected[name])


def test_deeplab_vgg_geometry():
    model = DeepLabLargeFOV(num_classes=3, width=W)
    convs = [m for m in model.backbone.features if isinstance(m, nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1] * 10 + [2] * 3
    pools = [m for m in model.backbone.features if isinstance(m, nn.MaxPool2d)]
    geometry = [(p.kernel_size, p.stride, p.padding) for p in pools]
    assert geometry == [(3, 2, 1)] * 3 + [(3, 1, 1)] * 2
    fc6 = model.classifier.pre_logits.fc1
    assert fc6.kernel_size == (3, 3) and fc6.dilation == (12, 12) and fc6.out_channels == 64
    # input 321 -> 161 -> 81 -> 41, the reference's 41×41 score map
    assert model.features(torch.zeros(1, 3, 321, 321)).shape[-2:] == (41, 41)


def test_deeplab_v2_sums_branch_scores():
    torch.manual_seed(0)
    model = DeepLabV2(num_classes=3, backbone="vgg16", atrous_rates=(6, 12), width=W).eval()
    x = torch.randn(1, 3, 41, 35)
    with torch.no_grad():
        both = model(x)["out"]
        outs = []
        for keep in range(2):
            single = DeepLabV2(3, backbone="vgg16", atrous_rates=(6, 12), width=W).eval()
            single.load_state_dict(model.state_dict())
            single.branches[1 - keep].fc8.weight.zero_()
            outs.append(single(x)["out"])
    assert both.shape == (1, 3, 41, 35)
    torch.testing.assert_close(both, outs[0] + outs[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="backbone"):
        DeepLabV2(3, backbone="vgg19", width=W)


# --- parameter counts (width 1, 21 classes, meta device) --------------------------------------

def _count(builder, **kwargs) -> tuple[int, int]:
    with torch.device("meta"):
        model = builder(num_classes=21, **kwargs)
    return count_parameters(model), count_parameters(model, trainable_only=True)


CONV = 14_714_688  # VGG16 conv1_1..conv5_3 (torchvision vgg16.features)
FC67 = (512 * 49 * 4096 + 4096) + (4096 * 4096 + 4096)  # fc6 7×7 + fc7 = 119_545_856
LFOV = (512 * 9 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 21 + 21)  # 5_790_741


def test_parameter_counts():
    total, trainable = _count(fcn32s)
    # conv + fc6/fc7 + score_fr (4096·21+21); the fixed 64×64 deconv (21·21·64·64) is extra
    assert trainable == CONV + FC67 + 4096 * 21 + 21 == 134_346_581
    assert abs(trainable - 134e6) / 134e6 < 0.01  # FCN Table 1: 134M
    assert total == trainable + 21 * 21 * 64 * 64 == 136_152_917
    total, trainable = _count(fcn8s)  # + score_pool4/3, learned 2× deconvs, fixed 8× deconv
    assert trainable == 134_346_581 + (512 * 21 + 21) + (256 * 21 + 21) + 2 * 21 * 21 * 16
    assert total == trainable + 21 * 21 * 16 * 16 == 134_489_759
    assert _count(fcn8s, learnable_upsampling=False)[1] == 134_362_751
    assert _count(fcn8s, upsampling="bilinear") == (134_489_759, 134_362_751)
    total, trainable = _count(fcn8s, upsampling="resize_conv")  # learned 3×3 instead of 4×4
    assert trainable == 134_362_751 + 2 * 21 * 21 * 9
    assert total == trainable + 2 * 21 * 21 * 16 + 21 * 21 * 16 * 16
    assert _count(DeepLabLargeFOV) == (CONV + LFOV,) * 2 == (20_505_429,) * 2  # v1 Table 2
    aspp_l = _count(DeepLabV2, backbone="vgg16", atrous_rates=ASPP_L)[0]
    assert aspp_l == CONV + 4 * LFOV == 37_877_652  # v2 Table 3, four fc6-fc7-fc8 branches
    r101 = 42_500_160  # torchvision resnet101 (44_549_160) minus its 2048→1000 fc
    aspp_r101 = _count(DeepLabV2, backbone="resnet101")[0]
    assert aspp_r101 == r101 + 4 * (2048 * 9 * 21 + 21) == 44_048_532


# --- pretrained weights --------------------------------------------------------------------

@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory):
    torch.manual_seed(0)
    state = timm.create_model("vgg16", pretrained=False).state_dict()
    path = tmp_path_factory.mktemp("weights") / "vgg16.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.slow
def test_pretrained_from_local_file(vgg16_file):
    path, state = vgg16_file
    fcn = fcn8s(num_classes=21, pretrained=path)
    own = fcn.backbone.state_dict()
    for key in ("features.0.weight", "features.28.bias", "pre_logits.fc1.weight",
                "pre_logits.fc2.weight"):
        assert torch.equal(own[key], state[key]), key
    assert set(own) == {k for k in state if not k.startswith("head.")}  # timm names, one to one
    del fcn, own
    lfov = DeepLabLargeFOV(num_classes=21, pretrained=str(path))
    assert torch.equal(lfov.backbone.features[26].weight, state["features.26.weight"])
    fc = lfov.classifier.pre_logits
    # DeepLab v1 Sec. 4.1: every 4th of 4096 filters, the 7×7 kernel at taps 0, 3, 6
    assert torch.equal(fc.fc1.weight, state["pre_logits.fc1.weight"][::4][:, :, ::3, ::3])
    assert torch.equal(fc.fc1.bias, state["pre_logits.fc1.bias"][::4])
    assert torch.equal(fc.fc2.weight, state["pre_logits.fc2.weight"][::4, ::4])
    assert torch.equal(fc.fc2.bias, state["pre_logits.fc2.bias"][::4])


def test_pretrained_errors(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        fcn32s(num_classes=3, pretrained=missing)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        DeepLabLargeFOV(num_classes=3, pretrained=str(missing))
    for build in (lambda: fcn16s(3, width=0.5, pretrained=True),
                  lambda: DeepLabV2(3, backbone="vgg16", width=0.5, pretrained=True),
                  lambda: VGG16(width=0.5, pretrained=True)):
        with pytest.raises(ValueError, match="width"):
            build()


def test_build_model_entry_points():
    for name in ("fcn32s", "fcn16s", "fcn8s"):
        model = build_model(name, 6, width=W, paper_padding=True)
        assert isinstance(model, FCN) and model.score_fr.out_channels == 6
        assert len(model.skips) == {"fcn32s": 0, "fcn16s": 1, "fcn8s": 2}[name]
    assert isinstance(build_model("deeplab_largefov", 6, width=W), DeepLabLargeFOV)
    v2 = build_model("deeplab_v2", 6, backbone="vgg16", atrous_rates=ASPP_S, width=W)
    assert v2.atrous_rates == ASPP_S and len(v2.branches) == 4


@pytest.mark.parametrize("name,kwargs", [
    ("fcn8s", {}), ("deeplab_largefov", {}), ("deeplab_v2", {"backbone": "vgg16", "atrous_rates": (2, 4)}),
])
def test_vgg16_bn_variant_keeps_topology_and_adds_13_batchnorms(name, kwargs):
    plain = build_model(name, 3, width=1 / 16, **kwargs)
    bn = build_model(name, 3, width=1 / 16, batch_norm=True, **kwargs)
    bns = [m for m in bn.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 13 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    convs = lambda m: [c.weight.shape for c in m.modules() if isinstance(c, torch.nn.Conv2d)]  # noqa: E731
    assert convs(plain) == convs(bn)
    check_segmentation_model(bn, 3)


def test_vgg16_bn_uses_timm_vgg16_bn_weight_names(tmp_path):
    path = tmp_path / "vgg16_bn.pth"
    state = timm.create_model("vgg16_bn", pretrained=False).state_dict()
    torch.save(state, path)
    model = VGG16(batch_norm=True, include_fc=False, pretrained=str(path))
    torch.testing.assert_close(model.features[1].running_var, state["features.1.running_var"])
    torch.testing.assert_close(model.features[0].weight, state["features.0.weight"])
    with pytest.raises(ValueError, match="batch_norm=True selects VGG16-BN"):
        build_model("deeplab_v2", 3, backbone="resnet50", batch_norm=True)
