"""Collect the finished cells of an ablation into ``results.md`` and ``results.csv``.

The table is built from the ``metrics.json`` files alone, so cells may have run in one process,
under DDP, or as separate cluster jobs. The task's primary metric (mIoU, or mask AP for
instance segmentation) is reported as mean ± sample standard deviation over seeds with n, next
to the paper's number; the other recorded metrics (trimap mIoU, pixel accuracy, ..., the
checkerboard statistic) as means. Cells that have not finished are listed as missing, never
silently dropped.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

from experiments.spec import Ablation, load_paper_numbers, paper_values
from experiments.tasks import METRIC_LABELS, get_task


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(x: float | None, scale: float = 100.0, digits: int = 2) -> str:
    return "—" if x is None else f"{x * scale:.{digits}f}"


def collect_rows(ablation: Ablation, variants: list[str], seeds: list[int], dataset_dir: Path,
                 metric_key: str = "val") -> list[dict]:
    """One row per variant: every recorded metric as mean/std/values over the finished seeds.

    ``metric_key`` is the evaluation whose metrics are read (``"val"``, or ``"val_crf"`` after
    the dense CRF, whose paper numbers are the variant's key with ``_crf`` appended).
    Besides the generic ``metrics``/``paper`` dicts, a row carries flat keys for the primary
    metric (``miou_mean``, ``miou_std``, ``paper_miou``) and the means of the others.
    """
    task = get_task(ablation.task)
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
        metrics: dict[str, dict] = {}
        for key in (task.primary, *task.secondary):
            values = [c[metric_key][key] for c in have if c[metric_key].get(key) is not None]
            if values:
                mean, std = _mean_std(values)
                metrics[key] = {"mean": mean, "std": std, "values": values}
        paper_key = variant.paper
        if paper_key and metric_key.endswith("_crf"):
            paper_key = f"{paper_key}_crf" if f"{paper_key}_crf" in load_paper_numbers() else None
        paper = {m: p for m, p in paper_values(paper_key).items()}
        main = metrics.get(task.primary, {})
        mean, std = main.get("mean"), main.get("std")
        lead = paper.get(task.primary)
        scale = METRIC_LABELS[task.primary][1]
        first = have[0] if have else {}
        speeds = [c["train_images_per_s"] for c in have if c.get("train_images_per_s")]
        row = {
            "variant": name, "primary": task.primary,
            "mean": mean, "std": std, "n": len(have),
            "seeds": sorted(c["seed"] for c in have), "missing_seeds": missing,
            "paper_value": lead.value if lead else None,
            "paper_ref": lead.source if lead else "",
            # a paper number this recipe cannot reach (e.g. COCO pre-training): shown, no Δ
            "delta": (mean * scale - lead.value) if (lead and mean is not None and not variant.not_comparable)
            else None,
            "not_comparable": variant.not_comparable if lead else None,
            "metrics": metrics, "paper": {m: p.value for m, p in paper.items()},
            "params": first.get("params"), "gflops": first.get("gflops"),
            "eval_size": first.get("eval_size"),
            "train_images_per_s": statistics.fmean(speeds) if speeds else None,
            "eval_mode": eval_label(first, crf=metric_key.endswith("_crf")),
            "global_batch": first.get("global_batch"), "steps": first.get("steps"),
            # seed -> "ablation/variant" of the cell whose weights this row's cell reused
            "reused_weights": {c["seed"]: f"{c['reused_weights']['ablation']}/{c['reused_weights']['variant']}"
                               for c in have if c.get("reused_weights")},
        }
        row[f"{task.primary}_mean"], row[f"{task.primary}_std"] = mean, std
        row[f"paper_{task.primary}"] = row["paper_value"]
        for key in task.secondary:
            row[key] = metrics.get(key, {}).get("mean")
        rows.append(row)
    return rows


def eval_label(metrics: dict, crf: bool = False) -> str:
    """How a cell evaluated, for the table's eval column: the protocol, the output stride where
    the recipe sets one, the CRF, and whose weights an evaluation-only cell evaluated."""
    label = metrics.get("eval_protocol") or metrics.get("eval_mode") or ""
    stride = (metrics.get("eval") or {}).get("output_stride")
    if stride:
        label += f", OS {stride}"
    if crf:
        label += " + CRF"
    source = (metrics.get("weights_from") or {}).get("variant")
    if source:
        label += f" ({source}'s weights)"
    return label


def reuse_note(rows: list[dict]) -> str | None:
    """The table note naming the rows whose weights a finished cell of another table trained."""
    parts = []
    for r in rows:
        by_source: dict[str, list[int]] = {}
        for seed, source in sorted(r.get("reused_weights", {}).items()):
            by_source.setdefault(source, []).append(seed)
        parts += [f"{r['variant']} ← {source} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
                  for source, seeds in by_source.items()]
    if not parts:
        return None
    return ("Weights trained once for another table with the same recipe card and seed, evaluated here "
            "(experiments/reuse.py; --no-reuse trains them again): " + "; ".join(parts) + ".")


def _secondary(rows: list[dict]) -> list[str]:
    """The secondary metrics that at least one row recorded, in the task's order."""
    keys: list[str] = []
    for r in rows:
        for key in r["metrics"]:
            if key != r["primary"] and key not in keys:
                keys.append(key)
    order = list(METRIC_LABELS)
    return sorted(keys, key=order.index)


def render_markdown(title: str, rows: list[dict], notes: list[str]) -> str:
    primary = rows[0]["primary"] if rows else "miou"
    label = METRIC_LABELS[primary][0]
    secondary = _secondary(rows)
    out = [f"## {title}", ""]
    out.append(f"| variant | {label} (mean ± std, n) | paper {label} | Δ | "
               + "".join(f"{METRIC_LABELS[k][0]} | " for k in secondary)
               + "params | GFLOPs | train img/s | eval |")
    out.append("|---" * (8 + len(secondary)) + "|")
    for r in rows:
        scale = METRIC_LABELS[primary][1]
        if r["n"] == 0:
            main = f"missing ({len(r['missing_seeds'])} seeds)"
        else:
            main = f"{r['mean'] * scale:.2f} ± {r['std'] * scale:.2f} (n={r['n']})"
            if r["missing_seeds"]:
                main += f", missing seeds {r['missing_seeds']}"
        paper = f"{r['paper_value']:.2f} ({r['paper_ref']})" if r["paper_value"] is not None else "—"
        if r.get("not_comparable"):
            paper += f" — not comparable: {r['not_comparable']}"
        delta = f"{r['delta']:+.2f}" if r["delta"] is not None else "—"
        cols = ""
        for key in secondary:
            value = r["metrics"].get(key, {}).get("mean")
            text = _fmt(value, METRIC_LABELS[key][1])
            if key in r["paper"] and value is not None:
                text += f" (paper {r['paper'][key]:.1f})"
            cols += f"{text} | "
        params = f"{r['params'] / 1e6:.2f}M" if r["params"] else "—"
        gflops = f"{r['gflops']:.2f}" if r["gflops"] is not None else "—"
        speed = f"{r['train_images_per_s']:.1f}" if r["train_images_per_s"] else "—"
        out.append(f"| {r['variant']} | {main} | {paper} | {delta} | {cols}{params} | {gflops} | {speed} | "
                   f"{r['eval_mode'] or '—'} |")
    out += [""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def render_csv(rows: list[dict]) -> str:
    primary = rows[0]["primary"] if rows else "miou"
    secondary = _secondary(rows)
    buf = io.StringIO()
    fields = ["variant", f"{primary}_mean", f"{primary}_std", "n", "seeds", "missing_seeds",
              f"paper_{primary}", "paper_ref", "delta", "not_comparable", *secondary, "params", "gflops", "eval_size",
              "train_images_per_s", "eval_mode", "global_batch", "steps"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        flat = {**r, **{k: r["metrics"].get(k, {}).get("mean") for k in secondary}}
        writer.writerow({k: (" ".join(map(str, flat[k])) if isinstance(flat[k], list) else flat[k]) for k in fields})
    return buf.getvalue()
