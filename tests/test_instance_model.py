"""Mask R-CNN with switchable RoI layer, its LightningModule and the COCO AP metric."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.ops import MultiScaleRoIAlign, roi_pool
from torchvision.ops.poolers import LevelMapper

from datamodules.instance import build_instance_datamodule
from lightning_modules.instance import InstanceSegmentationModule, detection_metric, to_metric_inputs
from models import build_model
from models.mask_rcnn import MultiScaleRoIExtractor

VARIANTS = {"RoIPool": {"roi_layer": "RoIPool"}, "RoIAlign": {"roi_layer": "RoIAlign"},
            "RoIAlign aligned": {"roi_layer": "RoIAlign", "aligned": True}}
SMALL = {"width": 0.125, "min_size": 64, "max_size": 64, "anchor_sizes": (8, 16, 32, 64, 128),
         "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50, "rpn_pre_nms_top_n_test": 100,
         "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 32, "box_detections_per_img": 20}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The development machine's 2 cores are shared: OpenMP threads spinning against other
    # processes made these small Mask R-CNN steps ~10x slower than one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_full_width_matches_torchvision_maskrcnn_resnet50_fpn():
    ours = build_model("mask_rcnn", 21)
    theirs = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=21)
    assert n_params(ours) == n_params(theirs) == 44_077_773
    assert ours.roi_heads.box_roi_pool.roi_layer == ours.roi_heads.mask_roi_pool.roi_layer == "RoIAlign"
    assert not ours.roi_heads.mask_roi_pool.aligned and ours.roi_heads.mask_roi_pool.sampling_ratio == 2


def test_pretrained_defaults_freeze_bn_and_stem():
    model = build_model("mask_rcnn", 4, width=0.125, frozen_bn=True, trainable_layers=3)
    body = model.backbone.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert not any(p.requires_grad for p in [*body.conv1.parameters(), *body.layer1.parameters()])
    assert all(p.requires_grad for p in body.layer2.parameters())
    with pytest.raises(ValueError, match="roi_layer must be one of"):
        build_model("mask_rcnn", 4, roi_layer="PSRoIPool")  # RoIWarp is a layer now (Table 2c)


def test_quarter_width_builds_and_runs_the_fpn():
    """Width 1/4 (plain 7×7 stem of 16 channels, layer1 64 wide) used to crash the backbone."""
    model = build_model("mask_rcnn", 4, width=0.25).eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert all(f.shape[1] == 64 for f in feats.values())  # FPN 256 × 1/4


def _pyramid(c: int = 4) -> tuple[dict, list, list]:
    torch.manual_seed(0)
    feats = {str(i): torch.randn(2, c, 512 // 2 ** (i + 2), 512 // 2 ** (i + 2)) for i in range(4)}
    xy = torch.rand(2, 40, 2) * 100
    wh = torch.exp(torch.rand(2, 40, 2) * math.log(40) + math.log(10))  # 10..400 px: P2..P5
    large = torch.tensor([[3.3, 7.1, 505.2, 490.8]])  # sqrt(area) > 448: P5
    boxes = [torch.cat([torch.cat([xy[i], (xy[i] + wh[i]).clamp(max=512)], 1), large]) for i in range(2)]
    return feats, boxes, [(512, 512), (512, 512)]


def test_extractor_equals_multiscale_roialign_and_pools_on_the_same_levels():
    feats, boxes, shapes = _pyramid()
    names = ["0", "1", "2", "3"]
    ref = MultiScaleRoIAlign(names, 7, 2)(feats, boxes, shapes)
    torch.testing.assert_close(MultiScaleRoIExtractor(names, 7, "RoIAlign", 2, False)(feats, boxes, shapes), ref)
    assert not torch.allclose(MultiScaleRoIExtractor(names, 7, "RoIAlign", 2, True)(feats, boxes, shapes), ref)
    pooled = MultiScaleRoIExtractor(names, 7, "RoIPool")(feats, boxes, shapes)
    levels = LevelMapper(2, 5)(boxes)
    assert set(levels.tolist()) == {0, 1, 2, 3}
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    for level in range(4):
        idx = torch.where(levels == level)[0]
        expected = roi_pool(feats[str(level)], rois[idx], 7, 1 / 2 ** (level + 2))
        torch.testing.assert_close(pooled[idx], expected)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_one_training_step_and_validation_per_variant(variant, tmp_path):
    L.seed_everything(0, verbose=False)
    dm = build_instance_datamodule("synthetic", None, seed=0, batch_size=2, val_batch_size=2,
                                   num_train=4, num_val=2, image_size=64)
    model = build_model("mask_rcnn", dm.num_classes, **VARIANTS[variant], **SMALL)
    assert model.roi_heads.mask_roi_pool.roi_layer == VARIANTS[variant]["roi_layer"]
    module = InstanceSegmentationModule(model, dm.num_classes, optimizer="adamw", lr=1e-3)
    before = [p.detach().clone() for p in model.roi_heads.mask_head.parameters()]
    trainer = L.Trainer(accelerator="cpu", fast_dev_run=True, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    after = list(model.roi_heads.mask_head.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))  # the mask loss trained
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert {"train/loss_mask", "train/loss_classifier", "train/loss_objectness"} <= set(trainer.callback_metrics)
    metrics = module.last_metrics["val"]
    assert set(metrics) == {"mask_ap", "mask_ap50", "mask_ap75", "box_ap", "box_ap50", "box_ap75"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert "val/mask_ap" in trainer.callback_metrics


def _gt_and_perfect():
    masks = torch.zeros(2, 40, 50, dtype=torch.uint8)
    masks[0, 5:20, 4:30] = 1
    masks[1, 22:38, 30:47] = 1
    masks[1, 22:30, 30:38] = 0  # not a box: mask and box AP use different IoUs
    boxes = torch.tensor([[4.0, 5.0, 30.0, 20.0], [30.0, 22.0, 47.0, 38.0]])
    target = {"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks}
    output = {"boxes": boxes.clone(), "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.8]),
              "masks": masks[:, None].float() * 0.9}  # torchvision's N×1×H×W probabilities
    return target, output


def _evaluate(outputs, targets) -> dict[str, float]:
    metric = detection_metric()
    metric.update(*to_metric_inputs(outputs, targets))
    result = metric.compute()
    return {f"{t}_{k}": float(result[f"{t}_{s}"]) for t in ("bbox", "segm")
            for s, k in (("map", "ap"), ("map_50", "ap50"), ("map_75", "ap75"), ("mar_100", "ar100"))}


def test_metric_perfect_prediction_is_ap_one():
    target, output = _gt_and_perfect()
    metrics = _evaluate([output], [target])
    assert metrics == pytest.approx(dict.fromkeys(metrics, 1.0))


def test_metric_one_of_two_missed_is_51_of_101():
    """COCO AP averages the interpolated precision at the 101 recall thresholds 0, 0.01, ..., 1.
    Two objects of one class, one found exactly: precision 1 up to recall 0.5, none beyond, so
    51 of 101 thresholds count and AP = 51/101 at every IoU threshold; recall 0.5."""
    target, output = _gt_and_perfect()
    target["labels"] = torch.tensor([1, 1])
    found = {"boxes": output["boxes"][:1], "labels": torch.tensor([1]), "scores": output["scores"][:1],
             "masks": output["masks"][:1]}
    metrics = _evaluate([found], [target])
    for t in ("bbox", "segm"):
        for k in ("ap", "ap50", "ap75"):
            assert metrics[f"{t}_{k}"] == pytest.approx(51 / 101), (t, k)
        assert metrics[f"{t}_ar100"] == pytest.approx(0.5)


def test_metric_shifted_mask_hurts_mask_ap_more_than_box_ap():
    """A thin object whose predicted mask is 2 px off (what rounding to a stride-4 grid can do)
    while its box is exact: box AP stays 1, mask IoU drops below 0.5 and mask AP to 0."""
    target, output = _gt_and_perfect()
    masks = torch.zeros(1, 40, 50, dtype=torch.uint8)
    masks[0, 10:13, 5:45] = 1  # a 3 px thick bar
    target = {"boxes": torch.tensor([[5.0, 10.0, 45.0, 13.0]]), "labels": torch.tensor([1]), "masks": masks}
    shifted = {"boxes": target["boxes"].clone(), "labels": torch.tensor([1]), "scores": torch.tensor([0.9]),
               "masks": masks.roll(2, dims=1)[:, None].float()}
    metrics = _evaluate([shifted], [target])
    assert metrics["bbox_ap"] == pytest.approx(1.0) and metrics["segm_ap"] == pytest.approx(0.0)


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_module_reports_fractions_via_validation_hooks():
    target, output = _gt_and_perfect()

    class Fixed(torch.nn.Module):
        def forward(self, images):
            return [output]

    module = InstanceSegmentationModule(Fixed(), 3)
    module.validation_step(([torch.zeros(3, 40, 50)], [target]), 0)
    module.on_validation_epoch_end()  # no trainer: self.log only warns
    assert module.last_metrics["val"] == pytest.approx(dict.fromkeys(
        ("mask_ap", "mask_ap50", "mask_ap75", "box_ap", "box_ap50", "box_ap75"), 1.0))
    records = module.last_per_image["val"]  # no trainer: the position is the index
    assert records["index"].tolist() == [0] and records["mask_det_tp"].shape == (2, 10)


def test_schedule_poly_and_paper_steps():
    module = InstanceSegmentationModule(torch.nn.Linear(1, 1), 2, lr_schedule="step", lr_steps=(120, 150))
    module.total_steps = lambda: 160
    assert [module.lr_factor(s) for s in (0, 119, 120, 149, 150)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    poly = InstanceSegmentationModule(torch.nn.Linear(1, 1), 2, warmup_steps=10)
    poly.total_steps = lambda: 100
    assert poly.lr_factor(0) == pytest.approx(0.1 * 1.0)
    assert poly.lr_factor(50) == pytest.approx(0.5**0.9)
    with pytest.raises(ValueError, match="lr_steps"):  # steps belong to the "step" schedule
        InstanceSegmentationModule(torch.nn.Linear(1, 1), 2, lr_steps=(120,))
