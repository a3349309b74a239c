"""The shared experiment runner: every ablation script hands its :class:`Ablation` to :func:`main`.

A run is one cell (ablation, variant, seed, dataset, preset); see ``experiments/cell.py`` for
the run directory and resume rules and ``experiments/table.py`` for the results table.

Presets:
- ``smoke`` (default without --data-root): the ablation's synthetic diagnostic task, the paper's
  topology with channel ``width`` scaled down, trained from scratch with AdamW for a few hundred
  steps on a CPU. It checks that the comparison runs end to end and shows the *direction* of an
  effect on a task built to expose it; its numbers are not comparable to the paper's.
- ``paper``: the paper's recipe (crop, batch, iterations, learning rates, schedule,
  augmentation, ImageNet-pretrained backbone) on the paper's dataset.

Commands: ``run`` (default) trains the selected cells, skipping finished ones and resuming
unfinished ones; ``collect`` builds the table from whatever cells finished; ``cells`` lists the
unfinished cells as ``VARIANT<tab>SEED`` lines (what ``experiments/slurm/submit.sh`` turns into a job
array). ``--devices N --num-nodes M`` trains each cell with DDP on N×M processes.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

from experiments.cell import run_cell
from experiments.distributed import check_global_batch, global_rank
from experiments.spec import Ablation
from experiments.tasks import get_task
from experiments.table import collect_rows, render_csv, render_markdown, write_text_atomic

SMOKE: dict[str, Any] = {
    "width": 0.125,
    # Extra model kwargs of the smoke preset; e.g. VGG16-BN for the VGG ablations (plain VGG16
    # does not train from scratch in a few hundred steps).
    "model": {},
    "pretrained": False,
    "data": {"batch_size": 8, "val_batch_size": 16, "num_workers": 0, "augment": "flip"},
    "module": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 1e-4, "head_lr_mult": 1.0,
               "bias_lr_mult": 1.0, "lr_schedule": "poly", "poly_power": 0.9, "warmup_steps": 20},
    "trainer": {"max_steps": 300, "val_every": 300, "checkpoint_every": 100, "deterministic": True,
                "precision": "32-true", "log_every": 10},
    "seeds": [0, 1],
}
PAPER: dict[str, Any] = {
    "width": 1.0,
    "model": {},
    "pretrained": True,
    "data": {"num_workers": 8, "val_batch_size": 1},
    "module": {},
    "trainer": {"val_every": 2000, "checkpoint_every": 500, "deterministic": False,
                "precision": "32-true", "log_every": 50},
    "seeds": [0, 1, 2],
}


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_args(ablation: Ablation, argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=ablation.title)
    p.add_argument("command", nargs="?", default="run", choices=["run", "collect", "cells"],
                   help="run the cells (default), only collect the table from finished cells, or "
                        "list the unfinished cells as 'VARIANT<tab>SEED' lines (for job arrays)")
    p.add_argument("--data", choices=["synthetic", "voc", "ade20k"], default="synthetic")
    p.add_argument("--data-root", type=Path, help="folder containing VOCdevkit / ADEChallengeData2016")
    p.add_argument("--preset", choices=["smoke", "paper"], help="default: smoke for synthetic data, else paper")
    p.add_argument("--variants", nargs="+", help="subset of variants to run (default: all)")
    p.add_argument("--variant", help="run exactly one variant (with --seed: one cell, e.g. a job-array task)")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds (default: smoke 0 1, paper 0 1 2)")
    p.add_argument("--seed", type=int, help="run exactly one seed")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--precision", help="e.g. 32-true, bf16-mixed, 16-mixed")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int, help="per-device batch size")
    p.add_argument("--accumulate", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--no-sync-batchnorm", action="store_true", help="keep per-process BatchNorm under DDP")
    p.add_argument("--eval-mode", choices=["whole", "ms_flip", "sliding"])
    p.add_argument("--crf", action="store_true", help="also report results after dense CRF")
    p.add_argument("--crf-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a dense-CRF parameter (lightning_modules/crf.py CRFParams), e.g. bi_xy_std=50; repeatable")
    p.add_argument("--width", type=float, help="channel width multiplier")
    p.add_argument("--image-size", type=int, help="synthetic data only: image side in pixels (default: the task's)")
    p.add_argument("--synthetic-task", help="synthetic data only: run on another diagnostic task than the "
                                            "ablation's (results go to their own folder)")
    p.add_argument("--pretrained", help="'true', 'false' or a path to timm backbone weights")
    p.add_argument("--workers", type=int, help="data loader workers per process")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--logger", choices=["csv", "wandb"], default="csv")
    p.add_argument("--wandb-project", default="segmentation-ablations")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-figures", action="store_true",
                   help="skip the bar charts and prediction grid (results/<ablation>/<dataset>/figures/)")
    for option, (choices, default, _) in ablation.options.items():
        p.add_argument(f"--{option}", choices=choices, default=default)
    args = p.parse_args(argv)
    if args.synthetic_task is not None:
        from datamodules.synthetic import SYNTHETIC_TASKS

        if args.data != "synthetic" or ablation.task != "semantic":
            p.error("--synthetic-task applies to the synthetic data of semantic ablations only")
        if args.synthetic_task not in SYNTHETIC_TASKS:
            p.error(f"--synthetic-task must be one of {sorted(SYNTHETIC_TASKS)}, got {args.synthetic_task!r}")
    if args.image_size is not None and args.data != "synthetic":
        p.error("--image-size applies to synthetic data only (real data keep their own sizes)")
    if args.data != "synthetic" and args.data_root is None:
        p.error(f"--data {args.data} needs --data-root (the folder that contains the dataset; see README)")
    args.preset = args.preset or ("smoke" if args.data == "synthetic" else "paper")
    args.crf = args.crf or ablation.always_crf
    args.crf_params = parse_crf_params(p, args.crf_param)
    if args.crf_params and not args.crf:
        p.error("--crf-param needs --crf (this ablation does not run the dense CRF otherwise)")
    return args


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


def dataset_key(ablation: Ablation, args: argparse.Namespace) -> str:
    name = f"synthetic_{ablation.synthetic_task}" if args.data == "synthetic" else args.data
    if args.image_size is not None:  # results at another size go to their own folder
        name += f"{args.image_size}px"
    return f"{name}-{args.preset}"


def resolve(ablation: Ablation, args: argparse.Namespace, variant_name: str, variants: dict) -> dict:
    """The complete settings of one cell: preset ⊕ ablation recipe ⊕ command-line overrides."""
    base = SMOKE if args.preset == "smoke" else PAPER
    recipe = merge(base, ablation.smoke_recipe if args.preset == "smoke" else ablation.paper_recipe)
    variant = variants[variant_name]
    data, trainer = dict(recipe["data"]), dict(recipe["trainer"])
    module = {**recipe["module"], **variant.module}
    if args.data == "synthetic":  # record the task's image size in the config explicitly
        from datamodules.synthetic import SYNTHETIC_TASKS

        if ablation.synthetic_task in SYNTHETIC_TASKS:
            data.setdefault("image_size", SYNTHETIC_TASKS[ablation.synthetic_task].default_image_size)
        if args.image_size is not None:
            data["image_size"] = args.image_size
    if args.batch_size:
        data["batch_size"] = args.batch_size
    if args.workers is not None:
        data["num_workers"] = args.workers
    if args.max_steps:
        trainer["max_steps"] = args.max_steps
        trainer["val_every"] = min(trainer["val_every"], args.max_steps)
    if args.precision:
        trainer["precision"] = args.precision
    if args.eval_mode:
        module["eval_mode"] = args.eval_mode
    if module.get("eval_mode") == "sliding":
        # windows of the training crop; synthetic data train on whole images (image_size)
        module.setdefault("eval_window", data.get("crop_size") or data.get("image_size"))
    if module.get("eval_mode") == "ms_flip":  # DeepLab v3's scales 0.5-1.75 and flips
        from lightning_modules.inference import DEFAULT_SCALES

        module.setdefault("eval_scales", list(DEFAULT_SCALES))
        module.setdefault("eval_flip", True)
    if args.crf:  # recorded as data; experiments.tasks.module_arguments makes it a CRFEvaluator
        from dataclasses import asdict

        from lightning_modules.crf import CRFParams

        module["crf"] = asdict(CRFParams(**{**(module.get("crf") or {}), **args.crf_params}))
    if args.channels_last:
        module["channels_last"] = True
    width = args.width if args.width is not None else recipe["width"]
    pretrained: Any = recipe["pretrained"]
    if args.pretrained is not None:
        pretrained = {"true": True, "false": False}.get(args.pretrained.lower(), args.pretrained)
    world = args.devices * args.num_nodes
    trainer.update(devices=args.devices, num_nodes=args.num_nodes, accelerator=args.accelerator,
                   accumulate=args.accumulate, sync_batchnorm=not args.no_sync_batchnorm and world > 1)
    eval_size = recipe.get("eval_size") or data.get("image_size") or data.get("crop_size")
    if isinstance(eval_size, int):
        eval_size = [eval_size, eval_size]
    return {
        "model": variant.model,
        # a variant that fixes `pretrained` (U-Net: there are no weights) keeps it in every preset
        "model_kwargs": {**variant.kwargs, **recipe.get("model", {}), "width": width,
                         "pretrained": variant.kwargs.get("pretrained", pretrained)},
        "data": data, "module": module, "trainer": trainer, "eval_size": eval_size,
        "paper_batch": recipe.get("paper_batch"),
    }


def data_source(ablation: Ablation, args: argparse.Namespace) -> dict[str, Any]:
    """Where a cell's data comes from (recorded in its config.json, e.g. for the figures)."""
    return {"kind": args.data, "root": str(args.data_root) if args.data_root else None,
            "synthetic_task": ablation.synthetic_task}


def datamodule_factory(ablation: Ablation, args: argparse.Namespace, data: dict[str, Any]):
    task, source = get_task(ablation.task), data_source(ablation, args)

    def make(seed: int):
        return task.make_datamodule(source["kind"], source["root"], source["synthetic_task"], seed, data)

    return make


def main(ablation: Ablation, argv: list[str] | None = None) -> list[dict]:
    args = parse_args(ablation, argv)
    variants = dict(ablation.variants)
    for option, (_, _, make_variants) in ablation.options.items():
        variants = make_variants(getattr(args, option))
    ablation = copy.copy(ablation)
    ablation.variants = variants
    if args.synthetic_task:
        ablation.synthetic_task = args.synthetic_task
    names = [args.variant] if args.variant else (args.variants or list(variants))
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; this ablation has {list(variants)}")
    preset_seeds = (SMOKE if args.preset == "smoke" else PAPER)["seeds"]
    seeds = [args.seed] if args.seed is not None else (args.seeds or preset_seeds)
    out_dir = args.out / ablation.name / dataset_key(ablation, args)
    smoke_note = (
        f"SMOKE PRESET: synthetic '{ablation.synthetic_task}' task, width-scaled networks trained from "
        f"scratch on the CPU. It shows the direction of an effect on a task built to expose it; "
        f"the numbers are NOT comparable to the paper column."
    )
    if args.command == "cells":
        for name in names:
            if "\t" in name or "\n" in name:
                raise SystemExit(f"variant name {name!r} contains a tab or newline; job arrays cannot list it")
            for seed in seeds:
                if not (out_dir / name / f"seed{seed}" / "metrics.json").exists():
                    print(f"{name}\t{seed}")  # names may contain spaces ("B1236 AVE")
        return []
    if args.preset == "smoke" and args.command == "run" and global_rank() == 0:
        print("=" * 100 + f"\n{smoke_note}\n" + "=" * 100)
    if args.command == "run":
        first = resolve(ablation, args, names[0], variants)
        world = args.devices * args.num_nodes
        per_device = first["data"]["batch_size"]
        if global_rank() == 0:
            check_global_batch(world * per_device * args.accumulate, first["paper_batch"], args.preset,
                               per_device, world, args.accumulate)
        # Under DDP every process runs this loop (Lightning's launcher reruns the script for the
        # other ranks; srun/torchrun start them all); a cell decides skip/resume/train the same
        # way on every rank because they all see the same run directory.
        for name in names:
            for seed in seeds:
                res = resolve(ablation, args, name, variants)
                config = {"ablation": ablation.name, "variant": name, "seed": seed, "task": ablation.task,
                          "dataset": dataset_key(ablation, args), "preset": args.preset,
                          "data_source": data_source(ablation, args), "resolved": res}
                run_cell(config, out_dir / name / f"seed{seed}", datamodule_factory(ablation, args, res["data"]),
                         args.wandb_project if args.logger == "wandb" else None, verbose=not args.quiet)
    if global_rank() != 0:  # the table is written once, by rank 0
        return []
    # One cell (e.g. a job-array task) refreshes the whole table from the finished cells, as
    # collect does, instead of overwriting it with its own row; the W&B table is left to collect.
    one_cell = args.command == "run" and args.variant is not None
    if args.command == "collect" or one_cell:
        names = list(variants)
    if one_cell:
        seeds = args.seeds or preset_seeds
    return write_table(ablation, args, names, seeds, out_dir, smoke_note if args.preset == "smoke" else None,
                       log_wandb=not one_cell)


def write_table(ablation: Ablation, args, names: list[str], seeds: list[int], out_dir: Path,
                smoke_note: str | None, log_wandb: bool = True) -> list[dict]:
    same_data = args.data == ablation.paper_data
    keys = ["val"] + (["val_crf"] if args.crf else [])
    text, rows_all, by_key = [], [], {}
    for key in keys:
        rows = collect_rows(ablation, names, seeds, out_dir, key)
        if not same_data:
            for r in rows:
                r["delta"] = None
        title = f"{ablation.title} — {dataset_key(ablation, args)}" + (" (after dense CRF)" if key == "val_crf" else "")
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
            + ("" if same_data else f" (paper: {ablation.paper_data}; here: {args.data})") + ".",
            f"Seeds requested: {seeds}. GFLOPs: one forward pass at the eval size, multiply-add = 2 FLOPs.",
        ]
        text.append(render_markdown(title, rows, notes))
        write_text_atomic(out_dir / ("results.csv" if key == "val" else "results_crf.csv"), render_csv(rows))
        rows_all += rows
        by_key[key] = (rows, title)
    markdown = "\n".join(text)
    write_text_atomic(out_dir / "results.md", markdown)
    print("\n" + markdown)
    print(f"(written to {out_dir / 'results.md'} and results.csv)")
    figures = []
    if not args.no_figures:
        from experiments.figures import write_figures

        rows, title = by_key["val"]
        figures = write_figures(out_dir, rows, title, names, seeds,
                                crf_rows=by_key["val_crf"][0] if "val_crf" in by_key else None)
        print(f"(figures: {out_dir / 'figures'})")
    if args.logger == "wandb" and log_wandb:
        from experiments.tracking import log_figures, log_results_table

        log_results_table(args.wandb_project, ablation.name, dataset_key(ablation, args), rows_all, out_dir)
        log_figures(args.wandb_project, ablation.name, dataset_key(ablation, args), figures)
    return rows_all
