"""Stage-wise training (experiments/stages.py): a cell starts from exactly its parent cell's final
weights; parents are trained first; the SLURM submission runs one array per dependency level."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch

from experiments.card import Run, resolve
from experiments.recipe import Recipe, RecipeError
from experiments.runner import main
from experiments.spec import Ablation, Variant
from experiments.stages import cell_levels, check_parents, init_from_checkpoint, stage_order
from models import build_model

TINY = Ablation(
    name="stages", title="stage-wise check", synthetic_task="thin",
    variants={
        "32s": Variant("fcn32s", {}, "fcn.table2.fcn32s"),
        "16s": Variant("fcn16s", {}, "fcn.table2.fcn16s", recipe={"init_from": "32s"}),
        "8s": Variant("fcn8s", {}, "fcn.table2.fcn8s", recipe={"init_from": "16s"}),
    },
    paper_data="voc",
    paper=dataclasses.replace(Recipe(), optim=dataclasses.replace(Recipe().optim, stage_lr_factor=0.1)),
    smoke={"width": 0.0625, "data": {"num_train": 4, "num_val": 2, "image_size": 64, "global_batch": 2},
           "trainer": {"max_steps": 2, "val_every": 2, "checkpoint_every": 2}},
)


def test_order_is_topological_and_cycles_are_named():
    parents = {"8s": "16s", "16s": "32s", "32s": None, "at-once": None}
    assert stage_order(["8s", "at-once", "16s", "32s"], parents.get) == ["32s", "16s", "8s", "at-once"]
    assert stage_order(["8s", "16s"], parents.get) == ["16s", "8s"]  # 32s not selected
    with pytest.raises(ValueError, match="cycle: a -> b -> a"):
        stage_order(["a", "b"], {"a": "b", "b": "a"}.get)


def test_levels_and_unfinished_unselected_parents(tmp_path):
    parents = {"8s": "16s", "16s": "32s", "32s": None}
    done = {("32s", 0)}
    levels = cell_levels(["32s", "16s", "8s"], [0, 1], parents.get, lambda n, s: (n, s) in done)
    assert levels == [(0, "32s", 1), (0, "16s", 0), (1, "16s", 1), (1, "8s", 0), (2, "8s", 1)]
    with pytest.raises(ValueError, match=r"16s \(seed 0\) initialises from 32s \(seed 0\), which has not finished"):
        check_parents(["16s"], [0], parents.get, tmp_path)
    check_parents(["32s", "16s"], [0], parents.get, tmp_path)  # selected together: fine


def test_resolve_scales_the_lr_per_stage_and_checks_names():
    run = Run(data="voc", data_root="/nowhere", preset="paper")
    lrs = {n: resolve(TINY, n, run).recipe.optim.lr for n in TINY.variants}
    assert lrs == {"32s": 0.01, "16s": 0.001, "8s": 0.0001}  # lr × 0.1 per stage
    bad = dataclasses.replace(TINY, variants={**TINY.variants, "16s": Variant("fcn16s", recipe={"init_from": "3s"})})
    with pytest.raises(RecipeError, match="init_from.*'3s'.*did you mean '32s'"):
        resolve(bad, "16s", run)
    loop = dataclasses.replace(TINY, variants={**TINY.variants, "32s": Variant("fcn32s", recipe={"init_from": "8s"})})
    with pytest.raises(RecipeError, match="cycle"):
        resolve(loop, "16s", run)
    off = Run(data="voc", data_root="/nowhere", preset="paper", changes={"init_from": None})
    assert resolve(TINY, "8s", off).recipe.init_from is None and resolve(TINY, "8s", off).recipe.optim.lr == 0.01


def test_init_copies_exactly_the_parents_tensors_of_matching_name_and_shape(tmp_path):
    torch.manual_seed(0)
    parent = build_model("fcn16s", 4, width=0.0625)
    with torch.no_grad():
        for p in parent.parameters():
            p.add_(torch.randn_like(p))  # trained: nothing like a fresh initialisation
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in parent.state_dict().items()}, "global_step": 7}, path)
    child = build_model("fcn8s", 4, width=0.0625)
    fresh = {k: v.clone() for k, v in child.state_dict().items()}
    record = init_from_checkpoint(child, path)
    own, theirs = child.state_dict(), parent.state_dict()
    assert set(record["copied"]) == {k for k in own if k in theirs and own[k].shape == theirs[k].shape}
    for k in record["copied"]:
        assert torch.equal(own[k], theirs[k]), k
    for k in record["kept"]:
        assert torch.equal(own[k], fresh[k]), k
    # FCN-8s from FCN-16s: the backbone, score_fr, the pool4 skip and its learned 2x upsampling
    # come from the parent; the new pool3 skip and the 8x final upsampling (other kernel) do not
    assert "score_skips.pool4.weight" in record["copied"] and "upscore_skips.0.weight" in record["copied"]
    assert set(record["kept"]) == {"score_skips.pool3.weight", "score_skips.pool3.bias",
                                   "upscore_skips.1.weight", "upscore.weight"}
    assert record["kept"]["upscore.weight"].startswith("shape")
    with pytest.raises(ValueError, match="no tensor"):
        init_from_checkpoint(build_model("unet", 4, base_channels=4, depth=1), path)


@pytest.mark.slow
def test_runner_trains_parents_first_and_the_child_starts_from_the_parents_final_weights(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--out", str(out), "--quiet", "--seeds", "0", "--no-figures"]
    with pytest.raises(SystemExit):  # the child alone, its parent never trained: refused
        main(TINY, [*args, "--variants", "16s"])
    assert "initialises from 32s (seed 0), which has not finished" in capsys.readouterr().err
    main(TINY, ["cells", "--levels", *args])
    assert capsys.readouterr().out.splitlines() == ["0\t32s\t0", "1\t16s\t0", "2\t8s\t0"]

    # AdamW at lr 2e-3 x 1e-30 per stage: the child's training moves its weights by ~1e-33 at
    # most, so its final parameters are what it started from (a fresh initialisation differs by
    # ~1e-2; zero-initialised weights can take the 1e-33 steps, hence the tolerance)
    frozen = dataclasses.replace(TINY, smoke={**TINY.smoke, "optim": {"stage_lr_factor": 1e-30}})
    main(frozen, [*args, "--variants", "16s", "32s"])  # listed child first: trained second
    cells = out / "stages" / "synthetic_thin-smoke"
    parent = torch.load(cells / "32s/seed0/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    child = torch.load(cells / "16s/seed0/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    record = json.loads((cells / "16s/seed0/init_from.json").read_text())
    assert record["checkpoint"] == str(cells / "32s/seed0/checkpoints/last.ckpt")
    params = {n for n, _ in build_model("fcn16s", 3, width=0.0625, batch_norm=True).named_parameters()}
    copied = [k for k in record["copied"] if k in params]
    assert len(copied) > 20 and "score_fr.weight" in copied
    for k in copied:
        torch.testing.assert_close(child[f"model.{k}"], parent[f"model.{k}"], rtol=0, atol=1e-30, msg=k)
    assert set(record["kept"]) == {"score_skips.pool4.weight", "score_skips.pool4.bias",
                                   "upscore_skips.0.weight", "upscore.weight"}
    metrics = json.loads((cells / "16s/seed0/metrics.json").read_text())
    assert metrics["init_from"]["copied"] == len(record["copied"])
    config = json.loads((cells / "16s/seed0/config.json").read_text())["card"]
    assert config["init_from"] == "32s" and config["lr"] == pytest.approx(2e-33)
    capsys.readouterr()
    main(TINY, ["cells", "--levels", *args])  # 8s's parent has finished now: level 0
    assert capsys.readouterr().out.splitlines() == ["0\t8s\t0"]


@pytest.mark.slow
def test_submit_runs_one_array_per_level_after_the_previous(tmp_path):
    from tests.experiment_scripts import clean_env, write_script
    from tests.test_distributed import SLURM, _bash

    script = write_script(tmp_path)
    text = script.read_text()
    old = 'Variant("fcn8s", {}, "fcn.table2.fcn8s")'
    assert old in text
    script.write_text(text.replace(old, 'Variant("fcn8s", {}, "fcn.table2.fcn8s", recipe={"init_from": "32s"})'))
    env = clean_env(PYTHON=sys.executable, SEEDS="0 1", LOG_DIR=str(tmp_path / "logs"))
    proc = _bash(SLURM / "submit.sh", "--dry-run", script, "--out", tmp_path / "out", env=env)
    level0 = next((tmp_path / "logs").glob("tiny_ablation-*-cells.txt"))
    level1 = next((tmp_path / "logs").glob("tiny_ablation-*-cells-level1.txt"))
    assert level0.read_text().splitlines() == ["32s\t0", "32s\t1"]
    assert level1.read_text().splitlines() == ["FCN 8s\t0", "FCN 8s\t1"]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("sbatch ")]
    assert len(lines) == 3, proc.stderr
    first, second, collect = lines
    assert "--dependency" not in first and f"CELLS_FILE={level0}" in first and "--array=0-1" in first
    assert "--dependency=afterok:DRYRUN_JOB_ID0" in second and f"CELLS_FILE={level1}" in second
    assert "--dependency=afterany:DRYRUN_JOB_ID0:DRYRUN_JOB_ID1" in collect


@pytest.mark.slow
def test_jobs_train_cells_side_by_side_children_after_their_parents(tmp_path, capsys):
    """--jobs 2: two processes share the sweep through the cell locks; a child cell whose parent
    the other process is training is left to that process; every cell ends trained once, from
    its parent's final weights, with half the threads, and the table is written once."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fcn_skip_ablation", "experiments/fcn_skip_ablation.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    threads = torch.get_num_threads()
    out = tmp_path / "out"
    main(script.ABLATION, ["--out", str(out), "--quiet", "--no-figures", "--jobs", "2", "--variants", "FCN-32s",
                           "FCN-16s", "--seeds", "0", "1", "--max-steps", "40", "--width", "0.0625", "--image-size",
                           "64", "--set", "data.num_train=8", "--set", "data.num_val=4"])
    assert torch.get_num_threads() == threads  # this process's threads are given back
    assert f"[jobs] 2 processes side by side, {max(1, threads // 2)} CPU thread(s) each" in capsys.readouterr().out
    cells = out / "fcn_skip" / "synthetic_thin64px-smoke"
    for seed in (0, 1):
        for name in ("FCN-32s", "FCN-16s"):
            metrics = json.loads((cells / name / f"seed{seed}" / "metrics.json").read_text())
            assert metrics["environment"]["cpu_threads"] == max(1, threads // 2)
        record = json.loads((cells / "FCN-16s" / f"seed{seed}" / "init_from.json").read_text())
        assert record["checkpoint"] == str(cells / "FCN-32s" / f"seed{seed}" / "checkpoints" / "last.ckpt")
    table = (cells / "results.md").read_text()
    assert "| FCN-32s |" in table and "| FCN-16s |" in table and "(n=2)" in table
    with pytest.raises(SystemExit):  # one cell cannot be split
        main(script.ABLATION, ["--out", str(out), "--jobs", "2", "--variant", "FCN-32s", "--seed", "0"])
    assert "--jobs N runs several cells side by side" in capsys.readouterr().err
