"""fit → test through the real loading code: synthetic data exported in the VOC / ADE20K layouts."""

import lightning as L
import pytest
import torch

from datamodules import ADE20KDataModule, VOCDataModule, export_synthetic
from lightning_modules import SegmentationModule
from models import build_model


@pytest.mark.parametrize("layout", ["voc", "ade20k"])
def test_fit_then_test_on_exported_layout(tmp_path, layout):
    root = export_synthetic("thin", tmp_path / "data", layout=layout, num_train=8, num_val=3, image_size=64)
    common = dict(batch_size=4, val_batch_size=2, crop_size=64, augment="flip", num_workers=0)
    if layout == "voc":
        dm = VOCDataModule(str(root), train_split="train", val_split="val", **common)
    else:
        dm = ADE20KDataModule(str(root), **common)
    torch.manual_seed(0)
    module = SegmentationModule(build_model("fcn8s", dm.num_classes, width=1 / 16), dm.num_classes,
                       optimizer="adamw", lr=1e-3)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2
    trainer.validate(module, datamodule=dm, verbose=False)
    val = module.last_metrics["val"]
    trainer.test(module, datamodule=dm, verbose=False)
    test = module.last_metrics["test"]
    # the test split defaults to the validation images: same model, same data, same numbers
    assert test["miou"] == pytest.approx(val["miou"]) and 0.0 <= test["miou"] <= 1.0
    assert test["pixel_acc"] == pytest.approx(val["pixel_acc"])
    assert len(test["iou_per_class"]) == dm.num_classes


@pytest.mark.parametrize("layout", ["voc", "ade20k"])
def test_pathlib_root_is_stored_as_str_so_checkpoints_load_weights_only(tmp_path, layout):
    root = export_synthetic("thin", tmp_path / "data", layout=layout, num_train=2, num_val=1, image_size=64)
    cls = VOCDataModule if layout == "voc" else ADE20KDataModule
    dm = cls(root, **({"train_split": "train"} if layout == "voc" else {}))  # a pathlib.Path
    assert type(dm.hparams["root"]) is str and dm.hparams["root"] == str(root)
    path = tmp_path / "hp.pt"
    torch.save({"hparams": dict(dm.hparams)}, path)
    torch.load(path, weights_only=True)  # what Lightning does with checkpoints; refuses Path
