"""What an ablation's results folder holds, read back: finished cells, trained modules,
validation samples, predictions and the table's rows.

``<results>/<ablation>/<dataset>-<preset>/<variant>/seed<k>/`` as written by
:mod:`experiments.cell`. These loaders (``finished_cells``, ``load_cell``,
``validation_samples``, ``predict_masks``, ``load_rows``) are what ``notebooks/*.ipynb`` use to
look at any results folder; :mod:`experiments.figures` draws from them, :mod:`experiments.palette`
colours the masks.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class GridUnavailable(RuntimeError):
    """The cells cannot be shown as semantic-segmentation predictions (e.g. instance masks)."""


# --------------------------------------------------------------------------- cells
def finished_cells(dataset_dir: Path, variants: Sequence[str] | None = None,
                   seeds: Sequence[int] | None = None) -> dict[str, Path]:
    """Variant → run directory of its first finished seed (``metrics.json`` and
    ``checkpoints/last.ckpt``, an evaluation-only cell's in the cell it evaluates), trying ``seeds`` in order, then any other seed. Variants
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
            if (run_dir / "metrics.json").exists() and cell_weights(run_dir).exists():
                out[name] = run_dir
                break
    return out


def cell_weights(run_dir: Path, checkpoint: str = "last.ckpt") -> Path:
    """The checkpoint holding a cell's weights: its own, or for an evaluation-only cell
    (``weights_from`` on its card) that of the variant it evaluates, same seed."""
    from experiments.stages import parent_dir

    run_dir = Path(run_dir)
    config = run_dir / "config.json"
    source = json.loads(config.read_text())["card"].get("weights_from") if config.is_file() else None
    return (parent_dir(run_dir, source) if source else run_dir) / "checkpoints" / checkpoint


def _seed_of(name: str) -> int:
    return int(name[4:]) if name[4:].isdigit() else 1 << 30


def _variants_on_disk(dataset_dir: Path) -> list[str]:
    on_disk = sorted(p.parent.parent.name for p in dataset_dir.glob("*/seed*/config.json"))
    in_csv = [r["variant"] for r in _read_csv(dataset_dir / "results.csv")]
    return list(dict.fromkeys([v for v in in_csv if v in on_disk] + on_disk))


def check_semantic(config: dict) -> None:
    """Raise :class:`GridUnavailable` unless the cell is a SegmentationModule checkpoint."""
    card = config["card"]
    if card["task"] != "semantic":
        raise GridUnavailable(f"{card['variant']}: model {card['model']!r} on {card['dataset']!r} "
                              "is not a semantic-segmentation cell")


def load_cell(run_dir: Path, checkpoint: str = "last.ckpt", device: str = "cpu"):
    """(module, config) of a finished cell: a :class:`SegmentationModule` in eval mode with the
    trained weights and the cell's hyperparameters (so ``predict_probs`` runs its evaluation
    protocol); the plain ``nn.Module`` is ``module.model``."""
    from experiments.checkpoints import load_checkpoint
    from lightning_modules.segmentation import SegmentationModule
    from models import build_model

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    check_semantic(config)
    card = config["card"]
    ckpt = load_checkpoint(cell_weights(run_dir, checkpoint))  # weights_only: never runs code
    hparams = ckpt["hyper_parameters"]  # all of the module's arguments but the model and evaluators
    if card.get("weights_from"):  # another cell's weights: evaluated the way this cell's recipe says
        from experiments.recipe import from_dict
        from experiments.tasks import semantic_eval_kwargs

        hparams = {**hparams, **semantic_eval_kwargs(from_dict(config["recipe"]).eval)}
    model = build_model(card["model"], hparams["num_classes"],
                        **{**_tuples(card["model_kwargs"]), "width": card["width"], "pretrained": False})
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    module = SegmentationModule(model, **hparams)
    module.set_eval_stride(True)  # e.g. DeepLab's "eval OS 8": predict as the cell evaluated
    return module.to(device).eval(), config


def _tuples(kwargs: dict) -> dict:
    """JSON lists back to the tuples the model constructors document."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


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

    source = config["card"]["data_source"]  # {"kind", "root", "synthetic_task"}, as the runner records it
    root = root or source.get("root")
    if source["kind"] != "synthetic" and root is None:
        raise ValueError(f"{config['card']['dataset']}: pass root= (the folder given as --data-root)")
    from experiments.recipe import from_dict

    data = from_dict(config["recipe"]).data
    dm = get_task("semantic").dataset(source["kind"]).build(
        root and os.fspath(root), source["synthetic_task"], config["card"]["seed"], data.val_batch_size, data)
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
    from lightning_modules.inference import DEFAULT_SCALES, predict_probs

    hp, device = module.hparams, module.device
    module.on_validation_epoch_start()  # e.g. DeepLab v3 evaluated at another output stride
    if eval_mode is None or eval_mode == hp.eval_mode:
        run = module.predict_probs
    else:  # another protocol: its own settings, DeepLab v3's for ms_flip
        ms = eval_mode == "ms_flip"

        def run(x):
            return predict_probs(module, x, eval_mode, scales=DEFAULT_SCALES if ms else (1.0,), flip=ms,
                                 window=hp.get("eval_window") if eval_mode == "sliding" else None)
    return [run(x[None].to(device)).argmax(1)[0].cpu().numpy() for x in samples.images]


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
    ``results_crf.csv``; a variant of another option's table from ``results-table-2.csv`` etc.),
    which the runner wrote with the ablation at hand."""
    from experiments.recipe import Recipe
    from experiments.spec import Ablation, Variant
    from experiments.table import collect_rows

    dataset_dir = Path(dataset_dir)
    variants = _variants_on_disk(dataset_dir)
    configs = {v: json.loads(next((dataset_dir / v).glob("seed*/config.json")).read_text())
               for v in variants}
    first = next(iter(configs.values()), {})
    ablation = Ablation(
        name=first["card"]["ablation"] if first else dataset_dir.parent.name, title="", paper_data="",
        synthetic_task="", paper=Recipe(),
        variants={v: Variant(c["card"]["model"]) for v, c in configs.items()},
        task=first["card"]["task"] if first else "semantic")
    rows = collect_rows(ablation, variants, [], dataset_dir, metric_key)
    # results.csv, and the tables of other options beside it (results-table-2.csv; val_crf: results_crf*.csv)
    stem = "results" if metric_key == "val" else f"results_{metric_key[4:]}"
    tables = sorted(dataset_dir.glob(f"{stem}*.csv"), key=lambda p: (p.name != f"{stem}.csv", p.name))
    by_variant: dict[str, dict] = {}
    for table in tables:
        if table.name == f"{stem}.csv" or table.name.startswith(f"{stem}-"):
            for r in _read_csv(table):
                by_variant.setdefault(r["variant"], r)
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
