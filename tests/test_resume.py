"""Runs survive being killed: rerunning the same command resumes and ends exactly where an
uninterrupted run ends (CPU, deterministic), and an interrupted sweep trains only what is missing.

The training runs are real subprocesses (``tests/experiment_scripts.py``): 12 steps per epoch,
16 steps, checkpoints and validation every 4 steps; they are signalled while paused after step 6,
in the middle of the first epoch, so the rerun replays steps 5-16 (or 7-16 from SLURM's
checkpoint) across an epoch boundary and past a validation that coincides with a checkpoint.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from experiments import runner
from experiments.checkpoints import load_checkpoint
from experiments.training_log import read_training_log
from experiments.recipe import Recipe
from experiments.spec import Ablation, Variant
from tests.experiment_scripts import cell_dir, clean_env, interrupt, run, write_script

CELL = ("--variant", "32s", "--seed", "0")


def final_state(out):
    d = cell_dir(out)
    ckpt = load_checkpoint(d / "checkpoints" / "last.ckpt")
    best = load_checkpoint(d / "checkpoints" / "best.ckpt")
    log = [(r["step"], r.get("train/loss"), r.get("val/miou")) for r in read_training_log(d)]
    return (ckpt["global_step"], ckpt["state_dict"], json.loads((d / "metrics.json").read_text()),
            (best["global_step"], best["state_dict"]), log)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: (script, final step, weights, metrics)."""
    tmp = tmp_path_factory.mktemp("reference")
    script = write_script(tmp)
    run(script, "--out", str(tmp / "out"), *CELL)
    return (script, *final_state(tmp / "out"))


def assert_same_result(out, reference) -> None:
    """The same final weights and metrics, the same best.ckpt (one file, no best-v1.ckpt beside
    a stale one), and the training log of every step, across the attempts."""
    _, step, weights, metrics, best, log = reference
    got_step, got_weights, got_metrics, got_best, got_log = final_state(out)
    assert got_step == step == 16
    assert got_weights.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(got_weights[key], value), f"{key} differs from the uninterrupted run"
    assert json.dumps(got_metrics["val"]) == json.dumps(metrics["val"])  # NaN-safe, exact
    assert sorted(p.name for p in (cell_dir(out) / "checkpoints").glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert got_best[0] == best[0] and all(torch.equal(got_best[1][k], v) for k, v in best[1].items())
    assert [s for s, loss, _ in log if loss is not None] == list(range(16))
    assert got_log == log, "training log rows lost or changed by the resume"


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGUSR1, -signal.SIGUSR1)],
                         ids=["SIGTERM", "SIGUSR1"])
def test_killed_run_resumes_from_last_ckpt_exactly(tmp_path, reference, sig, status):
    """SIGTERM: Lightning stops after the step, the cell exits 143. SIGUSR1 outside SLURM: no
    handler, the process dies. Either way no metrics.json; the rerun resumes from step 4."""
    script, out = reference[0], tmp_path / "out"
    rc = interrupt(script, "--out", str(out), *CELL, at_step=6, sig=sig, env=clean_env(),
                   log=tmp_path / "killed.log")
    assert rc == status, (tmp_path / "killed.log").read_text()[-3000:]
    d = cell_dir(out)
    assert not (d / "metrics.json").exists() and not list(d.glob("hpc_ckpt_*.ckpt"))
    assert load_checkpoint(d / "checkpoints" / "last.ckpt")["global_step"] == 4
    log = run(script, "--out", str(out), *CELL)
    assert f"[resume] {d}: from checkpoints/last.ckpt" in log
    assert_same_result(out, reference)


@pytest.mark.slow
def test_slurm_requeue_resumes_from_the_hpc_checkpoint_exactly(tmp_path, reference):
    """Under SLURM (simulated environment, fake ``scontrol``), SIGUSR1 makes Lightning write
    ``hpc_ckpt_1.ckpt`` at step 6 and requeue the array task; the requeue's SIGTERM stops the
    run; the requeued command resumes from the hpc checkpoint (newer than last.ckpt) and ends as
    the uninterrupted run, evaluating the final weights (not the hpc checkpoint's)."""
    script, out = reference[0], tmp_path / "out"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\nkill -TERM "$PPID"\n')
    scontrol.chmod(0o755)
    env = clean_env(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SCONTROL_LOG=str(tmp_path / "scontrol.log"),
        SLURM_JOB_ID="4242", SLURM_ARRAY_JOB_ID="4240", SLURM_ARRAY_TASK_ID="2",
        SLURM_JOB_NAME="seg-tiny", SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1", SLURM_NNODES="1",
        SLURM_NODEID="0", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODELIST="localhost",
    )
    rc = interrupt(script, "--out", str(out), *CELL, at_step=6, sig=signal.SIGUSR1, env=env,
                   log=tmp_path / "requeued.log")
    assert rc == 143, (tmp_path / "requeued.log").read_text()[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4240_2"]
    d = cell_dir(out)
    hpc = d / "hpc_ckpt_1.ckpt"
    assert load_checkpoint(hpc)["global_step"] == 6 and not (d / "metrics.json").exists()
    log = run(script, "--out", str(out), *CELL, env=env)
    assert f"[resume] {d}: from hpc_ckpt_1.ckpt" in log
    # the evaluation is of the final weights: the training loop's validation at the last step
    # (tests/test_final_validation.py), never the hpc checkpoint Lightning would load by default
    assert f"Loaded model weights from the checkpoint at {hpc}" not in log
    assert "was not set" not in log  # Lightning's SLURM save says what it saves (full state)
    assert_same_result(out, reference)


def test_training_loader_resumes_mid_epoch_and_into_the_next_epoch():
    """What Lightning saves (``loader.state_dict()``) continues the epoch with the next batch and
    the following epoch with the uninterrupted order (a generator-drawn shuffle would not)."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    from datamodules.base import ResumableShuffleSampler

    data = list(range(10))

    def loader():
        return StatefulDataLoader(data, batch_size=2, drop_last=True,
                                  sampler=ResumableShuffleSampler(data, 1, 0, seed=3))

    def epoch(dl):
        return [b.tolist() for b in dl]

    full = loader()
    epoch0 = epoch(full)
    full.sampler.set_epoch(1)
    epoch1 = epoch(full)
    assert epoch0 != epoch1 and sorted(sum(epoch0, [])) == data

    interrupted = loader()
    it = iter(interrupted)
    seen = [next(it).tolist() for _ in range(2)]
    resumed = loader()
    resumed.load_state_dict(interrupted.state_dict())
    assert seen + epoch(resumed) == epoch0
    resumed.sampler.set_epoch(1)  # Lightning does this at every epoch start
    assert epoch(resumed) == epoch1
    # under DDP the ranks split each epoch's permutation
    ranks = [list(ResumableShuffleSampler(data, 2, r, seed=3)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == data


SWEEP = Ablation(
    name="sweep", title="interrupted sweep", synthetic_task="thin",
    variants={"32s": Variant("fcn32s", {}, "fcn.table2.fcn32s"),
              "8s": Variant("fcn8s", {}, "fcn.table2.fcn8s")},
    paper_data="voc",
    paper=Recipe(),
    smoke={"width": 0.0625,
           "data": {"num_train": 8, "num_val": 3, "image_size": 64, "global_batch": 4, "val_batch_size": 4},
           "trainer": {"max_steps": 2, "val_every": 2, "checkpoint_every": 2}},
)


@pytest.mark.slow
def test_interrupted_sweep_reruns_only_the_missing_cells(tmp_path, monkeypatch, capsys):
    argv = ["--out", str(tmp_path), "--seeds", "0", "1", "--quiet"]
    real_run_cell, trained = runner.run_cell, []

    def dies_in_third_cell(card, cell, run, run_dir, *args, **kwargs):
        if len(trained) == 2:
            raise KeyboardInterrupt  # the job is killed while the third cell starts
        trained.append((card["variant"], card["seed"]))
        return real_run_cell(card, cell, run, run_dir, *args, **kwargs)

    monkeypatch.setattr(runner, "run_cell", dies_in_third_cell)
    with pytest.raises(KeyboardInterrupt):
        runner.main(SWEEP, argv)
    assert trained == [("32s", 0), ("32s", 1)]
    capsys.readouterr()
    runner.main(SWEEP, ["cells", *argv])
    assert capsys.readouterr().out.split("\n") == ["8s\t0", "8s\t1", ""]

    def records(card, cell, run, run_dir, *args, **kwargs):
        if not (run_dir / "metrics.json").exists():
            trained.append((card["variant"], card["seed"]))
        return real_run_cell(card, cell, run, run_dir, *args, **kwargs)

    monkeypatch.setattr(runner, "run_cell", records)
    done = tmp_path / "sweep" / "synthetic_thin-smoke" / "32s" / "seed0" / "metrics.json"
    stamp = done.stat().st_mtime_ns
    rows = runner.main(SWEEP, argv)
    assert trained[2:] == [("8s", 0), ("8s", 1)] and done.stat().st_mtime_ns == stamp
    assert [(r["variant"], r["n"], r["missing_seeds"]) for r in rows] == [("32s", 2, []), ("8s", 2, [])]
    table = (tmp_path / "sweep" / "synthetic_thin-smoke" / "results.md").read_text()
    assert "missing" not in table and table.count("(n=2)") == 2
