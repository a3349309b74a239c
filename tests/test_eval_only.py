"""Evaluation-only variants (recipe ``weights_from``): a cell that trains nothing and evaluates
another variant's final weights of the same seed with its own evaluation settings — DeepLab v3
Table 6's and v3+ Table 3's "eval OS 8" rows, the same trained model evaluated differently."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from experiments.card import Run, recipe_card, resolve, training_differences
from experiments.recipe import Recipe, RecipeError
from experiments.results_folder import finished_cells, load_cell
from experiments.runner import main
from experiments.spec import Ablation, Variant
from experiments.table import eval_label

V3 = {"backbone": "resnet50", "output_stride": 16}
TINY = Ablation(
    name="evalonly", title="evaluation-only check", synthetic_task="thin",
    variants={
        "OS 16": Variant("deeplab_v3", V3, "deeplab_v3.table5.mg124_aspp_pool"),
        "eval OS 8": Variant("deeplab_v3", V3, "deeplab_v3.table6.eval_os8",
                             recipe={"eval": {"output_stride": 8}, "weights_from": "OS 16"}),
        # the same recipe trained again: on a CPU with one seed, the same weights bit for bit
        "eval OS 8, retrained": Variant("deeplab_v3", V3, recipe={"eval": {"output_stride": 8}}),
    },
    paper_data="voc",
    paper=Recipe(),
    smoke={"width": 0.0625, "data": {"num_train": 8, "num_val": 4, "image_size": 64, "global_batch": 2},
           "trainer": {"max_steps": 6, "val_every": 6, "checkpoint_every": 6}},
)
SMOKE = Run()


def with_variant(name: str, variant: Variant) -> Ablation:
    return dataclasses.replace(TINY, variants={**TINY.variants, name: variant})


def test_the_named_variant_must_exist_train_and_share_every_training_setting():
    cell = resolve(TINY, "eval OS 8", SMOKE)
    assert cell.recipe.weights_from == "OS 16" and cell.recipe.eval.output_stride == 8
    card = recipe_card(TINY, "eval OS 8", 0, SMOKE, cell)
    assert card["weights_from"] == "OS 16"
    parent = recipe_card(TINY, "OS 16", 0, SMOKE, resolve(TINY, "OS 16", SMOKE))
    assert "weights_from" not in parent  # cards of training cells are unchanged
    assert training_differences(parent, card) == []
    # evaluation settings may differ (a split, a batch, a protocol): nothing else
    assert training_differences(parent, {**card, "val_batch_size": 1, "eval": {"mode": "ms_flip"}}) == []
    assert training_differences(parent, {**card, "lr": 1.0}) == ["lr: 0.002 -> 1.0"]

    def error(variant: Variant) -> str:
        with pytest.raises(RecipeError) as info:
            resolve(with_variant("x", variant), "x", SMOKE)
        return str(info.value)

    assert "'OS 6' is not a variant" in error(Variant("deeplab_v3", V3, recipe={"weights_from": "OS 6"}))
    assert "did you mean 'OS 16'" in error(Variant("deeplab_v3", V3, recipe={"weights_from": "OS 6"}))
    assert "names the variant itself" in error(Variant("deeplab_v3", V3, recipe={"weights_from": "x"}))
    chained = error(Variant("deeplab_v3", V3, recipe={"weights_from": "eval OS 8"}))
    assert "'eval OS 8' trains nothing itself" in chained and "'OS 16'" in chained
    # a training difference: another model, another lr, another crop
    other_model = error(Variant("deeplab_v3", {**V3, "multi_grid": (1, 2, 4)}, recipe={"weights_from": "OS 16"}))
    assert "only its evaluation may differ" in other_model and "model_kwargs.multi_grid" in other_model
    other_lr = error(Variant("deeplab_v3", V3, recipe={"weights_from": "OS 16", "optim": {"lr": 0.1}}))
    assert "lr: 0.002 -> 0.1" in other_lr and "--set weights_from=null" in other_lr
    # the way out the message names: train it as a variant of its own
    off = Run(changes={"weights_from": None})
    assert resolve(TINY, "eval OS 8", off).recipe.weights_from is None


def test_dry_run_counts_no_steps_for_evaluation_only_cells(capsys):
    cards = main(TINY, ["--dry-run", "--seeds", "0", "1"])
    assert [c["weights_from"] for c in cards if "weights_from" in c] == ["OS 16", "OS 16"]
    out = capsys.readouterr().out
    assert "| eval OS 8 | 0 | deeplab_v3 |" in out and "| 0 (evaluates OS 16's weights) |" in out
    assert "whole, OS 8 |" in out
    # 6 cells, 2 of them evaluation-only: 4 x 6 steps x batch 2
    assert "6 cells (2 evaluation-only: they train nothing), 24 optimiser steps, 48 training images" in out
    assert "and 6 passes over the validation set (0 of them during training" in out
    # validating every 2 of the 6 steps: 3 passes per training cell (the last one its evaluation)
    main(TINY, ["--dry-run", "--seeds", "0", "1", "--set", "trainer.val_every=2"])
    assert "and 14 passes over the validation set (8 of them during training" in capsys.readouterr().out


def test_eval_label_names_stride_crf_and_weights():
    metrics = {"eval_protocol": "whole", "eval": {"output_stride": 8}, "weights_from": {"variant": "OS 16"}}
    assert eval_label(metrics) == "whole, OS 8 (OS 16's weights)"
    assert eval_label({"eval_mode": "ms_flip", "eval": {"output_stride": None}}, crf=True) == "ms_flip + CRF"


@pytest.mark.slow
def test_runner_evaluates_the_parents_final_weights_after_it_finished(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--out", str(out), "--quiet", "--seeds", "0", "--no-figures"]
    with pytest.raises(SystemExit):  # the evaluation alone, its weights never trained: refused
        main(TINY, [*args, "--variants", "eval OS 8"])
    assert "eval OS 8 (seed 0) needs the weights of OS 16 (seed 0), which has not finished" in capsys.readouterr().err
    main(TINY, ["cells", "--levels", *args])
    assert capsys.readouterr().out.splitlines() == ["0\tOS 16\t0", "0\teval OS 8, retrained\t0", "1\teval OS 8\t0"]

    # --no-reuse: the control trains again (else it would reuse OS 16's weights, experiments/reuse.py)
    main(TINY, [*args, "--no-reuse", "--variants", "eval OS 8", "OS 16", "eval OS 8, retrained"])  # listed first: run second
    printed = capsys.readouterr().out
    assert printed.index("[cell] ") < printed.index("[eval only] ")
    cells = out / "evalonly" / "synthetic_thin-smoke"
    child, parent, control = (json.loads((cells / name / "seed0" / "metrics.json").read_text())
                              for name in ("eval OS 8", "OS 16", "eval OS 8, retrained"))
    weights = cells / "OS 16" / "seed0" / "checkpoints" / "last.ckpt"
    assert child["weights_from"] == {"variant": "OS 16", "cell": str(cells / "OS 16" / "seed0"),
                                     "checkpoint": str(weights), "steps": 6,
                                     "train_time_s": parent["train_time_s"]}
    assert child["steps"] == parent["steps"] == 6 and child["train_time_s"] is None
    assert child["train_images_per_s"] is None and child["eval_time_s"] > 0
    assert not (cells / "eval OS 8" / "seed0" / "checkpoints").exists()  # no copy of the weights
    assert (cells / "eval OS 8" / "seed0" / "per_image_val.npz").is_file()
    # evaluated at OS 8: the FLOPs of the re-strided network, not of the OS-16 one
    assert child["eval"]["output_stride"] == 8 and child["gflops"] > 1.5 * parent["gflops"]
    # the same evaluation of a model trained again from the same seed: the same numbers, so the
    # evaluation-only cell changes nothing but the cost (and the pairing becomes exact)
    assert child["val"] == control["val"]
    table = (cells / "results.md").read_text()
    assert "| whole, OS 8 (OS 16's weights) |" in table and "| whole, OS 8 |" in table
    # read back (figures, notebooks, the CRF search): the parent's weights, the child's evaluation
    assert finished_cells(cells, ["eval OS 8"], [0]) == {"eval OS 8": cells / "eval OS 8" / "seed0"}
    module, _ = load_cell(cells / "eval OS 8" / "seed0")
    trained, _ = load_cell(cells / "OS 16" / "seed0")
    assert module.hparams.eval_output_stride == 8 and trained.hparams.eval_output_stride is None
    for (name, a), b in zip(module.model.state_dict().items(), trained.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert module.model.output_stride == 8 and trained.model.output_stride == 16  # predicts as evaluated
    # tools.eval_scales on it: scale 1 without flips is the cell's own evaluation
    from tools.eval_scales import scale_table

    rows = scale_table(cells / "eval OS 8" / "seed0", [1.0, 0.5])
    assert [(r["scales"], r["flip"]) for r in rows] == [((1.0,), False), ((1.0,), True), ((0.5,), False),
                                                         ((0.5,), True), ((1.0, 0.5), True)]
    assert rows[0]["miou"] == pytest.approx(100 * child["val"]["miou"], abs=1e-9)
    assert rows[0]["images"] == 4 and rows[0]["mode"] == "ms_flip"

    # weights trained differently from what this command says: refused, naming the difference
    config = cells / "OS 16" / "seed0" / "config.json"
    stored = json.loads(config.read_text())
    stored["card"]["max_steps"] = 7
    config.write_text(json.dumps(stored))
    (cells / "eval OS 8" / "seed0" / "metrics.json").unlink()
    with pytest.raises(RuntimeError, match=r"was trained differently \(max_steps: 7 -> 6\)"):
        main(TINY, [*args, "--variants", "eval OS 8"])


def test_the_papers_eval_only_rows_are_evaluation_only():
    """DeepLab v3 Table 6 and v3+ Tables 3 and 5 evaluate the OS-16 model at OS 8 (and with
    MS + flip), PSPNet Table 3 tests its models at several scales: those variants name the
    variant that trains them, with nothing else changed."""
    import importlib.util

    def ablation(name: str) -> Ablation:
        script, _, table = name.partition(" --table ")
        spec = importlib.util.spec_from_file_location(script, f"experiments/{script}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return dataclasses.replace(module.ABLATION, variants=module.variants(table)) if table else module.ABLATION

    expected = {
        "deeplabv3_ablation": {name: "MG(1,2,4) + image pooling" for name in (
            "+ image pooling, eval OS 8", "+ image pooling, eval OS 8, MS", "+ image pooling, eval OS 8, MS + flip")},
        "deeplabv3plus_ablation": {"R101 decoder, eval OS 8": "R101 decoder",
                                   "R101 no decoder, eval OS 8": "R101 no decoder",
                                   "R101 decoder, eval OS 8, MS + flip": "R101 decoder",
                                   "Xception-65 decoder, eval OS 8": "Xception-65 decoder"},
        # PSPNet Table 3: "+MS" is multi-scale testing of the single-scale row's model
        "psp_aux_depth_ablation --table 3": {f"ResNet{d} + MS": f"ResNet{d}" for d in (50, 101, 152)},
    }
    for script, pairs in expected.items():
        abl = ablation(script)
        for preset in (Run(), Run(data="voc", data_root="/nowhere", preset="paper")):
            found = {n: resolve(abl, n, preset).recipe.weights_from for n in abl.variants}
            assert {n: p for n, p in found.items() if p} == pairs, (script, preset.preset)
        for child in pairs:
            assert resolve(abl, child, SMOKE).recipe.eval != resolve(abl, pairs[child], SMOKE).recipe.eval
