"""What an ablation is: named variants (model + the knob values being compared), each with the
paper's number it should be compared to, plus the paper's training recipe.

Paper numbers are looked up by key in ``experiments/paper_numbers.toml`` (one data file, with
the table each number comes from), e.g. ``"deeplab_v2.table3.aspp_l"``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAPER_NUMBERS_FILE = Path(__file__).with_name("paper_numbers.toml")


@dataclass(frozen=True)
class Variant:
    model: str                                  # a name from models.available_models()
    kwargs: dict[str, Any] = field(default_factory=dict)  # the knobs, named as in the paper
    paper: str | None = None                    # key into paper_numbers.toml


@dataclass(frozen=True)
class PaperNumber:
    miou: float
    source: str
    protocol: str

    @property
    def reference(self) -> str:
        return self.source


@dataclass
class Ablation:
    name: str                    # results/<name>/...
    title: str
    synthetic_task: str          # the diagnostic task of the smoke preset (datamodules.synthetic)
    variants: dict[str, Variant]
    paper_data: str              # the dataset the paper numbers refer to: "voc" or "ade20k"
    # The paper's recipe for the `paper` preset: datamodule, module and trainer settings.
    paper_recipe: dict[str, Any] = field(default_factory=dict)
    # Overrides of the generic smoke preset (experiments/runner.py SMOKE) for this ablation.
    smoke_recipe: dict[str, Any] = field(default_factory=dict)
    # Extra command-line switches of this script: option name -> (choices, default, function
    # (choice) -> variants); e.g. --backbone vgg16|resnet101 for the ASPP ablation.
    options: dict[str, tuple[tuple[str, ...], str, Any]] = field(default_factory=dict)


def load_paper_numbers(path: Path = PAPER_NUMBERS_FILE) -> dict[str, PaperNumber]:
    """Flatten the TOML file to ``{"deeplab_v2.table3.aspp_l": PaperNumber(...)}``."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    out: dict[str, PaperNumber] = {}

    def walk(prefix: str, node: dict) -> None:
        if "source" in node:
            for key, value in node.items():
                if isinstance(value, (int, float)):
                    out[f"{prefix}.{key}"] = PaperNumber(float(value), node["source"], node.get("protocol", ""))
        for key, value in node.items():
            if isinstance(value, dict):
                walk(f"{prefix}.{key}" if prefix else key, value)

    walk("", data)
    return out


def paper_number(key: str | None) -> PaperNumber | None:
    if key is None:
        return None
    numbers = load_paper_numbers()
    if key not in numbers:
        raise KeyError(f"paper number {key!r} is not in {PAPER_NUMBERS_FILE}; known: {sorted(numbers)}")
    return numbers[key]
