"""The model settings, recipes and schedule behind the added rows of the papers' tables: v3's
cascaded blocks (Tables 1-3), v3+'s decoder knobs and re-strided Xception (Tables 2, 5), v1's
Table 2 parameter counts and step schedule, v2 Table 2's schedules, FCN-32s-fixed's train_only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from experiments.card import Run, resolve
from experiments.recipe import Recipe, RecipeError, override
from experiments.tasks import TASKS
from lightning_modules.optim import frozen_norms, lr_factor
from models import build_model
from models.backbones.xception import XceptionBackbone
from tests.model_checks import check_output_stride, check_segmentation_model, count_parameters

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
W = 0.0625


def ablation(stem: str):
    spec = importlib.util.spec_from_file_location(stem, EXPERIMENTS / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ABLATION


# --------------------------------------------------------------------------- v3 cascade
@pytest.mark.parametrize("kwargs", [
    {"num_blocks": 4}, {"num_blocks": 5, "output_stride": 8}, {"multi_grid": (1, 2, 4)},
    {"output_stride": 64}, {"output_stride": 128}, {"output_stride": 256}, {"num_blocks": 6, "output_stride": 128},
])
def test_cascade_passes_the_shared_tester_and_declares_its_output_stride(kwargs):
    model = build_model("deeplab_v3_cascade", 5, width=W, **kwargs)
    check_segmentation_model(model, 5)
    # a large odd input, where strides 64, 128 and 256 give different map sizes (17, 9, 5 for 1025)
    check_output_stride(model, (1, 3, 1025, 769))
    assert model.features(torch.zeros(1, 3, 1025, 769)).shape[-2] == -(-1025 // model.output_stride)


def test_cascade_rates_follow_fig3_and_the_multi_grid_example():
    # Fig. 3b at output stride 16: block4 rate 2, block5 4, block6 8, block7 16
    rates = build_model("deeplab_v3_cascade", 3, width=W).atrous_rates()
    assert rates == {"block4": (2,) * 3, "block5": (4,) * 3, "block6": (8,) * 3, "block7": (16,) * 3}
    # Sec. 3.2: "output stride = 16 and Multi_Grid = (1, 2, 4) ... rates = 2 · (1, 2, 4) = (2, 4, 8) in block4"
    rates = build_model("deeplab_v3_cascade", 3, width=W, multi_grid=(1, 2, 4)).atrous_rates()
    assert rates["block4"] == (2, 4, 8) and rates["block7"] == (16, 32, 64)
    # no atrous convolution at output stride 256 (Fig. 3a): every block halves the resolution
    model = build_model("deeplab_v3_cascade", 3, width=W, output_stride=256)
    assert set(model.atrous_rates().values()) == {(1, 1, 1)}
    assert [model.stage_strides[f"block{k}"] for k in (5, 6, 7)] == [64, 128, 256]
    with pytest.raises(ValueError, match="output_stride"):
        build_model("deeplab_v3_cascade", 3, num_blocks=5, output_stride=128)
    # block5-7 each add one block4 (3 bottlenecks 2048 -> 512 -> 2048; a strided one projects its shortcut)
    r50 = {b: count_parameters(build_model("deeplab_v3_cascade", 21, num_blocks=b, output_stride=32)) for b in (4, 5)}
    assert r50[5] - r50[4] == 3 * (2048 * 512 + 9 * 512 * 512 + 512 * 2048 + 2 * (512 + 512 + 2048))


# --------------------------------------------------------------------------- v3+ decoder, Xception OS
@pytest.mark.parametrize("kwargs", [
    {"decoder_kernel_size": 1, "decoder_convs": 1}, {"decoder_channels": 128, "decoder_convs": 1},
    {"low_level_features": ("conv3", "conv2"), "decoder_convs": 1},
    {"low_level_features": ("conv2", "conv3"), "output_stride": 8},
])
def test_v3plus_decoder_knobs_pass_the_shared_tester(kwargs):
    model = build_model("deeplab_v3plus", 5, backbone="resnet50", separable=False, width=W, **kwargs)
    check_segmentation_model(model, 5)
    if "low_level_features" in kwargs:
        assert model.low_level_stage == "layer1" and list(model.decoder_stages) == ["conv3"]
    else:
        assert len(model.decoder_stages) == 0
    k = kwargs.get("decoder_kernel_size", 3)
    assert model.decoder.refine[0][0].kernel_size == (k, k)
    with pytest.raises(ValueError, match="conv3"):  # Xception-65 has no stride-8 feature
        build_model("deeplab_v3plus", 5, width=W, low_level_features=("conv3", "conv2"))


@pytest.mark.parametrize("built,target", [(16, 8), (8, 16), (16, 32)])
def test_xception_set_output_stride_equals_the_network_built_at_it(built, target):
    torch.manual_seed(0)
    net, ref = XceptionBackbone(built, W).eval(), XceptionBackbone(target, W).eval()
    ref.load_state_dict(net.state_dict())
    net.set_output_stride(target)
    x = torch.randn(1, 3, 67, 83)
    with torch.no_grad():
        a, b = net(x), ref(x)
    assert net.stage_strides == ref.stage_strides and net.output_stride == target
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def test_v3plus_xception_trained_at_16_evaluates_at_8():
    model = build_model("deeplab_v3plus", 5, width=W)   # Xception-65, separable (Table 5)
    model.set_output_stride(8)
    check_segmentation_model(model, 5)
    assert model.encoder.aspp.convs[1][0].dilation == (12, 12)  # rate 6 at OS 16, "doubled" at 8


# --------------------------------------------------------------------------- v1 Table 2, schedules
def test_v1_table2_parameter_counts():
    paper = {"DeepLab-CRF-7x7": 134.3e6, "DeepLab-CRF": 65.1e6, "DeepLab-CRF-4x4": 65.1e6,
             "DeepLab-CRF-LargeFOV": 20.5e6}
    rows = ablation("deeplab_v1_ablation").variants
    for name, count in paper.items():
        with torch.device("meta"):
            model = build_model(rows[name].model, 21, **rows[name].kwargs)
        assert abs(count_parameters(model) - count) < 0.05e6, (name, count_parameters(model))


def test_v2_table4_rows_build_their_own_heads_through_the_recipe():
    """LargeFOV-R101 is one rate-12 3x3 classifier on ResNet-101, ASPP-L-R101 four (rates 6-24),
    built from the cell the runner resolves (their recipes also set MSC, a model key)."""
    abl = ablation("aspp_ablation").with_option("backbone", "resnet101")
    run = Run(data="voc", data_root="/nonexistent", preset="paper")
    counts, heads = {}, {}
    for name in ("base-R101", "LargeFOV-R101", "ASPP-L-R101"):
        cell = resolve(abl, name, run)
        with torch.device("meta"):
            model = build_model(cell.model, 21, **{**cell.model_kwargs, "pretrained": False})
        counts[name] = count_parameters(model)
        heads[name] = [conv.dilation[0] for conv in model.modules() if isinstance(conv, nn.Conv2d)
                       and conv.out_channels == 21]
    assert heads == {"base-R101": [1], "LargeFOV-R101": [12], "ASPP-L-R101": [6, 12, 18, 24]}
    branch = 2048 * 9 * 21 + 21
    assert counts["ASPP-L-R101"] - counts["LargeFOV-R101"] == 3 * branch
    assert abs(counts["LargeFOV-R101"] - 42.89e6) < 0.005e6, counts  # ResNet-101 (42.50M) + one branch


def test_v1_step_schedule_through_the_recipe():
    """lr × 0.1 every 2,000 iterations (v1 Sec. 4.1), from the module the recipe builds."""
    abl = ablation("deeplab_v1_ablation")
    cell = resolve(abl, "DeepLab-CRF-LargeFOV", Run(data="voc", data_root="/nonexistent", preset="paper"))
    model = build_model("deeplab_largefov", 21, width=W)
    module = TASKS["semantic"].build_module(model, 21, [str(i) for i in range(21)], cell.recipe)
    hp = module.hparams
    lr = {s: hp.lr * lr_factor(s, cell.recipe.trainer.max_steps, hp.lr_schedule, hp.poly_power, hp.lr_steps,
                               hp.lr_gamma, hp.warmup_steps) for s in (0, 1999, 2000, 3999, 4000, 5999)}
    assert lr == pytest.approx({0: 1e-3, 1999: 1e-3, 2000: 1e-4, 3999: 1e-4, 4000: 1e-5, 5999: 1e-5})
    assert cell.recipe.trainer.max_steps == 6000 and cell.global_batch == 20


def test_v2_table2_rows_carry_their_recipes_and_keep_the_ratios_on_the_smoke_preset():
    abl = ablation("deeplab_v2_schedule_ablation")
    paper = Run(data="voc", data_root="/nonexistent", preset="paper")
    step = resolve(abl, "step, batch 30, 6K", paper)
    assert (step.global_batch, step.recipe.trainer.max_steps) == (30, 6000)
    assert (step.recipe.optim.lr_schedule, step.recipe.optim.lr_steps) == ("step", (2000, 4000))
    final = resolve(abl, "poly, batch 10, 20K", paper)
    assert (final.global_batch, final.recipe.trainer.max_steps, final.recipe.optim.lr_schedule) == (10, 20000, "poly")
    smoke = resolve(abl, "step, batch 30, 6K", Run())       # variant.smoke, above the variant's recipe
    assert (smoke.global_batch, smoke.recipe.trainer.max_steps, smoke.recipe.optim.lr_steps) == (24, 90, (30, 60))
    assert resolve(abl, "poly, batch 10, 20K", Run()).recipe.trainer.max_steps == 300
    # the command line still beats the variant's smoke changes
    assert resolve(abl, "step, batch 30, 6K", Run(changes={"trainer": {"max_steps": 7}})).recipe.trainer.max_steps == 7


# --------------------------------------------------------------------------- FCN-32s-fixed
def test_train_only_freezes_exactly_the_other_parameters_and_their_statistics():
    torch.manual_seed(0)
    model = build_model("fcn32s", 4, width=W, batch_norm=True)
    recipe = override(Recipe(), {"optim": {"train_only": ["score_fr"], "lr": 0.5}})
    module = TASKS["semantic"].build_module(model, 4, list("abcd"), recipe)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"score_fr.weight", "score_fr.bias"}
    optimiser = module.configure_optimizers()
    assert {id(p) for g in optimiser.param_groups for p in g["params"]} == {id(p) for p in model.score_fr.parameters()}
    norms = frozen_norms(model, ("score_fr",))
    assert norms and set(norms) == {m for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    for m in norms:  # what on_train_batch_start does before every step
        m.eval()
    loss = module.training_step((torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))), 0)
    loss.backward()
    optimiser.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"score_fr.weight", "score_fr.bias"}  # BN running statistics included
    with pytest.raises(RecipeError, match="distinct"):
        override(Recipe(), {"optim": {"train_only": ["score_fr", "score_fr"]}})
    with pytest.raises(ValueError, match="not top-level modules"):
        TASKS["semantic"].build_module(build_model("fcn32s", 4, width=W), 4, list("abcd"),
                                       override(Recipe(), {"optim": {"train_only": ["fc8"]}}))


def test_train_only_is_on_the_card_and_checked_at_dry_run(capsys):
    from experiments.runner import main

    abl = ablation("fcn_skip_ablation")
    main(abl, ["--dry-run", "--variant", "FCN-32s-fixed", "--seed", "0"])
    assert '"train_only": ["score_fr"]' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(abl, ["--dry-run", "--variant", "FCN-32s", "--seed", "0", "--set", 'optim.train_only=["fc8"]'])
    assert "not top-level modules" in capsys.readouterr().err


def test_pspnet_resnet152_deep_stem_passes_the_shared_tester():
    model = build_model("pspnet", 5, backbone="resnet152", width=W)
    assert model.backbone.deep_stem and len(model.backbone.layer3) == 36
    check_segmentation_model(model, 5, expect_aux=True)
