"""Figures of an ablation's results folder: bar charts of the table and a prediction grid.

``write_figures`` puts into ``<results>/<ablation>/<dataset>-<preset>/figures/``:

- ``bar_<metric>.png``: per variant the mean over seeds with the sample std as error bar, the
  seeds' values as dots, n under each bar and the paper's number as a dashed red tick where the
  paper reports that metric. Values are shown in the table's units (``experiments.tasks.
  METRIC_LABELS``: % for mIoU, accuracies and AP, the checkerboard statistic ×1000).
- ``predictions.png``: the same first N validation images as input | ground truth | the
  prediction of each variant's first finished seed, in the dataset's palette with void (255)
  white, under the evaluation protocol each cell was evaluated with (named in the titles).

The loaders (``finished_cells``, ``load_cell``, ``validation_samples``, ``predict_masks``,
``load_rows``) are what ``notebooks/*.ipynb`` use to look at any results folder.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from datamodules.constants import IGNORE_INDEX

VOID_COLOR = (255, 255, 255)  # no palette here uses white; VOC's own void colour is (224, 224, 192)
FLAT_METRICS = ("miou", "pixel_acc", "mean_acc", "fwiou")  # rows of tables before "metrics"
_FRACTION = re.compile(r"iou|acc|(^|_)ap\d*($|_)|dice|f1|precision|recall")


class GridUnavailable(RuntimeError):
    """The cells cannot be shown as semantic-segmentation predictions (e.g. instance masks)."""


# --------------------------------------------------------------------------- palette
def _lut(palette: Sequence[Sequence[int]], void_color: Sequence[int]) -> np.ndarray:
    if len(palette) > IGNORE_INDEX:
        raise ValueError(f"a palette of {len(palette)} colours leaves no room for void (255)")
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8).reshape(-1, 3)
    lut[IGNORE_INDEX] = void_color
    return lut


def colorize(mask, palette: Sequence[Sequence[int]], void_color=VOID_COLOR) -> np.ndarray:
    """H×W class indices (255 = void) → H×W×3 uint8 RGB in ``palette``, void ``void_color``."""
    mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(np.int64)
    bad = (mask < 0) | ((mask >= len(palette)) & (mask != IGNORE_INDEX))
    if bad.any():
        raise ValueError(f"mask values {np.unique(mask[bad])[:8].tolist()} have no colour in a "
                         f"palette of {len(palette)} classes")
    return _lut(palette, void_color)[mask]


def decolorize(rgb, palette: Sequence[Sequence[int]], void_color=VOID_COLOR) -> np.ndarray:
    """Inverse of :func:`colorize`: H×W×3 RGB → H×W int64 indices; unknown colours raise."""
    lut = _lut(palette, void_color)
    index = np.r_[np.arange(len(palette)), IGNORE_INDEX]
    codes = lut[index].astype(np.int64) @ np.array([65536, 256, 1])
    if len(set(codes.tolist())) != len(codes):
        raise ValueError("palette colours (with the void colour) are not distinct")
    rgb = np.asarray(rgb)
    pixels = rgb[..., :3].astype(np.int64) @ np.array([65536, 256, 1])
    order = np.argsort(codes)
    pos = np.clip(np.searchsorted(codes[order], pixels), 0, len(codes) - 1)
    found = codes[order][pos] == pixels
    if not found.all():
        raise ValueError(f"{int((~found).sum())} pixels have colours outside the palette")
    return index[order][pos]


def difference_map(pred_a, pred_b, mask) -> np.ndarray:
    """Where two predictions differ, who is right: H×W×3 uint8.

    Grey: both agree; blue: only A right; orange: only B right; red: they differ and both are
    wrong; white: void (not scored) pixels.
    """
    a, b, m = (np.asarray(x) for x in (pred_a, pred_b, mask))
    out = np.full(m.shape + (3,), 200, np.uint8)
    differ = a != b
    out[differ & (a == m)] = (31, 119, 180)
    out[differ & (b == m)] = (255, 127, 14)
    out[differ & (a != m) & (b != m)] = (214, 39, 40)
    out[m == IGNORE_INDEX] = VOID_COLOR
    return out


# --------------------------------------------------------------------------- cells
def finished_cells(dataset_dir: Path, variants: Sequence[str] | None = None,
                   seeds: Sequence[int] | None = None) -> dict[str, Path]:
    """Variant → run directory of its first finished seed (``metrics.json`` and
    ``checkpoints/last.ckpt``), trying ``seeds`` in order, then any other seed. Variants
    default to those on disk, in ``results.csv`` order; variants with no finished seed are left
    out."""
    dataset_dir = Path(dataset_dir)
    if variants is None:
        variants = _variants_on_disk(dataset_dir)
    out = {}
    for name in variants:
        requested = [dataset_dir / name / f"seed{s}" for s in (seeds or [])]
        others = sorted((dataset_dir / name).glob("seed*"), key=lambda p: _seed_of(p.name))
        for run_dir in requested + others:
            if (run_dir / "metrics.json").exists() and (run_dir / "checkpoints/last.ckpt").exists():
                out[name] = run_dir
                break
    return out


def _seed_of(name: str) -> int:
    return int(name[4:]) if name[4:].isdigit() else 1 << 30


def _variants_on_disk(dataset_dir: Path) -> list[str]:
    on_disk = sorted(p.parent.parent.name for p in dataset_dir.glob("*/seed*/config.json"))
    in_csv = [r["variant"] for r in _read_csv(dataset_dir / "results.csv")]
    return list(dict.fromkeys([v for v in in_csv if v in on_disk] + on_disk))


def data_source(config: dict) -> dict:
    """``{"kind": "synthetic"|"voc"|"ade20k", "root": str|None, "synthetic_task": str|None}``:
    the config's ``data_source`` where recorded, else parsed from ``dataset``
    (``synthetic_<task>[<N>px]-<preset>``, ``voc-<preset>``, ``ade20k-<preset>``)."""
    if config.get("data_source"):
        return {"root": None, "synthetic_task": None, **config["data_source"]}
    dataset = config["dataset"]
    match = re.fullmatch(r"synthetic_(.+?)(?:\d+px)?-[^-]+", dataset)
    if match:
        return {"kind": "synthetic", "root": None, "synthetic_task": match.group(1)}
    return {"kind": dataset.split("-")[0], "root": None, "synthetic_task": None}


def check_semantic(config: dict) -> None:
    """Raise :class:`GridUnavailable` unless the cell is a SegmentationModule checkpoint."""
    from lightning_modules import RECIPES

    model, task = config["resolved"]["model"], data_source(config).get("synthetic_task") or ""
    if (config.get("task", "semantic") != "semantic" or model == "mask_rcnn"
            or "instance" in task or model not in RECIPES):
        raise GridUnavailable(f"{config.get('variant')}: model {model!r} on {config['dataset']!r} "
                              "is not a semantic-segmentation cell")


def load_cell(run_dir: Path, checkpoint: str = "last.ckpt", device: str = "cpu"):
    """(module, config) of a finished cell: the cell's recipe :class:`SegmentationModule` in eval
    mode, with the trained weights and the cell's hyperparameters (so ``predict_scores`` runs
    its evaluation protocol); the plain ``nn.Module`` is ``module.model``."""
    from lightning_modules import RECIPES
    from models import build_model

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    check_semantic(config)
    res = config["resolved"]
    ckpt = torch.load(run_dir / "checkpoints" / checkpoint, map_location="cpu", weights_only=True)
    hparams = ckpt["hyper_parameters"]  # all of the module's arguments but the model
    model = build_model(res["model"], hparams["num_classes"],
                        **{**res["model_kwargs"], "pretrained": False})
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    module = RECIPES[res["model"]](model, **hparams)
    return module.to(device).eval(), config


@dataclass
class Samples:
    """Validation items: what the model sees (``images``, normalised 3×H×W) and what a person
    sees (``rgb``, H×W×3 uint8; ``masks``, H×W int64 with 255 = void)."""

    indices: list[int]
    images: list[torch.Tensor]
    rgb: list[np.ndarray]
    masks: list[np.ndarray]
    class_names: tuple[str, ...]
    palette: list[tuple[int, int, int]]


def validation_samples(config: dict, n: int = 4, indices: Sequence[int] | None = None,
                       root: str | Path | None = None) -> Samples:
    """Validation items ``indices`` (default the first ``n``) of the cell's dataset, rebuilt
    from its config; real datasets need ``root`` where the config records none."""
    from experiments.tasks import get_task

    source = data_source(config)
    root = root or source.get("root")
    if source["kind"] != "synthetic" and root is None:
        raise ValueError(f"{config['dataset']}: pass root= (the folder given as --data-root)")
    dm = get_task("semantic").make_datamodule(source["kind"], root and os.fspath(root),
                                               source["synthetic_task"], config["seed"],
                                               config["resolved"]["data"])
    dm.setup("validate")
    count = len(dm.val_set)
    indices = list(range(min(n, count))) if indices is None else [int(i) for i in indices]
    transform = dm.build_eval_transform()
    out = Samples(indices, [], [], [], tuple(dm.class_names), [tuple(c) for c in dm.palette])
    for i in indices:
        image, mask = dm.val_set[i]
        normalised, mask = transform(image, mask)
        out.images.append(normalised)
        out.rgb.append(image.permute(1, 2, 0).numpy())
        out.masks.append(mask.numpy())
    return out


@torch.no_grad()
def predict_masks(module, samples: Samples, eval_mode: str | None = None) -> list[np.ndarray]:
    """Argmax class maps of ``samples``, one image at a time (sizes may differ), under the
    module's evaluation protocol or another ``eval_mode``."""
    from lightning_modules.inference import predict

    hp, device = module.hparams, module.device
    module.on_validation_epoch_start()  # e.g. DeepLab v3 evaluated at another output stride
    if eval_mode is None or eval_mode == hp.eval_mode:
        run = module.predict_scores
    else:
        def run(x):
            return predict(module, x, eval_mode, module.num_classes, scales=hp.eval_scales,
                           flip=hp.eval_flip, crop=hp.eval_crop)
    return [run(x[None].to(device)).argmax(1)[0].cpu().numpy() for x in samples.images]


# --------------------------------------------------------------------------- figures
def _save(fig: Figure, path: Path) -> Path:
    """Write atomically: array jobs may refresh the same figure concurrently."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)
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
        if c["resolved"]["data"] != first["resolved"]["data"]:
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
    rows' ``metrics``/``paper`` dicts or, for older rows, the flat table keys."""
    per_row = []
    for row in rows:
        if "metrics" in row:
            items = {k: (m.get("mean"), m.get("std"), list(m.get("values") or []))
                     for k, m in row["metrics"].items()}
            paper = dict(row.get("paper") or {})
        else:
            items = {"miou": (row.get("miou_mean"), row.get("miou_std"), [])}
            items |= {k: (row.get(k), None, []) for k in FLAT_METRICS[1:] if k in row}
            paper = {"miou": row["paper_miou"]} if row.get("paper_miou") is not None else {}
        per_row.append((row, items, paper))
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
                  **grid_kwargs) -> list[Path]:
    """All bar charts (``crf_rows``: also ``bar_<metric>_crf.png`` after the dense CRF) and the
    prediction grid into ``out_dir/figures/``; a figure that cannot be made is skipped with a
    warning, never failing the run whose table was just written."""
    fig_dir, paths = Path(out_dir) / "figures", []
    for these, suffix, note in ((rows, "", ""), (crf_rows, "_crf", " (after dense CRF)")):
        try:
            paths += bar_charts(these, fig_dir, title + note, suffix=suffix) if these else []
        except Exception as err:  # noqa: BLE001 - figures must not fail a finished run
            warnings.warn(f"bar charts{note} skipped: {err!r}", stacklevel=2)
    try:
        paths.append(prediction_grid(out_dir, variants, seeds, title=title, **grid_kwargs))
    except Exception as err:  # noqa: BLE001
        warnings.warn(f"prediction grid skipped: {err!r}", stacklevel=2)
    return paths


# --------------------------------------------------------------------------- rows from disk
def _parse(value: str | None):
    if value in (None, ""):
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_rows(dataset_dir: Path, metric_key: str = "val") -> list[dict]:
    """The rows of a results folder's table without its ablation script: every finished cell
    collected by :func:`experiments.table.collect_rows` (all recorded metrics, mean/std/values
    over seeds), with the paper's numbers, Δ and missing seeds taken from ``results.csv`` (or
    ``results_crf.csv``), which the runner wrote with the ablation at hand."""
    from experiments.spec import Ablation, Variant
    from experiments.table import collect_rows

    dataset_dir = Path(dataset_dir)
    variants = _variants_on_disk(dataset_dir)
    configs = {v: json.loads(next((dataset_dir / v).glob("seed*/config.json")).read_text())
               for v in variants}
    first = next(iter(configs.values()), {})
    ablation = Ablation(
        name=first.get("ablation", dataset_dir.parent.name), title="", paper_data="",
        synthetic_task="",
        variants={v: Variant(c["resolved"]["model"]) for v, c in configs.items()},
        task=first.get("task", "semantic"))
    rows = collect_rows(ablation, variants, [], dataset_dir, metric_key)
    table = "results.csv" if metric_key == "val" else f"results_{metric_key[4:]}.csv"  # val_crf
    by_variant = {r["variant"]: r for r in _read_csv(dataset_dir / table)}
    for row in rows:
        stored = by_variant.get(row["variant"], {})
        primary = row.get("primary", "miou")
        paper = {k[len("paper_"):]: _parse(v) for k, v in stored.items()
                 if k.startswith("paper_") and k != "paper_ref" and _parse(v) is not None}
        row["paper"] = {**paper, **row.get("paper", {})}
        row["paper_value"] = row["paper"].get(primary)
        row[f"paper_{primary}"] = row["paper_value"]
        row["paper_ref"] = stored.get("paper_ref") or row.get("paper_ref", "")
        row["delta"] = _parse(stored.get("delta"))
        row["missing_seeds"] = [int(s) for s in (stored.get("missing_seeds") or "").split()]
    return rows
