"""Typed recipes: everything one cell of an ablation does, and the one precedence that builds it.

A :class:`Recipe` is five small dataclasses (``data``, ``optim``, ``trainer``, ``eval``) plus the
model extras (keyword arguments for ``models.build_model``), ``width``, ``pretrained``,
``init_from`` (stage-wise training: start from another variant's final weights,
``experiments/stages.py``), ``weights_from`` (an evaluation-only variant: another variant's
final weights evaluated with this variant's ``eval``, no training), the default ``seeds`` and ``notes`` (known deviations from the paper,
printed on every card).
The dataclass defaults are the *paper preset's* generic defaults; each paper's recipe is written
out once in ``experiments/recipes/<paper>.py`` with the source of every value.

One precedence, for every section, model keyword arguments included::

    paper preset:  dataclass defaults < paper recipe                              < variant < command line
    smoke preset:  dataclass defaults < paper recipe < SMOKE (+ its model rules)
                                                     < the ablation's smoke changes < variant
                                                     < the variant's smoke changes < command line

Overrides are nested dicts (``{"optim": {"lr": 1e-3}, "model": {"backbone": "resnet50"}}``);
an unknown section or key is an error naming it and the nearest valid one, and every value is
checked against the field's type. nanoGPT's configurator prints every override and Hydra's
``--cfg job`` the whole config; here ``--dry-run`` prints each cell's *recipe card*
(:func:`experiments.card.recipe_card`), and the same card is stored with every result.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

AUGMENTATIONS = ("none", "flip", "deeplab", "pspnet", "unet")  # datamodules.transforms.train_transforms
LR_SCHEDULES = ("poly", "step", "constant")
BN_MODES = ("trained", "frozen")
EVAL_MODES = ("whole", "ms_flip", "sliding", "semseg")   # lightning_modules.inference
PRECISIONS = ("auto", "32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true")


class RecipeError(ValueError):
    """A recipe value or key that is not valid; the message names it."""


@dataclass(frozen=True)
class Data:
    train_split: str | None = None      # None: the dataset's default (VOC train_aug, ADE20K training)
    val_split: str | None = None        # None: the dataset's default (VOC val, ADE20K validation)
    crop_size: int | None = None        # training crop; None: whole images (padded to the batch's largest)
    global_batch: int = 8               # the paper's; the per-device batch is derived from it
    val_batch_size: int = 1             # per device
    scale_range: tuple[float, float] = (1.0, 1.0)
    scale_step: float | None = None     # None: continuous factors; else the grid low:step:high
    augment: str = "flip"               # none | flip | deeplab | pspnet | unet (datamodules.transforms)
    num_workers: int | None = None      # per process; None = auto (experiments.card.resolve_workers)
    image_size: int | None = None       # synthetic data only: image side (None: the task's)
    num_train: int | None = None        # synthetic data only (None: the task's default)
    num_val: int | None = None


@dataclass(frozen=True)
class Optim:
    optimizer: str = "sgd"              # every paper here; "adamw" for the CPU smoke preset
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "poly"           # poly | step | constant
    poly_power: float = 0.9
    lr_steps: tuple[int, ...] = ()      # "step": × lr_gamma at each of these optimiser steps
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    head_lr_mult: float = 1.0           # parameters outside model.backbone
    bias_lr_mult: float = 1.0           # biases and normalisation parameters (Caffe lr_mult 2)
    aux_weight: float = 0.0             # auxiliary loss (PSPNet: 0.4); needs an aux head
    bn: str = "trained"                 # trained | frozen (synchronised under DDP: trainer.sync_batchnorm)
    bn_momentum: float | None = None    # every BN layer's momentum; None: PyTorch's 0.1
    border_weight: bool = False         # U-Net Eq. 2 pixel weights
    # top-level model children that are trained; every other parameter is frozen (requires_grad
    # False, BatchNorm in eval mode). () trains everything; ("score_fr",) is FCN-32s-fixed
    train_only: tuple[str, ...] = ()
    # stage-wise training (Recipe.init_from): lr × stage_lr_factor per stage below the first
    # (FCN Sec. 4.2: "The learning rate is decreased by a factor of 100"); the card shows the result
    stage_lr_factor: float = 1.0


@dataclass(frozen=True)
class Trainer:
    max_steps: int = 20000
    val_every: int = 2000
    checkpoint_every: int = 500
    log_every: int = 50
    precision: str = "auto"             # bf16 autocast on GPUs that have it, fp32 elsewhere
    deterministic: bool = False
    accumulate: int = 1
    sync_batchnorm: bool = True         # SyncBatchNorm when world size > 1
    # None = auto: channels_last where the precision resolves to mixed precision on a GPU (tensor
    # cores want NHWC), off elsewhere (experiments.card.resolve_channels_last)
    channels_last: bool | None = None


@dataclass(frozen=True)
class Eval:
    mode: str = "whole"                 # whole | ms_flip | sliding | semseg (lightning_modules.inference)
    pad_to: int | None = None           # whole, ms_flip: pad to at least pad_to × pad_to, crop back
    scales: tuple[float, ...] = (1.0,)  # ms_flip: of the image; semseg: of base_size
    flip: bool = False                  # ms_flip, semseg: average with the flipped image
    window: int | None = None           # sliding, semseg: window side (None: the training crop)
    stride: int | None = None           # sliding: None = 2/3 of the window; semseg: ceil(2/3 window)
    base_size: int | None = None        # semseg: the long side images are resized to
    output_stride: int | None = None    # evaluate at another output stride (DeepLab v3 Table 6)
    trimap_width: int = 5
    checkerboard_period: int | None = None
    crf: Mapping[str, float] | None = None  # dense-CRF parameters (lightning_modules.crf.CRFParams)
    crf_params_from: str | None = None  # the crf_params.json (experiments.crf_search) crf came from


@dataclass(frozen=True)
class Recipe:
    data: Data = field(default_factory=Data)
    optim: Optim = field(default_factory=Optim)
    trainer: Trainer = field(default_factory=Trainer)
    eval: Eval = field(default_factory=Eval)
    model: Mapping[str, Any] = field(default_factory=dict)   # model extras: build_model kwargs
    width: float = 1.0
    pretrained: bool | str = True       # the timm ImageNet weights of the paper's backbone, or a path
    # stage-wise training: the variant (same ablation, dataset, preset and seed) whose final
    # checkpoint this cell starts from (experiments/stages.py); None: from `pretrained` alone
    init_from: str | None = None
    # evaluation only: the variant whose final checkpoint (same seed) this cell evaluates with
    # its own ``eval`` section, training nothing; every training setting must equal that
    # variant's (experiments/card.py checks it). E.g. DeepLab v3 Table 6's "eval OS 8" row
    weights_from: str | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    notes: tuple[str, ...] = ()         # known deviations from the paper, said on every card


@dataclass(frozen=True)
class Source:
    """The paper's value of one recipe-card item and where it is written (a paper section or an
    official config file); ``paper=None`` when the paper gives none. Each recipe module maps
    card fields to these (``SOURCES``), and ``experiments.recipe_table`` puts them beside ours."""

    paper: Any
    source: str
    matches: Callable[[Any], bool] | None = None   # where equality is not the test (e.g. layer names)

    def agrees(self, ours: Any) -> bool | None:
        """Whether our card value is the paper's (None: the paper gives no value)."""
        if self.matches is not None:
            return bool(self.matches(ours))
        if self.paper is None:
            return None
        return _same(self.paper, ours)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return a == b


SECTIONS = {"data": Data, "optim": Optim, "trainer": Trainer, "eval": Eval}
TOP_LEVEL = ("model", "width", "pretrained", "init_from", "weights_from", "seeds", "notes")


# --------------------------------------------------------------------------- checking values
def _nearest(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key_error(where: str, key: str, valid) -> RecipeError:
    return RecipeError(f"unknown key {key!r} in {where}{_nearest(key, valid)}; valid keys: {sorted(valid)}")


def _coerce(where: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the type ``hint`` (lists become tuples); RecipeError if it is not one."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _coerce(where, value, option)
            except RecipeError as err:
                errors.append(str(err))
        raise RecipeError(f"{where}: {value!r} is not a {_type_name(hint)}")
    if hint is type(None):
        if value is None:
            return None
        raise RecipeError(f"{where}: expected None, got {value!r}")
    if hint is Any:
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a {_type_name(hint)}, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{where}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(args) != len(value):
            raise RecipeError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(f"{where}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (Mapping, dict) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise RecipeError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise RecipeError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise RecipeError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"{where}: unsupported type {hint!r}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


_CHOICES = {("optim", "optimizer"): ("sgd", "adamw"), ("optim", "lr_schedule"): LR_SCHEDULES,
            ("optim", "bn"): BN_MODES, ("data", "augment"): AUGMENTATIONS, ("eval", "mode"): EVAL_MODES,
            ("trainer", "precision"): PRECISIONS}
_POSITIVE = {("data", "global_batch"), ("data", "val_batch_size"), ("data", "crop_size"),
             ("data", "image_size"), ("data", "num_train"), ("data", "num_val"), ("trainer", "max_steps"),
             ("trainer", "val_every"), ("trainer", "checkpoint_every"), ("trainer", "log_every"),
             ("trainer", "accumulate"), ("eval", "pad_to"), ("eval", "window"), ("eval", "stride"),
             ("eval", "output_stride"), ("eval", "checkerboard_period"), ("optim", "lr"),
             ("eval", "base_size"), ("data", "scale_step"), ("optim", "stage_lr_factor")}
_NON_NEGATIVE = {("data", "num_workers"), ("optim", "momentum"), ("optim", "weight_decay"),
                 ("optim", "poly_power"), ("optim", "warmup_steps"), ("optim", "head_lr_mult"),
                 ("optim", "bias_lr_mult"), ("optim", "aux_weight"), ("optim", "lr_gamma"),
                 ("eval", "trimap_width")}


def check_value(section: str, key: str, value: Any) -> Any:
    """One recipe value, type-checked and range-checked; RecipeError naming ``section.key``."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    if key not in hints:
        raise unknown_key_error(f"recipe section {section!r}", key, hints)
    where = f"{section}.{key}"
    value = _coerce(where, value, hints[key])
    if (section, key) in _CHOICES and value not in _CHOICES[section, key]:
        raise RecipeError(f"{where}: expected one of {_CHOICES[section, key]}, got {value!r}")
    if value is not None and (section, key) in _POSITIVE and not value > 0:
        raise RecipeError(f"{where}: expected a positive value, got {value!r}")
    if value is not None and (section, key) in _NON_NEGATIVE and not value >= 0:
        raise RecipeError(f"{where}: expected a value >= 0, got {value!r}")
    if (section, key) == ("data", "scale_range") and not 0 < value[0] <= value[1]:
        raise RecipeError(f"{where}: expected (low, high) with 0 < low <= high, got {value!r}")
    if (section, key) == ("optim", "bn_momentum") and value is not None and not 0 < value < 1:
        raise RecipeError(f"{where}: expected a momentum in (0, 1) (PyTorch's convention: 1 - decay), got {value!r}")
    if (section, key) == ("optim", "lr_steps") and list(value) != sorted(set(value)):
        raise RecipeError(f"{where}: expected increasing steps, got {value!r}")
    if (section, key) == ("optim", "train_only") and (len(set(value)) != len(value) or not all(value)):
        raise RecipeError(f"{where}: expected distinct, non-empty module names, got {value!r}")
    if (section, key) == ("eval", "scales") and (not value or min(value) <= 0):
        raise RecipeError(f"{where}: expected one or more positive scales, got {value!r}")
    if (section, key) == ("eval", "crf") and value is not None:
        from lightning_modules.crf import CRFParams

        valid = {f.name for f in dataclasses.fields(CRFParams)}
        for name in value:
            if name not in valid:
                raise unknown_key_error("eval.crf", name, valid)
        value = dataclasses.asdict(CRFParams(**value))
    return value


def check_top_level(key: str, value: Any) -> Any:
    if key == "width":
        value = _coerce("width", value, float)
        if not 0 < value <= 4:
            raise RecipeError(f"width: expected a channel multiplier in (0, 4], got {value!r}")
        return value
    if key == "pretrained":
        return _coerce("pretrained", value, bool | str)
    if key in ("init_from", "weights_from"):
        return _coerce(key, value, str | None)
    if key == "seeds":
        value = _coerce("seeds", value, tuple[int, ...])
        if not value or min(value) < 0 or len(set(value)) != len(value):
            raise RecipeError(f"seeds: expected distinct integers >= 0, got {value!r}")
        return value
    if key == "notes":
        return _coerce("notes", value, tuple[str, ...])
    if key == "model":
        return _coerce("model", value, Mapping[str, Any])
    raise unknown_key_error("the recipe", key, [*SECTIONS, *TOP_LEVEL])


# --------------------------------------------------------------------------- merging
def override(recipe: Recipe, changes: Mapping[str, Any] | None) -> Recipe:
    """``recipe`` with ``changes`` (a nested dict) applied: sections field by field, ``model``
    key by key (a value of ``None`` removes a model key), ``notes`` appended, other keys replaced."""
    if not changes:
        return recipe
    updates: dict[str, Any] = {}
    for key, value in changes.items():
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                raise RecipeError(f"recipe section {key!r}: expected a mapping of settings, got {value!r}")
            checked = {k: check_value(key, k, v) for k, v in value.items()}
            updates[key] = dataclasses.replace(getattr(recipe, key), **checked)
        elif key == "model":
            model = {**recipe.model, **check_top_level("model", value)}
            updates["model"] = {k: v for k, v in model.items() if v is not None}
        elif key == "notes":
            updates["notes"] = recipe.notes + check_top_level("notes", value)
        else:
            updates[key] = check_top_level(key, value)
    return dataclasses.replace(recipe, **updates)


def validate(recipe: Recipe) -> Recipe:
    """Every value of a recipe written as dataclasses (not through :func:`override`) checked."""
    for section in SECTIONS:
        for f in dataclasses.fields(SECTIONS[section]):
            check_value(section, f.name, getattr(getattr(recipe, section), f.name))
    for key in TOP_LEVEL:
        check_top_level(key, getattr(recipe, key))
    return recipe


def from_dict(data: Mapping[str, Any]) -> Recipe:
    """The recipe :func:`as_dict` wrote (e.g. a cell's ``config.json``), checked."""
    return override(Recipe(model={}, notes=()), data)


def as_dict(recipe: Recipe) -> dict[str, Any]:
    """JSON-ready nested dict (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(recipe), default=str))


# --------------------------------------------------------------------------- the smoke preset
@dataclass(frozen=True)
class ModelRule:
    """A smoke-only model change that applies only to models it can apply to."""

    name: str
    applies: Callable[[str, Mapping[str, Any]], bool]   # (model name, resolved kwargs) -> bool
    kwargs: Mapping[str, Any]
    why: str


def _accepts(model: str, kwarg: str) -> bool:
    from models import builder_accepts

    return builder_accepts(model, kwarg)


def _default_kwarg(model: str, kwarg: str) -> Any:
    from models import builder

    p = inspect.signature(builder(model)).parameters.get(kwarg)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def _vgg_without_bn(model: str, kwargs: Mapping[str, Any]) -> bool:
    if not _accepts(model, "batch_norm"):
        return False
    backbone = kwargs.get("backbone", _default_kwarg(model, "backbone"))
    return backbone in (None, "vgg16")   # VGG16 heads, and U-Net (no backbone argument)


SMOKE_MODEL_RULES = (
    ModelRule("batch_norm", _vgg_without_bn, {"batch_norm": True},
              "plain VGG16 / U-Net without BatchNorm do not train from scratch in a few hundred steps"),
)

# The generic smoke preset, applied over the paper recipe: the paper's topology at 1/8 width,
# from scratch, AdamW, a few hundred steps on synthetic images on a CPU.
SMOKE: dict[str, Any] = {
    "width": 0.125,
    "pretrained": False,
    "seeds": (0, 1, 2),  # three seeds: the claims tables need a between-seed spread
    "data": {"train_split": None, "val_split": None, "crop_size": None, "global_batch": 8,
             "val_batch_size": 16, "scale_range": (1.0, 1.0), "scale_step": None, "augment": "flip",
             # auto: none on a CPU (two workers on two cores take the model step's cores), a few on a
             # GPU host, where the main process alone cannot feed the GPU (BENCHMARKS.md)
             "num_workers": None},
    "optim": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 1e-4, "lr_schedule": "poly",
              "poly_power": 0.9, "lr_steps": (), "warmup_steps": 20, "head_lr_mult": 1.0,
              "bias_lr_mult": 1.0, "bn": "trained", "bn_momentum": None},
    "trainer": {"max_steps": 300, "val_every": 300, "checkpoint_every": 100, "deterministic": True,
                "log_every": 10, "accumulate": 1},
    "eval": {"mode": "whole", "pad_to": None, "scales": (1.0,), "flip": False, "window": None,
             "stride": None, "base_size": None},
}


def model_rule_kwargs(model: str, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], list[ModelRule]]:
    """The smoke rules' model kwargs for this model (given its otherwise resolved kwargs)."""
    out: dict[str, Any] = {}
    used = []
    for rule in SMOKE_MODEL_RULES:
        if rule.applies(model, kwargs):
            out.update(rule.kwargs)
            used.append(rule)
    return out, used
