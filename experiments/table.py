"""Collect the finished cells of an ablation into ``results.md`` and ``results.csv``.

The table is built from the ``metrics.json`` files alone, so cells may have run in one process,
under DDP, or as separate cluster jobs. mIoU is reported as mean ± sample standard deviation
over seeds with n; cells that have not finished are listed as missing, never silently dropped.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
import tempfile
from pathlib import Path

from experiments.spec import Ablation, paper_number


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(x: float | None, scale: float = 100.0, digits: int = 2) -> str:
    return "—" if x is None else f"{x * scale:.{digits}f}"


def collect_rows(ablation: Ablation, variants: list[str], seeds: list[int], dataset_dir: Path,
                 metric_key: str = "val") -> list[dict]:
    rows = []
    for name in variants:
        variant = ablation.variants[name]
        cells, missing = [], []
        for seed in seeds:
            f = dataset_dir / name / f"seed{seed}" / "metrics.json"
            (cells.append(json.loads(f.read_text())) if f.exists() else missing.append(seed))
        # seeds run beyond the requested ones still count (e.g. a later --seeds 0 1 2 3)
        extra = sorted(dataset_dir.glob(f"{name}/seed*/metrics.json"))
        known = {c["seed"] for c in cells}
        for f in extra:
            data = json.loads(f.read_text())
            if data["seed"] not in known and data["seed"] not in missing:
                cells.append(data)
        have = [c for c in cells if metric_key in c]
        miou = [c[metric_key]["miou"] for c in have]
        mean, std = _mean_std(miou)
        paper = paper_number(variant.paper)
        first = have[0] if have else {}
        speeds = [c["train_images_per_s"] for c in have if c.get("train_images_per_s")]
        rows.append({
            "variant": name,
            "miou_mean": mean, "miou_std": std, "n": len(have),
            "seeds": sorted(c["seed"] for c in have), "missing_seeds": missing,
            "paper_miou": paper.miou if paper else None,
            "paper_ref": paper.reference if paper else "",
            "delta": (mean * 100 - paper.miou) if (paper and mean is not None) else None,
            "pixel_acc": _mean_std([c[metric_key]["pixel_acc"] for c in have])[0],
            "mean_acc": _mean_std([c[metric_key]["mean_acc"] for c in have])[0],
            "fwiou": _mean_std([c[metric_key]["fwiou"] for c in have])[0],
            "params": first.get("params"), "gflops": first.get("gflops"),
            "eval_size": first.get("eval_size"),
            "train_images_per_s": statistics.fmean(speeds) if speeds else None,
            "eval_mode": first.get("eval_mode", "") + (" + CRF" if metric_key.endswith("_crf") else ""),
            "global_batch": first.get("global_batch"), "steps": first.get("steps"),
        })
    return rows


def render_markdown(title: str, rows: list[dict], notes: list[str]) -> str:
    out = [f"## {title}", ""]
    out.append("| variant | mIoU (mean ± std, n) | paper mIoU | Δ | pixel acc | mean acc | fwIoU "
               "| params | GFLOPs | train img/s | eval |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["n"] == 0:
            miou = f"missing ({len(r['missing_seeds'])} seeds)"
        else:
            miou = f"{r['miou_mean'] * 100:.2f} ± {r['miou_std'] * 100:.2f} (n={r['n']})"
            if r["missing_seeds"]:
                miou += f", missing seeds {r['missing_seeds']}"
        paper = f"{r['paper_miou']:.2f} ({r['paper_ref']})" if r["paper_miou"] is not None else "—"
        delta = f"{r['delta']:+.2f}" if r["delta"] is not None else "—"
        params = f"{r['params'] / 1e6:.2f}M" if r["params"] else "—"
        gflops = f"{r['gflops']:.2f}" if r["gflops"] is not None else "—"
        speed = f"{r['train_images_per_s']:.1f}" if r["train_images_per_s"] else "—"
        out.append(f"| {r['variant']} | {miou} | {paper} | {delta} | {_fmt(r['pixel_acc'])} | "
                   f"{_fmt(r['mean_acc'])} | {_fmt(r['fwiou'])} | {params} | {gflops} | {speed} | "
                   f"{r['eval_mode'] or '—'} |")
    out += [""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def render_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    fields = ["variant", "miou_mean", "miou_std", "n", "seeds", "missing_seeds", "paper_miou", "paper_ref",
              "delta", "pixel_acc", "mean_acc", "fwiou", "params", "gflops", "eval_size",
              "train_images_per_s", "eval_mode", "global_batch", "steps"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (" ".join(map(str, r[k])) if isinstance(r[k], list) else r[k]) for k in fields})
    return buf.getvalue()


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
