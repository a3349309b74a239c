"""What an ablation is: named variants (model + the knob values being compared), each with the
paper's number it should be compared to, plus the paper's training recipe.

Paper numbers are looked up by key in ``experiments/paper_numbers.toml`` (one data file, with
the table each number comes from), e.g. ``"deeplab_v2.table3.aspp_l"``; a section's ``metric``
says what its numbers measure (default mIoU).
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
    # LightningModule settings that belong to this variant (e.g. U-Net's ``border_weight``,
    # DeepLab v3's ``eval_output_stride``), merged over the preset's module settings.
    module: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PaperNumber:
    value: float
    source: str
    protocol: str
    metric: str = "miou"    # what the number is: "miou" (in %), "mask_ap" (in %), ...

    @property
    def miou(self) -> float:
        return self.value

    @property
    def reference(self) -> str:
        return self.source


@dataclass
class Ablation:
    name: str                    # results/<name>/...
    title: str
    synthetic_task: str          # the diagnostic task of the smoke preset (datamodules.synthetic)
    variants: dict[str, Variant]
    paper_data: str              # the dataset the paper numbers refer to: "voc", "ade20k", "coco"
    # The paper's recipe for the `paper` preset: datamodule, module and trainer settings.
    paper_recipe: dict[str, Any] = field(default_factory=dict)
    # Overrides of the generic smoke preset (experiments/runner.py SMOKE) for this ablation.
    smoke_recipe: dict[str, Any] = field(default_factory=dict)
    # Extra command-line switches of this script: option name -> (choices, default, function
    # (choice) -> variants); e.g. --backbone vgg16|resnet101 for the ASPP ablation.
    options: dict[str, tuple[tuple[str, ...], str, Any]] = field(default_factory=dict)
    # "semantic" (SegmentationModule, mIoU) or "instance" (Mask R-CNN, mask AP); see experiments/tasks.py
    task: str = "semantic"
    # evaluate every cell also after the dense CRF (as ``--crf``), e.g. the CRF ablation
    always_crf: bool = False


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
