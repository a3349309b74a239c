"""What an ablation is: named variants (model + the knob values being compared), each with the
paper's number it should be compared to, plus the paper's training recipe.

Paper numbers are looked up by key in ``experiments/paper_numbers.toml`` (one data file, with
the table each number comes from), e.g. ``"deeplab_v2.table3.aspp_l"``; a section's ``metric``
says what its numbers measure (default mIoU).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from experiments.recipe import Recipe

PAPER_NUMBERS_FILE = Path(__file__).with_name("paper_numbers.toml")


@dataclass(frozen=True)
class Variant:
    """One row of a paper's table: a model, the knobs being compared and the paper's number.

    ``kwargs`` are model keyword arguments named as in the paper; ``recipe`` holds the
    variant's other settings as recipe overrides (``{"optim": {"border_weight": True}}``,
    ``{"eval": {"output_stride": 8}}``, ``{"pretrained": False}``, ``{"init_from": "FCN-32s"}``).
    Both sit above the ablation's recipe and below the command line (``experiments/recipe.py``).

    ``smoke`` holds the variant's changes on the smoke preset only, above ``recipe``: a row whose
    recipe *is* the comparison (DeepLab v2 Table 2's batch 30 vs 10, 6K vs 20K iterations)
    keeps its ratios at the smoke preset's size instead of running the paper's steps on a CPU.

    ``not_comparable``: why the paper's number cannot be reached by this recipe (e.g. it needs
    MS-COCO pre-training); the table then prints the paper's number with this reason and no Δ."""

    model: str                                  # a name from models.available_models()
    kwargs: dict[str, Any] = field(default_factory=dict)
    paper: str | None = None                    # key into paper_numbers.toml
    recipe: dict[str, Any] = field(default_factory=dict)
    smoke: dict[str, Any] = field(default_factory=dict)
    # the paper's values of the recipe items this variant changes (experiments.recipe.Source)
    sources: dict[str, Any] = field(default_factory=dict)
    not_comparable: str | None = None


@dataclass(frozen=True)
class Option:
    """An extra command-line switch of a script that selects another set of variants, e.g.
    ``--backbone vgg16|resnet101`` for the ASPP ablation (Table 3 vs Table 4)."""

    choices: tuple[str, ...]
    default: str
    variants: Callable[[str], dict[str, Variant]]
    help: str = ""


@dataclass(frozen=True)
class PaperNumber:
    value: float
    source: str
    protocol: str
    metric: str = "miou"    # what the number is: "miou" (in %), "mask_ap" (in %), ...


@dataclass(frozen=True)
class Claim:
    """A direction a paper reports between two variants, tested on our runs (``experiments/claims.py``).

    ``direction``: ``">"`` (B better than A, i.e. Δ = B − A > 0), ``"<"`` (B worse) or ``"≈"``
    (|Δ| < ``tolerance`` points). ``eval_a``/``eval_b`` are evaluation keys: ``"val_crf"`` compares
    after the dense CRF, so ``Claim("LargeFOV", "LargeFOV", ">", eval_b="val_crf")`` is "the CRF
    helps". The paper's Δ is computed from the variants' paper keys (or ``paper``: two keys of
    paper_numbers.toml for A and B, when the claim is from another table); ``paper_delta`` only
    where no key has it. ``source`` names the table or section that states the claim.
    """

    a: str
    b: str
    direction: str
    metric: str = "miou"
    eval_a: str = "val"
    eval_b: str = "val"
    tolerance: float = 1.0                  # points, for "≈"
    paper: tuple[str, str] | None = None    # paper_numbers.toml keys of A and B (default: the variants')
    paper_delta: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.direction not in (">", "<", "≈"):
            raise ValueError(f"Claim direction must be '>', '<' or '≈', got {self.direction!r}")
        if self.tolerance <= 0:
            raise ValueError(f"Claim tolerance must be > 0 points, got {self.tolerance}")
        if (self.a, self.eval_a) == (self.b, self.eval_b):
            raise ValueError(f"Claim compares {self.a!r} ({self.eval_a}) with itself")


@dataclass(frozen=True)
class Ablation:
    name: str                    # results/<name>/...
    title: str
    synthetic_task: str          # the diagnostic task of the smoke preset (datamodules.synthetic)
    variants: dict[str, Variant]
    paper_data: str              # the dataset the paper numbers refer to: "voc", "ade20k", "coco"
    paper: Recipe                # the paper's recipe (experiments/recipes/<paper>.py)
    # this ablation's changes to the generic smoke preset (experiments/recipe.py SMOKE)
    smoke: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Option] = field(default_factory=dict)
    task: str = "semantic"       # a key of experiments.tasks.TASKS
    # the papers' directions, tested in the claims table; claims naming variants of another
    # --option choice are left out of that choice's table
    claims: tuple[Claim, ...] = ()
    # card field -> the paper's value and its source (experiments/recipes/<paper>.py SOURCES),
    # shown beside ours in the README's Recipes table (experiments.recipe_table)
    sources: dict[str, Any] = field(default_factory=dict)

    def with_option(self, option: str, choice: str) -> Ablation:
        return replace(self, variants=self.options[option].variants(choice))


def load_paper_numbers(path: Path = PAPER_NUMBERS_FILE) -> dict[str, PaperNumber]:
    """Flatten the TOML file to ``{"deeplab_v2.table3.aspp_l": PaperNumber(...)}``.

    ``source``, ``protocol`` and ``metric`` apply to the numbers of their table and of its
    sub-tables; a sub-table groups one variant's numbers per metric, e.g.
    ``[mask_rcnn.table2c.roialign]`` with ``mask_ap``, ``mask_ap50``, ``mask_ap75``.
    """
    with open(path, "rb") as f:
        data = tomllib.load(f)
    out: dict[str, PaperNumber] = {}

    def walk(prefix: str, node: dict, inherited: dict) -> None:
        meta = {**inherited, **{k: node[k] for k in ("source", "protocol", "metric") if k in node}}
        for key, value in node.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                if "source" not in meta:
                    raise ValueError(f"{path}: {prefix}.{key} has no `source` (every number needs one)")
                metric = key if "metric" not in node and inherited.get("group") else meta.get("metric", "miou")
                out[f"{prefix}.{key}"] = PaperNumber(float(value), meta["source"], meta.get("protocol", ""), metric)
            elif isinstance(value, dict):
                child = {**meta, "group": "source" in meta}
                walk(f"{prefix}.{key}" if prefix else key, value, child)

    walk("", data, {})
    return out


def paper_number(key: str | None) -> PaperNumber | None:
    if key is None:
        return None
    numbers = load_paper_numbers()
    if key not in numbers:
        raise KeyError(f"paper number {key!r} is not in {PAPER_NUMBERS_FILE}; known: {sorted(numbers)}")
    return numbers[key]


def paper_values(key: str | None) -> dict[str, PaperNumber]:
    """The paper's numbers for one variant by metric: ``key`` names one number (its section's
    metric) or a sub-table of numbers named by metric (``mask_ap``, ``mask_ap50``, ...)."""
    if key is None:
        return {}
    numbers = load_paper_numbers()
    if key in numbers:
        return {numbers[key].metric: numbers[key]}
    group = {k[len(key) + 1:]: v for k, v in numbers.items() if k.startswith(key + ".")}
    if not group:
        raise KeyError(f"paper number {key!r} is not in {PAPER_NUMBERS_FILE}; known: {sorted(numbers)}")
    return group
