"""One cell of an ablation: (ablation, variant, seed, dataset, preset) → a run directory.

``results/<ablation>/<dataset>-<preset>/<variant>/seed<k>/`` holds ``config.json`` (the cell's
recipe card, ``experiments/card.py``), ``checkpoints/{last,best}.ckpt``, ``logs/attempt-<n>/`` (CSV metrics of each run or
resume; read them with ``experiments.training_log.read_training_log``), for a cell that starts
from another's weights (``init_from``, ``experiments/stages.py``) ``init_from.json`` (what was
copied from where) and, once the run finished, ``metrics.json`` and (semantic tasks)
``per_image_val.npz`` (``per_image_val_crf.npz`` with the CRF): each validation image's per-class
counts (``lightning_modules/per_image.py``), what ``python -m experiments.compare`` resamples.
An evaluation-only cell (``weights_from``) trains nothing and holds no checkpoint: it evaluates
the named variant's ``checkpoints/last.ckpt`` for the same seed with its own evaluation settings,
after checking that the stored card of that cell differs from its own only in evaluation fields
(``experiments.card.EVAL_ONLY_FIELDS``); its ``metrics.json`` names the weights
(``weights_from``), and a paired comparison with that variant then differs by the evaluation alone.
A cell that trains exactly what a finished cell of another table trained (same card outside the
evaluation fields, same seed) links that cell's checkpoints into its own ``checkpoints/`` and
evaluates them instead of training (``experiments/reuse.py``; ``reused_weights`` in its
``metrics.json``; ``--no-reuse`` trains it).
A cell whose ``metrics.json`` exists is skipped; a cell with a
checkpoint but no metrics resumes from the newest valid one of ``checkpoints/last.ckpt`` (every
``checkpoint_every`` steps) and Lightning's SLURM ``hpc_ckpt_<n>.ckpt``, exactly
(``experiments/checkpoints.py``). Files, checkpoints included, are written atomically (temporary
file beside the target + rename), so an interrupted job never leaves a half-written result.
A cell that another process is training (``<run_dir>/.lock``, ``experiments/lock.py``) is
skipped with a message naming that process. Under DDP every process runs this function; only
rank 0 writes files.

Interruptions: on SIGTERM Lightning finishes the current step and stops; the cell then exits
with status 143 and no ``metrics.json`` (rerun to resume). Under SLURM with auto-requeue,
SIGUSR1 makes Lightning write ``hpc_ckpt_<n>.ckpt`` and requeue the job.
"""

from __future__ import annotations

import copy
import json
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.flop_counter import FlopCounterMode

from experiments.card import Cell, Run, differences, runs_on_gpu, training_differences
from experiments.checkpoints import BackgroundCheckpointIO, BestCheckpoint, ResultsTrainer, resume_checkpoint
from experiments.distributed import RNGState, SyncBatchNormCount, SyncBatchNormPlugin
from experiments.lock import CellLock, describe
from experiments.progress import SweepClock
from experiments.reuse import find_twin, link_checkpoints, reuse_record
from experiments.progress import callbacks as progress_callbacks
from experiments.recipe import as_dict
from experiments.stages import init_from_checkpoint, is_finished, parent_checkpoint, parent_dir
from experiments.stages import summary as init_summary
from experiments.atomic import write_atomic, write_text_atomic
from experiments.tasks import get_task
from experiments.tracking import Throughput, log_predictions, make_wandb_logger
from experiments.training_log import attempt_logger
from lightning_modules import per_image
from models import build_model
from models.sync_batchnorm import revert_sync_batchnorm


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def count_gflops(model: torch.nn.Module, height: int, width: int) -> float | None:
    """Forward GFLOPs (multiply-add = 2 FLOPs) of one 3×H×W image, counted on the meta device."""
    try:
        meta = copy.deepcopy(model).to("meta").eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            meta(torch.empty(1, 3, height, width, device="meta"))
        return counter.get_total_flops() / 1e9
    except Exception as err:  # noqa: BLE001 - a model the meta device cannot run: no figure
        warnings.warn(f"could not count FLOPs: {err}", stacklevel=2)
        return None


def eval_gflops(module, model: torch.nn.Module, eval_size: list[int] | None) -> float | None:
    """GFLOPs of the network as it evaluates: at ``eval.output_stride`` where the recipe sets
    one (DeepLab's "eval OS 8" rows cost more than the OS-16 model they evaluate)."""
    if not eval_size:
        return None
    if not hasattr(module, "evaluated_model"):
        return count_gflops(model, *eval_size)
    with module.evaluated_model() as evaluated:
        return count_gflops(evaluated, *eval_size)


def cuda_flags(deterministic: bool, accelerator: str, fixed_size: bool = True,
               cuda: bool | None = None) -> tuple[bool | str, bool | None]:
    """Lightning's ``deterministic`` and ``benchmark`` for this cell.

    On a GPU, ``deterministic=True`` becomes ``"warn"``: CUDA has no deterministic backward for
    bilinear ``interpolate`` or adaptive average pooling (every model here uses one), and
    ``torch.use_deterministic_algorithms(True)`` would raise there; with ``"warn"`` every op that
    has a deterministic kernel uses it and the others warn. Otherwise cuDNN autotuning is on when
    the training inputs have one size (``fixed_size``: a crop, or synthetic images), so each
    layer's fastest kernel is chosen once, in the warm-up steps (Lightning would leave it off);
    whole images of varying size (FCN) would be autotuned again at every new shape, so there it
    stays off. CPUs: unchanged."""
    if not runs_on_gpu(accelerator, cuda):
        return deterministic, None
    return ("warn", False) if deterministic else (False, fixed_size)


def train(trainer: ResultsTrainer, module, datamodule, run_dir: Path) -> Path:
    """Train (or resume) the cell; return its final checkpoint."""
    resume = resume_checkpoint(run_dir)
    if resume is not None and trainer.is_global_zero:
        print(f"[resume] {run_dir}: from {resume.relative_to(run_dir)}")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None,
                    weights_only=True)
    except SIGTERMException:
        # Lightning stopped after the current step; no result is written, a rerun resumes.
        wait_for_checkpoints(trainer)  # a periodic checkpoint still being written: finish it
        if trainer.is_global_zero:
            print(f"[interrupted] {run_dir}: SIGTERM; rerun the same command to resume")
        raise SystemExit(128 + signal.SIGTERM) from None
    # The final weights in last.ckpt (a rerun after a crash in the evaluation trains no more),
    # evaluated from there explicitly: with ckpt_path=None, Lightning on SLURM would load a stale
    # hpc_ckpt_<n>.ckpt instead of the weights just trained.
    final = run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(final, weights_only=False)
    wait_for_checkpoints(trainer)  # on disk before the evaluation and metrics.json
    return final


def wait_for_checkpoints(trainer) -> None:
    """Until every checkpoint queued for writing is on disk (a failed write is raised here)."""
    io = trainer.strategy.checkpoint_io
    if isinstance(io, BackgroundCheckpointIO):
        io.wait()


class FinalValidation(L.Callback):
    """When the fit loop's last validation ran and on which step: a validation at the final step
    (``max_steps`` a multiple of ``val_every``, as in the smoke preset) saw the final weights, so
    it *is* the cell's evaluation — the same weights, data and code as validating ``last.ckpt``
    again, which would double the evaluation's cost (the whole val set, every scale and flip, the
    CRF where the recipe has one)."""

    def __init__(self, clock=time.perf_counter) -> None:
        self.clock = clock
        self.step: int | None = None
        self.seconds: float | None = None
        self._started: float | None = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._started = self.clock()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._started is not None:
            self.step, self.seconds, self._started = trainer.global_step, self.clock() - self._started, None

    def saw_final_weights(self, trainer) -> bool:
        return self.step is not None and self.step == trainer.global_step


def evaluated_weights(run_dir: Path, card: dict[str, Any]) -> dict[str, Any]:
    """An evaluation-only cell (``weights_from``): the record of the weights it evaluates, the
    final checkpoint of the named variant's cell for the same seed, after checking that the
    cell finished and was trained exactly as this card says (its stored card differs only in
    evaluation fields, ``experiments.card.EVAL_ONLY_FIELDS``)."""
    source = parent_dir(run_dir, card["weights_from"])
    if not is_finished(source):
        raise RuntimeError(f"{run_dir} evaluates the weights of {source}, which has not finished (no metrics.json "
                           f"or checkpoints/last.ckpt); train {card['weights_from']!r} first")
    stored = json.loads((source / "config.json").read_text())
    diffs = training_differences(stored.get("card", stored), card)
    if diffs:
        raise RuntimeError(f"{run_dir} evaluates the weights of {source}, but that cell was trained differently "
                           f"({'; '.join(diffs[:6])}); retrain it with this command's settings, or use another --out")
    trained = json.loads((source / "metrics.json").read_text())
    return {"variant": card["weights_from"], "cell": str(source), "checkpoint": str(parent_checkpoint(run_dir, card["weights_from"])),
            "steps": trained.get("steps"), "train_time_s": trained.get("train_time_s")}


def run_cell(card: dict[str, Any], cell: Cell, run: Run, run_dir: Path, make_datamodule,
             wandb_project: str | None, verbose: bool = True,
             progress: tuple[SweepClock, int] | None = None, reuse_root: Path | None = None) -> dict[str, Any] | None:
    """Train and evaluate one cell described by its recipe ``card``; return its metrics, or None
    when another process holds the cell's lock (the cell is left to it; not an error). With
    ``reuse_root`` (the results root), a finished cell there that trained exactly this card's
    network for this seed is evaluated instead of training again (``experiments/reuse.py``)."""
    lock = CellLock(run_dir)
    if not lock.acquire():
        print(f"[locked] {run_dir}: skipped, another process is training this cell "
              f"({describe(lock.holder or {})}; lock file {lock.path})")
        return None
    try:
        return _run_cell(card, cell, run, run_dir, make_datamodule, wandb_project, verbose, progress, reuse_root)
    finally:
        lock.release()


def _run_cell(card: dict[str, Any], cell: Cell, run: Run, run_dir: Path, make_datamodule,
              wandb_project: str | None, verbose: bool, progress: tuple[SweepClock, int] | None,
              reuse_root: Path | None = None) -> dict[str, Any]:
    metrics_file = run_dir / "metrics.json"
    config_file = run_dir / "config.json"
    config = {"card": card, "recipe": as_dict(cell.recipe)}  # the card, and the recipe to rebuild it
    if config_file.exists():
        stored = json.loads(config_file.read_text())
        diffs = differences(stored.get("card", stored), card)
        if diffs:
            raise RuntimeError(
                f"{run_dir} holds a run with different settings ({'; '.join(diffs[:6])}). "
                f"Use another --out directory, or delete {run_dir} to retrain it."
            )
    if metrics_file.exists():
        print(f"[skip] {run_dir} already finished")
        return json.loads(metrics_file.read_text())

    recipe, seed = cell.recipe, card["seed"]
    if card.get("tf32") and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    L.seed_everything(seed, workers=True, verbose=False)
    datamodule = make_datamodule(seed)  # the seed drives shuffling and augmentation
    num_classes = datamodule.num_classes
    model = build_model(cell.model, num_classes, **cell.model_kwargs)
    init_record = None
    weights = evaluated_weights(run_dir, card) if card.get("weights_from") else None
    twin = find_twin(reuse_root, card, run_dir) if reuse_root is not None else None
    reused = reuse_record(twin) if twin is not None else None
    if weights is None and card.get("init_from"):  # stage-wise: the parent cell's final weights (same seed)
        parent = parent_dir(run_dir, card["init_from"])
        if not is_finished(parent):
            raise RuntimeError(f"{run_dir} initialises from {parent}, which has not finished (no metrics.json "
                               f"or checkpoints/last.ckpt); train {card['init_from']!r} first")
        init_record = init_from_checkpoint(model, parent_checkpoint(run_dir, card["init_from"]))
    task = get_task(card["task"])
    module = task.build_module(model, num_classes, datamodule.class_names, recipe)
    if hasattr(module, "train_pixel_weights") and hasattr(datamodule, "pixel_weights"):
        datamodule.pixel_weights = module.train_pixel_weights()  # U-Net's weight map, in the loader's workers
    tr = recipe.trainer
    ckpt_dir = run_dir / "checkpoints"
    # no version counter: last.ckpt/best.ckpt are replaced in place (atomically), never -v1 copies
    last_ckpt = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                every_n_train_steps=tr.checkpoint_every, enable_version_counter=False)
    best_ckpt = BestCheckpoint(ckpt_dir, monitor=task.monitor, mode="max")
    throughput = Throughput()
    final_validation = FinalValidation()
    loggers: list = [attempt_logger(run_dir)]
    wandb_logger = None
    if wandb_project:
        wandb_logger = make_wandb_logger(
            wandb_project, group=card["ablation"], name=f"{card['variant']}-seed{seed}",
            run_dir=run_dir, config=config, tags=[card["ablation"], card["dataset"], card["preset"]],
        )
        if wandb_logger is not None:
            loggers.append(wandb_logger)
    world = run.world
    global_batch = cell.global_batch
    sync_bn = tr.sync_batchnorm and world > 1 and recipe.optim.bn == "trained"
    sync_count = SyncBatchNormCount()
    sync_plugin = SyncBatchNormPlugin()
    deterministic, benchmark = cuda_flags(tr.deterministic, run.accelerator,
                                          fixed_size=recipe.data.crop_size is not None or run.data == "synthetic")
    trainer = ResultsTrainer(
        accelerator=run.accelerator, devices=run.devices, num_nodes=run.num_nodes,
        # "ddp", never "ddp_spawn": the spawn launcher's metric state double-counts on CPU
        strategy="ddp" if world > 1 else "auto",
        plugins=[BackgroundCheckpointIO(), *([sync_plugin] if sync_bn else [])],
        precision=tr.precision, max_steps=tr.max_steps, accumulate_grad_batches=tr.accumulate,
        # Lightning counts val_check_interval in batches, val_every is in optimiser steps
        val_check_interval=min(tr.val_every, tr.max_steps) * tr.accumulate, check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        # an evaluation-only cell writes no checkpoint: its weights stay in the cell they came from
        callbacks=[*([] if weights or reused else [last_ckpt, best_ckpt]), throughput, final_validation, RNGState(), sync_count,
                   *progress_callbacks(*(progress or (SweepClock([tr.max_steps], [tr.val_every]), 0)),
                                       f"{card['variant']} seed{seed}", verbose)], logger=loggers,
        default_root_dir=run_dir, deterministic=deterministic, benchmark=benchmark, log_every_n_steps=tr.log_every,
        enable_progress_bar=verbose, enable_model_summary=False,
    )
    sync_plugin.cpu = isinstance(trainer.accelerator, CPUAccelerator)
    if trainer.is_global_zero:
        write_json_atomic(config_file, config)
        if init_record is not None:
            write_json_atomic(run_dir / "init_from.json", init_record)
            print(f"[init] {run_dir}: {len(init_record['copied'])} tensors from {init_record['checkpoint']}; "
                  f"kept their own initialisation: {', '.join(init_record['kept']) or 'none'}")
        if weights is not None:
            print(f"[eval only] {run_dir}: evaluates {weights['checkpoint']} (trains nothing)")
        elif reused is not None:  # its own copy of the weights, for what reads this cell later
            link_checkpoints(twin, run_dir)
            print(f"[reuse] {run_dir}: {twin} trained this network with the same recipe card and seed; "
                  "evaluates its weights (linked into checkpoints/) and trains nothing (--no-reuse trains it)")
        else:
            print(f"[cell] {run_dir}: {world} process(es), global batch {global_batch} "
                  f"({world} x {cell.batch_per_device} per device x {tr.accumulate} accumulation)"
                  + (", SyncBatchNorm" if sync_bn else ""))
    for logger in loggers:
        logger.log_hyperparams({"global_batch": global_batch, "world_size": world})
    started = time.time()
    if weights is None and reused is None:
        final = train(trainer, module, datamodule, run_dir)
    else:  # the same validation as after training, on the other cell's final weights
        final = Path((weights or reused)["checkpoint"])
    trained = time.time()
    if final_validation.saw_final_weights(trainer):  # the fit loop's last validation was the evaluation
        eval_s = round(final_validation.seconds, 1)
        trained -= final_validation.seconds
    else:  # e.g. a run resumed after its last step, or val_every not dividing max_steps
        with warnings.catch_warnings():
            if weights or reused:  # the other cell's checkpoint holds its checkpoint callbacks' state, unused here
                warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint")
            trainer.validate(module, datamodule=datamodule, ckpt_path=str(final), verbose=False, weights_only=True)
        eval_s = round(time.time() - trained, 1)
    model = revert_sync_batchnorm(module.model)  # no-op unless a layer was left synchronised
    # real images of varying size and no fixed evaluation size (e.g. Mask R-CNN on VOC): no FLOPs
    side = recipe.eval.pad_to or (recipe.eval.window if recipe.eval.mode == "semseg" else None) or card["crop_size"]
    eval_size = [side, side] if side else None
    result = {
        "ablation": card["ablation"], "variant": card["variant"], "seed": seed,
        "dataset": card["dataset"], "preset": card["preset"],
        **{k: v for k, v in module.last_metrics.items()},
        "eval_mode": recipe.eval.mode, "eval_protocol": card["eval"].get("protocol"), "eval": card["eval"],
        "crf": recipe.eval.crf,
        "params": sum(p.numel() for p in model.parameters()),
        "gflops": eval_gflops(module, model, eval_size), "eval_size": eval_size,
        # steady state, after the warm-up steps; reused weights: the speed they were trained at
        "train_images_per_s": reused["train_images_per_s"] if reused else throughput.images_per_second(),
        "train_warmup_s": throughput.warmup_seconds, "train_warmup_steps": throughput.warmup,
        "global_batch": global_batch, "world_size": world, "sync_batchnorm_layers": sync_count.layers,
        # an evaluation-only cell: the steps that trained its weights, no training time of its own
        "steps": (weights or reused)["steps"] if weights or reused else trainer.global_step,
        "train_time_s": None if weights or reused else round(trained - started, 1), "eval_time_s": eval_s,
        "weights_from": weights, "reused_weights": reused,
        "train_size": getattr(datamodule, "train_size", None),
        "init_from": init_summary(init_record) if init_record is not None else None,
        # CPU weight gradients depend on the thread count (oneDNN splits the reduction), so the
        # same seed reproduces bit for bit only with the same torch, device and threads
        "environment": {"torch": torch.__version__, "device": str(trainer.strategy.root_device),
                        "cpu_threads": torch.get_num_threads()},
    }
    if wandb_logger is not None and trainer.is_global_zero:
        if weights is None and reused is None:
            wandb_logger.experiment.summary[f"best_{task.monitor.replace('/', '_')}"] = float(
                best_ckpt.best_model_score or 0)
        if task.name == "semantic":  # mask overlays; instance predictions are not drawn there
            log_predictions(wandb_logger, module, datamodule, datamodule.class_names)
        wandb_logger.experiment.finish()
    if trainer.is_global_zero:
        # per-image counts first: metrics.json marks the cell finished
        ids = getattr(getattr(datamodule, "val_set", None), "ids", None)
        for key, rows in getattr(module, "last_per_image", {}).items():
            table = per_image.with_image_ids(rows, ids)
            write_atomic(run_dir / per_image.file_name(key), lambda f, t=table: per_image.write(f, t))
        write_json_atomic(metrics_file, result)
    return result
