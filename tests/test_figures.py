"""Figures of a results folder (experiments/figures.py), the loaders and palette they use
(experiments/results_folder.py, experiments/palette.py) and their W&B logging."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from datamodules.ade20k import ADE20K_PALETTE
from datamodules.synthetic import SYNTHETIC_TASKS
from datamodules.voc import VOC_PALETTE
from experiments.figures import bar_charts, metric_series, prediction_grid, write_figures
from experiments.palette import VOID_COLOR, colorize, decolorize, difference_map
from experiments.results_folder import (
    GridUnavailable,
    finished_cells,
    load_cell,
    load_rows,
    predict_masks,
    validation_samples,
)
from lightning_modules.metrics import metrics_from_confusion
from tests.notebooks import tiny_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PALETTES = {**{f"synthetic_{k}": v.palette for k, v in SYNTHETIC_TASKS.items()},
            "voc": VOC_PALETTE[:21], "ade20k": ADE20K_PALETTE}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return tiny_results(tmp_path_factory)


def _png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------- palette
@pytest.mark.parametrize("name", sorted(PALETTES))
def test_palette_round_trip_with_void(name):
    palette = PALETTES[name]
    rng = np.random.default_rng(0)
    mask = rng.integers(0, len(palette), (7, 9))
    mask[::3, ::2] = 255
    rgb = colorize(mask, palette)
    assert rgb.dtype == np.uint8 and rgb.shape == (7, 9, 3)
    assert (rgb[mask == 255] == VOID_COLOR).all()
    k = int(mask[0, 1])
    assert tuple(rgb[0, 1]) == tuple(palette[k])
    np.testing.assert_array_equal(decolorize(rgb, palette), mask)
    from_tensor = colorize(torch.from_numpy(mask), palette)
    np.testing.assert_array_equal(decolorize(from_tensor, palette), mask)


def test_palette_rejects_what_it_cannot_map():
    palette = PALETTES["synthetic_thin"]
    with pytest.raises(ValueError, match="no colour"):
        colorize(np.array([[len(palette)]]), palette)
    with pytest.raises(ValueError, match="outside the palette"):
        decolorize(np.full((2, 2, 3), 7, np.uint8), palette)
    with pytest.raises(ValueError, match="not distinct"):
        decolorize(np.zeros((1, 1, 3), np.uint8), [(0, 0, 0), (255, 255, 255)])


def test_difference_map_says_who_is_right():
    mask = np.array([[0, 1, 2, 255]])
    a = np.array([[0, 1, 0, 1]])
    b = np.array([[0, 0, 2, 2]])
    out = difference_map(a, b, mask)
    assert tuple(out[0, 0]) == (200, 200, 200)      # agree
    assert tuple(out[0, 1]) == (31, 119, 180)       # only A right
    assert tuple(out[0, 2]) == (255, 127, 14)       # only B right
    assert tuple(out[0, 3]) == VOID_COLOR
    assert tuple(difference_map([[1]], [[2]], [[0]])[0, 0]) == (214, 39, 40)  # both wrong


# --------------------------------------------------------------------------- bar charts
def _rows(paper: float | None):
    return [
        {"variant": "LargeFOV", "n": 2, "paper": {"miou": paper} if paper is not None else {},
         "metrics": {"miou": {"mean": 0.35, "std": 0.02, "values": [0.335, 0.365]},
                     "checkerboard": {"mean": 0.004, "std": 0.001, "values": [0.003, 0.005]}}},
        {"variant": "ASPP-L", "n": 0, "paper": {}, "metrics": {}},  # not run yet
    ]


def test_bar_chart_from_hand_made_rows_marks_the_paper(tmp_path):
    series = metric_series(_rows(65.76))
    assert [s["variant"] for s in series["miou"]] == ["LargeFOV", "ASPP-L"]
    assert series["miou"][0]["paper"] == 65.76 and series["miou"][0]["n"] == 2
    assert series["miou"][1]["mean"] is None  # shown as missing, not dropped
    with_paper = bar_charts(_rows(65.76), tmp_path / "a", "hand-made")
    without = bar_charts(_rows(None), tmp_path / "b", "hand-made")
    assert [p.name for p in with_paper] == ["bar_miou.png", "bar_checkerboard.png"]
    assert all(_png(p) for p in with_paper + without)
    # the paper's tick is drawn: the two mIoU charts differ, the checkerboard ones do not
    assert not np.array_equal(imread(with_paper[0]), imread(without[0]))
    np.testing.assert_array_equal(imread(with_paper[1]), imread(without[1]))
    # a chosen metric, file names suffixed (the CRF evaluation's charts)
    paths = bar_charts(_rows(65.76), tmp_path / "c", "crf", metrics=["miou"], suffix="_crf")
    assert [p.name for p in paths] == ["bar_miou_crf.png"] and _png(paths[0])


# --------------------------------------------------------------------------- a tiny real run
def test_write_figures_of_a_tiny_run(tiny):
    # seed 1 was never run: the grid falls back to each variant's first finished seed
    assert {v: d.name for v, d in finished_cells(tiny, ["32s", "FCN 8s"], [1, 0]).items()} == {
        "32s": "seed0", "FCN 8s": "seed0"}
    rows = load_rows(tiny)
    assert [r["variant"] for r in rows] == ["32s", "FCN 8s"]
    assert rows[0]["paper_value"] == 59.4 and rows[0]["n"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may be skipped here
        paths = write_figures(tiny, rows, "tiny", ["32s", "FCN 8s"], [1, 0], crf_rows=rows)
    names = {p.name for p in paths}
    assert {"bar_miou.png", "bar_trimap_miou.png", "bar_pixel_acc.png", "bar_miou_crf.png",
            "predictions.png"} <= names
    assert all(p.parent == tiny / "figures" and _png(p) for p in paths)
    grid = imread(tiny / "figures" / "predictions.png")
    assert grid.shape[1] > grid.shape[0] * 0.6  # 4 columns: input, truth, two variants


def test_loaded_cell_reproduces_its_validation_score(tiny):
    """Weights, hyperparameters and validation data rebuilt from the run directory give the
    run's own mIoU on the whole (5-image) validation set."""
    module, config = load_cell(tiny / "FCN 8s" / "seed0")
    assert not module.training and config["card"]["variant"] == "FCN 8s"
    samples = validation_samples(config, n=100)
    assert samples.indices == [0, 1, 2, 3, 4] and samples.rgb[0].dtype == np.uint8
    preds = predict_masks(module, samples)
    k = module.num_classes
    cm = torch.zeros(k, k, dtype=torch.long)
    for p, m in zip(preds, samples.masks):
        valid = m != 255
        cm += torch.bincount(torch.from_numpy(m[valid] * k + p[valid]), minlength=k * k).view(k, k)
    stored = json.loads((tiny / "FCN 8s" / "seed0" / "metrics.json").read_text())["val"]
    assert metrics_from_confusion(cm)["miou"] == pytest.approx(stored["miou"], abs=1e-6)


def test_grid_is_skipped_for_instance_cells(tiny, tmp_path):
    out = tmp_path / "inst"
    shutil.copytree(tiny / "32s", out / "maskrcnn", ignore=shutil.ignore_patterns("logs"))
    config_file = out / "maskrcnn" / "seed0" / "config.json"
    config = json.loads(config_file.read_text())
    config["card"]["model"], config["card"]["task"] = "mask_rcnn", "instance"
    config_file.write_text(json.dumps(config))
    with pytest.raises(GridUnavailable):
        prediction_grid(out, ["maskrcnn"], [0])
    rows = [{"variant": "maskrcnn", "n": 1, "paper": {},
             "metrics": {"mask_ap": {"mean": 0.3, "std": 0.0, "values": [0.3]}}}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an instance run has no grid to draw: skipped silently
        paths = write_figures(out, rows, "instance", ["maskrcnn"], [0])
    assert [p.name for p in paths] == ["bar_mask_ap.png"]
    # nothing finished yet (a collect before any run): no figures and no warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert write_figures(out, [{**rows[0], "n": 0, "metrics": {}}], "t", ["maskrcnn"], [0]) == []


def test_log_figures_respects_wandb_mode(tmp_path, monkeypatch):
    from experiments.tracking import log_figures

    [png] = bar_charts(_rows(65.76), tmp_path / "figures", "t", metrics=["miou"])
    monkeypatch.setenv("WANDB_MODE", "disabled")
    log_figures("p", "tiny", "synthetic_thin-smoke", [png])
    assert not (tmp_path / "wandb").exists()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandbcfg"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    log_figures("p", "tiny", "synthetic_thin-smoke", [png])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("files/media/images/figures/bar_miou*.png"))
