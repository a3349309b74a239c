"""A tiny experiment script run as a subprocess, the way a cluster job runs one.

DDP and kill/resume tests need real processes: Lightning's DDP launcher starts the other ranks
by rerunning ``sys.argv``, and a killed process must really die. The script is the shape of
``experiments/*_ablation.py`` (an :class:`Ablation` handed to the runner) with a small
training recipe: VGG16-BN FCNs at width 1/16 on 64-px synthetic images, 5 validation images
(odd), 12 steps per epoch. With ``STOP_AT_STEP=k`` it pauses after training step ``k`` (after
the checkpoints of that step), writes ``STOP_MARKER`` and waits (until signalled, or until the
file ``GO_MARKER`` exists), so a test can signal it, or run something beside it, at a known
point in the middle of an epoch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = '''\
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, {repo!r})

from experiments.runner import main
from experiments.recipe import Recipe
from experiments.spec import Ablation, Variant

STOP_AT = int(os.environ.get("STOP_AT_STEP", "0"))
if STOP_AT:
    import lightning_modules.segmentation as seg

    def _pause(self, outputs, batch, batch_idx):
        if self.trainer.global_step == STOP_AT:
            Path(os.environ["STOP_MARKER"]).write_text(str(os.getpid()))
            deadline = time.monotonic() + 120
            go = os.environ.get("GO_MARKER")  # a file whose creation lets the run go on
            while not self.trainer.received_sigterm and time.monotonic() < deadline:
                if go and Path(go).exists():
                    break
                time.sleep(0.02)

    seg.SegmentationModule.on_train_batch_end = _pause

ABLATION = Ablation(
    name="tiny",
    title="tiny FCN check",
    synthetic_task="thin",
    variants={{
        "32s": Variant("fcn32s", {{}}, "fcn.table2.fcn32s"),
        "FCN 8s": Variant("fcn8s", {{}}, "fcn.table2.fcn8s"),  # a space, as in PSPNet's "B1 AVE"
    }},
    paper_data="voc",
    paper=Recipe(),
    smoke={{
        "width": 0.0625,
        "data": {{"num_train": 24, "num_val": 5, "image_size": 64, "global_batch": 2, "val_batch_size": 1}},
        "trainer": {{"max_steps": 16, "val_every": 4, "checkpoint_every": 4, "log_every": 1}},
    }},
)

if __name__ == "__main__":
    main(ABLATION)
'''

# Variables that would make a subprocess think it is one rank of a distributed or SLURM job.
# SEG_CELL_LOCK_TOKEN: the job identity an in-process run leaves behind (experiments/lock.py).
_LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR",
                  "MASTER_PORT", "PL_GLOBAL_SEED", "PL_SEED_WORKERS", "SEG_CELL_LOCK_TOKEN")


def write_script(directory: Path) -> Path:
    path = directory / "tiny_ablation.py"
    path.write_text(SCRIPT.format(repo=str(REPO)))
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in _LAUNCHER_VARS and not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    env.update(PYTHONPATH=str(REPO), WANDB_MODE="disabled", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def start(script: Path, *args: str, env: dict[str, str] | None = None,
          log: Path | None = None) -> subprocess.Popen:
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, str(script), "--quiet", *args], cwd=REPO,
                            env=env or clean_env(), stdout=out, stderr=subprocess.STDOUT)


def run(script: Path, *args: str, env: dict[str, str] | None = None, log: Path | None = None,
        timeout: float = 300) -> str:
    """Run the script to completion; return its output; fail with the output on error."""
    log = log or script.parent / f"run-{time.monotonic_ns()}.log"
    proc = start(script, *args, env=env, log=log)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"timed out:\n{log.read_text()[-4000:]}") from None
    text = log.read_text()
    assert rc == 0, f"exit status {rc}:\n{text[-4000:]}"
    return text


def start_paused(script: Path, *args: str, at_step: int, env: dict[str, str], log: Path,
                 timeout: float = 240) -> subprocess.Popen:
    """Start the script and return once it pauses after step ``at_step``."""
    marker = log.with_suffix(".stopped")
    marker.unlink(missing_ok=True)
    proc = start(script, *args, env={**env, "STOP_AT_STEP": str(at_step), "STOP_MARKER": str(marker)},
                 log=log)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"never reached step {at_step}:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)
    return proc


def interrupt(script: Path, *args: str, at_step: int, sig: signal.Signals, env: dict[str, str],
              log: Path, timeout: float = 240) -> int:
    """Start the script, send ``sig`` while it pauses after step ``at_step``; its exit status."""
    proc = start_paused(script, *args, at_step=at_step, env=env, log=log, timeout=timeout)
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"did not stop on {sig!r}:\n{log.read_text()[-4000:]}") from None


def cell_dir(out: Path, variant: str = "32s", seed: int = 0) -> Path:
    return out / "tiny" / "synthetic_thin-smoke" / variant / f"seed{seed}"


# --------------------------------------------------------------------------- SyncBN across processes
def syncbn_net():
    """Conv → BatchNorm2d → ReLU → conv → timm BatchNormAct2d, seeded."""
    import torch
    from timm.layers import BatchNormAct2d
    from torch import nn

    torch.manual_seed(0)
    # bias-free convs, as before every BatchNorm in the models (a bias there has zero gradient)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 2, 1, bias=False), BatchNormAct2d(2))


def syncbn_data():
    """Five 3×6×6 inputs (split 3 + 2 over two ranks) and fixed loss weights per output."""
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 3, 6, 6, generator=g) * 3 + 1, torch.randn(5, 2, 6, 6, generator=g)


def syncbn_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One rank: CPU SyncBN forward/backward on its share of the batch; saves what it saw."""
    import torch
    import torch.distributed as dist

    from models.sync_batchnorm import SYNC_BATCHNORM_TYPES, convert_sync_batchnorm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    net = convert_sync_batchnorm(syncbn_net(), cpu=True)
    x, w = syncbn_data()
    part = slice(0, 3) if rank == 0 else slice(3, 5)
    xi = x[part].clone().requires_grad_()
    out = net(xi)
    (out * w[part]).sum().backward()
    torch.save({
        "synced": sum(isinstance(m, SYNC_BATCHNORM_TYPES) for m in net.modules()),
        "out": out.detach(), "x_grad": xi.grad,
        "grads": {n: p.grad for n, p in net.named_parameters()},
        "buffers": {n: b for n, b in net.named_buffers()},
    }, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def ap_records_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One rank of a 2-process COCO evaluation: images rank, rank + 2, ... in batches of 3, as
    UnpaddedDistributedSampler deals them; saves the synced AP and the per-image records."""
    import numpy as np
    import torch
    import torch.distributed as dist

    from lightning_modules.instance import METRIC_KEYS, detection_metric
    from tests.test_per_image_ap import fake_detections

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    preds, gts = fake_detections(n_images=12)
    mine = list(range(rank, 12, world))
    metric = detection_metric()
    for start in range(0, len(mine), 3):
        idx = mine[start:start + 3]
        metric.update([preds[i] for i in idx], [gts[i] for i in idx], index=idx)
    result = metric.compute()
    np.savez(f"{out_dir}/rank{rank}.npz", **metric.records,
             **{f"reported_{k}": float(result[name]) for k, name in METRIC_KEYS.items()})
    dist.destroy_process_group()
