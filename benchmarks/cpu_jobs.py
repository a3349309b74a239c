"""Wall time of a smoke sweep on the CPU: one process with all the machine's threads vs ``--jobs N``
(N processes side by side, threads / N each; ``experiments/runner.py``).

Each setting runs the same cells of an ablation script from scratch into its own temporary
folder (same synthetic-data cache, warmed by a first untimed cell so that no setting pays for
generating the data), as a subprocess, timed from start to exit (table and claims included,
figures off). Prints a markdown table with the machine and writes JSON::

    python benchmarks/cpu_jobs.py                                  # ASPP-S, ASPP-L x seeds 0 1: 4 cells
    python benchmarks/cpu_jobs.py --jobs 1 2 4 --script experiments/fcn_skip_ablation.py --variants FCN-32s
    python benchmarks/cpu_jobs.py --tiny                          # seconds: checks the script itself

Cells trained with different thread counts are not bit-identical (a convolution's weight
gradient is reduced across threads), so the table also reports each setting's mean mIoU: equal
to a few tenths, not to the last digit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sweep(script: Path, out: Path, jobs: int, extra: list[str]) -> dict:
    command = [sys.executable, str(script), "--out", str(out), "--quiet", "--no-figures", "--no-reuse", "--jobs", str(jobs),
               *extra]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    metrics = [json.loads(p.read_text()) for p in sorted(out.glob("*/*/*/seed*/metrics.json"))]
    return {"jobs": jobs, "wall_s": round(wall, 1), "cells": len(metrics),
            "threads_per_process": sorted({m.get("environment", {}).get("cpu_threads") for m in metrics}),
            "mean_miou": round(100 * sum(m["val"]["miou"] for m in metrics) / max(1, len(metrics)), 2),
            "train_images_per_s": [m["train_images_per_s"] and round(m["train_images_per_s"], 1) for m in metrics]}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--script", type=Path, default=ROOT / "experiments" / "aspp_ablation.py")
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--variants", nargs="+", default=["ASPP-S", "ASPP-L"])
    p.add_argument("--seeds", nargs="+", default=["0", "1"])
    p.add_argument("--set", action="append", default=[], dest="sets", help="passed on: SECTION.KEY=VALUE")
    p.add_argument("--tiny", action="store_true", help="2 steps on 96-px images: checks the benchmark runs")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    rest = [x for s in args.sets for x in ("--set", s)]
    if args.tiny:
        rest += ["--max-steps", "2", "--image-size", "96", "--set", "data.num_train=8", "--set", "data.num_val=4"]
    extra = ["--variants", *args.variants, "--seeds", *args.seeds, *rest]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # warm the synthetic-data cache: one untimed cell
        sweep(args.script, Path(tmp) / "warm", 1, ["--variants", args.variants[0], "--seeds", args.seeds[0], *rest])
        for jobs in args.jobs:
            rows.append(sweep(args.script, Path(tmp) / f"jobs{jobs}", jobs, extra))
            print(f"[jobs {jobs}] {rows[-1]['wall_s']} s", flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    import torch

    machine["torch"] = torch.__version__
    print(f"\n{args.script.name} {' '.join(extra)}; {machine}\n")
    print("| --jobs | threads each | cells | wall s | vs --jobs 1 | mean mIoU |")
    print("|---|---|---|---|---|---|")
    base = rows[0]["wall_s"]
    for r in rows:
        print(f"| {r['jobs']} | {r['threads_per_process']} | {r['cells']} | {r['wall_s']} | "
              f"{base / r['wall_s']:.2f}× | {r['mean_miou']} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "command": [args.script.name, *extra], "rows": rows},
                                        indent=2))
    return rows


if __name__ == "__main__":
    main()
