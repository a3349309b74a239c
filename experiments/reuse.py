"""Cells trained once for several tables: a row of one table that trains exactly what a finished
cell of another table (or another ablation script) trained reuses its weights instead of training
them again.

The papers' tables share rows: DeepLab v2's LargeFOV is a row of Table 3 (``aspp``), of the CRF
comparison (``crf``) and of Table 2's schedules (``deeplab_v2_schedule``, "poly, batch 10, 20K");
DeepLab v3+ Table 1's decoder rows are rows of its Table 3 (``deeplabv3plus``); DeepLab v3
Table 1's "OS 16" is Table 2's "R50 block7"; PSPNet Table 3's ResNet50 is Table 1's
"B1236 AVE DR". On the paper recipe each is a full training run (hours on a GPU), the same run.

A cell about to train looks under the results root (``--out``) for a finished cell — same dataset
folder, same seed — whose stored recipe card differs from its own only in evaluation fields
(:data:`experiments.card.EVAL_ONLY_FIELDS`: the ablation and variant names, the evaluation
protocol, the validation split and batch). If one exists it links (or copies) that cell's
checkpoints into its own ``checkpoints/`` and evaluates them with its own evaluation settings;
its ``metrics.json`` names the cell the weights came from (``reused_weights``) and the table
says so in a note. On a CPU with the same thread count the reused weights are the ones training
again would give, bit for bit (``tests/test_reuse.py``); on a GPU, training again would differ
by the run-to-run nondeterminism of its kernels. ``--no-reuse`` trains every cell itself.

Cells that start from another cell's weights (``init_from``) or train nothing (``weights_from``)
are never replaced; a candidate that has not finished (no ``metrics.json`` or
``checkpoints/last.ckpt``, e.g. another process is training it) is not used.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from experiments.atomic import fsync_dir, write_atomic
from experiments.card import training_differences
from experiments.stages import is_finished

CHECKPOINTS = ("last.ckpt", "best.ckpt")


def can_reuse(card: dict[str, Any]) -> bool:
    """Whether a cell with this card may take another cell's weights: only one that trains from
    its own initialisation."""
    return not card.get("weights_from") and not card.get("init_from")


def find_twin(results_root: Path, card: dict[str, Any], run_dir: Path) -> Path | None:
    """The finished cell under ``results_root`` (any ablation, same dataset folder and seed) that
    trained exactly what ``card`` describes; None if there is none. A cell that trained its
    weights itself is preferred to one that reused them; ties go to the first path in order."""
    if not can_reuse(card):
        return None
    root, here = Path(results_root), Path(run_dir).resolve()
    found = []
    for config in sorted(root.glob(f"*/{card['dataset']}/*/seed{card['seed']}/config.json")):
        cell = config.parent
        if cell.resolve() == here or not is_finished(cell):
            continue
        try:
            stored = json.loads(config.read_text())
            metrics = json.loads((cell / "metrics.json").read_text())
        except (OSError, ValueError):  # unreadable: not a candidate (its own run reports it)
            continue
        theirs = stored.get("card", stored)
        if theirs.get("seed") != card["seed"] or theirs.get("weights_from") or training_differences(theirs, card):
            continue
        found.append((metrics.get("reused_weights") is not None, cell))
    return min(found, key=lambda f: f[0])[1] if found else None


def reuse_record(twin: Path) -> dict[str, Any]:
    """What ``metrics.json`` records of the reused weights: where they were trained and how fast."""
    card = json.loads((twin / "config.json").read_text())["card"]
    trained = json.loads((twin / "metrics.json").read_text())
    origin = trained.get("reused_weights") or {}
    return {"ablation": card["ablation"], "variant": card["variant"], "cell": str(twin),
            "checkpoint": str(twin / "checkpoints" / "last.ckpt"),
            # the cell that trained them, where the twin reused them in turn
            "trained_in": origin.get("trained_in", str(twin)),
            "steps": trained.get("steps"), "train_time_s": trained.get("train_time_s"),
            "train_images_per_s": trained.get("train_images_per_s")}


def link_checkpoints(twin: Path, run_dir: Path) -> list[Path]:
    """The twin's ``last.ckpt`` (and ``best.ckpt``) in ``run_dir/checkpoints``: a hard link where
    the file system allows one (no extra disk), else a copy; each replaces the target atomically."""
    target_dir = Path(run_dir) / "checkpoints"
    target_dir.mkdir(parents=True, exist_ok=True)
    linked = []
    for name in CHECKPOINTS:
        source = Path(twin) / "checkpoints" / name
        if not source.is_file():
            continue
        target = target_dir / name
        tmp = target_dir / f".{name}.{os.getpid()}.{uuid.uuid4().hex}.link"
        try:
            os.link(source, tmp)
            os.replace(tmp, target)
            fsync_dir(target_dir)
        except OSError:  # another file system, or no hard links there: copy
            tmp.unlink(missing_ok=True)
            with source.open("rb") as src:
                write_atomic(target, lambda f, src=src: shutil.copyfileobj(src, f))
        linked.append(target)
    return linked


def describe(record: dict[str, Any]) -> str:
    return f"{record['ablation']}/{record['variant']}"
