"""Every variant of every experiment script builds and trains one step on the CPU through the
script's own smoke recipe and the shared runner (only data size, width and steps are shrunk),
and every ``--option`` choice trains one step on the paper preset too, on an export of synthetic
data in the real dataset layout."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from experiments.runner import main

SCRIPTS = sorted(Path(__file__).resolve().parents[1].glob("experiments/*_ablation.py"))
TINY = {"width": 0.0625,
        "data": {"num_train": 2, "num_val": 2, "global_batch": 2, "val_batch_size": 2},
        "trainer": {"max_steps": 1, "val_every": 1, "checkpoint_every": 1}}


def load(script: Path):
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ABLATION


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def option_choices(ablation) -> list[list[str]]:
    return [[]] + [[f"--{name}", choice] for name, option in ablation.options.items()
                   for choice in option.choices if choice != option.default]


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_every_variant_trains_one_step(script, tmp_path):
    ablation = load(script)
    smoke = merge(ablation.smoke, TINY)
    from datamodules.synthetic import SYNTHETIC_TASKS

    if ablation.synthetic_task in SYNTHETIC_TASKS:  # the smallest images the task allows
        smoke["data"]["image_size"] = SYNTHETIC_TASKS[ablation.synthetic_task].min_image_size
    tiny = dataclasses.replace(ablation, smoke=smoke)
    for extra in option_choices(ablation):
        out = tmp_path / "_".join(extra or ["default"])
        # steps and batch on the command line too: a variant's own smoke recipe (a schedule row)
        # sits above the ablation's smoke changes
        rows = main(tiny, ["--out", str(out), "--quiet", "--seeds", "0", "--no-figures", "--max-steps", "1",
                           "--global-batch", "2", *extra])
        chosen = ablation.with_option(extra[0][2:], extra[1]) if extra else ablation
        crf = ablation.paper.eval.crf is not None
        # one row per variant (and again after the dense CRF, when the script runs it)
        assert [r["variant"] for r in rows] == list(chosen.variants) * (2 if crf else 1)
        for row in rows:
            assert row["n"] == 1 and row["mean"] is not None and row["params"] > 0, row
        for metrics in out.glob(f"{ablation.name}/*/*/seed0/metrics.json"):
            data = json.loads(metrics.read_text())
            assert data["steps"] == 1
            card = json.loads((metrics.parent / "config.json").read_text())["card"]
            if card["eval"]["output_stride"]:
                assert data["val"]["eval_output_stride"] == card["eval"]["output_stride"]
            if crf:
                assert "val_crf" in data and data["crf"]["iterations"] > 0


def _export(ablation, root: Path) -> tuple[str, list[str]]:
    """Synthetic data in the layout of the paper preset's dataset; the flags that read it."""
    if ablation.task == "instance":
        from datamodules.synthetic.instances import export_synthetic_instances

        export_synthetic_instances(root, num_train=2, num_val=2, image_size=64)
        return "voc", ["--set", "model.min_size=64", "--set", "model.max_size=64"]
    from datamodules.synthetic import SYNTHETIC_TASKS, export_synthetic

    layout = "ade20k" if ablation.paper_data == "ade20k" else "voc"
    size = SYNTHETIC_TASKS[ablation.synthetic_task].min_image_size
    export_synthetic(ablation.synthetic_task, root, layout=layout, num_train=2, num_val=2, image_size=size)
    # the export has VOC's own split lists (not SBD's train.txt, not the seg11valid ids)
    flags = ["--set", f"data.crop_size={size}"] + (["--set", "data.train_split=train", "--set", "data.val_split=val"]
                                                   if layout == "voc" else [])
    if ablation.paper.eval.pad_to:
        flags += ["--set", f"eval.pad_to={size}"]
    if ablation.paper.eval.base_size:  # hszhao/semseg's protocol at the synthetic images' size
        flags += ["--set", f"eval.base_size={size}", "--set", f"eval.window={size}"]
    return layout, flags


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_every_option_trains_one_step_on_the_paper_preset(script, tmp_path):
    ablation = load(script)
    layout, flags = _export(ablation, tmp_path / "data")
    root = tmp_path / "data"
    for extra in option_choices(ablation):
        chosen = ablation.with_option(extra[0][2:], extra[1]) if extra else ablation
        variant = next(iter(chosen.variants))
        out = tmp_path / "_".join(extra or ["default"])
        # batch 2: BatchNorm after a global pooling (ASPP image pooling, PSPNet's bin 1) needs two images
        rows = main(ablation, ["--data", layout, "--data-root", str(root), "--variant", variant, "--seed", "0",
                               "--out", str(out), "--quiet", "--no-figures", "--width", "0.0625",
                               "--pretrained", "false", "--max-steps", "1", "--batch-size", "2",
                               "--workers", "0", "--skip-data-check", "--set", "trainer.val_every=1", *flags, *extra])
        row = next(r for r in rows if r["variant"] == variant)
        assert row["n"] == 1 and row["mean"] is not None
        config = json.loads(next(out.glob(f"{ablation.name}/*-paper/*/seed0/config.json")).read_text())
        assert config["card"]["preset"] == "paper" and config["card"]["optimizer"] == "sgd"
