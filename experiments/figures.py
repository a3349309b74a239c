"""Figures of an ablation's results folder: bar charts of the table and a prediction grid.

``write_figures`` puts into ``<results>/<ablation>/<dataset>-<preset>/figures/``:

- ``bar_<metric>.png``: per variant the mean over seeds with the sample std as error bar, the
  seeds' values as dots, n under each bar and the paper's number as a dashed red tick where the
  paper reports that metric. Values are shown in the table's units (``experiments.tasks.
  METRIC_LABELS``: % for mIoU, accuracies and AP, the checkerboard statistic ×1000).
- ``predictions.png``: the same first N validation images as input | ground truth | the
  prediction of each variant's first finished seed, in the dataset's palette with void (255)
  white, under the evaluation protocol each cell was evaluated with (named in the titles).

The results-folder loaders (``finished_cells``, ``load_cell``, ``validation_samples``,
``predict_masks``, ``load_rows``) live in :mod:`experiments.results_folder` and the palette
(``colorize``, ``decolorize``, ``difference_map``) in :mod:`experiments.palette`; the notebooks
import them from there.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from datamodules.constants import IGNORE_INDEX
from experiments.atomic import write_atomic
from experiments.palette import colorize
from experiments.results_folder import (
    GridUnavailable,
    check_semantic,
    finished_cells,
    load_cell,
    predict_masks,
    validation_samples,
)

_FRACTION = re.compile(r"iou|acc|(^|_)ap\d*($|_)|dice|f1|precision|recall")


# --------------------------------------------------------------------------- figures
def _save(fig: Figure, path: Path) -> Path:
    """Write atomically: array jobs may refresh the same figure concurrently."""
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    return path


def prediction_grid(out_dir: Path, variants: Sequence[str], seeds: Sequence[int],
                    num_images: int = 4, out_png: Path | None = None, title: str | None = None,
                    indices: Sequence[int] | None = None, eval_mode: str | None = None,
                    root: str | Path | None = None, device: str | None = None) -> Path:
    """Input | ground truth | each variant's prediction for the same validation images.

    ``out_dir`` is the ablation's ``<dataset>-<preset>`` folder; the figure goes to
    ``out_png`` (default ``out_dir/figures/predictions.png``).
    """
    out_dir = Path(out_dir)
    cells = finished_cells(out_dir, variants, seeds)
    if not cells:
        raise FileNotFoundError(f"no finished cell with checkpoints/last.ckpt under {out_dir}")
    configs = {v: json.loads((d / "config.json").read_text()) for v, d in cells.items()}
    for config in configs.values():
        check_semantic(config)
    first = next(iter(configs.values()))
    for v, c in configs.items():
        if c["recipe"]["data"] != first["recipe"]["data"]:
            warnings.warn(f"{v}: other data settings than the first variant; its column shows "
                          "predictions on the first variant's images", stacklevel=2)
    samples = validation_samples(first, num_images, indices, root)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    columns = []
    for variant, run_dir in cells.items():
        module, _ = load_cell(run_dir, device=device)
        mode = eval_mode or module.hparams.eval_mode
        columns.append((f"{variant}\n{run_dir.name}, {mode}", predict_masks(module, samples, mode)))
        del module
    rows, ncols = len(samples.indices), 2 + len(columns)
    fig = Figure(figsize=(2.0 * ncols, 2.0 * rows + 1.2), layout="constrained")
    axes = fig.subplots(rows, ncols, squeeze=False)
    present: set[int] = set()
    for r in range(rows):
        panels = [("input", samples.rgb[r]), ("ground truth", samples.masks[r])] + [
            (name, preds[r]) for name, preds in columns]
        for c, (name, panel) in enumerate(panels):
            ax = axes[r, c]
            if c > 0:
                present |= set(np.unique(panel).tolist())
                panel = colorize(panel, samples.palette)
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
        axes[r, 0].set_ylabel(f"val #{samples.indices[r]}", fontsize=8)
    handles = [Patch(facecolor=np.array(samples.palette[k]) / 255, edgecolor="black",
                     label=samples.class_names[k]) for k in sorted(present - {IGNORE_INDEX})]
    if IGNORE_INDEX in present:
        handles.append(Patch(facecolor="white", edgecolor="black", label="void (255)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8)
    fig.suptitle((title or f"{first['ablation']} — {first['dataset']}")
                 + "\nvalidation predictions (first finished seed; eval protocol per column)",
                 fontsize=9)
    return _save(fig, Path(out_png) if out_png else out_dir / "figures" / "predictions.png")


def metric_series(rows: list[dict]) -> dict[str, list[dict]]:
    """Per metric key, per row: ``{"variant", "mean", "std", "values", "n", "paper"}``, from the
    rows' ``metrics``/``paper`` dicts (:func:`experiments.table.collect_rows`)."""
    per_row = []
    for row in rows:
        items = {k: (m.get("mean"), m.get("std"), list(m.get("values") or []))
                 for k, m in row["metrics"].items()}
        per_row.append((row, items, dict(row.get("paper") or {})))
    keys = dict.fromkeys(k for _, items, _ in per_row for k in items)
    out: dict[str, list[dict]] = {}
    for key in keys:  # a variant without the metric (e.g. not run yet) shows as missing
        for row, items, paper in per_row:
            mean, std, values = items.get(key, (None, None, []))
            out.setdefault(key, []).append({
                "variant": row["variant"], "mean": mean, "std": std, "values": values,
                "n": len(values) if values else row.get("n", 0), "paper": paper.get(key)})
    return out


def metric_label(key: str, series: list[dict] | None = None) -> tuple[str, float]:
    """(axis label, display scale) of a metric: the table's (``experiments.tasks``), else a
    name that reads as a fraction with values in [0, 1] is shown in %."""
    from experiments.tasks import METRIC_LABELS

    if key in METRIC_LABELS:
        label, scale = METRIC_LABELS[key]
        return (f"{label} (%)" if scale == 100.0 else label), scale
    vals = [v for s in series or [] for v in [s["mean"], *s["values"]] if v is not None]
    if _FRACTION.search(key) and all(0.0 <= v <= 1.0 for v in vals):
        return f"{key} (%)", 100.0
    return key, 1.0


def bar_charts(rows: list[dict], out_dir: Path, title: str, metrics: Sequence[str] | None = None,
               suffix: str = "") -> list[Path]:
    """One ``bar_<metric><suffix>.png`` per metric (default: every metric the rows carry)."""
    series = metric_series(rows)
    paths = []
    for key in metrics or list(series):
        data = series.get(key, [])
        if not any(s["mean"] is not None for s in data):
            continue
        label, scale = metric_label(key, data)
        fig = Figure(figsize=(max(4.0, 1.1 * len(data) + 1.5), 4.0), layout="constrained")
        ax = fig.subplots()
        x = np.arange(len(data))
        means = [s["mean"] * scale if s["mean"] is not None else 0.0 for s in data]
        errs = [s["std"] * scale if s["std"] is not None else 0.0 for s in data]
        ax.bar(x, means, yerr=errs, capsize=4, color="C0", alpha=0.8, label="ours: mean ± std")
        for i, s in enumerate(data):
            if s["values"]:
                ax.plot([i] * len(s["values"]), [v * scale for v in s["values"]], "o", ms=3,
                        color="black", label="seeds" if i == 0 else None)
            if s["paper"] is not None:
                ax.hlines(s["paper"], i - 0.42, i + 0.42, colors="C3", linestyles="--",
                          label="paper" if all(d["paper"] is None for d in data[:i]) else None)
            if s["mean"] is not None:
                ax.annotate(f"{means[i]:.3g}", (i, means[i] + errs[i]), xytext=(0, 2),
                            textcoords="offset points", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, [f"{s['variant']}\n" + (f"n={s['n']}" if s["mean"] is not None
                                                 else "missing") for s in data],
                      rotation=20 if len(data) > 4 else 0, fontsize=8)
        ax.set_ylabel(label)
        ax.set_title(f"{title}\n{label}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)
        paths.append(_save(fig, Path(out_dir) / f"bar_{safe}{suffix}.png"))
    return paths


def write_figures(out_dir: Path, rows: list[dict], title: str, variants: Sequence[str],
                  seeds: Sequence[int], crf_rows: list[dict] | None = None,
                  fig_dir: Path | None = None, **grid_kwargs) -> list[Path]:
    """All bar charts (``crf_rows``: also ``bar_<metric>_crf.png`` after the dense CRF) and the
    prediction grid into ``fig_dir`` (default ``out_dir/figures/``); a figure that cannot be made is skipped with a
    warning, never failing the run whose table was just written."""
    fig_dir, paths = Path(fig_dir) if fig_dir is not None else Path(out_dir) / "figures", []
    if not any(r.get("n") for r in rows):  # nothing finished yet (e.g. `collect` before any run)
        return paths
    for these, suffix, note in ((rows, "", ""), (crf_rows, "_crf", " (after dense CRF)")):
        try:
            paths += bar_charts(these, fig_dir, title + note, suffix=suffix) if these else []
        except Exception as err:  # noqa: BLE001 - figures must not fail a finished run
            warnings.warn(f"bar charts{note} skipped: {err!r}", stacklevel=2)
    try:
        paths.append(prediction_grid(out_dir, variants, seeds, title=title, out_png=fig_dir / "predictions.png",
                                     **grid_kwargs))
    except GridUnavailable:  # e.g. instance segmentation: no semantic prediction grid to draw
        pass
    except Exception as err:  # noqa: BLE001
        warnings.warn(f"prediction grid skipped: {err!r}", stacklevel=2)
    return paths
