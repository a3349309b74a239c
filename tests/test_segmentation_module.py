"""SegmentationModule: loss, optimiser groups, schedules and exact resume, frozen BN, evaluation
modes (probabilities, padding), argument checks, the CRF and checkerboard evaluators."""

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.checkerboard import CheckerboardEvaluator, checkerboard_energy
from lightning_modules.crf import CRFEvaluator, CRFParams, dense_crf, denormalize
from lightning_modules.inference import predict_multiscale, predict_probs, predict_sliding, sliding_windows
from lightning_modules.metrics import confusion_matrix_metric, metrics_from_confusion, trimap_target
from lightning_modules.segmentation import SegmentationModule, lr_factor, segmentation_loss


class Toy(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Conv2d(4, num_classes, 1)

    def forward(self, x):
        return {"out": self.head(self.backbone(x))}


def toy_loader(n=8, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    masks = (images[:, 0] > 0).long() + (images[:, 1] > 0.5).long()
    masks[:, 0, :] = 255
    return DataLoader(TensorDataset(images, masks), batch_size=2, shuffle=False)


def trainer(tmp_path, max_steps, **kw):
    return L.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, deterministic=True, **kw,
    )


def test_poly_factor_and_warmup():
    assert lr_factor(0, 100, "poly", 0.9) == 1.0
    assert lr_factor(50, 100, "poly", 0.9) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(100, 100, "poly", 0.9) == 0.0
    assert lr_factor(1, 100, "poly", 0.9, warmup_steps=10) == pytest.approx(0.2 * (0.99 ** 0.9))


def test_step_and_constant_schedules():
    def step(s):
        return lr_factor(s, 6000, "step", steps=(2000, 4000), gamma=0.1)

    assert [step(s) for s in (0, 1999, 2000, 3999, 4000, 5999)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert step(0) == 1.0 and step(1999) == 1.0
    # FCN: a fixed lr; poly_power is irrelevant then
    assert {lr_factor(s, 100, "constant", power=0.9) for s in (0, 50, 99, 100)} == {1.0}
    assert lr_factor(4, 100, "constant", warmup_steps=10) == pytest.approx(0.5)  # warm-up still applies
    assert lr_factor(4, 100, "step", steps=(3,), gamma=0.5, warmup_steps=10) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor(0, 100, "cosine")


def test_module_uses_the_step_schedule(tmp_path):
    module = SegmentationModule(Toy(), 3, lr=0.1, lr_schedule="step", lr_steps=(2, 4), lr_gamma=0.5)
    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer(tmp_path, 5, callbacks=[Record()], limit_val_batches=0).fit(module, toy_loader(n=10))
    assert seen == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


@pytest.mark.parametrize("kwargs,name", [
    ({"lr_schedule": "cosine"}, "lr_schedule"),
    ({"lr_schedule": "step"}, "lr_steps"),
    ({"lr_schedule": "step", "lr_steps": (4000, 2000)}, "lr_steps"),
    ({"lr_steps": (100,)}, "lr_steps"),  # lr_steps only mean something for "step"
    ({"bn": "sync"}, "bn"),
    ({"optimizer": "adam"}, "optimizer"),
    ({"lr": 0}, "lr"),
    ({"eval_mode": "tta"}, "eval_mode"),
    ({"eval_mode": "sliding"}, "eval_window"),
    ({"eval_window": 8}, "eval_window"),  # ignored by "whole": an error, not a silent no-op
    ({"eval_mode": "sliding", "eval_window": 8, "eval_stride": 9}, "eval_stride"),
    ({"eval_flip": True}, "eval_flip"),
    ({"eval_mode": "sliding", "eval_window": 8, "eval_pad_to": 32}, "eval_pad_to"),
    ({"eval_mode": "semseg", "eval_window": 8}, "eval_base_size"),
    ({"eval_base_size": 64}, "eval_base_size"),  # semseg only
    ({"bn_momentum": 1.5}, "bn_momentum"),
    ({"trimap_width": -1}, "trimap_width"),
    ({"class_names": ("a", "b")}, "class_names"),
    ({"evaluators": [nn.Identity()]}, "evaluators"),
])
def test_invalid_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SegmentationModule(Toy(), 3, **kwargs)


def test_hyperparameters_leave_out_model_and_evaluators():
    module = SegmentationModule(Toy(), 3, evaluators=[CheckerboardEvaluator(2)])
    assert "model" not in module.hparams and "evaluators" not in module.hparams
    assert module.hparams.lr_schedule == "poly" and module.hparams.bn == "trained"


def test_loss_ignores_255_and_survives_all_void_batches():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.tensor([[[0, 255], [2, 255]]])
    expected = nn.functional.cross_entropy(logits[..., [0, 1], [0, 0]].reshape(1, 3, 2), torch.tensor([[0, 2]]))
    assert segmentation_loss(logits, target).item() == pytest.approx(expected.item())
    void = segmentation_loss(logits, torch.full((1, 2, 2), 255))
    assert void.item() == 0.0 and not torch.isnan(void)
    void.backward()  # still differentiable


def test_head_modules_are_every_child_but_the_backbone():
    assert SegmentationModule.head_modules(Toy()) == ["head"]
    assert SegmentationModule.head_modules(nn.Sequential(nn.Conv2d(3, 3, 1))) == ["0"]


def test_param_groups_head_multiplier_and_no_decay_on_bias_and_bn():
    module = SegmentationModule(Toy(), 3, lr=0.1, weight_decay=1e-4, head_lr_mult=10, bias_lr_mult=2)
    groups = {g["name"]: g for g in module.configure_optimizers().param_groups}
    assert groups["backbone_weight"]["lr"] == pytest.approx(0.1)
    assert groups["backbone_bias"]["lr"] == pytest.approx(0.2)  # conv bias + BN weight/bias
    assert groups["head_weight"]["lr"] == pytest.approx(1.0)
    assert groups["head_bias"]["lr"] == pytest.approx(2.0)
    assert groups["backbone_bias"]["weight_decay"] == 0 and groups["head_weight"]["weight_decay"] == 1e-4
    assert len(groups["backbone_bias"]["params"]) == 3  # conv bias, BN weight, BN bias


def test_head_lr_mult_without_backbone_attribute_is_an_error():
    with pytest.raises(ValueError, match="backbone"):
        SegmentationModule(nn.Conv2d(3, 3, 1), 3, head_lr_mult=10)


def test_lr_follows_global_step_and_resume_is_exact(tmp_path):
    torch.manual_seed(0)
    full = SegmentationModule(Toy(), 3, lr=0.05, poly_power=0.9)
    init = {k: v.clone() for k, v in full.state_dict().items()}
    trainer(tmp_path / "a", 8).fit(full, toy_loader(), toy_loader())
    assert full.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * lr_factor(7, 8, "poly", 0.9))

    first = SegmentationModule(Toy(), 3, lr=0.05, poly_power=0.9)
    first.load_state_dict(init)
    # stop after 4 of the 8 steps (an epoch boundary), keeping the checkpoint; mid-epoch
    # resume needs a resumable loader and is tested with the runner
    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = trainer.global_step >= 4

    t1 = trainer(tmp_path / "b", 8, callbacks=[StopAt()])
    t1.fit(first, toy_loader(), toy_loader())
    assert t1.global_step == 4
    ckpt = tmp_path / "mid.ckpt"
    t1.save_checkpoint(ckpt)
    resumed = SegmentationModule(Toy(), 3, lr=0.05, poly_power=0.9)
    trainer(tmp_path / "c", 8).fit(resumed, toy_loader(), toy_loader(), ckpt_path=ckpt)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{k} differs after resume")


def test_validation_reports_fcn_metrics_and_eval_mode(tmp_path):
    module = SegmentationModule(Toy(), 3)
    trainer(tmp_path, 2).fit(module, toy_loader(), toy_loader())
    val = module.last_metrics["val"]
    assert set(val) >= {"miou", "pixel_acc", "mean_acc", "fwiou", "iou_per_class", "eval_mode"}
    assert val["eval_mode"] == "whole" and 0 <= val["miou"] <= 1


def test_frozen_bn_keeps_running_statistics_and_affine_parameters(tmp_path):
    module = SegmentationModule(Toy(), 3, bn="frozen", lr=0.5)
    bn, conv = module.model.backbone[1], module.model.backbone[0]
    with torch.no_grad():  # not the init values, so a step would visibly move them
        bn.weight.fill_(1.5), bn.bias.fill_(0.3), bn.running_mean.fill_(0.2), bn.running_var.fill_(2.0)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    conv_before = conv.weight.detach().clone()
    # validation in between: Lightning puts modules back in train mode afterwards
    trainer(tmp_path, 3, val_check_interval=1, check_val_every_n_epoch=None).fit(
        module, toy_loader(), toy_loader(n=2))
    for k, v in bn.state_dict().items():
        if k != "num_batches_tracked":
            assert torch.equal(v, before[k]), f"{k} changed"
    assert not bn.weight.requires_grad and not bn.training
    assert not torch.equal(conv.weight, conv_before)  # the rest trained
    groups = {g["name"]: g["params"] for g in module.configure_optimizers().param_groups}
    assert len(groups["backbone_bias"]) == 1  # only the conv bias: BN has no trainable parameter


class CountingEvaluator(nn.Module):
    """An evaluator that counts the images it saw per validation."""

    def __init__(self, name: str, final_only: bool) -> None:
        super().__init__()
        self.name, self.final_only, self.seen, self.runs = name, final_only, 0, []

    def setup(self, metrics) -> None:
        pass

    def update(self, images, probs, masks, module) -> None:
        self.seen += len(images)
        self.step = module.global_step

    def compute(self) -> dict:
        self.runs.append((self.step, self.seen))
        return {"images": self.seen}

    def reset(self) -> None:
        self.seen = 0


def test_final_only_evaluators_run_when_the_final_weights_are_evaluated(tmp_path):
    """The dense CRF (final_only) runs at the training loop's validation at max_steps and in a
    stand-alone validate, not in the validations on the way; the others run every time."""
    final, every = CountingEvaluator("final", True), CountingEvaluator("every", False)
    assert CRFEvaluator().final_only
    module = SegmentationModule(Toy(), 3, lr=0.1, evaluators=[final, every])
    fit = trainer(tmp_path, 4, val_check_interval=2, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    fit.fit(module, toy_loader(), toy_loader(n=2))
    assert every.runs == [(2, 2), (4, 2)] and final.runs == [(4, 2)]  # (step, images): the CRF at 4 only
    assert module.last_metrics["val_final"]["images"] == 2
    fit.validate(module, toy_loader(n=2), verbose=False)
    assert every.runs[-1] == (4, 2) and final.runs == [(4, 2), (4, 2)]
    # the last validation of training before max_steps is not the final evaluation
    final.runs.clear()
    module = SegmentationModule(Toy(), 3, lr=0.1, evaluators=[final])
    trainer(tmp_path / "b", 3, val_check_interval=2, check_val_every_n_epoch=None, num_sanity_val_steps=0).fit(
        module, toy_loader(), toy_loader(n=2))
    assert final.runs == [] and "val_final" not in module.last_metrics


def test_sliding_windows_cover_every_pixel():
    for h, w, crop, stride in [(10, 23, 8, 5), (8, 8, 8, 5), (31, 17, 9, 6)]:
        cover = torch.zeros(h, w)
        for y, x in sliding_windows(h, w, crop, stride):
            assert y + crop <= h and x + crop <= w
            cover[y : y + crop, x : x + crop] += 1
        assert cover.min() >= 1


def test_eval_modes_agree_for_a_per_pixel_model():
    model = nn.Sequential()
    conv = nn.Conv2d(3, 4, 1)
    model.forward = lambda x: {"out": conv(x)}
    x = torch.randn(2, 3, 13, 21)
    logits = conv(x)
    whole = predict_probs(model, x, "whole")
    torch.testing.assert_close(whole, logits.softmax(1))
    # a 1x1 conv sees no context, so windows (even a padded, smaller-than-window image) change nothing
    torch.testing.assert_close(predict_sliding(model, x, crop=8, stride=5), logits)
    torch.testing.assert_close(predict_sliding(model, x, crop=32), logits)
    torch.testing.assert_close(predict_probs(model, x, "sliding", window=8, stride=5), whole)
    # one scale, no flip = softmax of the whole-image logits; a flip changes nothing either
    torch.testing.assert_close(predict_multiscale(model, x, (1.0,), flip=False), whole)
    torch.testing.assert_close(predict_probs(model, x, "ms_flip", scales=(1.0,), flip=True), whole)
    with pytest.raises(ValueError, match="mode"):
        predict_probs(model, x, "tta")
    with pytest.raises(ValueError, match="window"):
        predict_probs(model, x, "sliding")


class PerPixel(nn.Module):
    """Conv-free: a per-pixel linear map of the colour, so padding cannot change its output."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3))

    def forward(self, x):
        return {"out": torch.einsum("kc,nchw->nkhw", self.weight, x)}


@pytest.mark.parametrize("mode,kwargs", [("whole", {}), ("whole", {"pad_to": 32}),
                                         ("ms_flip", {"scales": (0.5, 1.0, 1.5), "flip": True}),
                                         ("sliding", {"window": 8, "stride": 5})])
def test_prediction_always_returns_probabilities(mode, kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    model = nn.Module()
    model.forward = lambda x: {"out": conv(x) * 5}
    x = torch.randn(2, 3, 13, 21)
    probs = predict_probs(model, x, mode, **kwargs)
    assert probs.shape == (2, 4, 13, 21) and probs.dtype == torch.float32
    assert probs.min() >= 0
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 13, 21))


def test_pad_to_pads_then_crops_back():
    torch.manual_seed(0)
    seen = []
    per_pixel = PerPixel()
    model = nn.Module()
    model.forward = lambda x: (seen.append(tuple(x.shape[-2:])), per_pixel(x))[1]
    x = torch.randn(2, 3, 13, 21)
    padded = predict_probs(model, x, "whole", pad_to=32)
    assert seen == [(32, 32)] and padded.shape == (2, 4, 13, 21)
    torch.testing.assert_close(padded, per_pixel(x)["out"].softmax(1))  # padding changes nothing
    predict_probs(model, x, "whole", pad_to=16)  # only the short side needs padding
    assert seen[-1] == (16, 21)
    # a model that sees context: the padded region (0 = the mean colour) now matters
    conv = nn.Conv2d(3, 4, 5, padding=2)
    ctx = nn.Module()
    ctx.forward = lambda x: {"out": conv(x)}
    pad = predict_probs(ctx, x, "whole", pad_to=32)
    expected = conv(nn.functional.pad(x, (0, 11, 0, 19)))[..., :13, :21].softmax(1)
    torch.testing.assert_close(pad, expected)
    module = SegmentationModule(PerPixel(), 4, eval_pad_to=32)
    torch.testing.assert_close(module.predict_probs(x), module.model(x)["out"].softmax(1))


def test_eval_modes_differ_for_a_context_model():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 7, padding=3)
    model = nn.Module()
    model.forward = lambda x: {"out": conv(x)}
    x = torch.randn(1, 3, 20, 20)
    assert not torch.allclose(predict_sliding(model, x, crop=8, stride=4), conv(x))


def test_dense_crf_cleans_noisy_probabilities():
    rng = np.random.default_rng(0)
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, 20:] = 255
    truth = np.zeros((40, 40), int)
    truth[:, 20:] = 1
    p1 = np.clip(truth * 0.6 + 0.2 + rng.normal(0, 0.25, truth.shape), 0.01, 0.99)
    probs = np.stack([1 - p1, p1]).astype(np.float32)
    before = (probs.argmax(0) == truth).mean()
    after = (dense_crf(image, probs, CRFParams(bi_xy_std=20, bi_rgb_std=10)).argmax(0) == truth).mean()
    assert before < 0.95 and after > before + 0.04


def test_crf_results_reported_beside_plain(tmp_path):
    module = SegmentationModule(Toy(), 3, evaluators=[CRFEvaluator(CRFParams(iterations=2))])
    t = trainer(tmp_path, 1)
    t.fit(module, toy_loader(4))
    t.validate(module, toy_loader(4), verbose=False)
    assert {"val", "val_crf"} <= set(module.last_metrics)
    assert set(module.last_metrics["val_crf"]) == set(module.last_metrics["val"])
    assert {"val/miou", "val_crf/miou", "val_crf/trimap_miou"} <= set(t.callback_metrics)


def test_crf_evaluator_equals_hand_run_crf_and_confusion_matrix():
    torch.manual_seed(0)
    params = CRFParams(iterations=3, bi_xy_std=10, bi_rgb_std=5)
    module = SegmentationModule(Toy(), 3, trimap_width=1,
                                evaluators=[CRFEvaluator(params), CheckerboardEvaluator(2)])
    module.eval()
    batches = [toy_loader(n=2, size=10, seed=s).dataset.tensors for s in (1, 2)]
    cm, cm_trimap, energies = confusion_matrix_metric(3), confusion_matrix_metric(3), []
    with torch.no_grad():
        for images, masks in batches:
            module.validation_step((images, masks), 0)
            probs = module.model(images)["out"].softmax(1)
            rgb = denormalize(images, module.hparams.mean, module.hparams.std).numpy()
            refined = np.stack([dense_crf(rgb[i], probs[i].numpy(), params) for i in range(len(rgb))])
            pred = torch.from_numpy(refined).argmax(1)
            cm.update(pred, masks)
            cm_trimap.update(pred, trimap_target(masks, 1))
            energies.append(checkerboard_energy(probs, 2))
    module.log = lambda *a, **k: None  # no trainer to log to
    module.on_validation_epoch_end()
    expected = {**metrics_from_confusion(cm.compute()), "trimap_width": 1, "eval_mode": "whole",
                "eval_protocol": "whole",
                "trimap_miou": metrics_from_confusion(cm_trimap.compute())["miou"]}
    np.testing.assert_equal(module.last_metrics["val_crf"], expected)  # nan-aware, nested
    assert module.last_metrics["val"]["checkerboard"] == pytest.approx(float(torch.cat(energies).mean()))
    assert module.last_metrics["val"]["checkerboard_period"] == 2
    assert "checkerboard" not in module.last_metrics["val_crf"]


def test_trimap_reported_and_eval_output_stride_switches_only_for_evaluation(tmp_path):
    from models.deeplab_v3 import DeepLabV3

    model = DeepLabV3(3, backbone="resnet50", output_stride=16, width=0.0625)
    seen = []
    original = model.forward
    model.forward = lambda x: (seen.append((model.training, model.output_stride)), original(x))[1]
    module = SegmentationModule(model, 3, eval_output_stride=8, trimap_width=2)
    trainer(tmp_path, 2, val_check_interval=2, check_val_every_n_epoch=None).fit(
        module, toy_loader(n=4, size=33), toy_loader(n=2, size=33))
    assert {s for training, s in seen if training} == {16}       # trained at OS 16
    assert {s for training, s in seen if not training} == {8}    # evaluated at OS 8
    assert model.output_stride == 16                              # and back for training
    val = module.last_metrics["val"]
    assert val["eval_output_stride"] == 8 and val["trimap_width"] == 2
    assert 0 <= val["trimap_miou"] <= 1
    with pytest.raises(ValueError, match="eval_output_stride"):
        SegmentationModule(Toy(), 3, eval_output_stride=8)
