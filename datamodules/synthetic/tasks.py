"""``SYNTHETIC_TASKS``: the one table from a task's name to its dataset class.

Its own module so that the datamodule and the exporter can look tasks up without importing the
package's ``__init__`` (which imports them).
"""

from __future__ import annotations

from datamodules.synthetic.base import SyntheticSegmentation
from datamodules.synthetic.context import ContextScenes, ContextTokens
from datamodules.synthetic.multiscale import MultiScaleShapes
from datamodules.synthetic.thin import ThinStructures
from datamodules.synthetic.touching import TouchingCells

SYNTHETIC_TASKS: dict[str, type[SyntheticSegmentation]] = {
    "thin": ThinStructures,
    "multiscale": MultiScaleShapes,
    "context": ContextScenes,
    "context_tokens": ContextTokens,
    "touching": TouchingCells,
}


def task_class(task: str) -> type[SyntheticSegmentation]:
    """The dataset class of `task`; a ValueError naming the valid tasks otherwise."""
    if task not in SYNTHETIC_TASKS:
        raise ValueError(
            f"unknown synthetic task {task!r}; expected one of {sorted(SYNTHETIC_TASKS)}")
    return SYNTHETIC_TASKS[task]
