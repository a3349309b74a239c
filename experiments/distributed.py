"""What lets one cell run under DDP and survive preemption (used by ``experiments/cell.py``).

- :class:`SyncBatchNormPlugin` — Lightning's ``sync_batchnorm`` with :mod:`models.sync_batchnorm`:
  works on CPUs (gloo) too, and after ``fit`` gives the model back with its original
  ``nn.BatchNorm2d`` layers (Lightning's own plugin leaves a private ``_BatchNormXd``).
- :class:`RNGState` — Lightning checkpoints hold no random-number-generator state; this callback
  adds the torch/CUDA/numpy/python states to every checkpoint and puts them back when training
  resumes, and keeps validation during training from consuming training randomness (so a
  resumed run draws the same augmentations and dropout masks as an uninterrupted one).
  Together with the stateful training loader (``datamodules.base``), the learning rate computed
  from the global step and deterministic kernels, a run resumed from ``last.ckpt`` finishes with
  exactly the weights of an uninterrupted one (tested on CPU, ``tests/test_resume.py``).
- :func:`global_rank` — the process's rank after or without a Trainer (torchrun, srun, Lightning's
  own launcher).
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.plugins.layer_sync import LayerSync
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from models.sync_batchnorm import (
    SYNC_BATCHNORM_TYPES,
    convert_sync_batchnorm,
    revert_sync_batchnorm,
)


class SyncBatchNormPlugin(LayerSync):
    """Pass as ``Trainer(plugins=[plugin])`` instead of ``sync_batchnorm=True``; set ``plugin.cpu``
    (CPU processes need :class:`models.sync_batchnorm.CPUSyncBatchNorm`) before ``fit``."""

    def __init__(self, cpu: bool = False) -> None:
        self.cpu = cpu

    def apply(self, model: nn.Module) -> nn.Module:
        return convert_sync_batchnorm(model, cpu=self.cpu)

    def revert(self, model: nn.Module) -> nn.Module:
        return revert_sync_batchnorm(model)


def count_sync_batchnorm(module: nn.Module) -> int:
    return sum(isinstance(m, SYNC_BATCHNORM_TYPES) for m in module.modules())


class SyncBatchNormCount(L.Callback):
    """How many BatchNorm layers were synchronised while training (recorded in metrics.json)."""

    def __init__(self) -> None:
        self.layers = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.layers = count_sync_batchnorm(pl_module)


def _portable(states: dict[str, Any]) -> dict[str, Any]:
    """RNG states as tensors/ints/tuples only, so ``torch.load(weights_only=True)`` reads them."""
    out = dict(states)
    if "numpy" in out:
        name, keys, pos, has_gauss, cached = out["numpy"]
        out["numpy"] = (str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                        int(has_gauss), float(cached))
    return out


def _native(states: dict[str, Any]) -> dict[str, Any]:
    out = dict(states)
    if "numpy" in out:
        name, keys, pos, has_gauss, cached = out["numpy"]
        out["numpy"] = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
    if not torch.cuda.is_available():
        out.pop("torch.cuda", None)
    return out


class RNGState(L.Callback):
    """Save the global RNG states with every checkpoint; restore them when training resumes.

    The state is the one of the process that writes the checkpoint (rank 0). All ranks start
    from the same seed and, with loading in the main process, consume the same number of draws
    per step, so their states stay equal and rank 0's is everyone's. (With ``num_workers > 0``
    the augmentation randomness lives in the workers, seeded per worker and rank by
    ``datamodules.base.seed_worker``; resuming then restarts the workers' generators.)
    """

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None
        self._before_validation: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": _portable(_collect_rng_states(include_cuda=torch.cuda.is_available()))}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict.get("rng")

    def on_train_start(self, trainer, pl_module) -> None:
        # restored as late as possible: nothing between here and the first resumed batch draws
        if self._to_restore is not None:
            _set_rng_states(_native(self._to_restore))
            self._to_restore = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Validation may run after this hook (and is not re-run when resuming from a checkpoint
        # written in it); creating its loader draws a seed from the global generator. Keeping
        # validation neutral makes training independent of when and whether it validates.
        self._before_validation = _collect_rng_states(include_cuda=False)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self._before_validation is not None:
            _set_rng_states(self._before_validation)
        self._before_validation = None


def global_rank() -> int:
    """This process's global rank: from torch.distributed once initialised, else from the
    launcher's environment (torchrun: RANK; srun: SLURM_PROCID; Lightning's launcher and
    other multi-node launches: NODE_RANK / LOCAL_RANK, where anything but 0/0 is not rank 0)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    node, local = int(os.environ.get("NODE_RANK", 0) or 0), int(os.environ.get("LOCAL_RANK", 0) or 0)
    return 0 if (node, local) == (0, 0) else max(1, node + local)
