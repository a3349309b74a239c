"""How long the training loop waits for a periodic checkpoint: written in the loop (our atomic
writer, ``AtomicCheckpointIO``) vs handed to the background writer (``BackgroundCheckpointIO``:
the tensors snapshotted on the calling thread, the file written in a thread).

A checkpoint here is what ``last.ckpt`` holds for the paper models at width 1: the weights and
the SGD momentum (``optimizer_states``). Each mode writes ``--repeats`` times into a folder on the
disk under test (``--dir``, default the system's temporary folder); the table gives the time the
caller was blocked per write, and for the background mode also the time until the write was on
disk (``wait``).

    python benchmarks/checkpoint_write.py --dir /work --json benchmarks/results/checkpoint_write.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.checkpoints import AtomicCheckpointIO, BackgroundCheckpointIO  # noqa: E402
from models import build_model  # noqa: E402

MODELS = {
    "deeplab_v3_r101_os16": ("deeplab_v3", {"backbone": "resnet101", "output_stride": 16}, 21),
    "pspnet_r50_aux": ("pspnet", {"backbone": "resnet50", "aux": True}, 150),
}


def training_state(name: str, device: str) -> dict:
    model_name, kwargs, classes = MODELS[name]
    model = build_model(model_name, classes, pretrained=False, **kwargs).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # creates the momentum buffers
    return {"state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()], "global_step": 1}


def measure(state: dict, folder: Path, repeats: int) -> dict:
    size = None
    sync, blocked, on_disk = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        AtomicCheckpointIO().save_checkpoint(state, folder / "last.ckpt")
        sync.append(time.perf_counter() - t0)
        size = (folder / "last.ckpt").stat().st_size
    io = BackgroundCheckpointIO()
    for _ in range(repeats):
        t0 = time.perf_counter()
        io.save_checkpoint(state, folder / "last.ckpt")
        blocked.append(time.perf_counter() - t0)
        io.wait()
        on_disk.append(time.perf_counter() - t0)
    return {"mb": size / 1e6, "sync_s": sync, "background_blocked_s": blocked, "background_on_disk_s": on_disk}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="the disk under test")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", nargs="+", choices=list(MODELS))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    rows = []
    print("| model | MB | written in the loop (s) | background: loop blocked (s) | background: on disk (s) |")
    print("|---|---|---|---|---|")
    for name in args.only or list(MODELS):
        with tempfile.TemporaryDirectory(dir=args.dir) as folder:
            row = {"model": name, "device": args.device, **measure(training_state(name, args.device), Path(folder),
                                                                  args.repeats)}
        rows.append(row)

        def span(values: list[float]) -> str:
            return f"{min(values):.2f}–{max(values):.2f}"

        print(f"| {name} | {row['mb']:.0f} | {span(row['sync_s'])} | {span(row['background_blocked_s'])} | "
              f"{span(row['background_on_disk_s'])} |")
    if args.json:
        args.json.write_text(json.dumps({"dir": str(args.dir), "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
