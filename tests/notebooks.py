"""Run a notebook top to bottom, as a reader would, for the notebook tests.

The kernel is this interpreter's ``python3`` (ipykernel in the same virtualenv), started in the
notebook's own folder with ``PYTHONPATH`` removed, so each notebook must find the repository
root by itself. Extra environment variables (``RESULTS_DIR`` ...) are how a test points a
notebook at its fixtures; notebooks read them at the top and never need editing.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def execute_notebook(path: Path, env: dict[str, str] | None = None, timeout: int = 300):
    """Execute the notebook at ``path`` with ``env`` added to the environment; return the
    executed ``nbformat`` notebook (outputs included). A failing cell raises nbclient's
    ``CellExecutionError`` with the cell's traceback."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    kernel_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    kernel_env.update(OMP_NUM_THREADS="1", MPLBACKEND="module://matplotlib_inline.backend_inline",
                      JUPYTER_PLATFORM_DIRS="1", WANDB_MODE="disabled")
    kernel_env.update(env or {})
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=kernel_env)
    return nb


def outputs_text(nb) -> str:
    """All text a notebook printed or displayed (stdout, text/plain, text/markdown)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts += [data.get("text/plain", ""), data.get("text/markdown", "")]
    return "\n".join(parts)


def images(nb) -> list[str]:
    """The base64 PNGs a notebook displayed."""
    return [out["data"]["image/png"] for cell in nb.cells for out in cell.get("outputs", [])
            if "image/png" in out.get("data", {})]


_TINY: dict[str, Path] = {}


def tiny_results(tmp_path_factory) -> Path:
    """A real results folder, made once per test session: the tiny FCN ablation of
    ``tests/experiment_scripts.py`` (variants ``32s`` and ``FCN 8s``, seed 0, 4 steps).
    Returns its ``<dataset>-<preset>`` folder, as ``RESULTS_DIR`` expects."""
    if "dir" not in _TINY:
        from tests.experiment_scripts import cell_dir, run, write_script

        base = tmp_path_factory.mktemp("tiny_results")
        run(write_script(base), "--out", str(base / "out"), "--seeds", "0", "--max-steps", "4")
        _TINY["dir"] = cell_dir(base / "out").parents[1]
    return _TINY["dir"]
