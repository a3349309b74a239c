"""One process per cell (``experiments/lock.py``): a second process on a cell that is being
trained skips it; a lock left by a killed process is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from experiments.lock import TOKEN_VAR, CellLock
from tests.experiment_scripts import cell_dir, clean_env, run, start_paused, write_script

CELL = ("--variant", "32s", "--seed", "0")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(run_dir, **holder) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ".lock").write_text(json.dumps({"host": socket.gethostname(), "time": time.time(),
                                                "token": "other-job", **holder}))


@pytest.mark.slow
def test_two_processes_on_one_cell_train_it_once(tmp_path):
    script = write_script(tmp_path)
    out, go = tmp_path / "out", tmp_path / "go"
    env = clean_env(GO_MARKER=str(go))
    first = start_paused(script, "--out", str(out), *CELL, at_step=2, env=env, log=tmp_path / "first.log")
    try:
        d = cell_dir(out)
        holder = json.loads((d / ".lock").read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        second = run(script, "--out", str(out), *CELL, env=clean_env())  # a resubmitted task: exit 0
        assert f"[locked] {d}: skipped" in second and f"PID {first.pid}" in second
        assert "[cell]" not in second and "[resume]" not in second
    finally:
        go.write_text("go")
        rc = first.wait(timeout=240)
    assert rc == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert [p.name for p in (d / "logs").iterdir()] == ["attempt-1"]  # one training only
    assert json.loads((d / "metrics.json").read_text())["steps"] == 16
    assert not (d / ".lock").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    from tests.test_runner import cell, run as run_tiny

    d = cell(tmp_path, "32s", 0)
    pid = dead_pid()
    write_lock(d, pid=pid)
    with pytest.warns(UserWarning, match=rf"taking over a stale lock \(host {socket.gethostname()}, PID {pid}"):
        run_tiny(tmp_path, *CELL)
    assert (d / "metrics.json").exists() and not (d / ".lock").exists()


def test_a_live_lock_is_respected_and_an_old_foreign_one_expires(tmp_path, capsys):
    from tests.test_runner import cell, run as run_tiny

    d = cell(tmp_path, "32s", 0)
    write_lock(d, pid=os.getpid())  # a live process on this host
    run_tiny(tmp_path, *CELL)
    assert f"[locked] {d}: skipped" in capsys.readouterr().out
    assert not (d / "metrics.json").exists() and not (d / "checkpoints").exists()
    write_lock(d, pid=1, host="elsewhere", time=time.time() - 10)  # another host: judged by age
    assert not CellLock(d, max_age_s=3600).acquire()
    lock = CellLock(d, max_age_s=5)
    with pytest.warns(UserWarning, match="stale lock"):
        assert lock.acquire()
    lock.release()
    assert not (d / ".lock").exists()


def test_the_lock_is_released_when_the_cell_fails(tmp_path):
    from experiments.cell import run_cell

    def broken_data(seed):
        raise RuntimeError("no data")

    from types import SimpleNamespace

    from experiments.card import Run
    from experiments.recipe import Recipe

    with pytest.raises(RuntimeError, match="no data"):
        run_cell({"seed": 0}, SimpleNamespace(recipe=Recipe()), Run(), tmp_path / "cell", broken_data, None)
    assert not (tmp_path / "cell" / ".lock").exists()


def test_other_ranks_follow_rank_zero(tmp_path, monkeypatch):
    d = tmp_path / "cell"
    monkeypatch.setenv(TOKEN_VAR, "this-job")
    monkeypatch.setenv("RANK", "1")
    write_lock(d, pid=os.getpid(), token="this-job")
    lock = CellLock(d)
    assert lock.acquire() and not lock.held  # trains, but the lock stays rank 0's
    lock.release()
    assert (d / ".lock").exists()
    write_lock(d, pid=os.getpid(), token="other-job")
    assert not CellLock(d).acquire()  # rank 0 skips too
