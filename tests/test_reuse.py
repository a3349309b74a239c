"""Cells trained once for several tables (``experiments/reuse.py``): a row of one table that
trains exactly what a finished cell of another table trained evaluates those weights instead."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from experiments import reuse
from experiments.card import Run, recipe_card, resolve
from experiments.recipe import Recipe
from experiments.results_folder import cell_weights, finished_cells
from experiments.runner import main
from experiments.spec import Ablation, Variant
from experiments.table import reuse_note

V3 = {"backbone": "resnet50", "output_stride": 16}
SMOKE = {"width": 0.0625, "data": {"num_train": 8, "num_val": 4, "image_size": 64, "global_batch": 2},
         "trainer": {"max_steps": 6, "val_every": 6, "checkpoint_every": 6}}
# two tables that share a row: "OS 16" of table A is "R50" of table B (another name, the same
# training), which B evaluates with flips as well; B's "lr x2" is a network of its own
TABLE_A = Ablation(name="table_a", title="table A", synthetic_task="thin", paper_data="voc", paper=Recipe(),
                   variants={"OS 16": Variant("deeplab_v3", V3),
                             "MG(1,2,4)": Variant("deeplab_v3", {**V3, "multi_grid": (1, 2, 4)})},
                   smoke=SMOKE)
TABLE_B = Ablation(name="table_b", title="table B", synthetic_task="thin", paper_data="voc", paper=Recipe(),
                   variants={"R50": Variant("deeplab_v3", V3, recipe={"eval": {"mode": "ms_flip", "scales": (1.0,)}}),
                             "lr x2": Variant("deeplab_v3", V3, recipe={"optim": {"lr": 0.004}})},
                   smoke=SMOKE)
ARGS = ["--quiet", "--seeds", "0", "--no-figures"]


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def table_a(tmp_path_factory):
    out = tmp_path_factory.mktemp("reuse") / "out"
    main(TABLE_A, ["--out", str(out), *ARGS])
    return out


@pytest.mark.slow
def test_a_row_of_another_table_is_evaluated_not_trained_again(table_a, tmp_path, capsys):
    out = tmp_path / "out"
    import shutil

    shutil.copytree(table_a, out)
    capsys.readouterr()
    main(TABLE_B, ["--dry-run", "--out", str(out), *ARGS])
    printed = capsys.readouterr().out
    assert "| R50 | 0 | deeplab_v3 |" in printed and "| 0 (reuses table_a/synthetic_thin-smoke/OS 16/seed0's weights) |" in printed
    assert "2 cells (1 reusing the weights of a finished cell of another table: they train nothing), 6 optimiser steps" in printed

    main(TABLE_B, ["--out", str(out), *ARGS])
    printed = capsys.readouterr().out
    assert "[sweep] 2 cell(s) to train, 6 optimiser steps (1 reuse the weights" in printed
    a, b = out / "table_a" / "synthetic_thin-smoke", out / "table_b" / "synthetic_thin-smoke"
    source, cell = a / "OS 16" / "seed0", b / "R50" / "seed0"
    assert f"[reuse] {cell}: {source} trained this network" in printed
    trained = json.loads((source / "metrics.json").read_text())
    got = json.loads((cell / "metrics.json").read_text())
    assert got["reused_weights"] == {
        "ablation": "table_a", "variant": "OS 16", "cell": str(source), "checkpoint": str(source / "checkpoints" / "last.ckpt"),
        "trained_in": str(source), "steps": 6, "train_time_s": trained["train_time_s"],
        "train_images_per_s": trained["train_images_per_s"]}
    assert got["steps"] == 6 and got["train_time_s"] is None and got["weights_from"] is None
    assert got["train_images_per_s"] == trained["train_images_per_s"]  # the speed its weights were trained at
    assert got["eval_mode"] == "ms_flip" and got["val"] != trained["val"]  # its own evaluation
    # its own copy of the weights (a hard link here), so what reads the cell later finds them
    assert os.path.samefile(cell_weights(cell), source / "checkpoints" / "last.ckpt")
    assert finished_cells(b, ["R50"], [0]) == {"R50": cell}
    other = json.loads((b / "lr x2" / "seed0" / "metrics.json").read_text())
    assert other["reused_weights"] is None and other["train_time_s"] > 0  # another network: trained
    table = (b / "results.md").read_text()
    assert "R50 ← table_a/OS 16 (seed 0)" in table and "--no-reuse trains them again" in table

    # interrupted after linking, before its metrics: a rerun evaluates the same weights again
    (cell / "metrics.json").unlink()
    main(TABLE_B, ["--out", str(out), *ARGS, "--variant", "R50"])
    assert json.loads((cell / "metrics.json").read_text())["val"] == got["val"]
    # a reused cell is itself a twin for a third table; the record names where they were trained
    third = dataclasses.replace(TABLE_B, name="table_c", variants={"R50": TABLE_A.variants["OS 16"]})
    main(third, ["--out", str(out), *ARGS])
    again = json.loads((out / "table_c" / "synthetic_thin-smoke" / "R50" / "seed0" / "metrics.json").read_text())
    assert again["reused_weights"]["ablation"] == "table_a" and again["val"] == trained["val"]


@pytest.mark.slow
def test_reused_weights_are_what_training_again_gives_on_a_cpu(table_a, tmp_path, capsys):
    out = tmp_path / "out"
    main(TABLE_B, ["--out", str(out), *ARGS, "--variant", "R50"])  # no table A under this --out
    capsys.readouterr()
    again = out / "table_b" / "synthetic_thin-smoke" / "R50" / "seed0"
    assert json.loads((again / "metrics.json").read_text())["reused_weights"] is None
    source = table_a / "table_a" / "synthetic_thin-smoke" / "OS 16" / "seed0" / "checkpoints" / "last.ckpt"
    ours, theirs = weights(again / "checkpoints" / "last.ckpt"), weights(source)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def fake_cell(root, ablation: str, variant: str, card: dict, finished: bool = True, metrics: dict | None = None):
    cell = root / ablation / card["dataset"] / variant / f"seed{card['seed']}"
    (cell / "checkpoints").mkdir(parents=True)
    (cell / "config.json").write_text(json.dumps({"card": {**card, "ablation": ablation, "variant": variant}}))
    (cell / "checkpoints" / "last.ckpt").write_bytes(b"weights of " + variant.encode())
    if finished:
        (cell / "metrics.json").write_text(json.dumps({"steps": 6, "train_time_s": 1.0, **(metrics or {})}))
    return cell


def test_only_a_finished_cell_trained_the_same_way_for_the_same_seed_is_a_twin(tmp_path):
    card = recipe_card(TABLE_B, "R50", 0, Run(), resolve(TABLE_B, "R50", Run()))
    here = tmp_path / "table_b" / card["dataset"] / "R50" / "seed0"
    assert reuse.find_twin(tmp_path, card, here) is None
    fake_cell(tmp_path, "a_unfinished", "R50", card, finished=False)     # another process trains it
    fake_cell(tmp_path, "b_other_seed", "R50", {**card, "seed": 1})
    fake_cell(tmp_path, "c_other_lr", "R50", {**card, "lr": 1.0})
    fake_cell(tmp_path, "d_eval_only", "R50", {**card, "weights_from": "X"})
    assert reuse.find_twin(tmp_path, card, here) is None
    # an evaluation difference is no training difference: a twin
    reused = fake_cell(tmp_path, "e_reused", "R50", {**card, "eval": {"mode": "whole"}},
                       metrics={"reused_weights": {"trained_in": "elsewhere"}})
    assert reuse.find_twin(tmp_path, card, here) == reused
    original = fake_cell(tmp_path, "f_trained", "OS 16", card)
    assert reuse.find_twin(tmp_path, card, here) == original  # the one that trained them, first
    assert reuse.find_twin(tmp_path, card, original) == reused  # never the cell itself
    # cells that start from another's weights or train nothing never take a twin's
    assert reuse.find_twin(tmp_path, {**card, "init_from": "R50"}, here) is None
    assert reuse.find_twin(tmp_path, {**card, "weights_from": "R50"}, here) is None
    assert reuse.reuse_record(reused)["trained_in"] == "elsewhere"


def test_checkpoints_are_linked_or_copied_whole(tmp_path, monkeypatch):
    card = recipe_card(TABLE_B, "R50", 0, Run(), resolve(TABLE_B, "R50", Run()))
    twin = fake_cell(tmp_path, "a", "R50", card)
    linked = reuse.link_checkpoints(twin, tmp_path / "here")
    assert linked == [tmp_path / "here" / "checkpoints" / "last.ckpt"]
    assert os.path.samefile(linked[0], twin / "checkpoints" / "last.ckpt")

    def no_links(*_):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    copied = reuse.link_checkpoints(twin, tmp_path / "copy")
    assert copied[0].read_bytes() == b"weights of R50" and not os.path.samefile(copied[0], linked[0])
    assert sorted(p.name for p in copied[0].parent.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_reuse_note_names_rows_sources_and_seeds():
    rows = [{"variant": "R50", "reused_weights": {0: "table_a/OS 16", 1: "table_a/OS 16"}},
            {"variant": "lr x2", "reused_weights": {}}]
    assert reuse_note(rows) == ("Weights trained once for another table with the same recipe card and seed, "
                                "evaluated here (experiments/reuse.py; --no-reuse trains them again): "
                                "R50 ← table_a/OS 16 (seeds 0, 1).")
    assert reuse_note([{"variant": "x", "reused_weights": {}}]) is None
