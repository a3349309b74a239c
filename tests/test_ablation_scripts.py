"""Every variant of every experiment script builds and trains one step on the CPU, through the
script's own recipe and the shared runner (only data size, width and steps are shrunk)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from experiments.runner import main, merge

SCRIPTS = sorted(Path(__file__).resolve().parents[1].glob("experiments/*_ablation.py"))
TINY = {"width": 0.0625,
        "data": {"num_train": 2, "num_val": 2, "batch_size": 2, "val_batch_size": 2},
        "trainer": {"max_steps": 1, "val_every": 1, "checkpoint_every": 1}}


def load(script: Path):
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ABLATION


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_every_variant_trains_one_step(script, tmp_path):
    ablation = load(script)
    recipe = merge(ablation.smoke_recipe, TINY)
    from datamodules.synthetic import SYNTHETIC_TASKS

    if ablation.synthetic_task in SYNTHETIC_TASKS:  # the smallest images the task allows
        recipe["data"]["image_size"] = SYNTHETIC_TASKS[ablation.synthetic_task].min_image_size
    tiny = dataclasses.replace(ablation, smoke_recipe=recipe)
    rows = main(tiny, ["--out", str(tmp_path), "--quiet", "--seeds", "0"])
    # one row per variant (and again after the dense CRF, when the script runs it)
    assert [r["variant"] for r in rows] == list(ablation.variants) * (2 if ablation.always_crf else 1)
    for row in rows:
        assert row["n"] == 1, row
        assert row["mean"] is not None and row["params"] > 0
    for metrics in tmp_path.glob(f"{ablation.name}/*/*/seed0/metrics.json"):
        data = json.loads(metrics.read_text())
        assert data["steps"] == 1
        module = json.loads((metrics.parent / "config.json").read_text())["resolved"]["module"]
        if module.get("eval_output_stride"):
            assert data["val"]["eval_output_stride"] == module["eval_output_stride"]
        if ablation.always_crf:
            assert "val_crf" in data and data["crf"]["iterations"] > 0
