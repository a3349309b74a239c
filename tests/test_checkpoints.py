"""Checkpoints are written atomically beside their target, verified before a resume, and never
unpickle code (``experiments/checkpoints.py``)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from experiments import checkpoints
from experiments.checkpoints import AtomicCheckpointIO, load_checkpoint, resume_checkpoint
from tests.experiment_scripts import cell_dir, clean_env, run, write_script


def save(path: Path, step: int, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"w": torch.full((64, 64), float(step))}}, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def moved_aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


@pytest.mark.parametrize("older", ["hpc_ckpt_1.ckpt", "checkpoints/last-v1.ckpt"])
def test_truncated_last_falls_back_to_the_older_valid_checkpoint(tmp_path, older):
    fallback = save(tmp_path / older, 6, mtime=1_000)
    last = save(tmp_path / "checkpoints" / "last.ckpt", 8, mtime=2_000)
    truncate(last, 0.3)
    with pytest.warns(UserWarning, match=r"last\.ckpt is unusable.*moved aside to last\.ckpt\.corrupt-"):
        assert resume_checkpoint(tmp_path) == fallback
    assert not last.exists() and len(moved_aside(last)) == 1
    assert resume_checkpoint(tmp_path) == fallback  # and the next rerun trips over nothing


def test_only_a_truncated_checkpoint_means_a_fresh_start(tmp_path):
    last = save(tmp_path / "checkpoints" / "last.ckpt", 4)
    truncate(last, 0.9)
    with pytest.warns(UserWarning, match="last.ckpt is unusable"):
        assert resume_checkpoint(tmp_path) is None
    assert not last.exists() and len(moved_aside(last)) == 1


def test_newest_by_stored_step_then_by_time(tmp_path):
    assert resume_checkpoint(tmp_path) is None
    last = save(tmp_path / "checkpoints" / "last.ckpt", 4, mtime=1_000)
    v1 = save(tmp_path / "checkpoints" / "last-v1.ckpt", 8, mtime=2_000)
    hpc = save(tmp_path / "hpc_ckpt_1.ckpt", 6, mtime=3_000)  # newer file, older training state
    assert resume_checkpoint(tmp_path) == v1
    v1.unlink()
    assert resume_checkpoint(tmp_path) == hpc
    save(last, 6, mtime=4_000)  # same step: the most recently written
    assert resume_checkpoint(tmp_path) == last
    (tmp_path / "checkpoints" / "last.ckpt.corrupt-1").write_bytes(b"x")  # never a candidate
    (tmp_path / "checkpoints" / "best.ckpt").write_bytes(b"x")
    assert resume_checkpoint(tmp_path) == last


def test_other_ranks_never_rename(tmp_path):
    last = save(tmp_path / "checkpoints" / "last.ckpt", 4)
    truncate(last)
    with pytest.warns(UserWarning, match="unusable"):
        assert resume_checkpoint(tmp_path, move_aside=False) is None
    assert last.exists()


def test_full_disk_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    last = save(tmp_path / "checkpoints" / "last.ckpt", 4)
    before = last.read_bytes()
    real_save = torch.save

    def disk_fills_up(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_fills_up)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 8}, last)
    monkeypatch.setattr(torch, "save", real_save)
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    assert not list((tmp_path / "tmp").iterdir())
    AtomicCheckpointIO().save_checkpoint({"global_step": 8}, last)
    assert load_checkpoint(last)["global_step"] == 8
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]


def test_every_checkpoint_the_cell_writes_goes_through_the_atomic_writer(tmp_path, monkeypatch):
    """Lightning's own writer (temporary file in $TMPDIR, then a move) is never used; nothing is
    left in $TMPDIR; best.ckpt is replaced in place."""
    import lightning.fabric.plugins.io.torch_io as torch_io

    from tests.test_runner import cell, run as run_tiny

    def bypassed(*args, **kwargs):
        raise AssertionError("a checkpoint was written by Lightning's TorchCheckpointIO")

    monkeypatch.setattr(torch_io, "_atomic_save", bypassed)
    written = []
    real = checkpoints.save_atomic
    monkeypatch.setattr(checkpoints, "save_atomic", lambda obj, path: (written.append(Path(path).name),
                                                                       real(obj, path)))
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    run_tiny(tmp_path / "out", "--variant", "32s", "--seed", "0")
    d = cell(tmp_path / "out", "32s", 0)
    assert {"last.ckpt", "best.ckpt"} <= set(written)
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not [p for p in tmpdir.rglob("*") if p.is_file()]


# ----------------------------------------------------------------------- no code from a checkpoint
class Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def plant(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": 99, "state_dict": {}, "hyper_parameters": {"x": Payload(marker)}}, path)
    return path


@pytest.fixture
def old_torch_default(monkeypatch):
    """torch.load without an explicit weights_only then unpickles anything."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


@pytest.mark.parametrize("name", ["checkpoints/last.ckpt", "hpc_ckpt_1.ckpt"])
def test_a_malicious_checkpoint_is_never_resumed_from(tmp_path, old_torch_default, name):
    marker = tmp_path / "marker"
    planted = plant(tmp_path / "run" / name, marker)
    with pytest.warns(UserWarning, match="unusable"):
        assert resume_checkpoint(tmp_path / "run") is None
    assert not marker.exists() and not planted.exists() and moved_aside(planted)
    with pytest.raises(Exception, match="(?i)weights.only|unsupported global"):
        AtomicCheckpointIO().load_checkpoint(moved_aside(planted)[0])  # Lightning's loader here
    assert not marker.exists()


def test_the_results_readers_refuse_a_malicious_checkpoint(tmp_path, old_torch_default):
    from experiments.results_folder import load_cell
    from tools.receptive_field import load_run
    from tools.rf_effective import load_lightning_weights

    marker = tmp_path / "marker"
    run_dir = tmp_path / "run"
    plant(run_dir / "checkpoints" / "last.ckpt", marker)
    config = {"card": {"variant": "32s", "dataset": "synthetic_thin-smoke", "seed": 0, "task": "semantic",
                       "model": "fcn32s", "model_kwargs": {}, "width": 0.0625}}
    (run_dir / "config.json").write_text(json.dumps(config))
    for load in (lambda: load_cell(run_dir), lambda: load_run(run_dir),
                 lambda: load_lightning_weights(torch.nn.Linear(1, 1), run_dir / "checkpoints" / "last.ckpt"),
                 lambda: load_checkpoint(run_dir / "checkpoints" / "last.ckpt")):
        with pytest.raises(Exception, match="(?i)weights.only|unsupported global"):
            load()
        assert not marker.exists()


@pytest.mark.slow
def test_a_run_never_executes_a_planted_checkpoint(tmp_path):
    """End to end with an old torch default: the planted last.ckpt is set aside, the run starts
    afresh and finishes; Lightning's own loads pass weights_only and its saves say what they
    save, so it never prints that ``weights_only`` was not set."""
    script = write_script(tmp_path)
    out, marker = tmp_path / "out", tmp_path / "marker"
    d = cell_dir(out)
    plant(d / "checkpoints" / "last.ckpt", marker)
    log = run(script, "--out", str(out), "--variant", "32s", "--seed", "0",
              env=clean_env(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1"))
    assert not marker.exists()
    assert "moved aside to last.ckpt.corrupt-" in log and "[resume]" not in log
    assert "was not set" not in log
    assert load_checkpoint(d / "checkpoints" / "last.ckpt")["global_step"] == 16


def test_background_writes_hold_the_state_at_the_call_and_wait_raises_a_failed_one(tmp_path, monkeypatch):
    """Checkpoints are written in a background thread (the training loop does not wait for the
    disk): the file holds the tensors as they were when the save was called, writes land in
    order, ``wait`` returns once they are on disk, and a failed write is raised, not lost."""
    import threading
    import time

    from experiments.checkpoints import BackgroundCheckpointIO

    release = threading.Event()
    original = AtomicCheckpointIO.save_checkpoint

    def slow(self, checkpoint, path, storage_options=None):
        release.wait(5)
        return original(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", slow)
    io = BackgroundCheckpointIO()
    weights = torch.zeros(3)
    io.save_checkpoint({"state_dict": {"w": weights}, "global_step": 1}, tmp_path / "last.ckpt")
    weights += 1  # the next optimiser step, while the first write is queued
    io.save_checkpoint({"state_dict": {"w": weights}, "global_step": 2}, tmp_path / "best.ckpt")
    assert not (tmp_path / "last.ckpt").exists()  # returned before writing
    release.set()
    io.wait()
    assert torch.equal(load_checkpoint(tmp_path / "last.ckpt")["state_dict"]["w"], torch.zeros(3))
    assert torch.equal(load_checkpoint(tmp_path / "best.ckpt")["state_dict"]["w"], torch.ones(3))
    # SLURM's checkpoint, written as the job is requeued: on disk when the call returns
    io.save_checkpoint({"global_step": 3}, tmp_path / "hpc_ckpt_1.ckpt")
    assert load_checkpoint(tmp_path / "hpc_ckpt_1.ckpt")["global_step"] == 3

    def full_disk(self, checkpoint, path, storage_options=None):
        time.sleep(0.05)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", full_disk)
    io.save_checkpoint({"global_step": 4}, tmp_path / "last.ckpt")
    with pytest.raises(OSError, match="No space left"):
        io.wait()
    assert load_checkpoint(tmp_path / "last.ckpt")["global_step"] == 1  # the previous one, whole


def test_a_cell_writes_its_checkpoints_in_the_background_and_waits_for_the_final_one(tmp_path, monkeypatch):
    from experiments.checkpoints import BackgroundCheckpointIO
    from experiments.runner import main
    from tests.test_final_validation import TINY

    seen = []
    original = BackgroundCheckpointIO.wait

    def wait(self):
        seen.append(type(self))
        return original(self)

    monkeypatch.setattr(BackgroundCheckpointIO, "wait", wait)
    main(TINY, ["--out", str(tmp_path), "--quiet", "--seeds", "0", "--no-figures"])
    cell = tmp_path / "finalval" / "synthetic_thin-smoke" / "OS 16" / "seed0"
    assert seen and (cell / "metrics.json").is_file()
    assert load_checkpoint(cell / "checkpoints" / "last.ckpt")["global_step"] == 6
