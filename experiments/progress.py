"""Time you can plan with: per-cell and per-sweep progress with measured steps/s and ETAs.

:class:`SweepClock` knows how many optimiser steps every cell of a sweep still has to run and
how often it validates, and measures the rate of the steps that ran, after ``warmup`` steps of
each cell (start-up, cuDNN autotuning, first-batch allocation) and without the time spent in
validation (the periodic checkpoints count, amortised in the rate), and the duration of each
validation. The cell's ETA is its remaining
steps at the current cell's rate plus its remaining validations (every ``val_every`` steps, the
last one the cell's evaluation; one for a cell that trains nothing) at its measured validation
time; the sweep's adds the cells not started yet at the mean rate and mean validation time
measured so far (variants differ in speed, so it sharpens as the sweep goes on). Until a first
validation has been timed, the ETAs count steps only. On the paper recipes validation is no
rounding error: every 2,000 steps with the full evaluation protocol (PSPNet: sliding windows and
flips over ADE20K's 2,000 images, 75 times in 150K steps). The clock is injectable, so the
arithmetic is tested on a fake one.

:class:`StepProgressBar` is Lightning's tqdm bar counting optimiser steps of ``max_steps``
(not the "Epoch 2/-2" of a step-based run), with the ETAs in its postfix; with ``--quiet``,
:class:`ProgressLog` prints one line every ``every_s`` seconds instead (cluster logs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


@dataclass
class SweepClock:
    steps: Sequence[int]                   # optimiser steps each cell of the sweep has to run
    # each cell's validation interval in optimiser steps (None: no validations counted)
    val_every: Sequence[int | None] | None = None
    warmup: int = 5
    clock: Callable[[], float] = time.monotonic
    cell: int = -1
    done: int = 0                          # steps done in the current cell
    _measured_steps: int = 0               # post-warm-up steps with a measured duration
    _measured_seconds: float = 0.0
    _cell_steps: int = 0
    _cell_seconds: float = 0.0
    _seen: int = 0                         # steps seen in this cell (for the warm-up)
    _last: float | None = field(default=None, repr=False)
    _val_started: float | None = field(default=None, repr=False)
    _val_count: int = 0                    # validations timed, all cells
    _val_seconds: float = 0.0
    _cell_val_count: int = 0               # validations timed in the current cell
    _cell_val_seconds: float = 0.0

    def start_cell(self, index: int, done: int = 0) -> None:
        """Cell ``index`` starts (or resumes) with ``done`` of its steps already done."""
        self.cell, self.done = index, done
        self._cell_steps, self._cell_seconds, self._seen, self._last = 0, 0.0, 0, None
        self._cell_val_count, self._cell_val_seconds, self._val_started = 0, 0.0, None

    def step(self, global_step: int) -> None:
        """An optimiser step ended; ``global_step`` is the cell's step count after it."""
        now = self.clock()
        self._seen += 1
        if self._last is not None and self._seen > self.warmup:
            dt, n = now - self._last, max(1, global_step - self.done)
            self._cell_steps += n
            self._cell_seconds += dt
            self._measured_steps += n
            self._measured_seconds += dt
        self.done, self._last = global_step, now

    def pause(self) -> None:
        """Validation or a checkpoint: the next interval is not a training step's."""
        self._last = None

    def validation_start(self) -> None:
        self.pause()
        self._val_started = self.clock()

    def validation_end(self) -> None:
        if self._val_started is None:
            return
        seconds = self.clock() - self._val_started
        self._val_started = None
        self._val_count += 1
        self._val_seconds += seconds
        self._cell_val_count += 1
        self._cell_val_seconds += seconds

    def validations_left(self, index: int, done: int = 0) -> int:
        """Validations cell ``index`` still runs after ``done`` steps: one every ``val_every``
        steps, plus the evaluation of the final weights where ``val_every`` does not divide its
        steps; one (the evaluation) for a cell that trains nothing, until it has run."""
        every = self.val_every[index] if self.val_every is not None else None
        steps = self.steps[index]
        if every is None:
            return 0
        if steps == 0:
            return 0 if index == self.cell and self._cell_val_count else 1
        return steps // every - min(done, steps) // every + (1 if steps % every else 0)

    def validation_seconds(self) -> float | None:
        """Seconds per validation: the current cell's mean once timed, else the sweep's."""
        if self._cell_val_count:
            return self._cell_val_seconds / self._cell_val_count
        return self._val_seconds / self._val_count if self._val_count else None

    def rate(self) -> float | None:
        """Steps per second of the current cell (after warm-up); None while unmeasured."""
        return self._cell_steps / self._cell_seconds if self._cell_seconds > 0 else None

    def mean_rate(self) -> float | None:
        return self._measured_steps / self._measured_seconds if self._measured_seconds > 0 else None

    def cell_eta(self) -> float | None:
        rate, left = self.rate(), self.steps[self.cell] - self.done
        if rate is None and left > 0:
            return None
        return (left / rate if left > 0 else 0.0) + self.validations_left(self.cell, self.done) * (
            self.validation_seconds() or 0.0)

    def sweep_eta(self) -> float | None:
        cell, mean = self.cell_eta(), self.mean_rate()
        later = range(self.cell + 1, len(self.steps))
        if cell is None or (mean is None and any(self.steps[i] for i in later)):
            return None
        per_validation = self._val_seconds / self._val_count if self._val_count else 0.0
        return cell + sum(self.steps[i] / mean if self.steps[i] else 0.0 for i in later) + sum(
            self.validations_left(i) for i in later) * per_validation

    def summary(self) -> str:
        rate = self.rate()
        return (f"cell {self.cell + 1}/{len(self.steps)}: step {self.done}/{self.steps[self.cell]}, "
                f"{'?' if rate is None else f'{rate:.2f}'} steps/s, cell ETA {format_duration(self.cell_eta())}, "
                f"sweep ETA {format_duration(self.sweep_eta())}")


class _Timing(L.Callback):
    """Feeds a :class:`SweepClock` from the training loop (rank 0's clock)."""

    def __init__(self, sweep: SweepClock, index: int) -> None:
        self.sweep, self.index = sweep, index

    def on_train_start(self, trainer, pl_module) -> None:
        self.sweep.start_cell(self.index, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.sweep.step(trainer.global_step)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.sweep.cell != self.index:  # a cell that only evaluates (no training loop ran)
            self.sweep.start_cell(self.index, trainer.global_step)
        self.sweep.validation_start()

    def on_validation_end(self, trainer, pl_module) -> None:
        self.sweep.validation_end()

    # No pause on a checkpoint: the periodic saves (a full training state every checkpoint_every
    # steps, hundreds of MB on the paper models) are part of the wall time the ETAs plan for, so
    # the step they follow keeps its interval (the img/s of metrics.json leaves them out).


class StepProgressBar(TQDMProgressBar):
    """tqdm bar over the cell's optimiser steps, ``step n/max_steps``, ETAs in the postfix."""

    def __init__(self, sweep: SweepClock, label: str, postfix_every_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.sweep, self.label = sweep, label
        self.postfix_every_s, self.clock = postfix_every_s, clock
        self._next_postfix: float | None = None

    def on_train_epoch_start(self, trainer, *_) -> None:
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:  # once per cell: epochs do not restart the bar
            bar.reset(total=trainer.max_steps)
            bar.n = trainer.global_step
            bar.set_description(f"{self.label} [cell {self.sweep.cell + 1}/{len(self.sweep.steps)}]")

    def _postfix(self, trainer, pl_module, force: bool = False) -> None:
        """The step count every step (tqdm redraws at most every 0.1 s); the metrics and ETAs at
        most every ``postfix_every_s``: reading the logged loss for the bar is a ``.item()``,
        which on a GPU waits for the step to finish, and doing it every step kept the host from
        queueing the next step while the GPU ran this one."""
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        bar.update(trainer.global_step - bar.n)
        now = self.clock()
        if force or self._next_postfix is None or now >= self._next_postfix:
            self._next_postfix = now + self.postfix_every_s
            bar.set_postfix({**self.get_metrics(trainer, pl_module),
                             "ETA cell": format_duration(self.sweep.cell_eta()),
                             "sweep": format_duration(self.sweep.sweep_eta())}, refresh=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._postfix(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._postfix(trainer, pl_module, force=True)


class ProgressLog(L.Callback):
    """One progress line every ``every_s`` seconds (rank 0), for logs without a terminal."""

    def __init__(self, sweep: SweepClock, label: str, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sweep, self.label, self.every_s, self.clock = sweep, label, every_s, clock
        self._next = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = self.clock()
        if self._next is None:
            self._next = now + self.every_s
        elif now >= self._next and trainer.is_global_zero:
            print(f"[progress] {self.label}: {self.sweep.summary()}", flush=True)
            self._next = now + self.every_s


def callbacks(sweep: SweepClock, index: int, label: str, verbose: bool) -> list[L.Callback]:
    """The timing callback first (so the bar and the log see this step's rate), then the display."""
    display = StepProgressBar(sweep, label) if verbose else ProgressLog(sweep, label)
    return [_Timing(sweep, index), display]
