"""Resolve one cell of an ablation into its recipe, and describe it as a *recipe card*.

:func:`resolve` applies the one precedence of ``experiments/recipe.py`` (preset defaults <
ablation recipe < variant < command line) and derives what the recipe leaves to the run: the
per-device batch from the paper's global batch, the synthetic task's image size, the sliding
window. :func:`recipe_card` is the flat record of everything the cell will do — printed by
``--dry-run`` and stored in every cell's ``config.json`` — with the differences from the
paper's recipe listed as ``deviations`` and the recipe's known ones as ``notes``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from datamodules.transforms import UNET_GREY, UNET_ROTATE_DEGREES
from experiments.recipe import SMOKE, Recipe, RecipeError, model_rule_kwargs, override, validate
from experiments.spec import Ablation
from experiments.tasks import get_task

# Card fields that describe the run's environment, not its result: a rerun may change them.
RUNTIME_FIELDS = ("num_workers", "log_every", "checkpoint_every", "notes", "deviations", "smoke_rules",
                  "params", "head_layers")
AUGMENT_DETAILS = {  # datamodules.transforms.train_transforms, per augment name
    "none": {"flip": False, "rotate": None, "blur": None},
    "flip": {"flip": True, "rotate": None, "blur": None},
    "deeplab": {"flip": True, "rotate": None, "blur": None},
    "pspnet": {"flip": True, "rotate": "±10° (p=0.5)", "blur": "Gaussian 5×5, σ=1.1 (p=0.5)"},
    "unet": {"flip": False, "rotate": f"±{UNET_ROTATE_DEGREES:g}°", "blur": None,
             "elastic": "3×3 grid, σ=10 px, bicubic",
             "grey": f"brightness, contrast ×[{1 - UNET_GREY:g}, {1 + UNET_GREY:g}]"},
}


@dataclass(frozen=True)
class Run:
    """Where a sweep runs: data, preset, processes, and the command line's recipe changes."""

    data: str = "synthetic"             # a dataset of the ablation's task
    data_root: str | None = None
    preset: str = "smoke"
    devices: int = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    batch_size: int | None = None       # per device, explicit (changes the global batch)
    changes: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # command-line recipe changes
    synthetic_task: str | None = None   # another diagnostic task than the ablation's

    @property
    def world(self) -> int:
        return self.devices * self.num_nodes


@dataclass(frozen=True)
class Cell:
    recipe: Recipe
    model: str
    model_kwargs: dict[str, Any]        # build_model kwargs, width and pretrained included
    batch_per_device: int
    global_batch: int
    smoke_rules: tuple[str, ...]


def _layers(ablation: Ablation, variant_name: str, preset: str, rule_kwargs: Mapping[str, Any],
            changes: Mapping[str, Any]) -> Recipe:
    variant = ablation.variants[variant_name]
    recipe = ablation.paper
    if preset == "smoke":
        recipe = override(override(recipe, {**SMOKE, "model": dict(rule_kwargs)}), ablation.smoke)
    # the variant's model arguments, then its recipe changes (whose own "model" keys add to them)
    recipe = override(override(recipe, {"model": variant.kwargs}), variant.recipe)
    if preset == "smoke":
        recipe = override(recipe, variant.smoke)
    return override(recipe, changes)


def _check_model_keys(model: Mapping[str, Any]) -> None:
    for key in ("width", "pretrained"):
        if key in model:
            raise RecipeError(f"model.{key}: set {key!r} at the recipe's top level (--{key} on the command line)")


def init_chain(ablation: Ablation, variant_name: str, run: Run) -> list[str]:
    """The variants this cell's weights come from through ``init_from``, nearest first
    (``experiments/stages.py``); RecipeError for an unknown name or a cycle."""
    chain, current = [], variant_name
    while True:
        parent = _layers(ablation, current, run.preset, {}, run.changes).init_from
        if parent is None:
            return chain
        _check_variant_name(ablation, "init_from", current, parent)
        if parent == variant_name or parent in chain:
            raise RecipeError(f"init_from forms a cycle: {' -> '.join([variant_name, *chain, parent])}")
        chain.append(parent)
        current = parent


def _check_variant_name(ablation: Ablation, key: str, variant_name: str, name: str) -> None:
    """RecipeError unless ``name`` (the value of ``key`` in ``variant_name``'s recipe) is a variant."""
    if name not in ablation.variants:
        import difflib

        close = difflib.get_close_matches(name, list(ablation.variants), n=1, cutoff=0.5)
        raise RecipeError(f"{key} of variant {variant_name!r}: {name!r} is not a variant of this ablation"
                          + (f" (did you mean {close[0]!r}?)" if close else "")
                          + f"; its variants: {list(ablation.variants)}")


# Card fields an evaluation-only cell (``weights_from``) may set differently from the cell whose
# weights it evaluates: who it is, and how it evaluates. Everything else shaped those weights.
EVAL_ONLY_FIELDS = ("ablation", "variant", "seed", "weights_from", "eval", "val_split", "val_batch_size",
                    "num_val", "val_every", *RUNTIME_FIELDS)


def differences(old: Mapping[str, Any], new: Mapping[str, Any], exclude: Sequence[str] = RUNTIME_FIELDS,
                prefix: str = "") -> list[str]:
    """``key: old -> new`` for every differing card value (nested dicts by dotted key); top-level
    keys in ``exclude`` are not compared."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in exclude:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += differences(a, b, (), f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


def training_differences(weights_card: Mapping[str, Any], card: Mapping[str, Any]) -> list[str]:
    """What would make ``card``'s weights differ from ``weights_card``'s: every card value
    outside :data:`EVAL_ONLY_FIELDS`, as ``key: theirs -> ours``."""
    return differences(weights_card, card, EVAL_ONLY_FIELDS)


def check_weights_from(ablation: Ablation, variant_name: str, run: Run, cell: Cell) -> None:
    """An evaluation-only variant (``weights_from``) names a variant of this ablation that trains
    (no chains) and changes nothing but how it evaluates: else RecipeError naming the difference."""
    parent = cell.recipe.weights_from
    _check_variant_name(ablation, "weights_from", variant_name, parent)
    if parent == variant_name:
        raise RecipeError(f"weights_from of variant {variant_name!r} names the variant itself")
    parent_cell = resolve(ablation, parent, run)
    if parent_cell.recipe.weights_from is not None:
        raise RecipeError(f"weights_from of variant {variant_name!r}: {parent!r} trains nothing itself (it "
                          f"evaluates {parent_cell.recipe.weights_from!r}'s weights); name the variant that trains")
    diffs = training_differences(_base_card(ablation, parent, 0, run, parent_cell),
                                 _base_card(ablation, variant_name, 0, run, cell))
    if diffs:
        raise RecipeError(f"weights_from of variant {variant_name!r}: it evaluates {parent!r}'s weights, so only "
                          f"its evaluation may differ, but its training does ({'; '.join(diffs[:6])}); "
                          f"train it as a variant of its own with --set weights_from=null")


def resolve(ablation: Ablation, variant_name: str, run: Run) -> Cell:
    """The complete, checked recipe of one cell; RecipeError names whatever is wrong."""
    from models import builder_accepts

    variant = ablation.variants[variant_name]
    rules: tuple[str, ...] = ()
    rule_kwargs: dict[str, Any] = {}
    if run.preset == "smoke":  # the smoke rules look at the model as it is otherwise resolved
        plain = _layers(ablation, variant_name, run.preset, {}, run.changes)
        rule_kwargs, used = model_rule_kwargs(variant.model, plain.model)
        rules = tuple(f"{r.name}: {r.kwargs} ({r.why})" for r in used)
    recipe = _layers(ablation, variant_name, run.preset, rule_kwargs, run.changes)
    validate(recipe)  # values written as dataclasses (the paper recipes) are checked like overrides
    _check_model_keys(recipe.model)
    unknown = [k for k in recipe.model if not builder_accepts(variant.model, k)]
    if unknown:
        from experiments.recipe import unknown_key_error
        from models import builder_parameters

        raise unknown_key_error(f"the model arguments of {variant.model!r}", unknown[0], builder_parameters(variant.model))
    task = get_task(ablation.task)
    dataset = task.dataset(run.data)
    dataset.check(recipe.data)
    data = recipe.data
    if run.data == "synthetic" and task.name == "semantic" and data.image_size is None:
        from datamodules.synthetic import SYNTHETIC_TASKS

        data = dataclasses.replace(data, image_size=SYNTHETIC_TASKS[synthetic_task(ablation, run)].default_image_size)
    window, base_size = recipe.eval.window, recipe.eval.base_size
    if recipe.eval.mode in ("sliding", "semseg") and window is None:
        window = data.crop_size or data.image_size
        if window is None:
            raise RecipeError(f"eval.mode={recipe.eval.mode!r} needs eval.window (no training crop to take it from)")
    if recipe.eval.mode == "semseg" and base_size is None:
        base_size = data.image_size  # synthetic images: their own size (real data: set it)
        if base_size is None:
            raise RecipeError("eval.mode='semseg' needs eval.base_size, the long side images are resized to "
                              "(hszhao/semseg: 512 for ADE20K and VOC, 2048 for Cityscapes)")
    if recipe.eval.mode == "semseg" and run.data != "synthetic" and data.val_batch_size != 1:
        raise RecipeError("eval.mode='semseg' resizes each image by its long side: it needs data.val_batch_size=1 "
                          f"(a batch of real images is padded to one size), got {data.val_batch_size}")
    precision = resolve_precision(recipe.trainer.precision, run.accelerator)
    trainer = dataclasses.replace(recipe.trainer, precision=precision,
                                  channels_last=resolve_channels_last(recipe.trainer.channels_last, precision,
                                                                      run.accelerator))
    data = dataclasses.replace(data, num_workers=resolve_workers(data.num_workers, run.accelerator, run.preset,
                                                                 run.devices))
    recipe = dataclasses.replace(recipe, data=data, trainer=trainer,
                                 eval=dataclasses.replace(recipe.eval, window=window, base_size=base_size))
    depth = len(init_chain(ablation, variant_name, run))
    if depth:  # stage-wise training: each stage below the first at stage_lr_factor × the lr
        o = recipe.optim
        lr = float(f"{o.lr * o.stage_lr_factor ** depth:.12g}")  # 1e-06, not 1.0000000000000002e-06
        recipe = dataclasses.replace(recipe, optim=dataclasses.replace(o, lr=lr))
    if task.name == "semantic":
        from lightning_modules.inference import check_protocol

        e = recipe.eval
        try:
            check_protocol(e.mode, e.scales, e.flip, e.window, e.stride, e.pad_to, e.base_size, prefix="eval.")
        except ValueError as err:
            raise RecipeError(str(err)) from None
    accumulate = recipe.trainer.accumulate
    if run.batch_size is not None:
        per_device, global_batch = run.batch_size, run.batch_size * run.world * accumulate
    else:
        global_batch = recipe.data.global_batch
        per_device, rest = divmod(global_batch, run.world * accumulate)
        if rest or per_device == 0:
            raise RecipeError(batch_advice(global_batch, run.world, accumulate))
    kwargs = {**recipe.model, "width": recipe.width, "pretrained": recipe.pretrained}
    cell = Cell(recipe, variant.model, kwargs, per_device, global_batch, rules)
    if recipe.weights_from is not None:
        check_weights_from(ablation, variant_name, run, cell)
    return cell


def runs_on_gpu(accelerator: str, cuda: bool | None = None) -> bool:
    """Whether ``--accelerator`` puts the run on a GPU here (``auto``: when CUDA is available)."""
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda)


def resolve_precision(precision: str, accelerator: str, cuda: bool | None = None,
                      bf16: bool | None = None) -> str:
    """``"auto"``: bf16 autocast on a GPU that has bf16 (Ampere and newer; TF32 for what stays
    fp32, see ``experiments/cell.py``), fp32 everywhere else (CPUs: autocast costs accuracy
    checks for little gain on small models). Any other value is kept."""
    if precision != "auto":
        return precision
    import torch

    if runs_on_gpu(accelerator, cuda) and (torch.cuda.is_bf16_supported() if bf16 is None else bf16):
        return "bf16-mixed"
    return "32-true"


def resolve_workers(num_workers: int | None, accelerator: str, preset: str = "paper", devices: int = 1,
                    cuda: bool | None = None, cpus: int | None = None) -> int:
    """Loader workers per process for ``None`` (auto); a number is kept.

    The paper preset: every core but one of this process's share of the node (usable cores //
    processes on the node − 1, at most 16): the augmentation of the paper recipes costs 6–20 ms
    per image per worker, and a GPU step of LargeFOV eats 700 images/s (BENCHMARKS.md). The
    smoke preset serves arrays (``datamodules/synthetic/cache.py``): none on a CPU (workers take
    the cores the model step needs; measured in BENCHMARKS.md), up to 4 on a GPU host."""
    if num_workers is not None:
        return num_workers
    import os

    on_gpu = runs_on_gpu(accelerator, cuda)
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cpus // max(1, devices)) - 1
    if preset == "smoke":
        return max(0, min(4, share)) if on_gpu else 0
    return max(0, min(16, share))


def resolve_channels_last(channels_last: bool | None, precision: str, accelerator: str,
                          cuda: bool | None = None) -> bool:
    """``None`` (auto): True for mixed precision on a GPU, where cuDNN's tensor-core kernels run
    NHWC (the bf16 + channels_last figures of BENCHMARKS.md), False elsewhere (on CPUs the smoke
    tables stay in the layout they were generated in). An explicit True/False is kept."""
    if channels_last is not None:
        return channels_last
    return runs_on_gpu(accelerator, cuda) and precision in ("bf16-mixed", "16-mixed")


def batch_advice(global_batch: int, world: int, accumulate: int) -> str:
    """Why a global batch cannot be split over the processes, and the nearest settings that can."""
    def setting(w: int, a: int) -> str:
        return f"{w} processes x {global_batch // (w * a)} per device x {a} accumulation"

    same_acc = [w for w in range(1, global_batch + 1) if global_batch % (w * accumulate) == 0]
    same_world = [a for a in range(1, global_batch + 1) if global_batch % (world * a) == 0]
    options = [setting(w, accumulate) for w in sorted(same_acc, key=lambda w: (abs(w - world), w))[:2]]
    options += [setting(world, a) for a in sorted(same_world, key=lambda a: (abs(a - accumulate), a))[:1]]
    return (f"global batch {global_batch} (the paper's) cannot be split over {world} processes x "
            f"{accumulate} accumulation steps: per-device batch {global_batch / (world * accumulate):g}. "
            f"Nearest valid: {'; '.join(options)} (--devices/--num-nodes, --accumulate); "
            f"or --batch-size B to change the global batch (recorded as a deviation)")


def synthetic_task(ablation: Ablation, run: Run) -> str:
    return run.synthetic_task or ablation.synthetic_task


def dataset_key(ablation: Ablation, run: Run) -> str:
    name = f"synthetic_{synthetic_task(ablation, run)}" if run.data == "synthetic" else run.data
    image_size = run.changes.get("data", {}).get("image_size")
    if run.data == "synthetic" and image_size is not None:  # results at another size: own folder
        name += f"{image_size}px"
    return f"{name}-{run.preset}"


def data_source(ablation: Ablation, run: Run) -> dict[str, Any]:
    return {"kind": run.data, "root": run.data_root,
            "synthetic_task": synthetic_task(ablation, run) if run.data == "synthetic" else None}


def check_model_fits_recipe(model, recipe: Recipe) -> None:
    """What the model declares against what the recipe asks of it."""
    if recipe.optim.aux_weight > 0 and not getattr(model, "has_aux_head", False):
        raise RecipeError(f"optim.aux_weight={recipe.optim.aux_weight} needs a model with an auxiliary head; "
                          f"{type(model).__name__} has none (has_aux_head is False)")
    children = [name for name, _ in model.named_children()]
    unknown = [name for name in recipe.optim.train_only if name not in children]
    if unknown:
        raise RecipeError(f"optim.train_only: {unknown} are not top-level modules of {type(model).__name__}; "
                          f"it has {children}")


def model_summary(cell: Cell, num_classes: int) -> tuple[int, list[str]]:
    """(parameter count, names of the layers that get ``head_lr_mult``), from a model built on
    the meta device: no memory, no weights read."""
    import torch

    from models import build_model

    kwargs = {**cell.model_kwargs, "pretrained": False}
    try:
        with torch.device("meta"):
            model = build_model(cell.model, num_classes, **kwargs)
    except TypeError as err:  # a builder that forwards **kwargs met an unknown name
        raise RecipeError(f"model {cell.model!r}: {err}") from None
    check_model_fits_recipe(model, cell.recipe)
    from models import new_layers, pretrained_modules

    # the same declaration the optimiser's parameter groups use (lightning_modules.optim)
    heads = new_layers(model) if pretrained_modules(model) else ["all (no pretrained backbone)"]
    return sum(p.numel() for p in model.parameters()), heads


def recipe_card(ablation: Ablation, variant_name: str, seed: int, run: Run, cell: Cell,
                num_classes: int | None = None) -> dict[str, Any]:
    """Everything one cell will do, flat and JSON-ready; see the README's "Reading a recipe card"."""
    card = _base_card(ablation, variant_name, seed, run, cell)
    classes = num_classes or get_task(ablation.task).dataset(run.data).num_classes(synthetic_task(ablation, run))
    card["params"], card["head_layers"] = model_summary(cell, classes)
    card["deviations"] = deviations(ablation, variant_name, seed, run, card)
    return card


def _base_card(ablation: Ablation, variant_name: str, seed: int, run: Run, cell: Cell) -> dict[str, Any]:
    r, task = cell.recipe, get_task(ablation.task)
    dataset = task.dataset(run.data)
    train_split, val_split = dataset.splits_of(r.data)
    world, acc = run.world, r.trainer.accumulate
    bn = r.optim.bn
    if bn == "trained" and world > 1 and r.trainer.sync_batchnorm:
        bn = "sync"
    card: dict[str, Any] = {
        "ablation": ablation.name, "variant": variant_name, "seed": seed, "preset": run.preset,
        "task": task.name, "dataset": dataset_key(ablation, run), "data_source": data_source(ablation, run),
        "model": cell.model, "model_kwargs": {k: v for k, v in cell.model_kwargs.items()
                                              if k not in ("width", "pretrained")},
        "width": r.width, "pretrained": r.pretrained, "init_from": r.init_from,
        "train_split": train_split, "val_split": val_split,
        "crop_size": r.data.crop_size or r.data.image_size, "image_size": r.data.image_size,
        "num_train": r.data.num_train, "num_val": r.data.num_val,
        "batch_size_per_device": cell.batch_per_device, "world_size": world, "accumulate": acc,
        "global_batch": cell.global_batch, "val_batch_size": r.data.val_batch_size,
        "max_steps": r.trainer.max_steps, "images_seen": r.trainer.max_steps * cell.global_batch,
        **{k: getattr(r.optim, k) for k in ("optimizer", "lr", "momentum", "weight_decay", "lr_schedule",
                                             "poly_power", "lr_steps", "lr_gamma", "warmup_steps",
                                             "head_lr_mult", "bias_lr_mult")},
        "bn": bn, "bn_momentum": r.optim.bn_momentum,
        "aux_weight": r.optim.aux_weight, "border_weight": r.optim.border_weight,
        "augment": {"name": r.data.augment, "scale_range": r.data.scale_range, "scale_step": r.data.scale_step,
                    **AUGMENT_DETAILS[r.data.augment]},
        "precision": r.trainer.precision, "channels_last": r.trainer.channels_last,
        # with mixed precision, what stays fp32 runs as TF32 on GPUs that have it
        "tf32": r.trainer.precision in ("bf16-mixed", "16-mixed"),
        "deterministic": r.trainer.deterministic,
        "eval": {**dataclasses.asdict(r.eval), "protocol": eval_protocol(r) if task.name == "semantic" else None},
        "val_every": r.trainer.val_every, "checkpoint_every": r.trainer.checkpoint_every,
        "log_every": r.trainer.log_every, "num_workers": r.data.num_workers,
        "smoke_rules": list(cell.smoke_rules), "notes": list(r.notes),
    }
    if r.optim.train_only:  # only then: cards of earlier runs (which train everything) stay equal
        card["train_only"] = list(r.optim.train_only)
    if r.init_from is not None:  # only then: a card stored before this field existed still matches
        card["stage_lr_factor"] = r.optim.stage_lr_factor
    if r.weights_from is not None:  # evaluation only; the training fields describe those weights
        card["weights_from"] = r.weights_from
    return as_json(card)


def eval_protocol(recipe: Recipe) -> str:
    """The evaluation protocol in words (``lightning_modules.inference.protocol_label``)."""
    from lightning_modules.inference import protocol_label

    e = recipe.eval
    return protocol_label(e.mode, e.scales, e.flip, e.window, e.stride, e.pad_to, e.base_size)


def as_json(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))


def paper_card(ablation: Ablation, variant_name: str, seed: int, run: Run) -> dict[str, Any]:
    """The card of the same cell under the paper's recipe alone (paper preset, paper's data)."""
    datasets = get_task(ablation.task).datasets
    # the paper's dataset; else (e.g. COCO, or a recipe with synthetic-only sizes) this run's
    kinds = [d for d in dict.fromkeys([ablation.paper_data, run.data]) if d in datasets]
    for data in kinds:
        for devices, nodes in ((run.devices, run.num_nodes), (1, 1)):  # at 1 if the batch does not split
            paper_run = Run(data=data, data_root=run.data_root, preset="paper", devices=devices,
                            num_nodes=nodes, accelerator=run.accelerator)
            try:
                cell = resolve(ablation, variant_name, paper_run)
            except RecipeError:
                continue
            return _base_card(ablation, variant_name, seed, paper_run, cell)
    cell = resolve(ablation, variant_name, paper_run)  # raises the error that names the problem
    return _base_card(ablation, variant_name, seed, paper_run, cell)


_COMPARED_EXCLUDE = ("ablation", "variant", "seed", "preset", "dataset", "data_source", "world_size",
                     "batch_size_per_device", "images_seen", *RUNTIME_FIELDS, "val_every", "deterministic")


def deviations(ablation: Ablation, variant_name: str, seed: int, run: Run, card: Mapping[str, Any]) -> list[str]:
    """``field: ours (paper: theirs)`` for every card value that differs from the paper recipe."""
    if run.preset == "paper" and not run.changes and run.batch_size is None and run.data == ablation.paper_data:
        return []
    paper = paper_card(ablation, variant_name, seed, run)
    out = []
    if run.data != ablation.paper_data:
        out.append(f"data: {card['dataset']} (paper: {ablation.paper_data})")
    for key, line in flatten_diff(paper, card, exclude=_COMPARED_EXCLUDE):
        out.append(line)
    return out


def flatten_diff(old: Mapping[str, Any], new: Mapping[str, Any], exclude: Sequence[str] = (),
                 prefix: str = "") -> list[tuple[str, str]]:
    """``(key, "key: new (paper: old)")`` for every differing leaf, nested dicts by dotted key."""
    out = []
    for key in list(dict.fromkeys([*old, *new])):
        if key in exclude:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += flatten_diff(a, b, (), f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", f"{prefix}{key}: {fmt(b)} (paper: {fmt(a)})"))
    return out


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return "(" + ", ".join(map(str, value)) + ")"
    return str(value)
