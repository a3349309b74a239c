"""The notebooks run top to bottom, unedited, on a real (tiny) results folder."""

from __future__ import annotations

import json

import nbformat
import pytest

from tests.notebooks import NOTEBOOKS, execute_notebook, images, outputs_text, tiny_results

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return tiny_results(tmp_path_factory)


@pytest.mark.parametrize("name", ["results.ipynb", "predictions.ipynb"])
def test_committed_notebooks_have_no_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def _files(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_results_notebook(tiny, tmp_path):
    before = _files(tiny)
    nb = execute_notebook(NOTEBOOKS / "results.ipynb",
                          {"RESULTS_DIR": str(tiny), "FIGURES_DIR": str(tmp_path)})
    text = outputs_text(nb)
    assert f"results folder: {tiny}" in text
    # the table and the per-seed lines, with the paper's number from results.csv
    miou = json.loads((tiny / "32s" / "seed0" / "metrics.json").read_text())["val"]["miou"]
    assert f"| 32s | {miou * 100:.2f} ± 0.00 (n=1) | 59.40 (Long et al., CVPR 2015, Table 2)" in text
    assert "| FCN 8s | 0 |" in text
    # bar charts, training curves, prediction grid; nothing written into the results folder
    assert len(images(nb)) >= 5
    assert (tmp_path / "bar_miou.png").exists() and (tmp_path / "predictions.png").exists()
    assert _files(tiny) == before


def test_predictions_notebook(tiny):
    nb = execute_notebook(NOTEBOOKS / "predictions.ipynb",
                          {"RESULTS_DIR": str(tiny), "VARIANT_A": "FCN 8s", "VARIANT_B": "32s"})
    text = outputs_text(nb)
    assert "A = FCN 8s (seed0, eval whole), B = 32s (seed0, eval whole)" in text
    assert "| image | FCN 8s acc | 32s acc | disagree |" in text
    assert all(f"\n| {i} | " in text for i in (0, 1, 2)) and "\n| 3 | " not in text
    assert len(images(nb)) == 1
