"""The CSV training log of a cell: one file per attempt, read back as one.

Lightning's ``CSVLogger`` removes an existing ``metrics.csv`` when it starts, so a resumed run
used to lose the log of everything before the resume. Each attempt (first run, every resume)
now writes its own ``<run_dir>/logs/attempt-<n>/metrics.csv`` (``n`` = 1 + the highest attempt
on disk); :func:`read_training_log` reads them together. A log of the old layout
(``logs/metrics.csv``) counts as attempt 0.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger

_ATTEMPT = re.compile(r"attempt-(\d+)")


def attempt_logs(run_dir: Path) -> list[tuple[int, Path]]:
    """``(attempt, metrics.csv)`` of every attempt on disk, oldest first."""
    logs = Path(run_dir) / "logs"
    found = [(0, logs / "metrics.csv")] if (logs / "metrics.csv").is_file() else []
    if logs.is_dir():
        for d in logs.iterdir():
            m = _ATTEMPT.fullmatch(d.name)
            if m and (d / "metrics.csv").is_file():
                found.append((int(m.group(1)), d / "metrics.csv"))
    return sorted(found)


def next_attempt(run_dir: Path) -> int:
    logs = Path(run_dir) / "logs"
    numbers = [int(m.group(1)) for d in (logs.iterdir() if logs.is_dir() else [])
               if (m := _ATTEMPT.fullmatch(d.name))]
    return max(numbers, default=0) + 1


def attempt_logger(run_dir: Path) -> CSVLogger:
    """A ``CSVLogger`` writing to a new ``logs/attempt-<n>/``, leaving earlier attempts alone.
    Rows are appended to the file as they are logged (not every 100 steps), so a process killed
    outright keeps the rows up to its last checkpoint, which the resumed attempt does not redo."""
    return CSVLogger(run_dir, name="logs", version=f"attempt-{next_attempt(run_dir)}",
                     flush_logs_every_n_steps=1)


def _value(text: str) -> int | float | str:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def read_training_log(run_dir: Path) -> list[dict]:
    """Every logged row of the cell, ordered by step: ``{"step": int, "epoch": int, key: value}``
    with empty cells left out. A step logged by several attempts (the steps between the
    checkpoint a run resumed from and the moment it was killed) is taken from the latest."""
    by_step: dict[int, list[dict]] = {}
    for _, path in attempt_logs(run_dir):
        with open(path, newline="") as f:
            rows = [{k: _value(v) for k, v in r.items() if k and v not in ("", None)} for r in csv.DictReader(f)]
        attempt: dict[int, list[dict]] = {}
        for row in rows:
            if isinstance(row.get("step"), int):
                attempt.setdefault(row["step"], []).append(row)
        by_step.update(attempt)  # a later attempt replaces all rows of the steps it logged
    return [row for step in sorted(by_step) for row in by_step[step]]
