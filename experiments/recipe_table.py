"""The README's "Recipes" tables: for one ablation, every recipe item beside the paper's value.

Built from the recipe cards (``experiments.card.recipe_card``) of every variant under the paper
preset on the paper's dataset, one process, and from the per-recipe mapping of card fields to
:class:`experiments.recipe.Source` (``SOURCES`` in ``experiments/recipes/<paper>.py``, given to
the ablation as ``sources``; a variant's own ``sources`` take precedence for its rows). Nothing
in the table is typed by hand: ``ours`` is read off the card, the verdict is computed.

    | item | paper | source | ours | |

One row per item; where variants differ (e.g. the ResNet-101 rows of the ASPP ablation), one
row per group of variants, named in the item cell. ✓ = ours equals the paper's value,
**deviation** = it does not, "—" in the paper column = the paper gives no value. The recipe's
``notes`` (known deviations the card cannot show as a value) follow the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from experiments.card import Run, fmt, recipe_card, resolve
from experiments.recipe import Source
from experiments.spec import Ablation
from experiments.tasks import get_task


def all_variants(ablation: Ablation) -> Ablation:
    """The ablation with the variants of every option choice (e.g. ASPP's VGG and ResNet rows)."""
    variants = dict(ablation.variants)
    for option in ablation.options.values():
        for choice in option.choices:
            variants.update(option.variants(choice))
    return Ablation(**{**ablation.__dict__, "variants": variants})


def paper_data(ablation: Ablation) -> str:
    """The paper's dataset, or the first real one we have (Mask R-CNN: VOC for COCO)."""
    task = get_task(ablation.task)
    if ablation.paper_data in task.datasets:
        return ablation.paper_data
    return next(name for name in task.datasets if name != "synthetic")


def paper_cards(ablation: Ablation) -> dict[str, dict[str, Any]]:
    """Each variant's recipe card under the paper preset on the paper's data, one process."""
    run = Run(data=paper_data(ablation), data_root="DATA", preset="paper")
    return {name: recipe_card(ablation, name, 0, run, resolve(ablation, name, run))
            for name in ablation.variants}


def card_value(card: Mapping[str, Any], field: str) -> Any:
    value: Any = card
    for key in field.split("."):
        if not isinstance(value, Mapping) or key not in value:
            raise KeyError(f"recipe card has no field {field!r}")
        value = value[key]
    return value


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    return fmt(value)


def recipe_rows(ablation: Ablation) -> list[dict[str, Any]]:
    """``{"item", "variants", "paper", "source", "ours", "status"}`` per item and group of variants."""
    ablation = all_variants(ablation)
    cards = paper_cards(ablation)
    fields = list(dict.fromkeys([*ablation.sources, *(f for v in ablation.variants.values() for f in v.sources)]))
    rows = []
    for field in fields:
        groups: dict[tuple, list[str]] = {}
        for name, variant in ablation.variants.items():
            source: Source | None = variant.sources.get(field, ablation.sources.get(field))
            if source is None:
                continue
            ours = card_value(cards[name], field)
            agrees = source.agrees(ours)
            status = "—" if agrees is None else ("✓" if agrees else "**deviation**")
            key = (_show(source.paper), source.source, _show(ours), status)
            groups.setdefault(key, []).append(name)
        for (paper, src, ours, status), names in groups.items():
            rows.append({"item": field, "variants": names if len(groups) > 1 else [], "paper": paper,
                         "source": src, "ours": ours, "status": status})
    return rows


def recipe_notes(ablation: Ablation) -> list[str]:
    cards = paper_cards(all_variants(ablation))
    return list(dict.fromkeys(n for card in cards.values() for n in card["notes"]))


def render_recipe_table(ablation: Ablation) -> str:
    """The markdown table and the notes of one ablation."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|")

    lines = [f"Paper preset of `{ablation.name}` (`--data {paper_data(ablation)}`), one process:", "",
             "| item | paper | source | ours | |", "|---|---|---|---|---|"]
    for r in recipe_rows(ablation):
        item = f"`{r['item']}`" + (f" ({'; '.join(r['variants'])})" if r["variants"] else "")
        lines.append(f"| {item} | {cell(r['paper'])} | {cell(r['source'])} | {cell(r['ours'])} | {r['status']} |")
    notes = recipe_notes(ablation)
    if notes:
        lines += ["", "Known deviations (recipe notes):", *[f"- {n}" for n in notes]]
    return "\n".join(lines)
