"""DeepLab v2 multi-scale inputs (MSC, models/msc.py) as kazuto1011/deeplab-pytorch: the fused
output is the element-wise max of the upsampled scale outputs, the training loss sums every
scale and the fusion against labels shrunk as PIL's NEAREST does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lightning_modules.segmentation import SegmentationModule, resize_labels, segmentation_loss
from models import build_model
from models.msc import PAPER_SCALES
from tests.model_checks import check_segmentation_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("deeplab_v2", 5, backbone="resnet50", width=0.125, atrous_rates=(2, 4),
                       msc_scales=PAPER_SCALES)


def test_shared_tester(model):
    check_segmentation_model(model, 5, size=(2, 3, 65, 81))


def test_fused_output_is_the_max_of_the_upsampled_scale_outputs(model):
    model.eval()
    x = torch.randn(1, 3, 81, 97)
    with torch.no_grad():
        out = model(x)
        maps = [model.scores(x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear",
                                                            align_corners=False)) for s in PAPER_SCALES]
    size = maps[0].shape[-2:]
    assert [m.shape[-2] for m in maps] == [11, 8, 5]  # stride 8 (ceil) of rows 81, 60, 40
    fused = torch.maximum(maps[0], torch.maximum(
        F.interpolate(maps[1], size=size, mode="bilinear", align_corners=False),
        F.interpolate(maps[2], size=size, mode="bilinear", align_corners=False)))
    expected = F.interpolate(fused, size=x.shape[-2:], mode="bilinear", align_corners=False)
    assert set(out) == {"out"}  # evaluation: the fused map only
    torch.testing.assert_close(out["out"], expected, rtol=0, atol=0)
    # and no single scale equals it: the fusion takes from several
    assert not torch.equal(fused, maps[0])


def test_training_output_and_loss_sum_every_scale_and_the_fusion(model):
    module = SegmentationModule(model, 5, optimizer="sgd", lr=0.01)
    module.train()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 65, 81)
    masks = torch.randint(0, 5, (2, 65, 81))
    masks[:, :5] = 255
    torch.manual_seed(2)
    out = model(x)
    assert len(out["msc"]) == 4 and out["out"].shape[-2:] == x.shape[-2:]
    expected = sum(segmentation_loss(m, resize_labels(masks, m.shape[-2:])) for m in out["msc"])
    torch.manual_seed(2)
    module.log = lambda *a, **k: None
    loss = module.training_step((x, masks), 0)
    torch.testing.assert_close(loss, expected)
    # every scale counts: the loss without any one of the four maps is smaller
    for i in range(4):
        rest = [m for j, m in enumerate(out["msc"]) if j != i]
        assert sum(segmentation_loss(m, resize_labels(masks, m.shape[-2:])) for m in rest) < loss


@pytest.mark.parametrize("size,out", [((65, 81), (9, 11)), ((40, 53), (30, 40)), ((321, 321), (41, 41)),
                                      ((241, 241), (31, 31)), ((20, 20), (33, 27))])
def test_labels_are_shrunk_exactly_as_pil_nearest(size, out):
    labels = torch.arange(size[0] * size[1]).reshape(1, *size)
    ours = resize_labels(labels, out)[0].numpy()
    pil = np.asarray(Image.fromarray(labels[0].float().numpy()).resize(out[::-1], resample=Image.NEAREST))
    assert (ours == pil).all()


def test_single_scale_is_unchanged_and_bad_scales_are_refused():
    torch.manual_seed(0)
    plain = build_model("deeplab_v2", 3, backbone="resnet50", width=0.125, atrous_rates=(2,))
    x = torch.randn(1, 3, 33, 41)
    plain.train()
    out = plain(x)
    assert set(out) == {"out"}
    with pytest.raises(ValueError, match="msc_scales"):
        build_model("deeplab_v2", 3, backbone="resnet50", width=0.125, msc_scales=(0.5, 1.0))


def test_table4_rows_train_with_msc_and_print_the_coco_number_without_delta(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    from experiments.card import Run, resolve
    from experiments.table import collect_rows, render_csv, render_markdown

    script = Path(__file__).resolve().parents[1] / "experiments" / "aspp_ablation.py"
    spec = importlib.util.spec_from_file_location("aspp_ablation", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ablation = module.ABLATION.with_option("backbone", "resnet101")
    run = Run(data="voc", data_root="/nowhere", preset="paper")
    for name in ablation.variants:
        recipe = resolve(ablation, name, run).recipe
        # Table 4's first row ("base") has no MSC; every row after it does
        assert recipe.model.get("msc_scales") == (None if name == "base-R101" else PAPER_SCALES)
        assert recipe.optim.bn == "frozen" and recipe.optim.lr == 2.5e-4
    cell = tmp_path / "ASPP-L-R101" / "seed0"
    cell.mkdir(parents=True)
    (cell / "metrics.json").write_text(json.dumps({"seed": 0, "val": {"miou": 0.7}}))
    rows = collect_rows(ablation, ["ASPP-L-R101"], [0], tmp_path)
    assert rows[0]["paper_value"] == 76.35 and rows[0]["delta"] is None
    text = render_markdown("t", rows, [])
    assert "76.35" in text and "not comparable: needs MS-COCO pre-training" in text
    assert "needs MS-COCO" in render_csv(rows)
    # a comparable row keeps its Δ
    vgg = module.ABLATION
    (tmp_path / "ASPP-L" / "seed0").mkdir(parents=True)
    (tmp_path / "ASPP-L" / "seed0" / "metrics.json").write_text(json.dumps({"seed": 0, "val": {"miou": 0.7}}))
    assert collect_rows(vgg, ["ASPP-L"], [0], tmp_path)[0]["delta"] == pytest.approx(70 - 68.96)
