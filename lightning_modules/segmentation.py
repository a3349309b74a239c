"""The LightningModule that trains and evaluates every architecture of the model zoo.

It receives a plain model (``models.build_model``) and alone owns the loss, the metrics, the
optimiser, the learning-rate schedule and the logging (the lightning-hydra-template split).

- Loss: cross-entropy with ``ignore_index=255`` on ``"out"`` plus ``aux_weight`` × the same on
  ``"aux"`` (PSPNet Sec. 3.4 / Table 2: 0.4), optionally weighted per pixel by U-Net's border
  weight map (``border_weight``, Ronneberger et al. Eq. 1–2). A model trained with multi-scale
  inputs (``models/msc.py``) returns ``"msc"`` in training: then the loss is the sum over those
  score maps (each scale's and the fused one), each against the labels shrunk to its size by
  :func:`resize_labels`, as kazuto1011/deeplab-pytorch ``main.py``.
- Optimiser and schedule (``lightning_modules.optim``): SGD with momentum (every paper here;
  ``"adamw"`` for the CPU smoke preset), head/bias learning-rate multipliers, no weight decay
  on biases and norms; ``lr_schedule`` "poly" (DeepLab, PSPNet), "step" or "constant" (FCN),
  after an optional linear warm-up, recomputed from ``global_step`` before every step.
  ``bn_momentum`` sets every BatchNorm layer's running-statistics momentum (DeepLab v3's
  official decay 0.9997 is PyTorch momentum 0.0003); None keeps PyTorch's 0.1.
  ``bn="frozen"`` keeps BatchNorm in eval mode with fixed affine parameters (DeepLab v3's OS 8
  fine-tuning stage, Table 6). ``train_only`` trains only the named top-level modules of the
  model and freezes the rest, BatchNorm statistics included (FCN-32s-fixed, FCN Table 2).
- Evaluation: ``eval_mode`` "whole" (``eval_pad_to``: DeepLab's 513 protocol), "ms_flip",
  "sliding" or "semseg" (hszhao/semseg's resize + sliding window + flip, ``eval_base_size``)
  (``lightning_modules.inference.predict_probs``); ``eval_output_stride`` evaluates a
  DeepLab v3/v3+ at another output stride than it trained with (v3 Table 6: train 16, test 8).
- Metrics: per stage (val, test) one dataset-level confusion matrix and one of the "trimap" band
  within ``trimap_width`` px of label boundaries (DeepLab v1/v2), synced across processes.
  ``evaluators`` add more from the same probabilities: ``crf.CRFEvaluator`` (metrics after the
  dense CRF, as ``last_metrics["val_crf"]``), ``checkerboard.CheckerboardEvaluator``.
- Per-image counts (``lightning_modules/per_image.py``): every evaluation also keeps each image's
  per-class intersection/label/prediction counts with its dataset index (from the evaluation
  sampler, so under DDP the rows of all processes are put back in dataset order, each image
  once), as ``last_per_image["val"]`` (and ``["val_crf"]``): what ``experiments/stats.py``
  resamples to put a confidence interval on a difference between two runs.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from datamodules.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from lightning_modules import optim
from lightning_modules.inference import check_protocol, predict_probs, protocol_label
from lightning_modules.metrics import Evaluator, segmentation_metrics, summarise
from lightning_modules.per_image import evaluation_order, per_image_counts
from lightning_modules.optim import lr_factor  # noqa: F401  (the schedule, importable from here)

LOGGED = ("miou", "pixel_acc", "mean_acc", "fwiou", "trimap_miou", "checkerboard")


class LowPrecisionCrossEntropy(torch.autograd.Function):
    """Per-pixel cross-entropy of bf16/fp16 logits, computed in fp32 one image at a time.

    ``F.cross_entropy(logits.float())`` on N×C×H×W half-precision logits makes an fp32 copy of the
    logits, keeps the fp32 log-softmax for the backward pass and, in it, makes two more fp32
    tensors of that size (the gradients of the log-softmax and of its input) before casting back.
    For PSPNet's loss on ADE20K (16×150×473×473 logits, a main and an auxiliary head) each such
    copy is 2.1 GiB. This function keeps only the half-precision logits (which the model made
    anyway) and the per-pixel log-sum-exp; the fp32 work happens per image, and the gradient is
    written straight into a half-precision tensor. Same result as the reference to fp32 rounding
    (``tests/test_losses.py``), measured in ``benchmarks/gpu_train.py``.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
        losses = torch.empty(target.shape, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(losses)
        valid = target != ignore_index
        safe = target.masked_fill(~valid, 0).long()
        for i in range(logits.shape[0]):
            x = logits[i].float()
            lse[i] = torch.logsumexp(x, dim=0)
            picked = x.gather(0, safe[i].unsqueeze(0)).squeeze(0)
            losses[i] = (lse[i] - picked).masked_fill(~valid[i], 0.0)
        ctx.save_for_backward(logits, safe, valid, lse)
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        logits, safe, valid, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        scale = (grad_losses.float() * valid)
        for i in range(logits.shape[0]):
            p = (logits[i].float() - lse[i]).exp_()      # softmax
            p.scatter_add_(0, safe[i].unsqueeze(0), -torch.ones_like(lse[i]).unsqueeze(0))
            grad[i] = p.mul_(scale[i])
        return grad, None, None


LOW_PRECISION_LOSS_MIN_BYTES = 2**28  # an fp32 copy of the logits of at least 256 MiB


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                        min_bytes: int = LOW_PRECISION_LOSS_MIN_BYTES) -> torch.Tensor:
    """Per-pixel cross-entropy in fp32, 0 at ignored (255) pixels. fp32 logits take
    ``F.cross_entropy`` (the CPU smoke tables were made with it), and so do small half-precision
    ones (the per-image loop costs kernel launches, and the copies it avoids are small); large
    half-precision logits (an fp32 copy of ``min_bytes`` or more: PSPNet's 2.1 GiB on ADE20K,
    DeepLab v3's 0.35 GiB) take :class:`LowPrecisionCrossEntropy`, which avoids the fp32 copies."""
    if (logits.dtype in (torch.bfloat16, torch.float16) and logits.requires_grad
            and logits.numel() * 4 >= min_bytes):
        return LowPrecisionCrossEntropy.apply(logits, target, IGNORE_INDEX)
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, pixel_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy over labelled (non-255) pixels; 0 (with a graph) if there are none."""
    losses = pixel_cross_entropy(logits, target)
    valid = target != IGNORE_INDEX
    if pixel_weight is not None:
        losses = losses * pixel_weight
    return losses.sum() / valid.sum().clamp(min=1)


@functools.lru_cache(maxsize=64)
def _pil_nearest_index(n_in: int, n_out: int) -> tuple[int, ...]:
    """Source index of each output pixel of PIL's NEAREST resize (Pillow ``ImagingScaleAffine``:
    the coordinate starts at half a step and grows by ``n_in / n_out`` in double precision,
    truncated; reproduced addition by addition, so exact ties fall where PIL's do)."""
    step, x, out = n_in / n_out, 0.5 * n_in / n_out, []
    for _ in range(n_out):
        out.append(min(int(x), n_in - 1))
        x += step
    return tuple(out)


def resize_labels(masks: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """N×H×W labels resized nearest-neighbour to ``size`` exactly as kazuto1011/deeplab-pytorch
    ``main.py`` ``resize_labels`` does (PIL ``Image.resize(..., NEAREST)``: each output pixel
    takes the label under its centre; torch's ``nearest`` samples the top-left corner instead)."""
    h, w = (int(v) for v in size)
    if tuple(masks.shape[-2:]) == (h, w):
        return masks
    rows = _nearest_index_tensor(masks.shape[-2], h, masks.device)
    cols = _nearest_index_tensor(masks.shape[-1], w, masks.device)
    return masks.index_select(-2, rows).index_select(-1, cols)


@functools.lru_cache(maxsize=64)
def _nearest_index_tensor(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """:func:`_pil_nearest_index` as a tensor on ``device``, made once: building it every step
    was a host-to-GPU copy from pageable memory, which waits for the GPU to finish the queued
    work (the multi-scale DeepLab v2 loss resizes the labels three times a step)."""
    return torch.tensor(_pil_nearest_index(n_in, n_out), device=device)


def msc_loss(score_maps: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropies of every score map against the labels shrunk to its size."""
    return sum(segmentation_loss(m, resize_labels(target, m.shape[-2:])) for m in score_maps)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class SegmentationModule(L.LightningModule):
    def __init__(self, model: nn.Module, num_classes: int, *,
                 class_names: Sequence[str] | None = None,
                 optimizer: str = "sgd", lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 1e-4,
                 lr_schedule: str = "poly", poly_power: float = 0.9, lr_steps: Sequence[int] = (),
                 lr_gamma: float = 0.1, warmup_steps: int = 0,
                 head_lr_mult: float = 1.0, bias_lr_mult: float = 1.0, aux_weight: float = 0.0,
                 bn: str = "trained", bn_momentum: float | None = None, border_weight: bool = False,
                 train_only: Sequence[str] = (),
                 eval_mode: str = "whole", eval_scales: Sequence[float] = (1.0,), eval_flip: bool = False,
                 eval_window: int | None = None, eval_stride: int | None = None, eval_pad_to: int | None = None,
                 eval_base_size: int | None = None,
                 eval_output_stride: int | None = None, trimap_width: int = 5,
                 evaluators: Sequence[Evaluator] = (), channels_last: bool = False,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        _check(num_classes >= 1, f"num_classes must be >= 1, got {num_classes}")
        _check(class_names is None or len(class_names) == num_classes,
               f"class_names must name the {num_classes} classes, got {class_names and len(class_names)} names")
        optim.check_optimisation(optimizer, lr, momentum, weight_decay, lr_schedule, poly_power, lr_steps,
                                 lr_gamma, warmup_steps, head_lr_mult, bias_lr_mult, model)
        _check(aux_weight >= 0, f"aux_weight must be >= 0, got {aux_weight}")
        _check(bn in ("trained", "frozen"), f"bn must be 'trained' or 'frozen', got {bn!r}")
        _check(bn_momentum is None or 0 < bn_momentum < 1, f"bn_momentum must be in (0, 1), got {bn_momentum}")
        check_protocol(eval_mode, eval_scales, eval_flip, eval_window, eval_stride, eval_pad_to, eval_base_size)
        _check(eval_output_stride is None or hasattr(model, "set_output_stride"),
               f"eval_output_stride={eval_output_stride} needs a model that can change its output stride "
               f"(DeepLab v3/v3+ with a ResNet or Xception); {type(model).__name__} cannot")
        _check(trimap_width >= 0, f"trimap_width must be >= 0, got {trimap_width}")
        for ev in evaluators:
            _check(isinstance(ev, nn.Module) and isinstance(ev, Evaluator), "evaluators must be nn.Modules "
                   f"with name/setup/update/compute/reset (metrics.Evaluator), got {type(ev).__name__}")
        _check(len(mean) == 3 and len(std) == 3 and min(std) > 0,
               f"mean/std must be 3 values each (std > 0), got {mean}, {std}")
        self.save_hyperparameters(ignore=["model", "evaluators"])
        self.model = model
        self.num_classes = num_classes
        self.metrics = nn.ModuleDict({s: segmentation_metrics(num_classes, trimap_width) for s in ("val", "test")})
        self.evaluators = nn.ModuleList(evaluators)
        for ev in self.evaluators:
            ev.setup(self.metrics["val"])
        self.train_output_stride = getattr(model, "output_stride", None)
        self.last_metrics: dict[str, dict] = {}
        self.last_per_image: dict[str, dict] = {}
        self._eval_order: list[int] | None = None  # this process's evaluation indices, in order
        self._eval_seen = 0
        self._final_eval = True  # this evaluation is of the final weights (final_evaluation)
        self.batch_indices: torch.Tensor | None = None  # dataset indices of the batch being evaluated
        if bn_momentum is not None:  # e.g. DeepLab v3's decay 0.9997 = PyTorch momentum 0.0003
            for m in self._batch_norms():
                m.momentum = bn_momentum
        if bn == "frozen":
            for m in self._batch_norms():
                m.requires_grad_(False)
        optim.freeze_all_but(model, tuple(train_only))
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    @staticmethod
    def head_modules(model: nn.Module) -> list[str]:
        """Qualified names of the layers that get ``head_lr_mult`` (``models.new_layers``)."""
        return optim.head_modules(model)

    def _batch_norms(self) -> list[nn.Module]:
        return [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    # --- forward / loss -------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def train_pixel_weights(self):
        """The per-pixel loss weights of one training mask as a picklable function (None without
        ``border_weight``): the data module computes them in its workers (``pixel_weights``), so
        a GPU step does not wait for the CPU; a batch without them gets them here."""
        if not self.hparams.border_weight:
            return None
        from models.unet_weights import unet_weight_map

        return functools.partial(unet_weight_map, ignore_index=IGNORE_INDEX)

    def pixel_weights(self, masks: torch.Tensor) -> torch.Tensor | None:
        weights = self.train_pixel_weights()
        if weights is None:
            return None
        return torch.stack([weights(m.cpu()) for m in masks]).to(masks.device, torch.float32)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks, *given = batch  # (images, masks[, pixel weights from the loader])
        out = self(images)
        if "msc" in out:  # multi-scale inputs: every scale and the fusion (models/msc.py)
            if self.hparams.border_weight:
                raise ValueError("border_weight (U-Net's weight map) is not defined for multi-scale score maps")
            loss = msc_loss(out["msc"], masks)
        else:
            weights = given[0] if given else self.pixel_weights(masks)
            loss = segmentation_loss(out["out"], masks, weights)
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
        return optim.make_optimizer(self.model, hp.optimizer, hp.lr, hp.momentum, hp.weight_decay,
                                    hp.head_lr_mult, hp.bias_lr_mult)

    def total_steps(self) -> int:
        max_steps = self.trainer.max_steps
        return max_steps if max_steps and max_steps > 0 else int(self.trainer.estimated_stepping_batches)

    def lr_factor(self, step: int) -> float:
        hp = self.hparams
        return lr_factor(step, self.total_steps(), hp.lr_schedule, hp.poly_power, hp.lr_steps, hp.lr_gamma,
                         hp.warmup_steps)

    def apply_lr_schedule(self) -> float:
        factor = self.lr_factor(self.global_step)
        for group in self.optimizers(use_pl_optimizer=False).param_groups:
            group["lr"] = group["base_lr"] * factor
        return self.hparams.lr * factor

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self.hparams.bn == "frozen":
            # Lightning switches modules back to train mode after validation; the running
            # statistics must stay those of the checkpoint
            for m in self._batch_norms():
                m.eval()
        for m in optim.frozen_norms(self.model, self.hparams.train_only):  # their statistics stay too
            m.eval()
        self.log("train/lr", optim.device_scalar(self, self.apply_lr_schedule()))  # no GPU sync

    # --- evaluation -----------------------------------------------------------------------
    def predict_probs(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities N×C×H×W under this module's evaluation protocol."""
        hp = self.hparams
        return predict_probs(self, images, hp.eval_mode, scales=hp.eval_scales, flip=hp.eval_flip,
                             window=hp.eval_window, stride=hp.eval_stride, pad_to=hp.eval_pad_to,
                             base_size=hp.get("eval_base_size"))

    def eval_protocol(self) -> str:
        """The evaluation protocol in words (``inference.protocol_label``), stored with the results."""
        hp = self.hparams
        return protocol_label(hp.eval_mode, hp.eval_scales, hp.eval_flip, hp.eval_window, hp.eval_stride,
                              hp.eval_pad_to, hp.get("eval_base_size"))

    def _next_indices(self, n: int) -> torch.Tensor:
        """The dataset indices of the next ``n`` evaluated images (-1 where unknown)."""
        start, self._eval_seen = self._eval_seen, self._eval_seen + n
        if self._eval_order is None:  # no trainer (a direct call): the position is the index
            return torch.arange(start, start + n)
        known = torch.tensor(self._eval_order[start:start + n], dtype=torch.long)
        return torch.cat([known, known.new_full((n - len(known),), -1)])

    def final_evaluation(self) -> bool:
        """Whether this evaluation is of the final weights: by hand, a stand-alone validate/test,
        or the training loop's validation at ``max_steps`` (then the cell's evaluation)."""
        if self._trainer is None or self.trainer.state.fn != TrainerFn.FITTING:
            return True
        return 0 < self.trainer.max_steps <= self.trainer.global_step

    def active_evaluators(self) -> list:
        """The evaluators of this evaluation: ``final_only`` ones (the CRF) at the final one only."""
        return [ev for ev in self.evaluators if self._final_eval or not getattr(ev, "final_only", False)]

    def _start_eval(self, stage: str) -> None:
        self.set_eval_stride(True)
        self._eval_seen = 0
        self._final_eval = self.final_evaluation()
        if self._trainer is None:  # called by hand (experiments.results_folder): positions
            self._eval_order = None
            return
        order = evaluation_order(getattr(self.trainer, f"{stage}_dataloaders"))
        self._eval_order = order if order is not None else []  # [] -> every index unknown (-1)

    def _eval_step(self, batch, stage: str) -> None:
        images, masks = batch
        probs = self.predict_probs(images)
        self.batch_indices = self._next_indices(len(masks)).to(masks.device)
        self.metrics[stage].update(probs.argmax(1), masks, index=self.batch_indices)
        for ev in self.active_evaluators():
            ev.update(images, probs, masks, self)

    def set_eval_stride(self, evaluating: bool) -> None:
        """The network at ``eval_output_stride`` (evaluating) or back at its training stride;
        nothing without an ``eval_output_stride``. Validation and test switch it themselves."""
        if self.hparams.eval_output_stride is not None:
            self.model.set_output_stride(self.hparams.eval_output_stride if evaluating else self.train_output_stride)

    @contextlib.contextmanager
    def evaluated_model(self) -> Iterator[nn.Module]:
        """The network as it evaluates (``eval_output_stride`` applied), e.g. to count its FLOPs."""
        self.set_eval_stride(True)
        try:
            yield self.model
        finally:
            self.set_eval_stride(False)

    def _eval_epoch_end(self, stage: str) -> None:
        self.set_eval_stride(False)
        # every value comes from confusion matrices synced across processes: equal on every rank
        results = {stage: summarise(self.metrics[stage])}
        per_image = {stage: per_image_counts(self.metrics[stage])}
        self.metrics[stage].reset()
        for ev in self.active_evaluators():
            key = f"{stage}_{ev.name}" if ev.name else stage
            results.setdefault(key, {}).update(ev.compute())
            if hasattr(ev, "per_image"):  # optional: per-image values of the evaluator
                rows = ev.per_image()
                if ev.name or rows is None:  # its own predictions (the CRF's): its own file
                    per_image[key] = rows
                elif per_image.get(key) is not None:  # a statistic of the stage's images: same file
                    if not np.array_equal(rows["index"], per_image[key]["index"]):
                        raise RuntimeError(f"{type(ev).__name__}'s per-image rows are not the evaluated images: a bug")
                    per_image[key] = {**per_image[key], **rows}
            ev.reset()
        self._eval_seen, self._eval_order, self.batch_indices = 0, None, None
        self.last_per_image.update({k: v for k, v in per_image.items() if v is not None})
        if self.hparams.eval_output_stride is not None:
            results[stage]["eval_output_stride"] = self.hparams.eval_output_stride
        for prefix, metrics in results.items():
            for key in LOGGED:
                if metrics.get(key) is not None:
                    self.log(f"{prefix}/{key}", metrics[key], prog_bar=key == "miou")
            metrics["eval_mode"] = self.hparams.eval_mode
            metrics["eval_protocol"] = self.eval_protocol()
        self.last_metrics.update(results)

    def on_validation_epoch_start(self) -> None:
        self._start_eval("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval("test")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
