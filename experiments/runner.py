"""The shared experiment runner: every ablation script hands its :class:`Ablation` to :func:`main`.

A run is one cell (ablation, variant, seed, dataset, preset); ``experiments/cell.py`` holds the
run directory and resume rules, ``experiments/table.py`` the results table. What a cell does is
its resolved recipe (``experiments/recipe.py``), one precedence everywhere: preset defaults <
ablation recipe < variant < command line. ``--dry-run`` prints every selected cell's recipe card
and exits without reading data or writing anything (it looks for finished cells of other tables
whose weights a cell would reuse, ``experiments/reuse.py``).

Presets:
- ``smoke`` (default for synthetic data): the paper's recipe with the generic smoke changes
  (``experiments.recipe.SMOKE``: 1/8 width, from scratch, AdamW, a few hundred steps on the
  ablation's synthetic diagnostic task) and the ablation's own; every value that differs from
  the paper recipe is printed at start-up. It shows the *direction* of an effect on a task
  built to expose it; its numbers are not comparable to the paper's.
- ``paper``: the paper's recipe (``experiments/recipes/<paper>.py``) on the paper's dataset.

Commands: ``run`` (default) trains the selected cells, skipping finished ones and resuming
unfinished ones; ``collect`` builds the table from whatever cells finished (followed by the
claims table, ``experiments/claims.py``, when the ablation declares claims; a non-default option
such as ``--table 2`` writes its own ``results-table-2.md`` beside ``results.md``, see
:func:`table_suffix`); ``cells`` lists the
unfinished cells as ``VARIANT<tab>SEED`` lines (what ``experiments/slurm/submit.sh`` turns into
a job array; ``cells --levels`` prefixes each with its stage-wise dependency level, ``LEVEL<tab>``,
see ``experiments/stages.py``). Variants that start from another's weights (``init_from``) or
evaluate them (``weights_from``, evaluation-only: no training) run after it; selecting one whose
parent is neither selected nor finished is an error. A cell whose network a finished cell of another
table under ``--out`` trained with the same recipe card and seed evaluates those weights instead
of training them again (``experiments/reuse.py``; ``--no-reuse`` trains it). ``--devices N --num-nodes M`` trains each cell with DDP on N×M processes; the
per-device batch is the paper's global batch / (N·M·accumulate).

``--jobs N`` trains N cells side by side on one machine (small smoke models use a second thread
poorly: on 2 cores, two single-threaded processes were 1.22× faster, BENCHMARKS.md): the command
starts N − 1 more processes of the same script (``--job-worker``), every process takes this
machine's threads / N, and they share the sweep through the cell locks (``experiments/lock.py``:
a cell another process holds is skipped, one whose ``init_from`` or ``weights_from`` parent another
process is still training is left to that process, which reaches it next). The first process waits for the others
and writes the table once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from experiments.card import Run, dataset_key, recipe_card, resolve
from experiments.cell import run_cell
from experiments.distributed import global_rank
from experiments.progress import SweepClock
from experiments.reuse import find_twin
from experiments.recipe import PRECISIONS, RecipeError
from experiments.spec import Ablation
from experiments.stages import cell_levels, check_parents, is_finished, parent_dir, stage_order
from experiments.atomic import write_text_atomic
from experiments.table import collect_rows, render_csv, render_markdown, reuse_note
from experiments.tasks import get_task


def _number(kind: type, low: float, name: str, strict: bool = False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"{name} must be {'>' if strict else '>='} {low:g}, got {text}")
        return value
    return parse


POSITIVE_INT = _number(int, 1, "the value")
NON_NEGATIVE_INT = _number(int, 0, "the value")
POSITIVE_FLOAT = _number(float, 0, "the value", strict=True)


def build_parser(ablation: Ablation) -> argparse.ArgumentParser:
    task = get_task(ablation.task)
    p = argparse.ArgumentParser(description=ablation.title)
    p.add_argument("command", nargs="?", default="run", choices=["run", "collect", "cells"],
                   help="run the cells (default), only collect the table from finished cells, or "
                        "list the unfinished cells as 'VARIANT<tab>SEED' lines (for job arrays)")
    p.add_argument("--levels", action="store_true",
                   help="cells: prefix each line with its stage-wise dependency level (LEVEL<tab>VARIANT<tab>SEED; "
                        "level k waits for its init_from parent at level k-1)")
    p.add_argument("--dry-run", action="store_true",
                   help="print each selected cell's recipe card (JSON lines, then a table) and exit")
    p.add_argument("--data", choices=sorted(task.datasets), default="synthetic")
    p.add_argument("--data-root", type=Path, help="folder containing VOCdevkit / ADEChallengeData2016")
    p.add_argument("--download", action="store_true",
                   help="real data: fetch and verify what is missing first (python -m datamodules.download)")
    p.add_argument("--skip-data-check", action="store_true",
                   help="real data: train even if the tree differs from the official one (file counts, "
                        "mask formats); e.g. a subset for a quick check")
    p.add_argument("--preset", choices=["smoke", "paper"], help="default: smoke for synthetic data, else paper")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--variants", nargs="+", help="subset of variants to run (default: all)")
    which.add_argument("--variant", help="run exactly one variant (with --seed: one cell, e.g. a job-array task)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", nargs="+", type=NON_NEGATIVE_INT, help="seeds (default: the preset's)")
    seeds.add_argument("--seed", type=NON_NEGATIVE_INT, help="run exactly one seed")
    p.add_argument("--jobs", type=POSITIVE_INT, default=1,
                   help="train this many cells side by side on this machine, each process with its share of the "
                        "CPU threads (default 1); see experiments/runner.py")
    p.add_argument("--job-worker", action="store_true", help=argparse.SUPPRESS)  # one of --jobs' processes
    p.add_argument("--devices", type=POSITIVE_INT, default=1)
    p.add_argument("--num-nodes", type=POSITIVE_INT, default=1)
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda", "mps"])
    p.add_argument("--precision", choices=PRECISIONS,
                   help="recipe trainer.precision (default auto: bf16-mixed on GPUs with bf16, else 32-true)")
    p.add_argument("--max-steps", type=POSITIVE_INT)
    p.add_argument("--batch-size", type=POSITIVE_INT,
                   help="per-device batch; changes the global batch (recorded as a deviation)")
    p.add_argument("--global-batch", type=POSITIVE_INT, help="recipe data.global_batch (default: the paper's)")
    p.add_argument("--accumulate", type=POSITIVE_INT, help="gradient accumulation steps")
    p.add_argument("--no-sync-batchnorm", action="store_true", help="keep per-process BatchNorm under DDP")
    p.add_argument("--eval-mode", choices=["whole", "ms_flip", "sliding", "semseg", "semseg_ms"],
                   help="evaluation protocol (lightning_modules/inference.py): whole image (the recipe's "
                        "pad_to kept, DeepLab: 513); ms_flip: DeepLab v3/v3+ scales 0.5-1.75 + flip; sliding "
                        "windows; semseg: hszhao/semseg's long side 512 + 473 windows + flip (PSPNet); "
                        "semseg_ms: the same at 0.5-1.75 x 512 (PSPNet +MS)")
    p.add_argument("--crf", action="store_true", help="also report results after dense CRF")
    p.add_argument("--crf-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a dense-CRF parameter (lightning_modules/crf.py CRFParams), e.g. bi_xy_std=50; repeatable")
    p.add_argument("--crf-params-from", type=Path, metavar="PATH",
                   help="the dense-CRF parameters cross-validated by python -m experiments.crf_search: a "
                        "crf_params.json, a cell folder holding one (every variant), or a results folder "
                        "with VARIANT/seedN/crf_params.json (each variant its own, as the papers did)")
    p.add_argument("--width", type=POSITIVE_FLOAT, help="channel width multiplier")
    p.add_argument("--image-size", type=POSITIVE_INT, help="synthetic data only: image side in pixels")
    p.add_argument("--synthetic-task", help="synthetic data only: run on another diagnostic task than the "
                                            "ablation's (results go to their own folder)")
    p.add_argument("--pretrained", help="'true', 'false' or a path to timm backbone weights")
    p.add_argument("--workers", type=NON_NEGATIVE_INT, help="data loader workers per process")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="sets",
                   help="any recipe value, e.g. optim.lr=0.001, data.train_split=train, model.batch_norm=false; "
                        "repeatable; beats every other setting")
    p.add_argument("--logger", choices=["csv", "wandb"], default="csv")
    p.add_argument("--wandb-project", default="segmentation-ablations")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--no-reuse", action="store_true",
                   help="train every cell itself, even one whose network a finished cell of another table "
                        "under --out trained with the same recipe card and seed (experiments/reuse.py)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-figures", action="store_true",
                   help="skip the bar charts and prediction grid (results/<ablation>/<dataset>/figures/)")
    for name, option in ablation.options.items():
        p.add_argument(f"--{name}", choices=option.choices, default=option.default, help=option.help)
    return p


def parse_value(text: str) -> Any:
    """A command-line value: JSON (numbers, true/false/null, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def command_line_changes(p: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The command line's recipe changes (the top of the precedence), as a nested dict."""
    changes: dict[str, Any] = {}

    def put(section: str | None, key: str, value: Any) -> None:
        if section is None:
            changes[key] = value
        else:
            changes.setdefault(section, {})[key] = value

    if args.max_steps is not None:
        put("trainer", "max_steps", args.max_steps)
    for flag, section, key in (("precision", "trainer", "precision"), ("global_batch", "data", "global_batch"),
                               ("accumulate", "trainer", "accumulate"), ("workers", "data", "num_workers"),
                               ("image_size", "data", "image_size"), ("width", None, "width")):
        if getattr(args, flag) is not None:
            put(section, key, getattr(args, flag))
    if args.no_sync_batchnorm:
        put("trainer", "sync_batchnorm", False)
    if args.channels_last:
        put("trainer", "channels_last", True)
    if args.pretrained is not None:
        put(None, "pretrained", {"true": True, "false": False}.get(args.pretrained.lower(), args.pretrained))
    # a named protocol (lightning_modules.inference.EVAL_PROTOCOLS): the fields that define it;
    # the rest (DeepLab's pad_to, semseg's base_size/window) are kept from the recipe
    if args.eval_mode is not None:
        from lightning_modules.inference import EVAL_PROTOCOLS

        changes["eval"] = dict(EVAL_PROTOCOLS[args.eval_mode])
    crf = parse_crf_params(p, args.crf_param)
    if (args.crf or args.crf_param) and args.crf_params_from is None:  # else per variant: with_crf_params
        put("eval", "crf", crf)
    for item in args.sets:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or (not dot and section not in ("width", "pretrained", "init_from", "weights_from", "seeds")):
            p.error(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. optim.lr=0.001")
        put(section if dot else None, name if dot else section, parse_value(value))
    return changes


def parse_crf_params(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, float]:
    from dataclasses import fields

    from lightning_modules.crf import CRFParams

    types = {f.name: f.type for f in fields(CRFParams)}
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in types:
            parser.error(f"--crf-param {item!r}: expected NAME=VALUE with NAME one of {sorted(types)}")
        try:
            out[name] = int(value) if types[name] in (int, "int") else float(value)
        except ValueError:
            parser.error(f"--crf-param {item!r}: {value!r} is not a number")
    return out


def crf_params_file(path: Path, variant: str) -> Path:
    """The crf_params.json for ``variant`` under ``path`` (see ``--crf-params-from``)."""
    from experiments.crf_search import FILE

    if path.is_file():
        return path
    if (path / FILE).exists():
        return path / FILE
    found = sorted((path / variant).glob(f"seed*/{FILE}"), key=lambda f: int(f.parent.name[4:] or 0))
    if not found:
        raise FileNotFoundError(f"--crf-params-from {path}: no {FILE} there nor under {path / variant}/seed*/ "
                                f"(run python -m experiments.crf_search on a finished {variant!r} cell)")
    return found[0]


def with_crf_params(p: argparse.ArgumentParser, ablation: Ablation, names: list[str], path: Path,
                    overrides: dict[str, float]) -> Ablation:
    """Each selected variant evaluated with its cross-validated CRF parameters (its recipe's
    ``eval.crf`` and ``eval.crf_params_from``; ``--crf-param`` values still win)."""
    import dataclasses

    from experiments.crf_search import load_crf_params

    variants = dict(ablation.variants)
    for name in names:
        try:
            params, source = load_crf_params(crf_params_file(path, name))
        except (FileNotFoundError, KeyError, ValueError) as err:
            p.error(str(err))
        v = variants[name]
        ev = {**v.recipe.get("eval", {}), "crf": {**params, **overrides}, "crf_params_from": source}
        variants[name] = dataclasses.replace(v, recipe={**v.recipe, "eval": ev})
    return dataclasses.replace(ablation, variants=variants)


def _check_out(p: argparse.ArgumentParser, out: Path) -> None:
    if out.exists() and not out.is_dir():
        p.error(f"--out {out}: exists and is not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        p.error(f"--out {out}: {existing} is not a writable folder")


def parse_args(ablation: Ablation, argv: list[str] | None) -> tuple[argparse.Namespace, Run, Ablation]:
    """Parse and check the whole command line; every mistake is a one-line argparse error."""
    p = build_parser(ablation)
    args = p.parse_args(argv)
    synthetic = args.data == "synthetic"
    if synthetic and args.data_root is not None:
        p.error("--data-root applies to real data only (--data voc or ade20k); synthetic data are generated")
    if not synthetic and args.data_root is None:
        p.error(f"--data {args.data} needs --data-root (the folder that contains the dataset; see README)")
    if args.synthetic_task is not None:
        from datamodules.synthetic import SYNTHETIC_TASKS

        if not synthetic or ablation.task != "semantic":
            p.error("--synthetic-task applies to the synthetic data of semantic ablations only")
        if args.synthetic_task not in SYNTHETIC_TASKS:
            p.error(f"--synthetic-task must be one of {sorted(SYNTHETIC_TASKS)}, got {args.synthetic_task!r}")
    if synthetic and (args.download or args.skip_data_check):
        p.error("--download and --skip-data-check apply to real data only")
    if args.image_size is not None and not synthetic:
        p.error("--image-size applies to synthetic data only (real data keep their own sizes)")
    if args.crf_param and not args.crf and ablation.paper.eval.crf is None:
        p.error("--crf-param needs --crf (this ablation does not run the dense CRF otherwise)")
    if args.crf_params_from is not None and ablation.task != "semantic":
        p.error("--crf-params-from applies to semantic-segmentation ablations only")
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds {' '.join(map(str, args.seeds))}: each seed once (a repeated seed is the same run)")
    if args.command != "cells" and not args.dry_run:
        _check_out(p, args.out)
    if args.jobs > 1 and (args.command != "run" or args.devices > 1 or args.num_nodes > 1
                          or (args.variant is not None and args.seed is not None)):
        p.error("--jobs N runs several cells side by side in one machine's processes: only with the run command, "
                "one device per cell (no --devices/--num-nodes) and more than one cell")
    if args.jobs > 1 and not script_of(ablation).is_file():
        p.error(f"--jobs needs the ablation's script {script_of(ablation)} (its extra processes run it)")
    args.preset = args.preset or ("smoke" if synthetic else "paper")
    for name in ablation.options:
        ablation = ablation.with_option(name, getattr(args, name))
    names = [args.variant] if args.variant else (args.variants or list(ablation.variants))
    unknown = [n for n in names if n not in ablation.variants]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; this ablation has {list(ablation.variants)}")
    args.names = list(dict.fromkeys(names))
    if args.crf_params_from is not None:
        ablation = with_crf_params(p, ablation, args.names, args.crf_params_from,
                                   parse_crf_params(p, args.crf_param))
    run = Run(data=args.data, data_root=str(args.data_root) if args.data_root else None, preset=args.preset,
              devices=args.devices, num_nodes=args.num_nodes, accelerator=args.accelerator, batch_size=args.batch_size,
              changes=command_line_changes(p, args), synthetic_task=args.synthetic_task)
    try:  # every cell's recipe and card is checked before anything runs or is written
        args.cells = {name: resolve(ablation, name, run) for name in args.names}
        args.names = stage_order(args.names, lambda n: parent_of(args.cells[n]))  # parents first
        args.cells = {name: args.cells[name] for name in args.names}
        first = next(iter(args.cells.values()))
        args.seed_list = [args.seed] if args.seed is not None else list(args.seeds or first.recipe.seeds)
        if args.command in ("run", "cells") and not args.dry_run:
            check_parents(args.names, args.seed_list, lambda n: parent_of(args.cells[n]),
                          args.out / ablation.name / dataset_key(ablation, run),
                          eval_only=lambda n: args.cells[n].recipe.weights_from is not None)
        if args.command == "run" or args.dry_run:
            args.cards = {name: recipe_card(ablation, name, args.seed_list[0], run, cell)
                          for name, cell in args.cells.items()}
    except (RecipeError, ValueError) as err:
        p.error(str(err))
    return args, run, ablation


def steps_to_train(cell) -> int:
    """Optimiser steps a cell runs itself: none for an evaluation-only cell (``weights_from``)."""
    return 0 if cell.recipe.weights_from else cell.recipe.trainer.max_steps


def reused_twins(args: argparse.Namespace, out_dir: Path, cells: list[tuple[str, int]]) -> dict[tuple[str, int], Path]:
    """(variant, seed) → the finished cell of another table whose weights it will reuse
    (``experiments/reuse.py``); none with ``--no-reuse``, none for a cell finished itself."""
    if args.no_reuse:
        return {}
    twins = {}
    for name, seed in cells:
        run_dir = out_dir / name / f"seed{seed}"
        if (run_dir / "metrics.json").exists():
            continue
        twin = find_twin(args.out, {**args.cards[name], "seed": seed}, run_dir)
        if twin is not None:
            twins[(name, seed)] = twin
    return twins


def parent_of(cell) -> str | None:
    """The variant whose cell must finish first: the one whose weights an evaluation-only cell
    evaluates (``weights_from``), else the one a stage-wise cell starts from (``init_from``)."""
    return cell.recipe.weights_from or cell.recipe.init_from


def print_smoke_changes(ablation: Ablation, run: Run, cards: dict[str, dict]) -> None:
    """Every value that differs from the paper recipe in the smoke preset, once."""
    lines: dict[str, list[str]] = {}
    for name, card in cards.items():
        for line in card["deviations"]:
            lines.setdefault(line, []).append(name)
    print("=" * 100)
    print(f"SMOKE PRESET: synthetic '{cards[next(iter(cards))]['data_source']['synthetic_task']}' task, "
          f"width-scaled networks trained from scratch on the CPU; the numbers are NOT comparable to the paper's.")
    for line, names in lines.items():
        where = "" if len(names) == len(cards) else f"  [{', '.join(names)}]"
        print(f"  smoke: {line}{where}")
    print("=" * 100)


def needed_datasets(ablation: Ablation, args: argparse.Namespace, run: Run) -> list[str]:
    """The ``datamodules.download`` names the selected cells read."""
    if run.data == "ade20k":
        return ["ade20k"]
    names = ["voc2012"]
    if ablation.task == "semantic" and any(c.recipe.data.train_split == "sbd_train" for c in args.cells.values()):
        names.append("sbd")  # FCN's split: SBD's own train.txt, .mat masks
    elif ablation.task == "semantic" and any(c.recipe.data.train_split in (None, "train_aug")
                                             for c in args.cells.values()):
        aug = Path(run.data_root) / "SegmentationClassAug"
        names.append("voc_aug_png" if aug.is_dir() and not (Path(run.data_root) / "benchmark_RELEASE").is_dir()
                     else "sbd")
    return names


def prepare_data(ablation: Ablation, args: argparse.Namespace, run: Run) -> None:
    """Download (with --download) and check the real data before any cell starts; a tree that
    is not what the datamodules need stops the run with the table of what is missing or wrong."""
    from datamodules.verify import format_table, verify

    names = needed_datasets(ablation, args, run)
    if args.download:
        from datamodules.download import download

        download(names, Path(run.data_root), quiet=args.quiet)
    if args.skip_data_check:
        print(f"[data] not checked (--skip-data-check): {', '.join(names)} under {run.data_root}")
        return
    checks = verify(run.data_root, names)
    if not all(c.ok for c in checks):
        raise SystemExit(f"{format_table(checks)}\n\nerror: {run.data_root} is not the data this run needs "
                         f"(see the fixes above; --skip-data-check trains on it anyway)")
    print(f"[data] {', '.join(names)} under {run.data_root}: {len(checks)} checks ok")


def dry_run(ablation: Ablation, args: argparse.Namespace, run: Run) -> list[dict]:
    """Print every selected cell's recipe card as one JSON line, then a short table; no files."""
    cards = []
    for card in args.cards.values():
        for seed in args.seed_list:
            cards.append({**card, "seed": seed})
            print(json.dumps(cards[-1]))
    out_dir = args.out / ablation.name / dataset_key(ablation, run)
    twins = reused_twins(args, out_dir, [(c["variant"], c["seed"]) for c in cards])
    print()
    print("| variant | seed | model | params | global batch (processes x batch x accumulation) | steps | lr (schedule) | eval |")
    print("|---|---|---|---|---|---|---|---|")
    for c in cards:
        ev = c["eval"]
        protocol = ((ev.get("protocol") or ev["mode"]) + (f", OS {ev['output_stride']}" if ev.get("output_stride") else "")
                    + (" + CRF" if ev["crf"] else ""))
        twin = twins.get((c["variant"], c["seed"]))
        steps = (f"0 (evaluates {c['weights_from']}'s weights)" if c.get("weights_from") else
                 f"0 (reuses {twin.relative_to(args.out)}'s weights)" if twin else c["max_steps"])
        print(f"| {c['variant']} | {c['seed']} | {c['model']} | {c['params'] / 1e6:.2f}M | {c['global_batch']} "
              f"({c['world_size']} x {c['batch_size_per_device']} x {c['accumulate']}) | {steps} | "
              f"{c['lr']:g} ({c['lr_schedule']}) | {protocol} |")
    trained = [c for c in cards if not c.get("weights_from") and (c["variant"], c["seed"]) not in twins]
    steps = sum(c["max_steps"] for c in trained)
    images = sum(c["images_seen"] for c in trained)
    eval_only = sum(1 for c in cards if c.get("weights_from"))
    skipped = ([f"{eval_only} evaluation-only"] if eval_only else []) + (
        [f"{len(twins)} reusing the weights of a finished cell of another table"] if twins else [])
    passes = SweepClock([c["max_steps"] if c in trained else 0 for c in cards],
                        val_every=[c["val_every"] for c in cards])
    evaluations = [passes.validations_left(i) for i in range(len(cards))]
    print(f"\n{len(cards)} cells" + (f" ({', '.join(skipped)}: they train nothing)" if skipped else "")
          + f", {steps:,} optimiser steps, {images:,} training images and {sum(evaluations):,} passes over "
          f"the validation set ({sum(evaluations) - len(cards):,} of them during training, every val_every "
          f"steps) in total (results would go to {args.out / ablation.name / dataset_key(ablation, run)}).")
    notes = sorted({n for c in cards for n in c["notes"]})
    if notes:
        print("Known deviations from the paper (recipe notes):\n" + "\n".join(f"  - {n}" for n in notes))
    return cards


def main(ablation: Ablation, argv: list[str] | None = None) -> list[dict]:
    args, run, ablation = parse_args(ablation, argv)
    out_dir = args.out / ablation.name / dataset_key(ablation, run)
    if args.dry_run:
        return dry_run(ablation, args, run)
    names, seeds = args.names, args.seed_list
    if args.command == "cells":
        for name in names:
            if "\t" in name or "\n" in name:
                raise SystemExit(f"variant name {name!r} contains a tab or newline; job arrays cannot list it")
        levels = cell_levels(names, seeds, lambda n: parent_of(args.cells[n]),
                             lambda n, s: (out_dir / n / f"seed{s}" / "metrics.json").exists())
        for level, name, seed in sorted(levels, key=lambda c: c[0]):  # stable: parents first
            # names may contain spaces ("B1236 AVE")
            print(f"{level}\t{name}\t{seed}" if args.levels else f"{name}\t{seed}")
        return []
    if args.command == "run":
        cards = args.cards
        if run.preset == "smoke" and global_rank() == 0 and not args.job_worker:
            print_smoke_changes(ablation, run, cards)
        task = get_task(ablation.task)
        dataset = task.dataset(run.data)
        if run.data != "synthetic" and global_rank() == 0:
            prepare_data(ablation, args, run)
        # Under DDP every process runs this loop (Lightning's launcher reruns the script for the
        # other ranks; srun/torchrun start them all); a cell decides skip/resume/train the same
        # way on every rank because they all see the same run directory.
        todo = [(name, seed) for name in names for seed in seeds
                if not (out_dir / name / f"seed{seed}" / "metrics.json").exists()]
        side_by_side, workers = args.jobs > 1 or args.job_worker, []
        twins = reused_twins(args, out_dir, todo)
        sweep = SweepClock([0 if cell in twins else steps_to_train(args.cells[cell[0]]) for cell in todo],
                           val_every=[args.cells[name].recipe.trainer.val_every for name, _ in todo])
        if todo and global_rank() == 0:
            print(f"[sweep] {len(todo)} cell(s) to train, {sum(sweep.steps):,} optimiser steps"
                  + (f" ({len(twins)} reuse the weights of finished cells of another table)" if twins else ""))
        threads = torch.get_num_threads()
        try:
            workers = start_job_workers(ablation, argv, args.jobs) if side_by_side and todo and not args.job_worker else []
            train_cells(args, run, dataset, names, seeds, out_dir, todo, sweep, cards, side_by_side)
        finally:  # the other processes' cells belong to this sweep: wait for them, even after an error
            failed = [w for w in workers if w.wait() != 0]
            torch.set_num_threads(threads)
        if failed:
            raise SystemExit(f"--jobs: {len(failed)} of the other processes failed (their output is above); "
                             "rerun the same command to train what is left")
    if global_rank() != 0 or args.job_worker:  # the table is written once, by rank 0 / the first process
        return []
    # One cell (e.g. a job-array task) refreshes the whole table from the finished cells, as
    # collect does, instead of overwriting it with its own row; the W&B table is left to collect.
    one_cell = args.command == "run" and args.variant is not None
    if args.command == "collect" or one_cell:
        names = list(ablation.variants)
    if one_cell:
        seeds = list(args.seeds or next(iter(args.cells.values())).recipe.seeds)
    with_crf = next(iter(args.cells.values())).recipe.eval.crf is not None
    return write_table(ablation, args, run, names, seeds, out_dir, with_crf, log_wandb=not one_cell)


def train_cells(args, run: Run, dataset, names: list[str], seeds: list[int], out_dir: Path, todo: list,
                sweep: SweepClock, cards: dict, side_by_side: bool) -> None:
    """Train (or skip, or resume) every selected cell in order, in this process."""
    for name in names:
        cell = args.cells[name]
        for seed in seeds:
            card = cards[name] if seed == seeds[0] else {**cards[name], "seed": seed}
            index = todo.index((name, seed)) if (name, seed) in todo else None

            parent = parent_of(cell)
            run_dir = out_dir / name / f"seed{seed}"
            if side_by_side and parent and not is_finished(parent_dir(run_dir, parent)):
                print(f"[waits] {run_dir}: its parent {parent!r} has not finished; left to the process "
                      "training it, which reaches this cell after it")
                continue

            def make_datamodule(s: int, cell=cell):
                return dataset.build(run.data_root, card["data_source"]["synthetic_task"], s,
                                     cell.batch_per_device, cell.recipe.data)

            run_cell(card, cell, run, run_dir, make_datamodule,
                     args.wandb_project if args.logger == "wandb" else None, verbose=not args.quiet,
                     progress=(sweep, index) if index is not None else None,
                     reuse_root=None if args.no_reuse else args.out)


def script_of(ablation: Ablation) -> Path:
    """The script that defines ``ablation``: ``experiments/<name>_ablation.py``."""
    return Path(__file__).resolve().parent / f"{ablation.name}_ablation.py"


def start_job_workers(ablation: Ablation, argv: list[str] | None, jobs: int) -> list[subprocess.Popen]:
    """``--jobs``: start ``jobs - 1`` more processes of the same command, give every process
    (this one too) ``threads // jobs`` CPU threads, and return the started processes."""
    threads = max(1, torch.get_num_threads() // jobs)
    torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, str(script_of(ablation)), *(sys.argv[1:] if argv is None else argv), "--job-worker"]
    print(f"[jobs] {jobs} processes side by side, {threads} CPU thread(s) each")
    return [subprocess.Popen(command, env=env) for _ in range(jobs - 1)]


SMOKE_NOTE = ("SMOKE PRESET: synthetic '{task}' task, width-scaled networks trained from scratch on the CPU. "
              "It shows the direction of an effect on a task built to expose it; the numbers are NOT "
              "comparable to the paper column.")


def chosen_options(ablation: Ablation, args: argparse.Namespace) -> list[tuple[str, str]]:
    """The ablation's options set to other than their default, as ``(name, value)``."""
    return [(name, getattr(args, name)) for name, option in ablation.options.items()
            if getattr(args, name) != option.default]


def table_suffix(ablation: Ablation, args: argparse.Namespace) -> str:
    """What tells the tables of one results folder apart: ``""`` for the ablation's default
    options (``results.md``), else ``-<option>-<value>`` per other choice (``--table 2``:
    ``results-table-2.md``; ``aspp --backbone resnet101``: ``results-backbone-resnet101.md``), so
    one table of a paper never overwrites another's."""
    return "".join(f"-{name}-{value}" for name, value in chosen_options(ablation, args))


def write_table(ablation: Ablation, args, run: Run, names: list[str], seeds: list[int], out_dir: Path,
                with_crf: bool, log_wandb: bool = True) -> list[dict]:
    """Write the table of ``names`` × ``seeds`` (and its claims and figures) into ``out_dir`` as
    ``results<suffix>.md|csv``, ``results_crf<suffix>.csv``, ``claims<suffix>.md|csv`` and
    ``figures<suffix>/`` (:func:`table_suffix`); print and return its rows."""
    suffix = table_suffix(ablation, args)
    same_data = run.data == ablation.paper_data
    smoke_note = SMOKE_NOTE.format(task=run.synthetic_task or ablation.synthetic_task) if run.preset == "smoke" else None
    keys = ["val"] + (["val_crf"] if with_crf else [])
    text, rows_all, by_key = [], [], {}
    for key in keys:
        rows = collect_rows(ablation, names, seeds, out_dir, key)
        if not same_data:
            for r in rows:
                r["delta"] = None
        options = " ".join(f"--{name} {value}" for name, value in chosen_options(ablation, args))
        title = (f"{ablation.title} — {dataset_key(ablation, run)}" + (f" ({options})" if options else "")
                 + (" (after dense CRF)" if key == "val_crf" else ""))
        if smoke_note:
            title = f"[SMOKE] {title}"
        metric_note = (
            "mIoU, trimap mIoU (within a band around label boundaries), pixel acc, mean acc and fwIoU in %, "
            "from dataset-level confusion matrices per run; checkerboard: spectral energy fraction at the "
            "upsampling period (lightning_modules/checkerboard.py), ×1000"
            if ablation.task == "semantic" else
            "COCO-style AP in % over IoU 0.50:0.95 (AP50, AP75 at one threshold), dataset-level per run"
        )
        notes = ([smoke_note] if smoke_note else []) + [
            f"{metric_note}; std is the sample standard deviation over seeds.",
            "Δ = ours − paper, shown only when the data is the paper's dataset"
            + ("" if same_data else f" (paper: {ablation.paper_data}; here: {run.data})") + ".",
            f"Seeds requested: {seeds}. GFLOPs: one forward pass at the eval size, multiply-add = 2 FLOPs. "
            "Each cell's recipe card is in its config.json.",
        ] + [n for n in [reuse_note(rows)] if n]
        text.append(render_markdown(title, rows, notes))
        write_text_atomic(out_dir / f"{'results' if key == 'val' else 'results_crf'}{suffix}.csv", render_csv(rows))
        rows_all += rows
        by_key[key] = (rows, title)
    if ablation.claims:  # the papers' directions, tested (experiments/claims.py)
        from experiments import claims

        claim_rows = claims.evaluate_claims(ablation, out_dir)
        claims_md = claims.render_markdown(by_key["val"][1], claim_rows)
        write_text_atomic(out_dir / f"claims{suffix}.md", claims_md)
        write_text_atomic(out_dir / f"claims{suffix}.csv", claims.render_csv(claim_rows))
        text.append(claims_md)
    markdown = "\n".join(text)
    write_text_atomic(out_dir / f"results{suffix}.md", markdown)
    print("\n" + markdown)
    print(f"(written to {out_dir / f'results{suffix}.md'} and results{suffix}.csv"
          + (f", claims{suffix}.md" if ablation.claims else "") + ")")
    figures = []
    if not args.no_figures:
        from experiments.figures import write_figures

        rows, title = by_key["val"]
        figures = write_figures(out_dir, rows, title, names, seeds,
                                crf_rows=by_key["val_crf"][0] if "val_crf" in by_key else None,
                                fig_dir=out_dir / f"figures{suffix}")
        print(f"(figures: {out_dir / f'figures{suffix}'})")
    if args.logger == "wandb" and log_wandb:
        from experiments.tracking import log_figures, log_results_table

        log_results_table(args.wandb_project, ablation.name, dataset_key(ablation, run) + suffix, rows_all, out_dir)
        log_figures(args.wandb_project, ablation.name, dataset_key(ablation, run) + suffix, figures, out_dir)
    return rows_all

