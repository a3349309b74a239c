"""Sweep progress and ETAs on a fake clock."""

import pytest
import torch

from experiments.progress import SweepClock, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_steps(sweep: SweepClock, clock: FakeClock, first: int, last: int, seconds_per_step: float) -> None:
    for step in range(first, last + 1):
        clock.now += seconds_per_step
        sweep.step(step)


def test_eta_of_the_cell_and_the_sweep_after_warmup():
    clock = FakeClock()
    sweep = SweepClock([100, 100, 50], warmup=3, clock=clock)
    sweep.start_cell(0)
    clock.now += 30.0  # a slow first step (start-up) is warm-up, not rate
    sweep.step(1)
    assert sweep.rate() is None and sweep.cell_eta() is None and "?" in sweep.summary()
    run_steps(sweep, clock, 2, 20, 0.5)
    assert sweep.rate() == pytest.approx(2.0)          # 2 steps/s once warmed up
    assert sweep.cell_eta() == pytest.approx(80 / 2.0)
    assert sweep.sweep_eta() == pytest.approx(40 + 150 / 2.0)
    clock.now += 100.0  # validation: not counted as a training interval
    sweep.pause()
    sweep.step(21)
    assert sweep.rate() == pytest.approx(2.0)


def test_a_resumed_cell_counts_its_remaining_steps_and_later_cells_use_the_mean_rate():
    clock = FakeClock()
    sweep = SweepClock([100, 60], warmup=1, clock=clock)
    sweep.start_cell(0, done=90)  # resumed from a checkpoint at step 90
    run_steps(sweep, clock, 91, 95, 1.0)
    assert sweep.cell_eta() == pytest.approx(5.0) and sweep.sweep_eta() == pytest.approx(65.0)
    sweep.start_cell(1)
    assert sweep.cell_eta() is None  # the new cell's own rate is not measured yet
    run_steps(sweep, clock, 1, 5, 0.25)
    assert sweep.rate() == pytest.approx(4.0) and sweep.cell_eta() == pytest.approx(55 / 4.0)
    assert "cell 2/2: step 5/60" in sweep.summary()


def test_etas_count_the_validations_left_at_their_measured_duration():
    """Every val_every steps a validation (the last one the cell's evaluation; a cell that trains
    nothing validates once): the ETAs add them at the measured validation time."""
    clock = FakeClock()
    sweep = SweepClock([100, 0, 100], val_every=[50, 50, 40], warmup=1, clock=clock)
    sweep.start_cell(0)
    run_steps(sweep, clock, 1, 10, 1.0)
    assert [sweep.validations_left(i) for i in range(3)] == [2, 1, 3]  # 40 does not divide 100: +1
    assert sweep.cell_eta() == pytest.approx(90.0)  # no validation timed yet: steps only
    run_steps(sweep, clock, 11, 50, 1.0)
    sweep.validation_start()
    clock.now += 20.0
    sweep.validation_end()
    assert sweep.rate() == pytest.approx(1.0) and sweep.validation_seconds() == pytest.approx(20.0)
    assert sweep.validations_left(0, 50) == 1
    assert sweep.cell_eta() == pytest.approx(50 + 20)
    # later cells: the evaluation-only cell's one validation, then 100 steps and 3 validations
    assert sweep.sweep_eta() == pytest.approx(70 + 20 + (100 + 3 * 20))
    sweep.step(51)  # the step after a validation is not a training interval
    assert sweep.rate() == pytest.approx(1.0)
    sweep.start_cell(1)  # evaluation only
    assert sweep.cell_eta() == pytest.approx(20.0)
    sweep.validation_start()
    clock.now += 4.0
    sweep.validation_end()
    assert sweep.cell_eta() == 0.0 and sweep.validation_seconds() == pytest.approx(4.0)
    assert sweep.sweep_eta() == pytest.approx(100 + 3 * 24 / 2)  # the sweep's mean validation: (20 + 4) / 2


def test_format_duration():
    assert [format_duration(s) for s in (None, 5.2, 65, 3700)] == ["?", "5s", "1m05s", "1h01m"]


def test_throughput_reports_the_steady_state_and_the_warm_up_separately():
    from types import SimpleNamespace

    from experiments.tracking import Throughput

    now = [100.0]
    meter = Throughput(warmup=2, clock=lambda: now[0])
    trainer = SimpleNamespace(world_size=2)
    batch = (torch.zeros(4, 3, 8, 8), None)
    meter.on_train_start(trainer, None)
    for dt in (5.0, 3.0):                      # warm-up: start-up, autotuning
        now[0] += dt
        meter.on_train_batch_end(trainer, None, None, batch, 0)
    for _ in range(4):                        # steady state: 0.5 s per step
        now[0] += 0.5
        meter.on_train_batch_end(trainer, None, None, batch, 0)
    meter.on_validation_start(trainer, None)  # the interval with the validation is not counted
    now[0] += 30.0
    meter.on_train_batch_end(trainer, None, None, batch, 0)
    now[0] += 0.5
    meter.on_train_batch_end(trainer, None, None, batch, 0)
    assert meter.warmup_seconds == 8.0
    assert meter.images_per_second() == pytest.approx(5 * 8 / 2.5)  # 4 images x 2 processes per 0.5 s


def test_the_bar_counts_every_step_but_reads_the_metrics_at_most_every_half_second():
    """Reading the logged loss for the bar syncs a GPU; it happens on the clock, not every step."""
    import io
    from types import SimpleNamespace

    from tqdm import tqdm

    from experiments.progress import StepProgressBar

    clock = FakeClock()
    bar = StepProgressBar(SweepClock([100]), "cell", postfix_every_s=0.5, clock=clock)
    bar._train_progress_bar = tqdm(total=100, file=io.StringIO())
    reads = []
    bar.get_metrics = lambda trainer, module: reads.append(trainer.global_step) or {"loss": 1.0}
    trainer = SimpleNamespace(global_step=0)
    for step in range(1, 21):  # 20 steps of 0.125 s (exact in binary)
        clock.now += 0.125
        trainer.global_step = step
        bar.on_train_batch_end(trainer, None, None, None, step - 1)
        assert bar.train_progress_bar.n == step
    assert reads == [1, 5, 9, 13, 17]
    bar.on_train_epoch_end(trainer, None)  # the end of an epoch always shows the latest
    assert reads[-1] == 20
