"""Training-step throughput (images/s) of the smoke-preset models: fp32 vs bf16 autocast, with
and without channels_last. Forward + backward + SGD step on random data, after warm-up steps;
median over repeats. Prints a markdown table and the machine.

    python benchmarks/train_step.py                       # CPU, smoke widths and sizes
    python benchmarks/train_step.py --device cuda --width 1 --size 513 --batch 8
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models import build_model  # noqa: E402

CASES = [  # name, kwargs, image size of its smoke task
    ("deeplab_largefov", {"batch_norm": True}, 160),
    ("deeplab_v2", {"backbone": "vgg16", "batch_norm": True}, 160),
    ("fcn8s", {"batch_norm": True}, 128),
    ("pspnet", {}, 128),
]


def time_train_step(model, x, y, dtype=torch.float32, channels_last=False, steps=8, warmup=3,
                    aux_weight=0.0) -> dict[str, float]:
    """Time forward + backward + SGD step of `model` on batch (x, y): ``warmup_s`` (all warm-up
    steps together, excluded from the rest), ``step_s`` (median of `steps` timed steps) and
    ``images_per_s``. ``aux_weight`` > 0 adds the auxiliary head's loss (PSPNet: 0.4).
    Also used by ``benchmarks/gpu_train.py``."""
    device = x.device.type
    model = model.to(x.device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    times = []
    sync()
    start = time.perf_counter()
    for step in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            outputs = model(x)
        loss = torch.nn.functional.cross_entropy(outputs["out"].float(), y)
        if aux_weight and "aux" in outputs:
            loss = loss + aux_weight * torch.nn.functional.cross_entropy(outputs["aux"].float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
        elif step == warmup - 1:
            warmup_s = time.perf_counter() - start
    step_s = statistics.median(times)
    return {"warmup_s": warmup_s if warmup else 0.0, "step_s": step_s,
            "images_per_s": x.shape[0] / step_s}


def images_per_second(model, x, y, dtype, channels_last, steps, warmup, device) -> float:
    return time_train_step(model, x.to(device), y.to(device), dtype, channels_last, steps,
                           warmup)["images_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--size", type=int, help="image size (default: each model's smoke task size)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"machine: {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, device {args.device}")
    print(f"width {args.width}, batch {args.batch}, median of {args.steps} steps after {args.warmup} warm-up\n")
    print("| model | size | fp32 | fp32 + channels_last | bf16 autocast | bf16 + channels_last | best speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name, kwargs, size in CASES:
        size = args.size or size
        torch.manual_seed(0)
        x = torch.randn(args.batch, 3, size, size, device=args.device)
        y = torch.randint(0, 5, (args.batch, size, size), device=args.device)
        row = []
        for dtype in (torch.float32, torch.bfloat16):
            for cl in (False, True):
                torch.manual_seed(0)
                model = build_model(name, 5, width=args.width, **kwargs)
                row.append(images_per_second(model, x, y, dtype, cl, args.steps, args.warmup, args.device))
        print(f"| {name} | {size} | " + " | ".join(f"{v:.1f}" for v in row) + f" | {max(row) / row[0]:.2f}× |")


if __name__ == "__main__":
    main()
