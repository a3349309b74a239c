"""Synchronised BatchNorm for multi-process training, and the way back to plain BatchNorm.

With small per-GPU batches (DeepLab/PSPNet train 2–4 crops per GPU), per-process BatchNorm
statistics are noisy; the peers' issue trackers report about 2 mIoU from synchronising them.

- On GPUs the synchronised layer is ``torch.nn.SyncBatchNorm`` (fused kernels). On CPUs torch
  refuses to synchronise (and DDP refuses ``nn.SyncBatchNorm`` in a CPU module), so
  :class:`CPUSyncBatchNorm` all-reduces the per-channel sum and count, then the sum of squared
  deviations, with a differentiable all-reduce (two passes, as stable as one process's
  BatchNorm; Detectron2's ``NaiveSyncBatchNorm`` idea). Ranks may hold different numbers of
  samples. This lets DDP with SyncBN run, and be tested, on CPUs (gloo).
- :class:`SyncBatchNormAct` / :class:`CPUSyncBatchNormAct` replace timm's ``BatchNormAct2d``
  (BatchNorm then dropout and activation, in timm's Xception stem): torch's own
  ``convert_sync_batchnorm`` would silently drop its activation.
- :func:`convert_sync_batchnorm` / :func:`revert_sync_batchnorm` swap the layers in place,
  keeping the very same parameter and buffer tensors (so optimisers and checkpoints are
  unaffected) and, on the way back, the original class (``nn.BatchNorm2d``, ``BatchNormAct2d``),
  so a model trained under DDP is exported and evaluated on one device exactly like one that
  never was.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "SYNC_BATCHNORM_TYPES",
    "CPUSyncBatchNorm",
    "CPUSyncBatchNormAct",
    "SyncBatchNormAct",
    "convert_sync_batchnorm",
    "revert_sync_batchnorm",
]

_PLAIN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _norm_act_class() -> type | None:
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # timm is a dependency of the backbones, but keep this module torch-only
        return None
    return BatchNormAct2d


class _AllReduceSum(torch.autograd.Function):
    """Sum over the process group; the gradient of every input is the sum of all gradients
    (each rank's loss depends on every rank's contribution)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def _all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    return _AllReduceSum.apply(x, group)


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are all-reduced over the process group, for CPU
    tensors (torch's ``nn.SyncBatchNorm`` refuses them, and DDP refuses ``nn.SyncBatchNorm`` in
    CPU modules). Outside training, or with one process, it is plain BatchNorm."""

    process_group = None

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        distributed = dist.is_available() and dist.is_initialized()
        group = self.process_group or (dist.group.WORLD if distributed else None)
        if not self.training or group is None or dist.get_world_size(group) == 1:
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        x = input.float()  # statistics in float32 also under bf16/fp16 autocast
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype)
        total = _all_reduce(torch.cat([x.sum(dims), count]), group)
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean.reshape(shape)
        var = _all_reduce((centred * centred).sum(dims), group) / n  # biased, for normalising
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            with torch.no_grad():  # running variance is unbiased, as in torch's BatchNorm
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp(min=1), factor)
        return out.to(input.dtype)


class _ThenAct:
    """Mixin: apply the ``drop`` and ``act`` children of timm's ``BatchNormAct2d`` after the norm."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = super().forward(input)
        if hasattr(self, "drop"):
            x = self.drop(x)
        if hasattr(self, "act"):
            x = self.act(x)
        return x


class SyncBatchNormAct(_ThenAct, nn.SyncBatchNorm):
    """``nn.SyncBatchNorm`` (GPU) in place of timm's ``BatchNormAct2d``."""


class CPUSyncBatchNormAct(_ThenAct, CPUSyncBatchNorm):
    """:class:`CPUSyncBatchNorm` in place of timm's ``BatchNormAct2d``."""


SYNC_BATCHNORM_TYPES = (nn.SyncBatchNorm, CPUSyncBatchNorm)


def _swap_class(module: nn.Module, cls: type) -> nn.Module:
    """A ``cls`` instance holding ``module``'s attributes, parameters, buffers and children."""
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    for key in ("_parameters", "_buffers", "_modules"):
        new.__dict__[key] = dict(module.__dict__[key])
    return new


def convert_sync_batchnorm(module: nn.Module, process_group=None, cpu: bool = False) -> nn.Module:
    """Replace every ``BatchNorm1d/2d/3d`` (and timm ``BatchNormAct2d``) by its synchronised
    version, in place: ``nn.SyncBatchNorm`` for GPUs, :class:`CPUSyncBatchNorm` with ``cpu=True``.
    Returns ``module`` (or its replacement if ``module`` itself is a BatchNorm)."""
    norm_act = _norm_act_class()
    kind = type(module)
    target = None
    if kind in _PLAIN:
        target = CPUSyncBatchNorm if cpu else nn.SyncBatchNorm
    elif norm_act is not None and kind is norm_act:
        target = CPUSyncBatchNormAct if cpu else SyncBatchNormAct
    if target is not None:
        out = _swap_class(module, target)
        out.process_group = process_group
        out._unsynced_class = kind
        module = out
    for name, child in list(module.named_children()):
        module._modules[name] = convert_sync_batchnorm(child, process_group, cpu)
    return module


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`convert_sync_batchnorm` (or torch's): every synchronised BatchNorm becomes its
    original class again (``nn.BatchNorm2d`` when unknown) with the same tensors, in place."""
    if isinstance(module, SYNC_BATCHNORM_TYPES):
        original = module.__dict__.get("_unsynced_class", nn.BatchNorm2d)
        out = _swap_class(module, original)
        out.__dict__.pop("_unsynced_class", None)
        out.__dict__.pop("process_group", None)
        module = out
    for name, child in list(module.named_children()):
        module._modules[name] = revert_sync_batchnorm(child)
    return module
