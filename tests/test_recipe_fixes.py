"""Issue 13's recipe fixes: which layers get the head lr, BN momentum, the scale grid, the CRF
search, and the README's Recipes table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from datamodules.transforms import RandomScale, scale_grid
from experiments.crf_search import Sample, load_crf_params, search
from lightning_modules.crf import CRFParams
from lightning_modules.optim import param_groups
from lightning_modules.segmentation import SegmentationModule
from models import build_model, new_layers


def _head_ids(model, head_lr_mult=10.0):
    groups = param_groups(model, 1.0, 0.0, head_lr_mult, 1.0)
    return {id(p) for g in groups if g["name"].startswith("head") for p in g["params"]}


@pytest.mark.parametrize("name,kwargs", [
    ("deeplab_largefov", {}),
    ("deeplab_v2", {"backbone": "vgg16", "atrous_rates": (6, 12, 18, 24)}),
])
def test_vgg_deeplab_gives_10x_to_fc8_only(name, kwargs):
    model = build_model(name, 21, width=0.125, **kwargs)
    fc8 = {id(p) for n, m in model.named_modules() if n.endswith("fc8") for p in m.parameters()}
    assert fc8 and _head_ids(model) == fc8  # fc6/fc7 (VGG's fc layers) stay at 1x
    assert all(n.endswith("fc8") for n in new_layers(model))
    groups = {g["name"]: g for g in param_groups(model, 1e-3, 5e-4, 10.0, 2.0)}
    assert groups["head_weight"]["lr"] == pytest.approx(1e-2) and groups["head_bias"]["lr"] == pytest.approx(2e-2)


def test_resnet_deeplab_v2_gives_10x_to_the_aspp_classifier_only():
    model = build_model("deeplab_v2", 21, backbone="resnet50", width=0.125)
    assert _head_ids(model) == {id(p) for p in model.branches.parameters()}
    assert new_layers(model) == ["branches"]


@pytest.mark.parametrize("name,kwargs,heads", [
    ("pspnet", {}, ["ppm", "head", "aux_head"]),
    ("fcn8s", {}, None),                   # fc6/fc7 are in the backbone already
    ("deeplab_v3", {"backbone": "resnet50"}, ["encoder.aspp", "classifier"]),
])
def test_every_other_model_keeps_backbone_versus_the_rest(name, kwargs, heads):
    model = build_model(name, 21, width=0.125, **kwargs)
    backbone = {id(p) for p in model.backbone.parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}  # FCN's fixed bilinear kernels aside
    assert _head_ids(model) == trainable - backbone
    if heads is not None:
        assert [h for h in new_layers(model) if h.split(".")[0] in {x.split(".")[0] for x in heads}] == new_layers(model)


def test_bn_momentum_is_applied_to_every_batchnorm():
    model = build_model("deeplab_v3", 21, backbone="resnet50", width=0.125)
    module = SegmentationModule(model, 21, bn_momentum=0.0003)
    bns = [m for m in module.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(m.momentum == 0.0003 for m in bns)
    default = SegmentationModule(build_model("deeplab_v3", 21, backbone="resnet50", width=0.125), 21)
    assert all(m.momentum == 0.1 for m in default.model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_scale_steps_are_drawn_from_the_grid_only():
    assert scale_grid((0.5, 2.0), 0.25) == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert scale_grid((0.5, 1.5), 0.25) == [0.5, 0.75, 1.0, 1.25, 1.5]   # kazuto1011's SCALES
    torch.manual_seed(0)
    t = RandomScale((0.5, 2.0), step=0.25)
    image = tv_tensors.Image(torch.zeros(3, 40, 40, dtype=torch.uint8))
    sizes = {t(image).shape[-1] for _ in range(300)}
    assert sizes == {20, 30, 40, 50, 60, 70, 80}   # every grid point, nothing between
    continuous = RandomScale((0.5, 2.0))
    assert len({continuous(image).shape[-1] for _ in range(100)}) > 7


def test_the_v3_preset_uses_the_official_bn_momentum_and_scale_grid():
    from experiments.recipes import deeplab, deeplab_v3

    assert deeplab_v3.PAPER.optim.bn_momentum == pytest.approx(1 - 0.9997)
    assert deeplab_v3.PAPER.data.scale_step == 0.25 and deeplab_v3.XCEPTION["optim"]["weight_decay"] == 4e-5
    assert deeplab.PAPER.data.scale_range == (1.0, 1.0) and deeplab.PAPER.data.augment == "flip"
    assert deeplab.RESNET101["data"] == {"scale_range": (0.5, 1.5), "scale_step": 0.25, "augment": "deeplab"}


# --------------------------------------------------------------------------- CRF search
def _stripes(seed: int, size: int = 24) -> Sample:
    """Vertical stripes 3 px wide in two colours; the label is the colour; the network's
    probabilities are weak (0.6) and wrong on a third of the pixels."""
    rng = np.random.default_rng(seed)
    cols = (np.arange(size) // 3) % 2
    mask = np.tile(cols, (size, 1)).astype(np.int64)
    rgb = np.where(mask[..., None] == 1, 220, 30).astype(np.uint8).repeat(3, 2)
    rgb = np.clip(rgb.astype(int) + rng.integers(-5, 6, rgb.shape), 0, 255).astype(np.uint8)
    wrong = rng.random(mask.shape) < 1 / 3
    guess = np.where(wrong, 1 - mask, mask)
    probs = np.stack([np.where(guess == 0, 0.6, 0.4), np.where(guess == 1, 0.6, 0.4)]).astype(np.float32)
    return Sample(rgb, probs, mask)


def test_crf_search_picks_the_known_best_parameters(tmp_path):
    samples = [_stripes(s) for s in range(3)]
    # only a strong, colour-sensitive bilateral term can undo the noise without merging stripes:
    # a weak one keeps the noise, a colour-blind one (σβ = 300) smears across the 3-px stripes
    grid = {"bi_w": [0.01, 10.0], "bi_xy_std": [30.0], "bi_rgb_std": [3.0, 300.0]}
    result = search(samples, grid, fine=False)
    assert result["params"]["bi_w"] == 10.0 and result["params"]["bi_rgb_std"] == 3.0
    assert result["miou"] > 0.95 > result["miou_without_crf"]
    scores = {(r["params"]["bi_w"], r["params"]["bi_rgb_std"]): r["miou"] for r in result["rounds"][0]["scores"]}
    assert len(scores) == 4 and max(scores, key=scores.get) == (10.0, 3.0)
    assert result["fixed"]["pos_w"] == 3.0 and result["fixed"]["pos_xy_std"] == 3.0  # w2 = σγ = 3
    fine = search(samples, grid, fine=True)
    assert len(fine["rounds"]) == 2 and fine["miou"] >= result["miou"]
    (tmp_path / "crf_params.json").write_text(json.dumps(result))
    params, path = load_crf_params(tmp_path)
    assert CRFParams(**params).bi_rgb_std == 3.0 and path.endswith("crf_params.json")


# --------------------------------------------------------------------------- Recipes table
def test_recipe_table_of_the_psp_ablation():
    from experiments.psp_bins_ablation import ABLATION
    from experiments.recipe_table import recipe_rows, render_recipe_table

    rows = {r["item"]: r for r in recipe_rows(ABLATION)}
    assert rows["lr"]["paper"] == "0.01" and rows["lr"]["ours"] == "0.01" and rows["lr"]["status"] == "✓"
    assert rows["eval.protocol"]["ours"] == "semseg long side 512, 473 windows stride 316 + flip"
    assert rows["eval.protocol"]["status"] == "✓"
    assert rows["pretrained"]["status"] == "**deviation**"  # timm's weights, not resnet50_v2.pth
    text = render_recipe_table(ABLATION)
    assert text.count("\n| `") == len(rows) and "Known deviations" in text


def test_recipe_table_splits_rows_where_variants_differ():
    from experiments.aspp_ablation import ABLATION
    from experiments.recipe_table import recipe_rows

    lr = [r for r in recipe_rows(ABLATION) if r["item"] == "lr"]
    assert {r["ours"] for r in lr} == {"0.001", "0.00025"}
    assert {tuple(r["variants"]) for r in lr} == {("LargeFOV", "ASPP-S", "ASPP-L"), ("base-R101", "LargeFOV-R101", "ASPP-L-R101")}
    assert all(r["status"] == "✓" for r in recipe_rows(ABLATION))
