"""Optimiser parameter groups and the learning-rate schedule, shared by the LightningModules.

- Parameter groups: the *head* is every parameter outside the model's pretrained modules
  (``models.pretrained_modules``: ``model.backbone``, or what the model declares with
  ``pretrained_modules()``, e.g. DeepLab-VGG's fc6/fc7) and gets ``head_lr_mult`` × the base
  learning rate (DeepLab: 10× for the newly added fc8 / ASPP classifier layers); biases and normalisation parameters get ``bias_lr_mult`` × (Caffe's
  ``lr_mult: 2``) and no weight decay (``decay_mult: 0`` in the FCN/DeepLab prototxts).
- Schedule (:func:`lr_factor`), a pure function of the optimiser step, so a resumed run continues
  it exactly (no scheduler state to get out of sync):

  - ``"poly"``: (1 − step/max_steps)^power (DeepLab v2 Sec. 4.1, PSPNet Sec. 4.1: power 0.9);
  - ``"step"``: × ``gamma`` at each of ``steps`` (Mask R-CNN Sec. 3.1: ÷10 at 120k of 160k);
  - ``"constant"``: a fixed learning rate (FCN Sec. 4.3);

  each optionally after a linear warm-up over ``warmup_steps``.
- ``train_only`` (:func:`freeze_all_but`): only the named top-level children of the model are
  trained (FCN Table 2, "FCN-32s-fixed": only the classifier ``score_fr`` is fine-tuned); every
  other parameter gets ``requires_grad=False`` and every BatchNorm outside them stays in eval
  mode, so the frozen part is exactly the network it was at the start.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models import new_layers, pretrained_modules, pretrained_parameter_ids

LR_SCHEDULES = ("poly", "step", "constant")
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def lr_factor(step: int, max_steps: int, schedule: str = "poly", power: float = 0.9,
              steps: Sequence[int] = (), gamma: float = 0.1, warmup_steps: int = 0) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based) of ``max_steps``."""
    if schedule == "poly":
        factor = max(0.0, 1.0 - step / max(1, max_steps)) ** power
    elif schedule == "step":
        factor = gamma ** sum(step >= s for s in steps)
    elif schedule == "constant":
        factor = 1.0
    else:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if warmup_steps > 0 and step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return factor


def check_optimisation(optimizer: str, lr: float, momentum: float, weight_decay: float, lr_schedule: str,
                       poly_power: float, lr_steps: Sequence[int], lr_gamma: float, warmup_steps: int,
                       head_lr_mult: float, bias_lr_mult: float, model: nn.Module) -> None:
    """Raise a ValueError naming the first optimisation argument that is out of range."""
    checks = [
        (optimizer in ("sgd", "adamw"), f"optimizer must be 'sgd' (the papers') or 'adamw', got {optimizer!r}"),
        (lr > 0, f"lr must be > 0, got {lr}"),
        (0 <= momentum < 1, f"momentum must be in [0, 1), got {momentum}"),
        (weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}"),
        (lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}"),
        (poly_power >= 0, f"poly_power must be >= 0, got {poly_power}"),
        (lr_schedule != "step" or len(lr_steps) > 0,
         "lr_schedule='step' needs lr_steps (the optimiser steps at which the lr is multiplied by lr_gamma)"),
        (lr_schedule == "step" or len(lr_steps) == 0,
         f"lr_steps={tuple(lr_steps)} apply to lr_schedule='step' only, got lr_schedule={lr_schedule!r}"),
        (all(isinstance(s, int) and s > 0 for s in lr_steps) and all(a < b for a, b in zip(lr_steps, lr_steps[1:])),
         f"lr_steps must be strictly increasing positive ints, got {tuple(lr_steps)}"),
        (0 < lr_gamma, f"lr_gamma must be > 0, got {lr_gamma}"),
        (warmup_steps >= 0, f"warmup_steps must be >= 0, got {warmup_steps}"),
        (head_lr_mult >= 0 and bias_lr_mult >= 0,
         f"head_lr_mult and bias_lr_mult must be >= 0, got {head_lr_mult} and {bias_lr_mult}"),
        (head_lr_mult == 1.0 or bool(pretrained_modules(model)),
         f"head_lr_mult={head_lr_mult} needs the model to expose its pretrained part as `.backbone` "
         f"(or `pretrained_modules()`); {type(model).__name__} has none"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def freeze_all_but(model: nn.Module, train_only: Sequence[str]) -> None:
    """Freeze every parameter outside the top-level children named in ``train_only`` (nothing
    when it is empty). Parameters a trained child already fixes (FCN's bilinear upsampling) stay
    fixed. Training keeps the BatchNorm layers outside them in eval mode (:func:`frozen_norms`)."""
    if not train_only:
        return
    children = dict(model.named_children())
    unknown = [name for name in train_only if name not in children]
    if unknown:
        raise ValueError(f"train_only={tuple(train_only)}: {unknown} are not top-level modules of "
                         f"{type(model).__name__}; it has {list(children)}")
    trained = [children[name] for name in train_only]
    kept = {id(p) for child in trained for p in child.parameters()}
    if not any(p.requires_grad for child in trained for p in child.parameters()):
        raise ValueError(f"train_only={tuple(train_only)}: these modules have no trainable parameters")
    for p in model.parameters():
        if id(p) not in kept:
            p.requires_grad_(False)


def frozen_norms(model: nn.Module, train_only: Sequence[str]) -> list[nn.Module]:
    """The BatchNorm layers outside the ``train_only`` children (none when it is empty), looked
    up each time: DDP's SyncBatchNorm conversion replaces the module objects."""
    if not train_only:
        return []
    inside = {id(m) for name in train_only for m in getattr(model, name).modules()}
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inside]


def head_modules(model: nn.Module) -> list[str]:
    """Qualified names of the layers whose parameters get ``head_lr_mult`` (``models.new_layers``)."""
    return new_layers(model)


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float,
                 bias_lr_mult: float) -> list[dict]:
    """Named groups ``{backbone,head}_{weight,bias}`` of the trainable parameters; ``base_lr``
    is each group's learning rate before the schedule."""
    backbone_ids = pretrained_parameter_ids(model)
    no_decay_ids = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            is_bias = name.endswith(".bias") or id(p) in no_decay_ids
            groups.setdefault((id(p) not in backbone_ids, is_bias), []).append(p)
    out = []
    for (is_head, is_bias), params in sorted(groups.items()):
        mult = (head_lr_mult if is_head else 1.0) * (bias_lr_mult if is_bias else 1.0)
        out.append({"params": params, "lr": lr * mult, "base_lr": lr * mult,
                    "weight_decay": 0.0 if is_bias else weight_decay,
                    "name": f"{'head' if is_head else 'backbone'}_{'bias' if is_bias else 'weight'}"})
    return out


def make_optimizer(model: nn.Module, optimizer: str, lr: float, momentum: float, weight_decay: float,
                   head_lr_mult: float, bias_lr_mult: float) -> torch.optim.Optimizer:
    groups = param_groups(model, lr, weight_decay, head_lr_mult, bias_lr_mult)
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def device_scalar(module, value: float) -> torch.Tensor:
    """``value`` in a 0-d tensor kept on ``module``'s device and filled in place, for
    ``self.log``: a Python float would become a new device tensor at every call (Lightning's
    ``torch.tensor(value, device=...)``), a copy from pageable memory that makes the host wait
    for the GPU, so the host could not queue step n+1 while the GPU ran step n."""
    held = getattr(module, "_logged_scalar", None)
    if held is None or held.device != module.device:
        held = module._logged_scalar = torch.zeros((), device=module.device)
    return held.fill_(value)
