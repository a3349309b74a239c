"""Multi-process training on CPUs (gloo): SyncBatchNorm, DDP evaluation, global batch, SLURM scripts.

Real GPUs (NCCL, torch's fused SyncBatchNorm) and a real SLURM scheduler are not available here;
what runs is the same code path with the gloo backend and the job scripts in dry-run mode.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from experiments import runner
from experiments.distributed import global_rank
from experiments.recipe import Data, Recipe
from experiments.spec import Ablation, Variant
from models.sync_batchnorm import (
    SYNC_BATCHNORM_TYPES,
    CPUSyncBatchNorm,
    CPUSyncBatchNormAct,
    SyncBatchNormAct,
    convert_sync_batchnorm,
    revert_sync_batchnorm,
)
from tests.experiment_scripts import (
    REPO,
    cell_dir,
    clean_env,
    run,
    syncbn_data,
    syncbn_net,
    syncbn_worker,
    write_script,
)


@pytest.mark.slow
def test_cpu_sync_batchnorm_equals_batchnorm_on_the_whole_batch(tmp_path):
    """Two processes holding 3 and 2 samples get exactly one process's BatchNorm of all 5:
    outputs, input and parameter gradients, running statistics."""
    mp.spawn(syncbn_worker, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [r["synced"] for r in ranks] == [2, 2]

    ref = syncbn_net()
    x, w = syncbn_data()
    x.requires_grad_()
    out = ref(x)
    (out * w).sum().backward()
    close = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["out"] for r in ranks]), out.detach(), **close)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), x.grad, **close)
    for name, p in ref.named_parameters():  # DDP sums (averages) these across ranks
        torch.testing.assert_close(ranks[0]["grads"][name] + ranks[1]["grads"][name], p.grad, **close)
    for name, b in ref.named_buffers():
        for r in ranks:
            torch.testing.assert_close(r["buffers"][name], b, **close)


def test_revert_sync_batchnorm_gives_back_the_original_layers():
    from timm.layers import BatchNormAct2d

    net = syncbn_net()
    params = {n: p for n, p in net.named_parameters()}
    x, _ = syncbn_data()
    for cpu, (plain, act) in ((True, (CPUSyncBatchNorm, CPUSyncBatchNormAct)),
                              (False, (nn.SyncBatchNorm, SyncBatchNormAct))):
        synced = convert_sync_batchnorm(net, cpu=cpu)
        assert type(synced[1]) is plain and type(synced[4]) is act
        assert isinstance(synced[4].act, nn.ReLU)  # torch's converter would drop it
        if cpu:  # one process, no process group: plain BatchNorm behaviour, statistics updated
            synced.train()(x)
        net = revert_sync_batchnorm(synced)
        assert type(net[1]) is nn.BatchNorm2d and type(net[4]) is BatchNormAct2d
        assert not any(isinstance(m, SYNC_BATCHNORM_TYPES) for m in net.modules())
        assert all(p is params[n] for n, p in net.named_parameters())  # optimisers keep working
    assert int(net[1].num_batches_tracked) == 1 and not torch.equal(net[1].running_mean, torch.zeros(4))
    # a clean BatchNorm model again: loads into a fresh one and predicts identically
    fresh = syncbn_net()
    fresh.load_state_dict(net.state_dict())
    torch.testing.assert_close(fresh.eval()(x), net.eval()(x), atol=0, rtol=0)
    # torch's own converter (class unknown) reverts to BatchNorm2d
    torch_synced = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))
    assert type(revert_sync_batchnorm(torch_synced)[0]) is nn.BatchNorm2d


@pytest.mark.slow
def test_ddp_run_reports_the_metrics_of_one_process_on_the_same_weights(tmp_path):
    """Two DDP processes (SyncBN on) train a cell and evaluate 5 validation images (3 + 2 per
    rank); one process evaluating the same final weights gets identical metrics, so every image
    counted exactly once."""
    from datamodules.synthetic import SyntheticDataModule
    from experiments.recipe import from_dict
    from experiments.tasks import get_task
    from models import build_model

    script = write_script(tmp_path)
    out = tmp_path / "out"
    log = run(script, "--out", str(out), "--variant", "32s", "--seed", "0", "--devices", "2",
              "--accelerator", "cpu", "--max-steps", "4", "--batch-size", "2")
    assert "2 process(es), global batch 4 (2 x 2 per device x 1 accumulation), SyncBatchNorm" in log
    d = cell_dir(out)
    ddp = json.loads((d / "metrics.json").read_text())
    config = json.loads((d / "config.json").read_text())
    card, recipe = config["card"], from_dict(config["recipe"])
    assert ddp["world_size"] == 2 and ddp["global_batch"] == 4 and ddp["steps"] == 4
    assert ddp["sync_batchnorm_layers"] == 13 and card["bn"] == "sync" and card["batch_size_per_device"] == 2
    assert recipe.data.num_val == 5 and recipe.data.val_batch_size == 1

    dm = SyntheticDataModule(task="thin", seed=0, num_train=recipe.data.num_train, num_val=5,
                             image_size=recipe.data.image_size, batch_size=1, val_batch_size=1)
    model = build_model(card["model"], dm.num_classes, **{**card["model_kwargs"], "width": card["width"],
                                                          "pretrained": False})
    module = get_task("semantic").build_module(model, dm.num_classes, dm.class_names, recipe)
    ckpt = torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    module.load_state_dict(ckpt["state_dict"])  # strict: plain BatchNorm keys
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the DDP processes ran
    try:
        L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                  enable_model_summary=False).validate(module, dm, verbose=False)
    finally:
        torch.set_num_threads(threads)
    single = module.last_metrics["val"]
    for key in ("pixel_acc", "mean_acc", "miou", "fwiou"):
        assert ddp["val"][key] == pytest.approx(single[key], rel=1e-12, abs=1e-12), key
    for key in ("iou_per_class", "acc_per_class"):
        for a, b in zip(ddp["val"][key], single[key], strict=True):
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12), key
    # per-image counts: the two ranks' rows (images 0, 2, 4 and 1, 3) back in dataset order, each
    # once, equal to one process's
    from lightning_modules import per_image

    rows = per_image.load(d / "per_image_val.npz")
    assert rows["index"].tolist() == [0, 1, 2, 3, 4]
    for key, value in module.last_per_image["val"].items():
        np.testing.assert_array_equal(rows[key], value, err_msg=key)
    table = (out / "tiny" / "synthetic_thin-smoke" / "results.md").read_text()
    # a one-cell run refreshes the whole table: its own row, the other variant missing
    assert "(n=1), missing seeds [1, 2]" in table and "| FCN 8s | missing (3 seeds)" in table


PAPER_TINY = Ablation(
    name="tinypaper", title="global batch check", synthetic_task="thin",
    variants={"32s": Variant("fcn32s", {}, "fcn.table2.fcn32s")}, paper_data="voc",
    paper=Recipe(data=Data(global_batch=20, num_train=8, num_val=2)),
)


def test_the_paper_global_batch_is_split_over_the_processes(tmp_path, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(runner, "run_cell", lambda card, cell, *a, **k: seen.append((card, cell)))
    argv = ["--preset", "paper", "--pretrained", "false", "--out", str(tmp_path), "--quiet",
            "--accelerator", "cpu", "--no-figures"]
    runner.main(PAPER_TINY, argv + ["--devices", "2"])
    card, cell = seen[-1]
    assert (card["global_batch"], card["batch_size_per_device"], card["world_size"]) == (20, 10, 2)
    runner.main(PAPER_TINY, argv + ["--devices", "2", "--accumulate", "2"])
    assert seen[-1][1].batch_per_device == 5
    assert not [d for d in seen[-1][0]["deviations"] if d.startswith("global_batch")]
    with pytest.raises(SystemExit):
        runner.main(PAPER_TINY, argv + ["--devices", "3"])
    assert "global batch 20 (the paper's) cannot be split over 3 processes" in capsys.readouterr().err


def test_global_rank_from_the_launchers_environment(monkeypatch):
    for var in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert global_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "1")  # a child of Lightning's launcher
    assert global_rank() != 0
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")  # local rank 0 of the second node
    assert global_rank() != 0
    monkeypatch.setenv("SLURM_PROCID", "0")  # srun: the global rank
    assert global_rank() == 0
    monkeypatch.setenv("RANK", "3")  # torchrun
    assert global_rank() == 3


SLURM = REPO / "experiments" / "slurm"


def _bash(*args, env, check=True):
    proc = subprocess.run(["bash", *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_slurm_scripts_parse_and_dry_run_submits_the_unfinished_cells(tmp_path):
    for name in ("array.sbatch", "collect.sbatch", "submit.sh"):
        _bash("-n", SLURM / name, env=clean_env())
    array_text = (SLURM / "array.sbatch").read_text()
    for directive in ("#SBATCH --signal=SIGUSR1@90", "#SBATCH --requeue", "srun "):
        assert directive in array_text

    script, out = write_script(tmp_path), tmp_path / "out"
    env = clean_env(PYTHON=sys.executable, GPUS_PER_NODE="4", NODES="2", TIME="01:00:00",
                    PARTITION="gpu", MAX_PARALLEL="2", SEEDS="0 1", LOG_DIR=str(tmp_path / "logs"))
    # one cell already finished: the array covers the other three
    done = cell_dir(out, "FCN 8s", 1)
    done.mkdir(parents=True)
    (done / "metrics.json").write_text("{}")
    proc = _bash(SLURM / "submit.sh", "--dry-run", script, "--out", out, env=env)
    cells_file = next((tmp_path / "logs").glob("tiny_ablation-*-cells.txt"))
    assert cells_file.read_text().splitlines() == ["32s\t0", "32s\t1", "FCN 8s\t0"]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("sbatch ")]
    assert len(lines) == 2, proc.stderr
    array, collect = lines
    for part in ("--job-name=seg-tiny_ablation", "--partition=gpu", "--array=0-2%2", "--nodes=2",
                 "--ntasks-per-node=4", "--gpus-per-node=4", "--time=01:00:00", "array.sbatch"):
        assert part in array, array
    for part in ("--job-name=seg-tiny_ablation-collect", "--dependency=afterany:DRYRUN_JOB_ID",
                 "collect.sbatch"):
        assert part in collect, collect

    # what array task 2 and the collect job would run, with the variables sbatch/srun would set
    task_env = {**env, "CELLS_FILE": str(cells_file), "SCRIPT": str(script), "DRY_RUN": "1",
                "RUNNER_ARGS": f"--out {out}", "SLURM_ARRAY_TASK_ID": "2", "SLURM_NNODES": "2",
                "SLURM_NTASKS_PER_NODE": "4(x2)"}
    task = _bash(SLURM / "array.sbatch", env=task_env).stdout
    assert (f"srun --kill-on-bad-exit=1 {sys.executable} {script} --out {out} --variant FCN\\ 8s "
            f"--seed 0 --devices 4 --num-nodes 2 --quiet") in task
    task_env["SLURM_ARRAY_TASK_ID"] = "3"  # past the end of the list
    assert "no line 4" in _bash(SLURM / "array.sbatch", env=task_env, check=False).stderr
    collect_cmd = _bash(SLURM / "collect.sbatch", env=task_env).stdout
    assert f"{sys.executable} {script} collect --out {out} --seeds 0 1" in collect_cmd

    refused = _bash(SLURM / "submit.sh", "--dry-run", script, env={**env, "JOB_NAME": "bash"}, check=False)
    assert refused.returncode == 2 and "skips SLURM detection" in refused.stderr


def torchrun_cell(script, out) -> str:
    """One cell ("FCN 8s", seed 0) on 2 CPU processes started by torchrun; its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), "--quiet", "--out", str(out), "--variant", "FCN 8s", "--seed", "0",
         "--devices", "2", "--accelerator", "cpu", "--max-steps", "2"],
        cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


@pytest.mark.slow
def test_torchrun_launch_trains_with_ddp_and_writes_the_table_once(tmp_path):
    """torchrun (non-SLURM clusters) starts both processes itself; rank 1 knows it is not rank 0
    before any Trainer exists (RANK), so only rank 0 prints the banner and writes the table."""
    script, out = write_script(tmp_path), tmp_path / "out"
    log = torchrun_cell(script, out)
    metrics = json.loads((cell_dir(out, "FCN 8s", 0) / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 2 and metrics["sync_batchnorm_layers"] > 0
    assert log.count("| FCN 8s |") == 1 and log.count("=" * 100 + "\nSMOKE PRESET") == 1

    # the same cell of "another table" (a copy under another ablation's name): under DDP, both
    # processes evaluate its weights and rank 0 links them (experiments/reuse.py)
    cell = cell_dir(out, "FCN 8s", 0)
    other = out.joinpath("another", *cell.relative_to(out).parts[1:])  # <dataset>/FCN 8s/seed0
    shutil.copytree(cell, other)
    config = json.loads((other / "config.json").read_text())
    config["card"]["ablation"] = "another"
    (other / "config.json").write_text(json.dumps(config))
    shutil.rmtree(cell)
    log = torchrun_cell(script, out)
    again = json.loads((cell / "metrics.json").read_text())
    assert again["reused_weights"]["ablation"] == "another" and again["val"] == metrics["val"]
    assert log.count("[reuse] ") == 1 and (cell / "checkpoints" / "last.ckpt").is_file()
