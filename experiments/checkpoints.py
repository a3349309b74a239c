"""Checkpoints that are never half-written, never trusted blindly and never unpickle code.

- :class:`AtomicCheckpointIO` (in a background thread: :class:`BackgroundCheckpointIO`) — the Trainer's only way to write a checkpoint (``ModelCheckpoint``'s
  ``last.ckpt``/``best.ckpt``, ``trainer.save_checkpoint`` and SLURM's ``hpc_ckpt_<n>.ckpt`` all go
  through ``strategy.checkpoint_io``). Lightning's own ``TorchCheckpointIO`` writes to a temporary
  file in ``$TMPDIR`` and moves it over the target; across file systems (or on a full disk) the
  move is a copy *over the good checkpoint*, so a job killed there leaves a truncated
  ``last.ckpt`` and temporary files pile up in ``/tmp``. Here the temporary file lives beside
  the target, is flushed and fsynced, then renamed over it (``os.replace``, atomic on POSIX) and
  the directory is fsynced: a reader sees the old file or the new one, never a part.
- :func:`load_checkpoint` — every checkpoint read in this repository: ``torch.load`` with
  ``weights_only=True`` passed explicitly (an environment such as
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` only overrides an *unset* argument), on the CPU.
  What our checkpoints hold (tensors, numbers, strings, tuples, dicts; the RNG states are made
  portable by ``experiments.distributed``) needs no extra ``add_safe_globals``; a checkpoint
  that needs more is refused rather than executed.
- :func:`resume_checkpoint` — the checkpoint a rerun resumes from, verified (see there).
- :class:`ResultsTrainer` — ``L.Trainer`` whose ``save_checkpoint`` saves the full state unless
  told otherwise (Lightning's SLURM handler calls it without ``weights_only`` and logs that it
  "was not set").
- :class:`BestCheckpoint` — ``best.ckpt`` overwritten in place; after a resume that lost the
  callback's memory of it, its score is read back from the file itself.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

from experiments.atomic import write_atomic


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that leaves either the previous file or the complete new one,
    with no temporary file behind, whatever happens (disk full, kill, exception)."""
    write_atomic(path, lambda f: torch.save(obj, f))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Pass as ``Trainer(plugins=[AtomicCheckpointIO()])``; see the module docstring."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        save_atomic(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        # Lightning passes weights_only=None unless fit/validate were given one: never unpickle code
        if weights_only is False:
            raise ValueError(f"refusing to load {path} with weights_only=False")
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's contents on the CPU, refusing anything but plain data (``weights_only``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


class BackgroundCheckpointIO(AsyncCheckpointIO):
    """:class:`AtomicCheckpointIO` in a background thread (Lightning's ``AsyncCheckpointIO``,
    which clones every tensor on the calling thread first, so the file holds the state at the
    call): the periodic ``last.ckpt`` of a paper model (~400-470 MB with the optimizer's momentum)
    took 0.3-2.6 s to write and fsync on the development VM, time the training loop no longer
    waits for. One write at a time, in order. :meth:`wait` blocks until every queued write is
    on disk and re-raises a failed one: the cell calls it after the final checkpoint (before
    ``metrics.json`` marks the cell finished) and before exiting on SIGTERM; SLURM's
    ``hpc_ckpt_<n>.ckpt`` (written as the job is being requeued) is written synchronously."""

    def __init__(self) -> None:
        super().__init__(AtomicCheckpointIO())

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        if Path(path).name.startswith("hpc_ckpt"):
            self.wait()

    def wait(self) -> None:
        self.teardown()  # shuts the writer down after the queue; the next save starts a new one


class ResultsTrainer(L.Trainer):
    """``save_checkpoint`` defaults to the full training state (optimizer, loops, callbacks)."""

    def save_checkpoint(self, filepath, weights_only: bool | None = False, storage_options: Any | None = None) -> None:
        super().save_checkpoint(filepath, weights_only=bool(weights_only), storage_options=storage_options)


class BestCheckpoint(ModelCheckpoint):
    """One ``best.ckpt``, replaced atomically when the monitored metric improves.

    ``last.ckpt`` is written in the training step and the validation of that step comes after
    it, so a run killed after a new best and resumed from ``last.ckpt`` has forgotten that best:
    Lightning would then write ``best-v1.ckpt`` beside a stale ``best.ckpt`` (or, without version
    counter, overwrite a better model with a worse one). Here the score is read back from
    ``best.ckpt`` itself, which stores the callback's state at the moment it was written.
    """

    def __init__(self, dirpath: Path, monitor: str, mode: str = "max") -> None:
        super().__init__(dirpath=dirpath, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                         save_last=False, enable_version_counter=False)

    def on_train_start(self, trainer, pl_module) -> None:
        best = Path(self.dirpath) / "best.ckpt"
        if self.best_k_models or not best.is_file():
            return
        try:
            state = load_checkpoint(best)["callbacks"][self.state_key]
            score = state["best_model_score"]
        except Exception as err:  # noqa: BLE001 - an unreadable best.ckpt is simply replaced
            warnings.warn(f"{best} is unreadable ({err}); the next validation replaces it", stacklevel=2)
            return
        if score is None:
            return
        score = torch.as_tensor(score)
        self.best_k_models = {str(best): score}
        self.best_model_path = self.kth_best_model_path = str(best)
        self.best_model_score = self.kth_value = score


# --------------------------------------------------------------------------------------- resuming
_LAST = re.compile(r"last(-v(\d+))?\.ckpt")


def checkpoint_candidates(run_dir: Path) -> list[Path]:
    """Every checkpoint Lightning may have left to resume from: ``checkpoints/last.ckpt``,
    ``checkpoints/last-v<n>.ckpt`` and the SLURM ``hpc_ckpt_<n>.ckpt`` in ``run_dir``."""
    ckpt_dir = run_dir / "checkpoints"
    found = [p for p in ckpt_dir.glob("last*.ckpt") if _LAST.fullmatch(p.name)] if ckpt_dir.is_dir() else []
    found += [p for p in run_dir.glob("hpc_ckpt_*.ckpt") if re.fullmatch(r"hpc_ckpt_\d+\.ckpt", p.name)]
    return [p for p in found if p.is_file()]


def set_aside(path: Path, reason: str) -> Path:
    """Rename a bad checkpoint to ``<name>.corrupt-<timestamp>`` (kept for inspection) and warn."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while aside.exists():
        aside = aside.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    os.replace(path, aside)
    warnings.warn(f"checkpoint {path} is unusable ({reason}); moved aside to {aside.name}", stacklevel=3)
    return aside


def resume_checkpoint(run_dir: Path, move_aside: bool | None = None) -> Path | None:
    """The checkpoint a rerun resumes from, or ``None`` for a fresh start.

    Candidates (:func:`checkpoint_candidates`) are ordered newest first by the training step
    stored inside, then by modification time; each is loaded with ``weights_only=True`` and
    the first that loads (and has a ``global_step``) wins. One that does not load — truncated
    by a kill mid-write, or holding pickled code — is moved aside (:func:`set_aside`) with a
    warning, so later reruns do not trip over it again. Under DDP only rank 0 renames files
    (``move_aside`` defaults to that); every rank reaches the same choice from the same files.
    """
    from experiments.distributed import global_rank

    if move_aside is None:
        move_aside = global_rank() == 0
    valid: list[tuple[int, int, Path]] = []
    for path in checkpoint_candidates(Path(run_dir)):
        try:
            step = load_checkpoint(path)["global_step"]
            if not isinstance(step, int):
                raise TypeError(f"global_step is {type(step).__name__}")
        except Exception as err:  # noqa: BLE001 - whatever the reason, it cannot be resumed from
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
            if move_aside:
                set_aside(path, reason)
            else:
                warnings.warn(f"checkpoint {path} is unusable ({reason})", stacklevel=2)
            continue
        valid.append((step, path.stat().st_mtime_ns, path))
    if not valid:
        return None
    return max(valid, key=lambda v: (v[0], v[1], v[2].name == "last.ckpt"))[2]
