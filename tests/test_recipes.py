"""Typed recipes, the one precedence, recipe cards (--dry-run) and the argument checks."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from experiments.card import EVAL_ONLY_FIELDS, Run, _base_card, as_json, resolve
from experiments.recipe import Data, Optim, Recipe, RecipeError, override
from experiments.runner import main
from experiments.spec import Ablation, Variant

SCRIPTS = sorted(Path(__file__).resolve().parents[1].glob("experiments/*_ablation.py"))
CARD_FIELDS = (
    "ablation variant seed preset dataset model model_kwargs train_split val_split crop_size "
    "batch_size_per_device world_size accumulate global_batch max_steps optimizer lr momentum "
    "weight_decay lr_schedule poly_power warmup_steps head_lr_mult bias_lr_mult head_layers bn "
    "aux_weight augment pretrained init_from precision eval"
).split()
EVAL_FIELDS = ("mode", "pad_to", "scales", "flip", "window", "stride")


def load(script: Path) -> Ablation:
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ABLATION


TINY = Ablation(
    name="tiny", title="tiny", synthetic_task="multiscale", paper_data="voc",
    variants={"one rate": Variant("deeplab_v2", {"backbone": "vgg16", "atrous_rates": (2,)}),
              "r50": Variant("deeplab_v2", {"backbone": "resnet50"}, recipe={"optim": {"lr": 0.5}})},
    paper=Recipe(data=Data(crop_size=321, global_batch=10), optim=Optim(lr=1e-3, head_lr_mult=10.0),
                 model={"atrous_rates": (6, 12)}),
    smoke={"optim": {"lr": 0.25}, "model": {"atrous_rates": (3,)}},
)


def cards(capsys, ablation: Ablation, *argv: str) -> list[dict]:
    main(ablation, ["--dry-run", *argv])
    lines = capsys.readouterr().out.splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


# --------------------------------------------------------------------------- precedence
def test_variant_beats_preset_and_ablation_and_command_line_beats_all(capsys):
    by = {c["variant"]: c for c in cards(capsys, TINY, "--seeds", "0")}
    # ablation smoke recipe (3,) < variant (2,); the smoke lr 0.25 < the variant's 0.5
    assert by["one rate"]["model_kwargs"]["atrous_rates"] == [2] and by["one rate"]["lr"] == 0.25
    assert by["r50"]["model_kwargs"]["atrous_rates"] == [3] and by["r50"]["lr"] == 0.5
    # the smoke preset's VGG16-BN rule applies to the VGG model only
    assert by["one rate"]["model_kwargs"]["batch_norm"] is True
    assert "batch_norm" not in by["r50"]["model_kwargs"] and not by["r50"]["smoke_rules"]
    by = {c["variant"]: c for c in cards(capsys, TINY, "--seeds", "0", "--set", "model.atrous_rates=[7]",
                                         "--set", "optim.lr=0.125", "--set", "model.batch_norm=false")}
    assert all(c["model_kwargs"]["atrous_rates"] == [7] and c["lr"] == 0.125 for c in by.values())
    assert by["one rate"]["model_kwargs"]["batch_norm"] is False


def test_paper_preset_uses_the_paper_recipe_and_the_variant(capsys):
    by = {c["variant"]: c for c in cards(capsys, TINY, "--data", "voc", "--data-root", "/nonexistent")}
    assert by["one rate"]["lr"] == 1e-3 and by["one rate"]["model_kwargs"]["atrous_rates"] == [2]
    assert by["one rate"]["deviations"] == [] and by["one rate"]["pretrained"] is True
    assert by["r50"]["lr"] == 0.5 and by["r50"]["model_kwargs"]["atrous_rates"] == [6, 12]
    assert "batch_norm" not in by["one rate"]["model_kwargs"]  # smoke rules are smoke-only
    assert by["one rate"]["head_layers"] == ["branches.0.fc8"] and by["one rate"]["global_batch"] == 10


def test_smoke_changes_are_listed_against_the_paper(capsys):
    (card,) = cards(capsys, TINY, "--variant", "one rate", "--seed", "0")
    dev = "\n".join(card["deviations"])
    assert "width: 0.125 (paper: 1.0)" in dev and "optimizer: adamw (paper: sgd)" in dev
    assert "lr: 0.25 (paper: 0.001)" in dev and "model_kwargs.batch_norm: True" in dev


@pytest.mark.parametrize("item,message", [
    ("optim.lrr=1", "unknown key 'lrr' in recipe section 'optim' (did you mean 'lr'?)"),
    ("optimiser.lr=1", "unknown key 'optimiser' in the recipe (did you mean 'optim'?)"),
    ("model.atrous_rate=[1]", "unknown key 'atrous_rate' in the model arguments of 'deeplab_v2' (did you mean 'atrous_rates'?)"),
    ("optim.lr=abc", "optim.lr: expected a number, got 'abc'"),
    ("optim.bn=sync", "optim.bn: expected one of ('trained', 'frozen')"),
    ("data.scale_range=[2,1]", "data.scale_range: expected (low, high)"),
    ("model.width=0.5", "model.width: set 'width' at the recipe's top level"),
    ("lr=1", "expected SECTION.KEY=VALUE"),
])
def test_unknown_or_wrong_values_are_errors_naming_them(capsys, tmp_path, item, message):
    with pytest.raises(SystemExit):
        main(TINY, ["--out", str(tmp_path / "out"), "--set", item])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_override_checks_types_and_turns_lists_into_tuples():
    r = override(Recipe(), {"data": {"scale_range": [0.5, 2]}, "eval": {"crf": {"bi_w": 5}}})
    assert r.data.scale_range == (0.5, 2.0) and r.eval.crf["bi_w"] == 5 and r.eval.crf["iterations"] == 10
    with pytest.raises(RecipeError, match="eval.crf.*did you mean 'bi_w'"):
        override(Recipe(), {"eval": {"crf": {"bi_ww": 5}}})
    with pytest.raises(RecipeError, match="trainer.max_steps: expected a positive value"):
        override(Recipe(), {"trainer": {"max_steps": 0}})


# --------------------------------------------------------------------------- global batch
@pytest.mark.parametrize("devices,per_device", [(1, 10), (2, 5), (5, 2)])
def test_global_batch_is_the_papers_under_ddp(devices, per_device):
    cell = resolve(TINY, "one rate", Run(data="voc", data_root="/x", preset="paper", devices=devices))
    assert cell.global_batch == 10 and cell.batch_per_device == per_device


def test_indivisible_global_batch_names_the_nearest_settings():
    with pytest.raises(RecipeError, match=r"global batch 10 .* 4 processes.*Nearest valid: 5 processes x 2 per device x 1 accumulation"):
        resolve(TINY, "one rate", Run(data="voc", data_root="/x", preset="paper", devices=4))
    cell = resolve(TINY, "one rate", Run(data="voc", data_root="/x", preset="paper", devices=4, batch_size=3))
    assert cell.global_batch == 12 and cell.batch_per_device == 3


def test_explicit_batch_size_is_a_recorded_deviation(capsys):
    (card,) = cards(capsys, TINY, "--data", "voc", "--data-root", "/x", "--variant", "one rate", "--seed", "0",
                    "--devices", "2", "--batch-size", "4")
    assert card["global_batch"] == 8 and card["batch_size_per_device"] == 4 and card["world_size"] == 2
    assert "global_batch: 8 (paper: 10)" in card["deviations"]
    assert card["bn"] == "sync"


# --------------------------------------------------------------------------- every script
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_dry_run_of_every_script_and_preset(script, tmp_path, capsys):
    ablation = load(script)
    choices = [(None, None)] + [(n, c) for n, o in ablation.options.items() for c in o.choices]
    for option, choice in choices:
        extra = [f"--{option}", choice] if option else []
        chosen = ablation.with_option(option, choice) if option else ablation
        paper_data = ablation.paper_data if ablation.paper_data in ("voc", "ade20k") else "voc"
        for preset_args in ([], ["--data", paper_data, "--data-root", str(tmp_path / "missing")]):
            out = tmp_path / "out"
            found = cards(capsys, ablation, "--out", str(out), *extra, *preset_args)
            assert not out.exists(), "a dry run writes nothing"
            seeds = 3
            assert [c["variant"] for c in found] == [v for v in chosen.variants for _ in range(seeds)]
            for card in found:
                missing = [f for f in CARD_FIELDS if f not in card]
                assert not missing, missing
                assert all(k in card["eval"] for k in EVAL_FIELDS)
                assert card["params"] > 0 and card["global_batch"] == card["batch_size_per_device"] * card[
                    "world_size"] * card["accumulate"]
                if preset_args:  # the paper preset: the script's recipe, exactly
                    v = chosen.variants[card["variant"]]
                    r = override(override(ablation.paper, {"model": v.kwargs}), v.recipe)
                    assert card["preset"] == "paper" and card["global_batch"] == r.data.global_batch
                    for key in ("lr", "momentum", "weight_decay", "lr_schedule", "poly_power",
                                "head_lr_mult", "bias_lr_mult", "aux_weight", "optimizer"):
                        want = getattr(r.optim, key)
                        if key == "lr":
                            want = pytest.approx(want * stage_lr(chosen, card["variant"], r), rel=1e-9)
                        assert card[key] == want, key
                    assert card["init_from"] == r.init_from
                    assert card["max_steps"] == r.trainer.max_steps and card["crop_size"] == r.data.crop_size
                    assert card["augment"]["name"] == r.data.augment and card["pretrained"] == r.pretrained
                    assert card["eval"]["mode"] == r.eval.mode and card["eval"]["pad_to"] == r.eval.pad_to
                    assert card["notes"] == list(r.notes)
                    assert card["model_kwargs"] == json.loads(json.dumps(dict(r.model)))


def stage_lr(ablation, name: str, recipe) -> float:
    """Stage-wise variants train at stage_lr_factor per stage below the first (FCN Sec. 4.2)."""
    depth, current = 0, name
    while (parent := ablation.variants[current].recipe.get("init_from")) is not None:
        depth, current = depth + 1, parent
    return recipe.optim.stage_lr_factor ** depth


def test_deeplabv3_smoke_says_it_swaps_the_backbone(capsys):
    ablation = load(next(s for s in SCRIPTS if s.stem == "deeplabv3_ablation"))
    found = cards(capsys, ablation, "--seeds", "0")
    assert all(c["model_kwargs"]["backbone"] == "resnet50" for c in found)
    assert all("model_kwargs.backbone: resnet50 (paper: resnet101)" in c["deviations"] for c in found)


# --------------------------------------------------------------------------- bad flags
@pytest.mark.parametrize("argv,message", [
    (["--max-steps", "0"], "--max-steps: the value must be >= 1"),
    (["--batch-size", "0"], "--batch-size: the value must be >= 1"),
    (["--accumulate", "0"], "--accumulate: the value must be >= 1"),
    (["--seeds", "0", "0"], "each seed once"),
    (["--seeds", "-1"], "--seeds: the value must be >= 0"),
    (["--width", "0"], "--width: the value must be > 0"),
    (["--precision", "nonsense"], "--precision: invalid choice"),
    (["--devices", "0"], "--devices: the value must be >= 1"),
    (["--workers", "-1"], "--workers: the value must be >= 0"),
    (["--data-root", "/data"], "--data-root applies to real data only"),
    (["--variant", "r50", "--variants", "r50"], "not allowed with argument"),
    (["--seed", "0", "--seeds", "1"], "not allowed with argument"),
    (["--variant", "nope"], "unknown variant(s) ['nope']"),
    (["--data", "voc"], "--data voc needs --data-root"),
])
def test_bad_flags_are_one_line_errors_and_write_nothing(capsys, tmp_path, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(TINY, ["--out", str(tmp_path / "out"), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_or_read_only_is_an_error(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        main(TINY, ["--out", str(tmp_path / "file")])
    assert "exists and is not a folder" in capsys.readouterr().err
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    import os

    if os.access(ro, os.W_OK):  # root ignores permissions: nothing to test
        return
    with pytest.raises(SystemExit):
        main(TINY, ["--out", str(ro / "sub")])
    assert "is not a writable folder" in capsys.readouterr().err


def test_recipes_are_frozen_dataclasses():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Recipe().data.crop_size = 3  # type: ignore[misc]


def test_aux_weight_needs_a_model_with_an_aux_head(capsys):
    psp = load(next(s for s in SCRIPTS if s.stem == "psp_bins_ablation"))
    with pytest.raises(SystemExit):
        main(psp, ["--dry-run", "--variant", "baseline", "--set", "model.aux=false"])
    assert "optim.aux_weight=0.4 needs a model with an auxiliary head" in capsys.readouterr().err
    (card,) = cards(capsys, psp, "--variant", "baseline", "--seed", "0", "--set", "model.aux=false",
                    "--set", "optim.aux_weight=0")
    assert card["aux_weight"] == 0 and "aux_weight: 0.0 (paper: 0.4)" in card["deviations"]


# --------------------------------------------------------------------------- precision
@pytest.mark.parametrize("accelerator,cuda,bf16,expected", [
    ("auto", True, True, "bf16-mixed"), ("gpu", True, True, "bf16-mixed"), ("auto", True, False, "32-true"),
    ("auto", False, False, "32-true"), ("cpu", True, True, "32-true"),
])
def test_auto_precision_is_bf16_on_gpus_that_have_it_and_fp32_on_cpus(accelerator, cuda, bf16, expected):
    from experiments.card import resolve_precision

    assert resolve_precision("auto", accelerator, cuda=cuda, bf16=bf16) == expected
    assert resolve_precision("32-true", accelerator, cuda=cuda, bf16=bf16) == "32-true"


def test_paper_preset_card_records_the_resolved_precision(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a fake GPU machine
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    (card,) = cards(capsys, TINY, "--data", "voc", "--data-root", "/x", "--variant", "r50", "--seed", "0")
    assert card["precision"] == "bf16-mixed" and card["tf32"] is True
    (card,) = cards(capsys, TINY, "--data", "voc", "--data-root", "/x", "--variant", "r50", "--seed", "0",
                    "--precision", "32-true")
    assert card["precision"] == "32-true" and card["tf32"] is False
    (card,) = cards(capsys, TINY, "--data", "voc", "--data-root", "/x", "--variant", "r50", "--seed", "0")
    assert card["channels_last"] is True                     # auto: NHWC with mixed precision on a GPU
    (card,) = cards(capsys, TINY, "--data", "voc", "--data-root", "/x", "--variant", "r50", "--seed", "0",
                    "--set", "trainer.channels_last=false")
    assert card["channels_last"] is False and card["precision"] == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (card,) = cards(capsys, TINY, "--data", "voc", "--data-root", "/x", "--variant", "r50", "--seed", "0")
    assert card["precision"] == "32-true" and card["channels_last"] is False


@pytest.mark.parametrize("setting,precision,accelerator,cuda,expected", [
    (None, "bf16-mixed", "auto", True, True), (None, "16-mixed", "gpu", True, True),
    (None, "32-true", "auto", True, False), (None, "bf16-mixed", "cpu", False, False),
    (None, "32-true", "auto", False, False), (True, "32-true", "cpu", False, True),
    (False, "bf16-mixed", "gpu", True, False),
])
def test_channels_last_auto_is_on_for_mixed_precision_on_gpus_only(setting, precision, accelerator, cuda, expected):
    from experiments.card import resolve_channels_last

    assert resolve_channels_last(setting, precision, accelerator, cuda=cuda) is expected


@pytest.mark.parametrize("deterministic,accelerator,fixed,cuda,expected", [
    (True, "cpu", True, False, (True, None)), (False, "cpu", True, True, (False, None)),
    (True, "auto", True, False, (True, None)),
    # GPU: CUDA's bilinear-interpolation backward has no deterministic kernel, so "warn" not raise;
    # otherwise cuDNN autotuning for fixed-size inputs, not for whole images of varying size
    (True, "auto", True, True, ("warn", False)), (False, "gpu", True, True, (False, True)),
    (False, "auto", True, True, (False, True)), (False, "gpu", False, True, (False, False)),
])
def test_cuda_flags_on_a_fake_gpu_and_on_cpus(deterministic, accelerator, fixed, cuda, expected):
    from experiments.cell import cuda_flags

    assert cuda_flags(deterministic, accelerator, fixed_size=fixed, cuda=cuda) == expected


def test_the_smoke_vgg_rule_reaches_builders_that_forward_their_arguments(capsys):
    fcn = load(next(s for s in SCRIPTS if s.stem == "fcn_skip_ablation"))
    found = cards(capsys, fcn, "--seeds", "0")
    assert found and all(c["model_kwargs"]["batch_norm"] is True and c["smoke_rules"] for c in found)
    roi = load(next(s for s in SCRIPTS if s.stem == "roi_align_ablation"))
    assert all("batch_norm" not in c["model_kwargs"] for c in cards(capsys, roi, "--seeds", "0"))


def option_choices(ablation: Ablation) -> list[Ablation]:
    """The ablation as it runs by default and under every choice of each of its options."""
    return [ablation] + [ablation.with_option(n, c) for n, o in ablation.options.items() for c in o.choices]


def run_of(ablation: Ablation, preset: str) -> Run:
    if preset == "smoke":
        return Run(preset="smoke")
    data = ablation.paper_data if ablation.paper_data in ("voc", "ade20k") else "voc"
    return Run(data=data, data_root="/x", preset="paper")


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_every_variant_builds_the_model_arguments_it_names(script):
    """A variant's model arguments reach the network its cell builds even where its recipe changes
    other model keys too (the ResNet-101 rows of DeepLab v2 Table 4 once lost their backbone and
    rates that way: LargeFOV-R101 built ASPP-L)."""
    ablation = load(script)
    for chosen in option_choices(ablation):
        for name, variant in chosen.variants.items():
            cell = resolve(chosen, name, run_of(ablation, "paper"))
            want = as_json({**variant.kwargs, **variant.recipe.get("model", {})})
            got = as_json(cell.model_kwargs)
            assert {k: got.get(k) for k in want} == want, name


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
@pytest.mark.parametrize("preset", ["paper", "smoke"])
def test_no_two_variants_of_a_table_train_the_same_network(script, preset):
    """Two rows of one table that would train identically compare a model with itself; a row
    that evaluates another row's model another way says so (``weights_from``) and trains nothing."""
    ablation = load(script)
    for chosen in option_choices(ablation):
        run = run_of(ablation, preset)
        trained: dict[str, str] = {}
        for name in chosen.variants:
            cell = resolve(chosen, name, run)
            if cell.recipe.weights_from is not None:
                continue
            card = _base_card(chosen, name, 0, run, cell)
            key = json.dumps({k: v for k, v in card.items() if k not in EVAL_ONLY_FIELDS}, sort_keys=True)
            assert key not in trained, f"{name!r} trains the same network as {trained[key]!r}"
            trained[key] = name


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_paper_global_batch_under_1_2_and_4_devices(script):
    """Every paper-preset cell keeps the paper's global batch on 1, 2 and 4 processes, or stops
    with the nearest valid settings (never a silently different batch)."""
    ablation = load(script)
    choices = option_choices(ablation)
    data = ablation.paper_data if ablation.paper_data in ("voc", "ade20k") else "voc"
    for chosen in choices:
        for name in chosen.variants:
            for devices in (1, 2, 4):
                run = Run(data=data, data_root="/x", preset="paper", devices=devices)
                try:
                    cell = resolve(chosen, name, run)
                except RecipeError as err:
                    assert "cannot be split" in str(err) and "Nearest valid" in str(err), err
                    continue
                want = override(ablation.paper, chosen.variants[name].recipe).data.global_batch
                assert cell.global_batch == want
                assert cell.batch_per_device * devices * cell.recipe.trainer.accumulate == want


def test_a_recipe_written_as_dataclasses_is_checked_too(capsys):
    bad = dataclasses.replace(TINY, paper=Recipe(data=Data(global_batch=0), optim=Optim(lr_schedule="cosine")))
    with pytest.raises(SystemExit):
        main(bad, ["--dry-run"])
    assert "data.global_batch: expected a positive value" in capsys.readouterr().err


@pytest.mark.parametrize("setting,accelerator,preset,devices,cuda,cpus,expected", [
    (None, "auto", "smoke", 1, False, 2, 0), (None, "cpu", "smoke", 1, True, 16, 0),  # CPU: the main process
    (None, "auto", "smoke", 1, True, 16, 4), (None, "gpu", "smoke", 1, True, 2, 1), (None, "gpu", "smoke", 1, True, 1, 0),
    (None, "auto", "paper", 1, True, 16, 15), (None, "gpu", "paper", 8, True, 64, 7),   # a core per process kept
    (None, "gpu", "paper", 1, True, 96, 16), (None, "cpu", "paper", 1, False, 2, 1),
    (8, "cpu", "smoke", 1, False, 2, 8), (0, "gpu", "paper", 1, True, 16, 0),          # a number is kept
])
def test_auto_workers(setting, accelerator, preset, devices, cuda, cpus, expected):
    from experiments.card import resolve_workers

    assert resolve_workers(setting, accelerator, preset, devices, cuda=cuda, cpus=cpus) == expected


def test_smoke_card_on_a_cpu_keeps_the_main_process_loader(capsys):
    for card in cards(capsys, TINY, "--seeds", "0"):
        assert card["num_workers"] == 0 and card["channels_last"] is False and card["precision"] == "32-true"
