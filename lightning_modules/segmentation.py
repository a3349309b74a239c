"""The LightningModule that trains and evaluates every architecture of the model zoo.

It receives a plain model (``models.build_model``) and alone owns the loss, the metrics, the
optimiser, the learning-rate schedule and the logging (the split of the lightning-hydra
template; heads never own a loss). Paper recipes that differ are thin subclasses in
``lightning_modules/recipes.py``.

- Loss: cross-entropy with ``ignore_index=255`` on ``"out"`` plus ``aux_weight`` × the same on
  ``"aux"`` (PSPNet Sec. 3.4 / Table 2: 0.4), optionally weighted per pixel by U-Net's border
  weight map (Ronneberger et al. Eq. 1–2).
- Optimiser: SGD with momentum (every paper here; ``optimizer="adamw"`` exists for the CPU smoke
  preset, which trains width-scaled networks from scratch in minutes); parameter groups give newly initialised head layers
  ``head_lr_mult`` × the base learning rate (DeepLab: 10×) and biases ``bias_lr_mult`` ×
  (Caffe's ``lr_mult: 2``); biases and normalisation parameters get no weight decay (Caffe's
  ``decay_mult: 0`` in the FCN/DeepLab prototxts).
- Schedule: "poly", lr = base · (1 − step/max_steps)^power (DeepLab v2 Sec. 4.1, PSPNet
  Sec. 4.1), optionally after a linear warm-up, computed from ``global_step`` before every
  step, so a resumed run continues the schedule exactly (no scheduler state to get out of sync).
- Metrics: one dataset-level confusion matrix per evaluation (``lightning_modules.metrics``),
  synced across processes; the evaluation protocol (``eval_mode``) and, when the dense CRF is
  on, the before/after-CRF metrics are reported side by side. Always also the "trimap" mIoU
  within ``trimap_width`` px of label boundaries (DeepLab v1/v2), and with
  ``checkerboard_period`` the checkerboard statistic of the predicted probabilities
  (``lightning_modules.checkerboard``). ``eval_output_stride`` evaluates a DeepLab v3/v3+
  trained at one output stride at another (v3 Table 6: train 16, evaluate 8).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from datamodules.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from lightning_modules.crf import CRFParams, dense_crf, denormalize
from lightning_modules.inference import DEFAULT_SCALES, EVAL_MODES, predict
from lightning_modules.metrics import confusion_matrix_metric, metrics_from_confusion, trimap_target

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, pixel_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy over labelled (non-255) pixels; 0 (with a graph) if there are none."""
    losses = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
    valid = target != IGNORE_INDEX
    if pixel_weight is not None:
        losses = losses * pixel_weight
    return losses.sum() / valid.sum().clamp(min=1)


def poly_factor(step: int, max_steps: int, power: float, warmup_steps: int = 0) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based)."""
    factor = max(0.0, 1.0 - step / max(1, max_steps)) ** power
    if warmup_steps > 0 and step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return factor


class SegmentationModule(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        lr: float = 0.01,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        poly_power: float = 0.9,
        warmup_steps: int = 0,
        head_lr_mult: float = 1.0,
        bias_lr_mult: float = 1.0,
        aux_weight: float = 0.0,
        freeze_bn: bool = False,
        border_weight: bool = False,
        eval_mode: str = "whole",
        eval_scales: Sequence[float] = DEFAULT_SCALES,
        eval_flip: bool = True,
        eval_crop: int | None = None,
        crf: CRFParams | dict | None = None,
        trimap_width: int = 5,
        checkerboard_period: int | None = None,
        eval_output_stride: int | None = None,
        class_names: Sequence[str] | None = None,
        channels_last: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' (the papers') or 'adamw', got {optimizer!r}")
        if eval_mode not in EVAL_MODES:
            raise ValueError(f"eval_mode must be one of {EVAL_MODES}, got {eval_mode!r}")
        if eval_mode == "sliding" and eval_crop is None:
            raise ValueError("eval_mode='sliding' needs eval_crop (the window size)")
        if eval_output_stride is not None and not hasattr(model, "set_output_stride"):
            raise ValueError(
                f"eval_output_stride={eval_output_stride} needs a model that can change its output "
                f"stride (DeepLab v3/v3+ with a ResNet); {type(model).__name__} cannot"
            )
        if head_lr_mult != 1.0 and not isinstance(getattr(model, "backbone", None), nn.Module):
            raise ValueError(
                f"head_lr_mult={head_lr_mult} needs the model to expose its pretrained part as "
                f"`.backbone`; {type(model).__name__} has none"
            )
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.num_classes = num_classes
        # a dict too: the runner's JSON config and reloaded hyperparameters carry it that way
        self.crf_params = CRFParams(**crf) if isinstance(crf, dict) else crf
        self.val_cm = confusion_matrix_metric(num_classes)
        self.val_cm_crf = confusion_matrix_metric(num_classes) if crf is not None else None
        self.val_cm_trimap = confusion_matrix_metric(num_classes)
        self.val_cm_crf_trimap = confusion_matrix_metric(num_classes) if crf is not None else None
        # mean over images of the checkerboard statistic (a synced sum and count)
        self.val_checkerboard = MeanMetric() if checkerboard_period else None
        self.train_output_stride = getattr(model, "output_stride", None)
        self.last_metrics: dict[str, dict] = {}
        if freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.requires_grad_(False)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    # --- forward / loss -------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def pixel_weights(self, masks: torch.Tensor) -> torch.Tensor | None:
        if not self.hparams.border_weight:
            return None
        from models.unet_weights import unet_weight_map

        maps = [unet_weight_map(m.cpu(), ignore_index=IGNORE_INDEX) for m in masks]
        return torch.stack(maps).to(masks.device, torch.float32)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks = batch
        out = self(images)
        loss = segmentation_loss(out["out"], masks, self.pixel_weights(masks))
        self.log("train/loss_main", loss.detach(), prog_bar=False)
        if self.hparams.aux_weight > 0 and "aux" in out:
            aux = segmentation_loss(out["aux"], masks)
            self.log("train/loss_aux", aux.detach())
            loss = loss + self.hparams.aux_weight * aux
        self.log("train/loss", loss.detach(), prog_bar=True)
        return loss

    # --- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        backbone = getattr(self.model, "backbone", None)
        backbone_ids = {id(p) for p in backbone.parameters()} if isinstance(backbone, nn.Module) else set()
        no_decay_ids = {
            id(p) for m in self.model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)
        }
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            is_head = id(p) not in backbone_ids
            is_bias = name.endswith(".bias") or id(p) in no_decay_ids
            groups.setdefault((is_head, is_bias), []).append(p)
        param_groups = []
        for (is_head, is_bias), params in sorted(groups.items()):
            mult = (hp.head_lr_mult if is_head else 1.0) * (hp.bias_lr_mult if is_bias else 1.0)
            param_groups.append({
                "params": params,
                "lr": hp.lr * mult,
                "base_lr": hp.lr * mult,
                "weight_decay": 0.0 if is_bias else hp.weight_decay,
                "name": f"{'head' if is_head else 'backbone'}_{'bias' if is_bias else 'weight'}",
            })
        if hp.optimizer == "adamw":
            return torch.optim.AdamW(param_groups, lr=hp.lr)
        return torch.optim.SGD(param_groups, lr=hp.lr, momentum=hp.momentum)

    def total_steps(self) -> int:
        max_steps = self.trainer.max_steps
        return max_steps if max_steps and max_steps > 0 else int(self.trainer.estimated_stepping_batches)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self.hparams.freeze_bn:
            # Lightning switches modules to train mode around validation; running statistics must
            # stay those of the checkpoint, so BN goes back to eval before every step.
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        factor = poly_factor(self.global_step, self.total_steps(), self.hparams.poly_power, self.hparams.warmup_steps)
        optimizer = self.optimizers(use_pl_optimizer=False)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        self.log("train/lr", self.hparams.lr * factor)

    # --- evaluation -----------------------------------------------------------------------
    def predict_scores(self, images: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        return predict(
            self, images, hp.eval_mode, self.num_classes, scales=hp.eval_scales, flip=hp.eval_flip, crop=hp.eval_crop
        )

    def _eval_step(self, batch) -> None:
        images, masks = batch
        scores = self.predict_scores(images)
        preds = scores.argmax(1)
        self.val_cm.update(preds, masks)
        self.val_cm_trimap.update(preds, trimap_target(masks, self.hparams.trimap_width))
        if self.val_checkerboard is not None:
            from lightning_modules.checkerboard import checkerboard_energy

            probs = scores if self.hparams.eval_mode == "ms_flip" else scores.float().softmax(1)
            self.val_checkerboard.update(checkerboard_energy(probs.float(), self.hparams.checkerboard_period))
        if self.val_cm_crf is not None:
            probs = scores if self.hparams.eval_mode == "ms_flip" else scores.float().softmax(1)
            rgb = denormalize(images, self.hparams.mean, self.hparams.std).cpu().numpy()
            refined = [
                torch.from_numpy(dense_crf(rgb[i], probs[i].float().cpu().numpy(), self.crf_params))
                for i in range(len(rgb))
            ]
            refined_preds = torch.stack(refined).argmax(1).to(masks.device)
            self.val_cm_crf.update(refined_preds, masks)
            self.val_cm_crf_trimap.update(refined_preds, trimap_target(masks, self.hparams.trimap_width))

    def _set_eval_stride(self, evaluating: bool) -> None:
        if self.hparams.eval_output_stride is not None:
            stride = self.hparams.eval_output_stride if evaluating else self.train_output_stride
            self.model.set_output_stride(stride)

    def _trimap(self, metric) -> dict:
        cm = metric.compute()
        metric.reset()
        # a band with no labelled pixel (e.g. images of one class) has no trimap score
        return {"trimap_miou": metrics_from_confusion(cm)["miou"] if cm.sum() > 0 else None,
                "trimap_width": self.hparams.trimap_width}

    def _eval_epoch_end(self, stage: str) -> None:
        self._set_eval_stride(False)
        results = {stage: metrics_from_confusion(self.val_cm.compute())}
        self.val_cm.reset()
        results[stage].update(self._trimap(self.val_cm_trimap))
        if self.val_checkerboard is not None:
            results[stage]["checkerboard"] = float(self.val_checkerboard.compute())
            results[stage]["checkerboard_period"] = self.hparams.checkerboard_period
            self.val_checkerboard.reset()
        if self.hparams.eval_output_stride is not None:
            results[stage]["eval_output_stride"] = self.hparams.eval_output_stride
        if self.val_cm_crf is not None:
            results[f"{stage}_crf"] = metrics_from_confusion(self.val_cm_crf.compute())
            results[f"{stage}_crf"].update(self._trimap(self.val_cm_crf_trimap))
            self.val_cm_crf.reset()
        for prefix, metrics in results.items():
            for key in ("miou", "pixel_acc", "mean_acc", "fwiou", "trimap_miou", "checkerboard"):
                # identical on every rank: computed from the synced confusion matrix
                if metrics.get(key) is not None:
                    self.log(f"{prefix}/{key}", metrics[key], prog_bar=key == "miou")
            metrics["eval_mode"] = self.hparams.eval_mode
        self.last_metrics.update(results)

    def on_validation_epoch_start(self) -> None:
        self._set_eval_stride(True)

    def on_test_epoch_start(self) -> None:
        self._set_eval_stride(True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
