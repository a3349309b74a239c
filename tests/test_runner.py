"""The experiment runner end to end on a tiny synthetic config (seconds per cell)."""

import json
import os
from pathlib import Path

import pytest

from experiments.recipe import Data, Optim, Recipe, Trainer
from experiments.runner import main
from experiments.spec import Ablation, Variant, load_paper_numbers

TINY = Ablation(
    name="tiny",
    title="tiny FCN check",
    synthetic_task="thin",
    variants={
        "32s": Variant("fcn32s", {}, "fcn.table2.fcn32s"),
        "8s": Variant("fcn8s", {}, "fcn.table2.fcn8s"),
    },
    paper_data="voc",
    paper=Recipe(),
    smoke={"width": 0.0625, "data": {"num_train": 8, "num_val": 5, "image_size": 64, "global_batch": 4,
                                     "val_batch_size": 4},
           "trainer": {"max_steps": 3, "val_every": 3, "checkpoint_every": 2}},
)


def run(tmp_path: Path, *extra: str) -> list[dict]:
    return main(TINY, ["--out", str(tmp_path), "--quiet", *extra])


def cell(tmp_path, variant, seed):
    return tmp_path / "tiny" / "synthetic_thin-smoke" / variant / f"seed{seed}"


def test_sweep_writes_cells_and_table(tmp_path):
    rows = run(tmp_path, "--seeds", "0", "1")
    assert [r["variant"] for r in rows] == ["32s", "8s"] and all(r["n"] == 2 for r in rows)
    for variant in ("32s", "8s"):
        for seed in (0, 1):
            d = cell(tmp_path, variant, seed)
            metrics = json.loads((d / "metrics.json").read_text())
            assert metrics["steps"] == 3 and metrics["eval_mode"] == "whole"
            assert {"miou", "pixel_acc", "mean_acc", "fwiou"} <= set(metrics["val"])
            assert metrics["params"] > 0 and metrics["gflops"] > 0
            assert (d / "config.json").exists() and (d / "checkpoints" / "last.ckpt").exists()
    table = (tmp_path / "tiny" / "synthetic_thin-smoke" / "results.md").read_text()
    assert "[SMOKE]" in table and "NOT comparable" in table and "(n=2)" in table
    assert "59.40 (Long et al., CVPR 2015, Table 2)" in table
    csv_text = (tmp_path / "tiny" / "synthetic_thin-smoke" / "results.csv").read_text()
    assert csv_text.splitlines()[0].startswith("variant,miou_mean,miou_std,n")
    # mean/std are those of the cells
    m = [json.loads((cell(tmp_path, "8s", s) / "metrics.json").read_text())["val"]["miou"] for s in (0, 1)]
    assert rows[1]["miou_mean"] == pytest.approx(sum(m) / 2)


def test_rerun_skips_finished_and_resumes_unfinished(tmp_path, capsys):
    run(tmp_path, "--variant", "32s", "--seed", "0")
    done = cell(tmp_path, "32s", 0) / "metrics.json"
    stamp = done.stat().st_mtime_ns
    run(tmp_path, "--variant", "32s", "--seed", "0")
    assert done.stat().st_mtime_ns == stamp and "[skip]" in capsys.readouterr().out
    # an unfinished cell (checkpoint, no metrics) resumes from last.ckpt instead of restarting
    done.unlink()
    run(tmp_path, "--variant", "32s", "--seed", "0")
    metrics = json.loads(done.read_text())
    assert metrics["steps"] == 3 and metrics["train_images_per_s"] is None  # no step was retrained


def test_collect_marks_missing_cells(tmp_path):
    run(tmp_path, "--variant", "8s", "--seed", "1")
    rows = run(tmp_path, "collect", "--seeds", "0", "1")
    by = {r["variant"]: r for r in rows}
    assert by["32s"]["n"] == 0 and by["32s"]["missing_seeds"] == [0, 1]
    assert by["8s"]["n"] == 1 and by["8s"]["missing_seeds"] == [0]
    table = (tmp_path / "tiny" / "synthetic_thin-smoke" / "results.md").read_text()
    assert "missing (2 seeds)" in table and "missing seeds [0]" in table


def test_changed_settings_refuse_to_mix_with_old_results(tmp_path):
    run(tmp_path, "--variant", "32s", "--seed", "0")
    with pytest.raises(RuntimeError, match="different settings.*max_steps"):
        run(tmp_path, "--variant", "32s", "--seed", "0", "--max-steps", "2")


def test_unknown_variant_and_missing_data_root_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(tmp_path, "--variant", "16s")
    assert "unknown variant(s) ['16s']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(tmp_path, "--data", "voc")
    assert "needs --data-root" in capsys.readouterr().err


def test_every_paper_key_of_the_scripts_exists():
    import importlib.util

    from experiments.spec import paper_values

    numbers = load_paper_numbers()
    assert all(n.source for n in numbers.values())
    for script in Path("experiments").glob("*_ablation.py"):
        spec = importlib.util.spec_from_file_location(script.stem, script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        ablation = module.ABLATION
        sets = [ablation.variants] + [o.variants(c) for o in ablation.options.values() for c in o.choices]
        for variants in sets:
            for name, v in variants.items():
                if v.paper is None:  # a variant no paper table reports (e.g. v3+ Xception SC without COCO)
                    continue
                assert paper_values(v.paper), f"{script.name}: {name} cites unknown {v.paper}"


@pytest.mark.slow
def test_wandb_offline_without_key_and_disabled(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc credentials
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandbcfg"))
    run(tmp_path / "off", "--variant", "32s", "--seed", "0", "--logger", "wandb")
    out = capsys.readouterr().out
    assert "OFFLINE" in out and "wandb sync" in out
    d = cell(tmp_path / "off", "32s", 0)
    assert list((d / "wandb").glob("offline-run-*/run-*.wandb")), "offline run file missing"
    assert (d / "wandb_id.txt").read_text().strip() in str(next((d / "wandb").glob("offline-run-*")))

    monkeypatch.setenv("WANDB_MODE", "disabled")
    run(tmp_path / "dis", "--variant", "32s", "--seed", "0", "--logger", "wandb")
    assert not (cell(tmp_path / "dis", "32s", 0) / "wandb").exists()
    assert os.environ["WANDB_MODE"] == "disabled"


def test_image_size_flag_goes_to_its_own_folder_and_config(tmp_path):
    run(tmp_path, "--variant", "32s", "--seed", "0", "--image-size", "72")
    d = tmp_path / "tiny" / "synthetic_thin72px-smoke" / "32s" / "seed0"
    card = json.loads((d / "config.json").read_text())["card"]
    assert card["image_size"] == 72 and json.loads((d / "metrics.json").read_text())["eval_size"] == [72, 72]
    assert not (tmp_path / "tiny" / "synthetic_thin-smoke").exists()
    with pytest.raises(SystemExit):
        run(tmp_path, "--data", "voc", "--data-root", str(tmp_path), "--image-size", "72")


@pytest.mark.slow
def test_paper_preset_runs_on_real_layout_data(tmp_path):
    """The paper-preset path (ADE20K loader, PSPNet recipe and crop) end to end on an ADE20K-layout
    export of synthetic data: tiny width, two steps, no weight download."""
    from datamodules.synthetic import export_synthetic

    root = export_synthetic("context", tmp_path / "data", layout="ade20k", num_train=4, num_val=3, image_size=64)
    psp = Ablation(
        name="tiny_psp", title="tiny PSPNet", synthetic_task="context",
        variants={"base": Variant("pspnet", {"backbone": "resnet50", "bins": ()}, "pspnet.table1.baseline")},
        paper_data="ade20k",
        paper=Recipe(data=Data(crop_size=96, global_batch=2, augment="pspnet"), optim=Optim(aux_weight=0.4),
                     trainer=Trainer(max_steps=2, val_every=2)),
    )
    argv = ["--data", "ade20k", "--width", "0.0625", "--pretrained", "false", "--workers", "0", "--seeds", "0",
            "--out", str(tmp_path / "out"), "--quiet"]
    # the tree is checked against the real ADE20K first: 4 training images are not 20,210
    with pytest.raises(SystemExit, match=r"(?s)ade20k\s+training\s+WRONG\s+20,210 items.*--skip-data-check"):
        main(psp, argv + ["--data-root", str(root)])
    assert not (tmp_path / "out").exists()
    rows = main(psp, argv + ["--data-root", str(root), "--skip-data-check"])
    assert rows[0]["n"] == 1 and rows[0]["delta"] is not None  # paper's dataset: a delta is shown
    cell = tmp_path / "out" / "tiny_psp" / "ade20k-paper" / "base" / "seed0"
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["preset"] == "paper" and metrics["steps"] == 2 and metrics["train_size"] == 4
    # the data source is a setting like any other: another root is not the same cell
    import shutil

    other = shutil.copytree(root, tmp_path / "elsewhere")
    with pytest.raises(RuntimeError, match="different settings.*data_source.root"):
        main(psp, argv + ["--data-root", str(other), "--skip-data-check"])


@pytest.mark.parametrize("flags,mode", [(["--eval-mode", "sliding"], "sliding"), (["--eval-mode", "ms_flip"], "ms_flip"),
                                        (["--eval-mode", "semseg"], "semseg"), (["--crf"], "whole")])
def test_evaluation_flags_run_and_are_recorded(tmp_path, flags, mode):
    rows = run(tmp_path, "--variant", "32s", "--seed", "0", *flags)
    metrics = json.loads((cell(tmp_path, "32s", 0) / "metrics.json").read_text())
    assert metrics["eval_mode"] == mode and rows[0]["eval_mode"].startswith(mode)
    if "--crf" in flags:  # before and after the CRF, with the CRF parameters recorded
        assert 0 <= metrics["val_crf"]["miou"] <= 1 and metrics["crf"]["iterations"] == 10
        table = (tmp_path / "tiny" / "synthetic_thin-smoke" / "results.md").read_text()
        assert "(after dense CRF)" in table and "whole + CRF" in table


def test_crf_params_are_named_checked_and_recorded(capsys):
    from experiments.runner import parse_args

    args, _, _ = parse_args(TINY, ["--crf", "--crf-param", "bi_xy_std=50", "--crf-param", "iterations=5"])
    crf = args.cells["8s"].recipe.eval.crf
    assert crf["bi_xy_std"] == 50.0 and crf["iterations"] == 5 and isinstance(crf["iterations"], int)
    assert crf["pos_w"] == 3.0  # the others keep DeepLab's defaults
    for bad, message in ((["--crf", "--crf-param", "sigma=3"], "NAME one of"),
                         (["--crf", "--crf-param", "bi_w=a"], "not a number"),
                         (["--crf-param", "bi_w=2"], "needs --crf")):
        with pytest.raises(SystemExit):
            parse_args(TINY, bad)
        assert message in capsys.readouterr().err


def test_crf_params_from_a_search_reach_each_variant_and_its_card(tmp_path, capsys):
    from experiments.runner import parse_args

    for name, w in (("8s", 5.0), ("32s", 6.0)):  # a results folder: VARIANT/seedN/crf_params.json
        (tmp_path / name / "seed1").mkdir(parents=True)
        (tmp_path / name / "seed1" / "crf_params.json").write_text(json.dumps(
            {"params": {"iterations": 10, "pos_w": 3.0, "pos_xy_std": 3.0, "bi_w": w, "bi_xy_std": 70.0,
                        "bi_rgb_std": 4.0}}))
    args, _, _ = parse_args(TINY, ["--crf", "--crf-params-from", str(tmp_path), "--crf-param", "iterations=5",
                                   "--dry-run"])
    for name, w in (("8s", 5.0), ("32s", 6.0)):
        ev = args.cards[name]["eval"]
        assert ev["crf"]["bi_w"] == w and ev["crf"]["iterations"] == 5 and ev["crf"]["pos_xy_std"] == 3.0
        assert ev["crf_params_from"] == str(tmp_path / name / "seed1" / "crf_params.json")
    with pytest.raises(SystemExit):
        parse_args(TINY, ["--crf", "--crf-params-from", str(tmp_path / "none")])
    assert "crf_search" in capsys.readouterr().err


def test_synthetic_task_flag_runs_another_task_into_its_own_folder(tmp_path, capsys):
    rows = run(tmp_path, "--variant", "8s", "--seed", "0", "--synthetic-task", "multiscale", "--image-size", "96")
    assert {r["variant"]: r["n"] for r in rows} == {"32s": 0, "8s": 1}
    config = json.loads((tmp_path / "tiny" / "synthetic_multiscale96px-smoke" / "8s" / "seed0" / "config.json").read_text())
    assert config["card"]["data_source"]["synthetic_task"] == "multiscale"
    with pytest.raises(SystemExit):
        run(tmp_path, "--synthetic-task", "nope")
    assert "must be one of" in capsys.readouterr().err


def test_each_option_writes_its_own_table_beside_the_default_one(tmp_path):
    """`--table 2` (a non-default option) writes results-table-2.md etc.; the default table's
    files stay as they were, and load_rows reads the paper values of both."""
    import dataclasses

    from experiments.results_folder import load_rows
    from experiments.spec import Option

    tables = {"1": {"32s": TINY.variants["32s"]}, "2": {"8s": TINY.variants["8s"]}}
    ablation = dataclasses.replace(TINY, variants={**tables["1"], **tables["2"]},
                                   options={"table": Option(("1", "2"), "1", tables.get, "which table")})
    args = ["--out", str(tmp_path), "--quiet", "--seeds", "0"]
    main(ablation, args)
    folder = tmp_path / "tiny" / "synthetic_thin-smoke"
    first = (folder / "results.md").read_text()
    assert "| 32s |" in first and "| 8s |" not in first
    main(ablation, [*args, "--table", "2"])
    assert (folder / "results.md").read_text() == first  # untouched
    second = (folder / "results-table-2.md").read_text()
    assert "| 8s |" in second and "| 32s |" not in second
    assert "synthetic_thin-smoke (--table 2)" in second.splitlines()[0] and "(--table" not in first
    assert (folder / "results-table-2.csv").is_file() and (folder / "figures-table-2" / "bar_miou.png").is_file()
    assert (folder / "figures" / "bar_miou.png").is_file()
    rows = {r["variant"]: r for r in load_rows(folder)}
    assert rows["32s"]["paper_value"] == 59.40 and rows["8s"]["paper_value"] == 62.7
