"""Stage-wise training: a cell that starts from another cell's final weights.

FCN (Long et al., CVPR 2015) Sec. 4.2: "FCN-16s is learned end-to-end, initialized with the
parameters of the last, coarser net, which we now call FCN-32s. The new parameters acting on
pool4 are zero-initialized ... The learning rate is decreased by a factor of 100"; FCN-8s
continues "in this fashion" from FCN-16s (the reference ``voc-fcn16s/solve.py`` and
``voc-fcn8s/solve.py`` load the previous net's caffemodel and divide ``base_lr`` by 100).

A variant says so with the recipe key ``init_from`` (the parent variant's name): the cell
``<out>/<ablation>/<dataset>-<preset>/<variant>/seed<k>`` then starts from the parent cell's
``checkpoints/last.ckpt`` for the same seed (the final weights, written when the parent
finished; read with ``weights_only``), after the model was built as usual. Every parameter and
buffer of the model whose name and shape exist in the parent is copied; the rest keep their
initialisation (for FCN: the new zero-initialised score layer, the bilinear upsampling, and the
final upsampling whose kernel size differs). :func:`init_from_checkpoint` returns the record of
what was copied, which the cell stores in ``init_from.json`` and ``metrics.json``.

Order: the runner trains parents before children (:func:`stage_order`, a topological order of
the selected variants). A selected child whose parent is neither selected nor finished is an
error naming the parent (:func:`check_parents`): the runner never trains an unselected parent
behind the user's back, since a cluster array task for the child would then race the parent's
own task. ``cells --levels`` gives each unfinished cell its dependency level
(:func:`cell_levels`), from which ``experiments/slurm/submit.sh`` submits one job array per
level, each after the previous one succeeded (``--dependency=afterok``).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experiments.checkpoints import load_checkpoint

MODEL_PREFIX = "model."  # the LightningModules hold the network as ``self.model``


def parent_dir(run_dir: Path, parent: str) -> Path:
    """The parent variant's cell for the same seed: a sibling of ``run_dir``'s variant folder."""
    return run_dir.parent.parent / parent / run_dir.name


def parent_checkpoint(run_dir: Path, parent: str) -> Path:
    return parent_dir(run_dir, parent) / "checkpoints" / "last.ckpt"


def is_finished(cell_dir: Path) -> bool:
    """A cell whose final weights can be started from: ``metrics.json`` and ``last.ckpt`` exist."""
    return (cell_dir / "metrics.json").is_file() and (cell_dir / "checkpoints" / "last.ckpt").is_file()


def stage_order(names: Sequence[str], parent: Callable[[str], str | None]) -> list[str]:
    """``names`` with every parent before its children (a stable topological order: otherwise
    the given order); ``parent(name)`` is the name's ``init_from`` (possibly not in ``names``)."""
    selected, done, out = set(names), set(), []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in path:
            raise ValueError(f"init_from forms a cycle: {' -> '.join((*path, name))}")
        p = parent(name)
        if p is not None and p in selected:
            visit(p, (*path, name))
        done.add(name)
        out.append(name)

    for name in names:
        visit(name, ())
    return out


def check_parents(names: Sequence[str], seeds: Sequence[int], parent: Callable[[str], str | None],
                  out_dir: Path, eval_only: Callable[[str], bool] = lambda name: False) -> None:
    """ValueError naming every selected cell whose parent is not selected and has not finished.
    ``eval_only(name)``: the cell evaluates its parent's weights (``weights_from``) rather than
    starting from them (``init_from``)."""
    problems, ways_out = [], set()
    for name in names:
        p = parent(name)
        if p is None or p in names:
            continue
        key = "weights_from" if eval_only(name) else "init_from"
        ways_out.add(f"--set {key}=null ({'train it as a variant of its own' if eval_only(name) else 'start from ImageNet weights alone'})")
        for seed in seeds:
            cell = out_dir / p / f"seed{seed}"
            if not is_finished(cell):
                relation = "needs the weights of" if eval_only(name) else "initialises from"
                problems.append(f"{name} (seed {seed}) {relation} {p} (seed {seed}), which has not "
                                f"finished: no {cell / 'metrics.json'} or {cell / 'checkpoints' / 'last.ckpt'}")
    if problems:
        raise ValueError("; ".join(problems) + ". Train the parent first (select it too, e.g. --variants "
                         f"{' '.join(map(shlex.quote, dict.fromkeys([parent(n) or n for n in names] + list(names))))}), "
                         f"or {' / '.join(sorted(ways_out))}")


def cell_levels(names: Sequence[str], seeds: Sequence[int], parent: Callable[[str], str | None],
                finished: Callable[[str, int], bool]) -> list[tuple[int, str, int]]:
    """``(level, variant, seed)`` for every unfinished selected cell, parents first: level 0 has
    no unfinished parent; level ``k`` waits for its parent at level ``k - 1``. The caller has
    checked (:func:`check_parents`) that every unfinished parent is selected."""
    levels: dict[tuple[str, int], int] = {}

    def level(name: str, seed: int) -> int:
        if (name, seed) not in levels:
            p = parent(name)
            levels[name, seed] = 0 if p is None or finished(p, seed) else level(p, seed) + 1
        return levels[name, seed]

    return [(level(n, s), n, s) for n in names for s in seeds if not finished(n, s)]


def init_from_checkpoint(model: nn.Module, checkpoint: Path) -> dict[str, Any]:
    """Copy every tensor of ``checkpoint``'s ``state_dict`` (a LightningModule's, ``model.``
    prefixed) whose name and shape exist in ``model`` into it; return what was copied.

    The record: ``checkpoint``, ``copied`` (names), ``kept`` (the model's own, with why: not in
    the parent, or a different shape) and ``unused`` (the parent's tensors the model has no
    place for). Nothing copied at all is an error (e.g. another architecture or width)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"init_from: {checkpoint} does not exist (has the parent cell finished?)")
    state = load_checkpoint(checkpoint)
    if "state_dict" not in state:
        raise ValueError(f"init_from: {checkpoint} holds no 'state_dict' (not a Lightning checkpoint?)")
    parent = {k[len(MODEL_PREFIX):]: v for k, v in state["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    own = model.state_dict()
    copied, kept = [], {}
    new_state: dict[str, torch.Tensor] = {}
    for name, tensor in own.items():
        if name not in parent:
            kept[name] = "not in the parent"
        elif tuple(parent[name].shape) != tuple(tensor.shape):
            kept[name] = f"shape {tuple(tensor.shape)}, parent {tuple(parent[name].shape)}"
        else:
            new_state[name] = parent[name]
            copied.append(name)
    if not copied:
        raise ValueError(f"init_from: no tensor of {checkpoint} matches the model by name and shape "
                         f"(another architecture or width?)")
    model.load_state_dict(new_state, strict=False)
    return {"checkpoint": str(checkpoint), "copied": copied, "kept": kept,
            "unused": sorted(set(parent) - set(own))}


def summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """The short form stored in ``metrics.json``."""
    return {"checkpoint": record["checkpoint"], "copied": len(record["copied"]), "kept": sorted(record["kept"]),
            "unused": record["unused"]}
