"""experiments/upsampling_ablation.py and experiments/unet_ablation.py: every variant builds with
the script's smoke settings and takes one training step (loss with the variant's module
settings, backward, optimiser step) on a batch of the script's synthetic task; the variant
tables cover exactly the compared knobs. (tests/test_ablation_scripts.py runs them through the
runner end to end.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from datamodules.synthetic import SYNTHETIC_TASKS
from experiments.runner import SMOKE, merge
from experiments.spec import paper_number
from experiments.tasks import module_arguments
from lightning_modules import RECIPES
from lightning_modules.segmentation import segmentation_loss
from models import build_model
from models.unet import UNet

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ABLATION


UPSAMPLING, UNET_ABLATION = _load("upsampling_ablation"), _load("unet_ablation")
CELLS = [(a, name) for a in (UPSAMPLING, UNET_ABLATION) for name in a.variants]


@pytest.mark.parametrize("ablation,name", CELLS, ids=[f"{a.name}-{n}" for a, n in CELLS])
def test_variant_builds_and_takes_one_step(ablation, name):
    recipe = merge(SMOKE, ablation.smoke_recipe)
    variant = ablation.variants[name]
    data = SYNTHETIC_TASKS[ablation.synthetic_task]("train", 2, image_size=64)
    images = torch.stack([data[i][0] for i in range(2)]).float() / 255
    masks = torch.stack([data[i][1] for i in range(2)])
    torch.manual_seed(0)
    # merged as the runner does
    kwargs = {**variant.kwargs, **recipe["model"], "width": 1 / 16, "pretrained": False}
    model = build_model(variant.model, data.num_classes, **kwargs)
    settings = {**recipe["module"], **variant.module}
    module = RECIPES[variant.model](model, data.num_classes, **module_arguments(settings))
    optimizer = module.configure_optimizers()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    out = module(images)["out"]  # the module's training loss, without a Trainer to log to
    assert out.shape == (2, data.num_classes, 64, 64)
    loss = segmentation_loss(out, masks, module.pixel_weights(masks))
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    changed = [n for n, p in model.named_parameters()
               if p.requires_grad and not torch.equal(p, before[n])]
    assert changed, "one optimiser step changed no parameter"
    if variant.model == "unet":
        assert isinstance(model, UNet)
        weighted = module.pixel_weights(masks)
        assert (weighted is not None) == bool(variant.module.get("border_weight"))


def test_upsampling_variants_cover_three_modes_in_both_decoders():
    modes = {(v.model, v.kwargs["upsampling"]) for v in UPSAMPLING.variants.values()}
    ups = ("transposed", "resize_conv", "bilinear")
    assert modes == {(m, u) for m in ("fcn8s", "unet") for u in ups}
    papers = {name: v.paper for name, v in UPSAMPLING.variants.items() if v.paper}
    assert papers == {"FCN-8s transposed": "fcn.table2.fcn8s"}
    assert paper_number("fcn.table2.fcn8s").miou > 0
    for recipe in (UPSAMPLING.smoke_recipe, UPSAMPLING.paper_recipe):
        assert recipe["module"]["checkerboard_period"] == 16
        evaluators = module_arguments(recipe["module"])["evaluators"]
        assert [type(e).__name__ for e in evaluators] == ["CheckerboardEvaluator"] and evaluators[0].period == 16
    assert UPSAMPLING.synthetic_task == "thin"


def test_unet_variants_are_padding_times_border_weight_on_touching_cells():
    variants = UNET_ABLATION.variants.values()
    grid = {(v.kwargs["padding"], v.module["border_weight"]) for v in variants}
    assert grid == {(p, w) for p in ("valid", "same") for w in (False, True)}
    assert all(v.model == "unet" and v.paper is None for v in variants)
    assert UNET_ABLATION.synthetic_task == "touching"
    assert UNET_ABLATION.paper_recipe["pretrained"] is False
