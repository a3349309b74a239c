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
from experiments.card import Run, resolve
from experiments.spec import paper_number
from experiments.tasks import get_task
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
    cell = resolve(ablation, name, Run(changes={"width": 1 / 16}))  # the smoke recipe, as the runner resolves it
    variant = ablation.variants[name]
    data = SYNTHETIC_TASKS[ablation.synthetic_task]("train", 2, image_size=64)
    images = torch.stack([data[i][0] for i in range(2)]).float() / 255
    masks = torch.stack([data[i][1] for i in range(2)])
    torch.manual_seed(0)
    model = build_model(variant.model, data.num_classes, **cell.model_kwargs)
    module = get_task("semantic").build_module(model, data.num_classes, data.class_names, cell.recipe)
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
        assert (weighted is not None) == cell.recipe.optim.border_weight


def test_upsampling_variants_cover_three_modes_in_both_decoders():
    modes = {(v.model, v.kwargs["upsampling"]) for v in UPSAMPLING.variants.values()}
    ups = ("transposed", "resize_conv", "bilinear")
    assert modes == {(m, u) for m in ("fcn8s", "unet") for u in ups}
    papers = {name: v.paper for name, v in UPSAMPLING.variants.items() if v.paper}
    assert papers == {"FCN-8s transposed": "fcn.table2.fcn8s"}
    assert paper_number("fcn.table2.fcn8s").value > 0
    for preset in ("smoke", "paper"):
        run = Run(preset=preset) if preset == "smoke" else Run(data="voc", data_root="/x", preset="paper")
        assert resolve(UPSAMPLING, "U-Net bilinear", run).recipe.eval.checkerboard_period == 16
    assert UPSAMPLING.synthetic_task == "thin"


def test_unet_variants_are_padding_times_border_weight_on_touching_cells():
    variants = UNET_ABLATION.variants.values()
    grid = {(v.kwargs["padding"], v.recipe["optim"]["border_weight"]) for v in variants}
    assert grid == {(p, w) for p in ("valid", "same") for w in (False, True)}
    assert all(v.model == "unet" and v.paper is None for v in variants)
    assert UNET_ABLATION.synthetic_task == "touching"
    assert UNET_ABLATION.paper.pretrained is False


def test_weight_maps_come_from_the_loader_equal_to_the_step_computing_them():
    """With border_weight the runner hands the module's weight function to the data module: each
    training item carries its weight map (computed in the workers), the collated maps equal
    what the step would compute from the batch's masks, and the loss is the same."""
    from datamodules.synthetic import SyntheticDataModule

    cell = resolve(UNET_ABLATION, next(n for n, v in UNET_ABLATION.variants.items()
                                       if v.recipe["optim"]["border_weight"]), Run(changes={"width": 1 / 16}))
    dm = SyntheticDataModule(task="touching", num_train=4, num_val=2, image_size=64, batch_size=2,
                             num_workers=0, augment="none", crop_size=None)
    model = build_model("unet", dm.num_classes, **cell.model_kwargs)
    module = get_task("semantic").build_module(model, dm.num_classes, dm.class_names, cell.recipe)
    dm.pixel_weights = module.train_pixel_weights()
    dm.setup("fit")
    images, masks, weights = next(iter(dm.train_dataloader()))
    assert weights.shape == masks.shape and weights.dtype == torch.float32
    torch.testing.assert_close(weights, module.pixel_weights(masks), rtol=0, atol=0)
    module.log = lambda *a, **k: None  # no Trainer to log to
    torch.manual_seed(0)
    with_given = module.training_step((images, masks, weights), 0)
    torch.manual_seed(0)
    computed = module.training_step((images, masks), 0)
    assert with_given.item() == computed.item()
    # no border weight: the loader's items stay pairs
    plain = get_task("semantic").build_module(build_model("unet", 2, **cell.model_kwargs), 2, ("b", "c"),
                                              resolve(UNET_ABLATION, next(n for n, v in UNET_ABLATION.variants.items()
                                                      if not v.recipe["optim"]["border_weight"]),
                                                      Run(changes={"width": 1 / 16})).recipe)
    assert plain.train_pixel_weights() is None
