"""Logging for the runner: CSV always, Weights & Biases on request, and a throughput meter.

W&B on shared machines and clusters must never stop a job: without an API key (environment
``WANDB_API_KEY``, ``~/.netrc`` from ``wandb login``) the run switches to offline mode, even with
``WANDB_MODE=online``, and says how to upload it later with ``wandb sync``; the key is looked up
without prompting (:func:`has_wandb_key`), so an attached terminal cannot block the job either. Lightning's loggers write from
rank 0 only. Runs of one ablation share the W&B ``group`` (the ablation name) and are named
``<variant>-seed<k>``, so the dashboard groups the seeds of a variant and compares variants.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

import lightning as L
import torch

from experiments.distributed import global_rank
from experiments.atomic import write_text_atomic


def has_wandb_key() -> bool:
    """Whether W&B credentials are configured (``WANDB_API_KEY``, an identity token file,
    ``~/.netrc`` or wandb's settings file), found without any prompt or network access."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb.sdk.lib import wbauth

        if wbauth.read_netrc_auth(host=os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"):
            return True
    except Exception:  # noqa: BLE001 - another wandb version or a malformed .netrc: ask wandb below
        pass
    import wandb

    try:
        # prompt=False never asks; the mode is forced so wandb's own offline shortcut cannot answer
        with _environ(WANDB_MODE="online", WANDB_SILENT="true"):
            return bool(wandb.login(prompt=False, verify=False))
    except Exception:  # noqa: BLE001 - any failure to find credentials means: no key
        return False


@contextlib.contextmanager
def _environ(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def wandb_mode() -> str:
    """'online', 'offline' or 'disabled': 'disabled' and 'offline' as WANDB_MODE says; online
    only with a key, whatever WANDB_MODE says (online without a key, wandb would ask for a login
    on an attached terminal and wait forever)."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode == "disabled":
        return "disabled"
    if mode in ("offline", "dryrun"):
        return "offline"
    return "online" if has_wandb_key() else "offline"


def make_wandb_logger(project: str, group: str, name: str, run_dir: Path, config: dict[str, Any],
                      tags: list[str]):
    from lightning.pytorch.loggers import WandbLogger

    mode = wandb_mode()
    if mode == "disabled":
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    id_file = run_dir / "wandb_id.txt"
    # The run id lives beside the checkpoint, so a resumed (requeued) job continues the same run.
    run_id = id_file.read_text().strip() if id_file.exists() else None
    if run_id is None:
        run_id = uuid.uuid4().hex[:12]  # W&B ids: lowercase letters and digits
        if global_rank() == 0:  # other DDP ranks never start a W&B run; they must not race here
            write_text_atomic(id_file, run_id + "\n")
    if mode == "offline":
        asked = os.environ.get("WANDB_MODE", "").strip().lower()
        why = ("WANDB_MODE=offline" if asked in ("offline", "dryrun") else
               f"no API key found{' (WANDB_MODE=online overridden)' if asked == 'online' else ''}")
        print(
            f"W&B: {why}, logging OFFLINE to {run_dir / 'wandb'}.\n"
            f"     Upload later with: wandb sync {run_dir / 'wandb'}/offline-run-*"
        )
    import wandb

    return WandbLogger(
        project=project, group=group, name=name, id=run_id, resume="allow", save_dir=str(run_dir),
        # `mode=` rather than Lightning's offline=True, which sets the WANDB_MODE=dryrun that
        # current wandb no longer honours (it then asks for a login). The explicit mode wins
        # over WANDB_MODE; the login timeout is a second guard should wandb still decide to ask.
        mode=mode, config=config, tags=tags, job_type="train",
        settings=wandb.Settings(mode=mode, login_timeout=0.1),
    )


class Throughput(L.Callback):
    """Training images per second over all processes, on rank 0's wall clock.

    Counts the time from one training batch's end to the next one's (data loading, forward,
    backward, optimiser step), skipping the first ``warmup`` steps (allocation, worker start-up)
    and any interval that contained a validation run or a checkpoint.
    """

    def __init__(self, warmup: int = 3, clock=time.perf_counter) -> None:
        self.warmup = warmup
        self.clock = clock
        self.images = 0
        self.seconds = 0.0
        self.steps = 0
        self.last: float | None = None
        self.started: float | None = None
        self.warmup_seconds: float | None = None  # train start to the end of the warm-up steps

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = self.clock()
        self.steps += 1
        if self.steps == self.warmup and self.started is not None:
            self.warmup_seconds = now - self.started
        if self.last is not None and self.steps > self.warmup:
            self.seconds += now - self.last
            self.images += len(batch[0]) * trainer.world_size  # a tensor or a list of images (Mask R-CNN)
        self.last = now

    def on_validation_start(self, trainer, pl_module) -> None:
        self.last = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.last = None

    def images_per_second(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None


def log_predictions(logger, module, datamodule, class_names, max_images: int = 4) -> None:
    """A few validation predictions as W&B mask overlays (ground truth and prediction)."""
    import wandb

    from lightning_modules.crf import denormalize

    module.eval()
    labels = {i: n for i, n in enumerate(class_names)}
    images, shown = [], 0
    with torch.no_grad():
        for batch_images, masks in datamodule.val_dataloader():
            preds = module.predict_probs(batch_images.to(module.device)).argmax(1).cpu()
            rgb = denormalize(batch_images, module.hparams.mean, module.hparams.std).numpy()
            for i in range(len(rgb)):
                images.append(wandb.Image(rgb[i], masks={
                    "prediction": {"mask_data": preds[i].numpy(), "class_labels": labels},
                    "ground_truth": {"mask_data": masks[i].numpy(), "class_labels": {**labels, 255: "void"}},
                }))
                shown += 1
                if shown >= max_images:
                    logger.experiment.log({"val/predictions": images})
                    return
    if images:
        logger.experiment.log({"val/predictions": images})


def log_results_table(project: str, group: str, dataset: str, rows: list[dict], out_dir: Path) -> None:
    """The collected results table as a ``wandb.Table`` in a 'summary' run of the ablation's group."""
    import wandb

    mode = wandb_mode()
    if mode == "disabled":
        return
    # the task's primary metric (mIoU or mask AP) as mean/std, every other recorded metric as mean
    primary = rows[0].get("primary", "miou") if rows else "miou"
    metrics = [k for r in rows for k in r.get("metrics", {}) if k != primary]
    metrics = list(dict.fromkeys(metrics))
    columns = ["variant", f"{primary}_mean", f"{primary}_std", "n", f"paper_{primary}", "paper_ref", "delta",
               *metrics, "params", "gflops", "train_images_per_s", "eval_mode"]
    data = [[r.get(c, r.get("metrics", {}).get(c, {}).get("mean")) for c in columns] for r in rows]
    table = wandb.Table(columns=columns, data=data)
    run = wandb.init(project=project, group=group, name=f"{group}-{dataset}-table", job_type="summary",
                     dir=str(out_dir), mode=mode, reinit="finish_previous")
    run.log({"results": table})
    run.finish()


def log_figures(project: str, group: str, dataset: str, paths: list[Path],
                out_dir: Path | None = None) -> None:
    """The PNGs of ``experiments.figures.write_figures`` as ``wandb.Image`` s in a 'summary' run
    of the ablation's group (``figures/<file stem>``); W&B files go to ``out_dir`` (default: the
    folder above the figures' folder, i.e. the results folder, as for the table)."""
    paths = [Path(p) for p in paths]
    mode = wandb_mode()
    if not paths or mode == "disabled":
        return
    import wandb

    out_dir = Path(out_dir) if out_dir is not None else paths[0].parent.parent
    run = wandb.init(project=project, group=group, name=f"{group}-{dataset}-figures",
                     job_type="summary", dir=str(out_dir), mode=mode,
                     reinit="finish_previous")
    run.log({f"figures/{p.stem}": wandb.Image(str(p), caption=p.stem) for p in paths})
    run.finish()
