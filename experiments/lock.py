"""One process (one job) per cell: a lock file ``<run_dir>/.lock``.

A resubmitted array task, or the same command started twice, would otherwise train the same
cell in two processes that overwrite each other's checkpoints. The lock is a small JSON file
(host, PID, the process's start time, when it was taken, a job token) created with
``O_CREAT | O_EXCL``, so exactly one process gets it. It is released when the cell ends
(normally, by an exception, or by Lightning's SIGTERM handling, which ends the cell with
``SystemExit``). A process killed outright leaves it behind; it is then *stale* and the next
process takes it over with a warning: on the same host when that PID no longer runs (or runs
another program, told by its start time), on another host when it is older than
``max_age_s`` (environment ``SEG_LOCK_MAX_AGE_S``, default 48 hours — longer than any job).

Under DDP only global rank 0 takes the lock; the other ranks follow its decision. They share a
*job token*: ``SEG_CELL_LOCK_TOKEN`` (set by rank 0, inherited by the ranks Lightning's launcher
starts), else the SLURM job step or the torchrun run id. A non-zero rank waits until the lock
carries its job's token (train) or a live foreign one (skip, as rank 0 does).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
import warnings
from pathlib import Path

TOKEN_VAR = "SEG_CELL_LOCK_TOKEN"
DEFAULT_MAX_AGE_S = 48 * 3600.0


def job_token() -> str:
    if os.environ.get(TOKEN_VAR):
        return os.environ[TOKEN_VAR]
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm-{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '')}"
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}"
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), to tell a reused PID from the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
    return f"host {holder.get('host')}, PID {holder.get('pid')}, since {started}"


def is_stale(holder: dict, max_age_s: float | None = None) -> bool:
    if max_age_s is None:
        max_age_s = float(os.environ.get("SEG_LOCK_MAX_AGE_S", DEFAULT_MAX_AGE_S))
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        pid = holder["pid"]
        if not _pid_alive(pid):
            return True
        start = holder.get("pid_start")
        return start is not None and _process_start(pid) not in (None, start)
    return time.time() - float(holder.get("time", 0)) > max_age_s


def read_holder(path: Path) -> dict | None:
    """The lock's contents; ``{}`` for a lock being written or unreadable, None when absent."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


class CellLock:
    """``lock = CellLock(run_dir); if lock.acquire(): try: ... finally: lock.release()``."""

    def __init__(self, run_dir: Path, max_age_s: float | None = None) -> None:
        self.path = Path(run_dir) / ".lock"
        self.max_age_s = max_age_s
        self.held = False
        self.holder: dict | None = None  # who holds it when acquire() fails

    def _create(self, token: str) -> bool:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
              "time": time.time(), "token": token}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def acquire(self) -> bool:
        """Take the lock (rank 0) or follow rank 0's decision (other ranks); False: skip the cell."""
        from experiments.distributed import global_rank

        self.path.parent.mkdir(parents=True, exist_ok=True)
        token = job_token()
        if global_rank() != 0:
            return self._follow(token)
        for _ in range(5):
            if self._create(token):
                os.environ[TOKEN_VAR] = token  # ranks started by Lightning's launcher inherit it
                self.held = True
                return True
            holder = read_holder(self.path)
            if holder is None:
                continue  # released meanwhile: try again
            if holder == {}:
                # being written this instant, or garbage left by a crash mid-write
                time.sleep(0.2)
                holder = read_holder(self.path)
                if holder is None:
                    continue
                if holder == {} and time.time() - self._mtime() < 10:
                    self.holder = holder
                    return False
            if holder and not is_stale(holder, self.max_age_s):
                self.holder = holder
                return False
            # Stale: move it aside atomically (one taker wins), then create ours.
            aside = self.path.with_name(f".lock.stale-{os.getpid()}-{uuid.uuid4().hex[:6]}")
            try:
                os.replace(self.path, aside)
            except FileNotFoundError:
                continue
            if read_holder(aside) != holder:  # a fresh lock taken between our read and rename
                try:
                    os.link(aside, self.path)  # put it back, unless yet another one exists
                except FileExistsError:
                    pass
                aside.unlink(missing_ok=True)
                continue
            aside.unlink(missing_ok=True)
            warnings.warn(f"{self.path}: taking over a stale lock ({describe(holder or {})}: "
                          f"that process no longer runs)", stacklevel=2)
        self.holder = read_holder(self.path) or {}
        return False

    def _mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def _follow(self, token: str, timeout_s: float = 300.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (self.path.parent / "metrics.json").exists():
                return True  # finished: the cell itself skips it, as on rank 0
            holder = read_holder(self.path)
            if holder and holder.get("token") == token:
                return True
            if holder and not is_stale(holder, self.max_age_s):
                self.holder = holder
                return False
            time.sleep(0.2)
        raise RuntimeError(f"{self.path}: rank 0 of this job ({token}) never took the cell's lock "
                           f"within {timeout_s:.0f} s")

    def release(self) -> None:
        if not self.held:
            return
        holder = read_holder(self.path)
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
        self.held = False
