"""Theoretical receptive field (RF) of a unit: stack arithmetic and the exact gradient support.

Part of the receptive-field study: :mod:`tools.receptive_field` holds the study (model list,
table, figure, CLI); :mod:`tools.rf_effective` the effective receptive field (ERF, Luo et al.
2016).

**Theoretical receptive field (RF)** — the input pixels a unit depends on at all.

- :func:`stack_receptive_field` does the textbook arithmetic over a sequential stack, layer by
  layer ``r_out = r_in + (k - 1)·d·j_in``, ``j_out = j_in·s`` (``j`` = spacing of the units in
  input pixels, i.e. the stride so far). Three 3×3 convs: 7; a 3×3 conv of dilation 12 on
  stride-8 features adds ``2·12·8 = 192``; VGG16 (2×2/2 pools): conv5_3 196, pool5 212.
- :func:`model_receptive_field` is exact for any model (branches, skips, dilation,
  interpolation): it back-propagates from the centre output unit through a *linearised* copy
  (:func:`linearise`: every conv weight set to the positive constant 1/fan-in and biases to 0;
  ReLU-type activations, normalisation and dropout replaced by the identity; max pooling by
  average pooling with the same window, so no path loses its gradient; float64) and reports
  the side of the bounding box of the pixels with non-zero gradient. With all weights
  positive nothing cancels, so the support of the gradient is exactly the set of pixels the
  unit depends on. The input starts at ``input_size`` and doubles while the support touches
  the border (then the field is *limited by the input*). A model with adaptive pooling whose
  support is the whole input (at a 1×1 pooling, or at two successive sizes) has a **global**
  RF: PSPNet's bin 1 (and DeepLab v3's image pooling) see the whole image whatever its size.
  ``support_fraction`` is the share of the bounding box that is actually reached: below 1 for
  stacks of dilated convs (the "gridding" holes). Note that the RF of the *logits* at the
  centre pixel includes the final bilinear upsampling, which reads two feature cells per axis
  (``+s`` pixels) unless the pixel falls exactly on a cell.
- The output stride: ``model.output_stride`` where declared, and measured as input size over
  the size of ``model.features(x)`` at a multiple of 32 (FCN declares 32: its features are
  fc7; FCN-8s *predicts* at stride 8 through its skips, which the RF column includes).

DeepLab v1 Table 2 lists "receptive field" 224 for LargeFOV (3×3, input stride 12). That number
is ``(k - 1)·rate·8 + 32``: the span of fc6's taps on the stride-8 map plus one stride-32 cell,
the same 224 = 6·32 + 32 as VGG's original 7×7 fc6 on pool5 (the table's 7×7/4, 4×4/8 rows
give 224, the 4×4/4 row 128 by the same formula). It leaves out the field of the pool5 units fc6
reads. Our LargeFOV's fc6 units have the full field 243 + 192 = 435: 227 at pool5 (VGG16 with
DeepLab's 3×3 pools and conv5 dilated by 2), 243 after ``pool5a`` (3×3/1 average), plus 192
for fc6; the logits' centre pixel reads two fc6 cells per axis through the bilinear upsampling
(443). Tested in ``tests/test_receptive_field.py``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

Output = Callable[[nn.Module, torch.Tensor], torch.Tensor]

_POINTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish,
    nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Identity,
    nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.modules.dropout._DropoutNd,
)


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The default output: ``model(x)["out"]`` (or the tensor a plain module returns)."""
    out = model(x)
    return out["out"] if isinstance(out, dict) else out


# --------------------------------------------------------------------------- (a) arithmetic
@dataclass(frozen=True)
class StackRF:
    """Field of the units after a stack: ``rf`` side and ``jump`` (stride) in input pixels;
    ``start`` = input coordinate of the centre of output unit 0 (input pixel i is at i)."""

    rf: int
    jump: int
    start: float


def _pair_value(v, what: str) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise ValueError(f"non-square {what} {v} is not supported")
        v = v[0]
    return int(v)


def _geometry(layer) -> tuple[int, int, int, float] | None:
    """(kernel, stride, dilation, padding) of a layer; None for a pointwise one."""
    if isinstance(layer, (tuple, list)):
        if not 3 <= len(layer) <= 4:
            raise ValueError(f"a layer tuple is (kernel, stride, dilation[, padding]), got {layer}")
        k, s, d, p = (*layer, 0) if len(layer) == 3 else layer
        return int(k), int(s), int(d), float(p)
    if isinstance(layer, nn.Conv2d):
        k, d = _pair_value(layer.kernel_size, "kernel"), _pair_value(layer.dilation, "dilation")
        pad = layer.padding
        if isinstance(pad, str):
            pad = d * (k - 1) // 2 if pad == "same" else 0
        return k, _pair_value(layer.stride, "stride"), d, _pair_value(pad, "padding")
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        k = _pair_value(layer.kernel_size, "kernel")
        s = _pair_value(layer.stride if layer.stride is not None else k, "stride")
        d = _pair_value(getattr(layer, "dilation", 1), "dilation")
        return k, s, d, _pair_value(layer.padding, "padding")
    if isinstance(layer, _POINTWISE):
        return None
    raise TypeError(f"{type(layer).__name__} is not a sequential-stack layer; "
                    "use model_receptive_field for general models")


def _flatten(layers: Iterable) -> list:
    flat = []
    for layer in layers:
        if isinstance(layer, nn.Sequential):
            flat += _flatten(layer)
        else:
            flat.append(layer)
    return flat


def stack_trace(layers: Iterable) -> list[StackRF]:
    """:class:`StackRF` after every geometric layer of a sequential stack (see module doc)."""
    rf, jump, start, trace = 1, 1, 0.0, []
    for layer in _flatten(layers):
        geometry = _geometry(layer)
        if geometry is None:
            continue
        k, s, d, p = geometry
        start += ((k - 1) / 2 * d - p) * jump
        rf += (k - 1) * d * jump
        jump *= s
        trace.append(StackRF(rf, jump, start))
    return trace


def stack_receptive_field(layers: Iterable) -> StackRF:
    """Exact field of a sequential stack of ``(kernel, stride, dilation[, padding])`` tuples or
    ``nn.Conv2d`` / ``nn.MaxPool2d`` / ``nn.AvgPool2d`` modules (pointwise modules and nested
    ``nn.Sequential`` allowed): ``r += (k-1)·d·j``, ``j *= s``, starting from ``r = j = 1``."""
    trace = stack_trace(layers)
    return trace[-1] if trace else StackRF(1, 1, 0.0)


# --------------------------------------------------------------------------- (b) exact, any model
@dataclass(frozen=True)
class ModelRF:
    """Theoretical field of the centre output unit of a model (see :func:`model_receptive_field`)."""

    rf: int                   # side of the support's bounding box (the input side when global)
    height: int
    width: int
    is_global: bool           # the unit sees the whole input at any size (global pooling)
    limited_by_input: bool    # the support still reached the border at the largest input tried
    input_size: int           # the input side of the last measurement
    support_fraction: float   # share of the bounding box with non-zero gradient (< 1: holes)
    declared_stride: int | None = None
    measured_stride: int | None = None

    @property
    def label(self) -> str:
        if self.is_global:
            return "global"
        return f"≥ {self.rf} (input-limited)" if self.limited_by_input else str(self.rf)


def _linear_counterpart(module: nn.Module) -> nn.Module | None:
    if isinstance(module, nn.MaxPool2d):
        if _pair_value(module.dilation, "dilation") != 1:
            raise NotImplementedError("dilated max pooling has no average-pool counterpart")
        return nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode,
                            count_include_pad=True)
    if isinstance(module, nn.AdaptiveMaxPool2d):
        return nn.AdaptiveAvgPool2d(module.output_size)
    if isinstance(module, _POINTWISE):
        return nn.Identity()
    return None


def _replace_nonlinear(module: nn.Module) -> None:
    for name, child in module.named_children():
        new = _linear_counterpart(child)
        if new is None:
            _replace_nonlinear(child)
        else:
            setattr(module, name, new)


def linearise(model: nn.Module) -> nn.Module:
    """A float64 eval-mode copy whose gradient support is the theoretical receptive field:
    conv weights = 1/fan-in (> 0), biases 0, activations / norms / dropout = identity, max
    pooling = average pooling over the same window. Inputs should be positive (ones), so that
    any nonlinearity left in functional form (``F.relu``) passes everything."""
    lin = copy.deepcopy(model)
    _replace_nonlinear(lin)
    lin = lin.double().eval()
    with torch.no_grad():
        for m in lin.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                w = m.weight
                taps = math.prod(w.shape[2:])
                if isinstance(m, nn.ConvTranspose2d):  # each output reads in·(k/s)² inputs
                    fan = w.shape[0] / m.groups * taps / math.prod(m.stride)
                else:
                    fan = w.shape[1] * taps
                w.fill_(1.0 / fan)
                if m.bias is not None:
                    m.bias.zero_()
    for p in lin.parameters():
        p.requires_grad_(False)
    return lin


def _in_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return m.in_channels
    raise ValueError("model has no convolution to infer the input channels from")


def _support(lin: nn.Module, size: int, in_channels: int, output: Output):
    """Gradient support of the centre output unit and whether adaptive pooling ran (to 1×1)."""
    pooled: list[bool] = []

    def hook(module, inputs, out):
        pooled.append(tuple(out.shape[-2:]) == (1, 1))

    handles = [m.register_forward_hook(hook) for m in lin.modules()
               if isinstance(m, nn.AdaptiveAvgPool2d)]
    try:
        x = torch.ones(1, in_channels, size, size, dtype=torch.float64, requires_grad=True)
        out = output(lin, x)
        h, w = out.shape[-2:]
        out[0, :, h // 2, w // 2].sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    return (x.grad[0].abs().sum(0) > 0).numpy(), bool(pooled), any(pooled)


def measured_output_stride(model: nn.Module, size: int = 256) -> int | None:
    """Input side / side of ``model.features(x)`` (None if the model has no ``features``)."""
    if not hasattr(model, "features"):
        return None
    size = max(32, size // 32 * 32)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters())
            x = torch.zeros(1, _in_channels(model), size, size, dtype=p.dtype)
            feats = model.features(x)
    finally:
        model.train(was_training)
    return size // feats.shape[-1] if size % feats.shape[-1] == 0 else round(size / feats.shape[-1])


def model_receptive_field(
    model: nn.Module,
    input_size: int = 128,
    max_input_size: int = 2048,
    output: Output = logits,
    in_channels: int | None = None,
) -> ModelRF:
    """Exact theoretical receptive field of the centre unit of ``output(model, x)`` (default: the
    logits at the centre pixel), via the gradient support on :func:`linearise` (module doc)."""
    lin = linearise(model)
    in_channels = in_channels or _in_channels(model)
    size, previous_full = int(input_size), False
    while True:
        support, adaptive, global_pool = _support(lin, size, in_channels, output)
        rows, cols = np.flatnonzero(support.any(1)), np.flatnonzero(support.any(0))
        if rows.size == 0:
            raise RuntimeError("the centre output unit does not depend on the input")
        full = bool(support.all())
        touches = rows[0] == 0 or cols[0] == 0 or rows[-1] == size - 1 or cols[-1] == size - 1
        is_global = full and adaptive and (global_pool or previous_full)
        if is_global or not touches or 2 * size > max_input_size:
            break
        previous_full, size = full, 2 * size
    height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    box = support[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    declared = getattr(model, "output_stride", None)
    return ModelRF(
        rf=max(height, width), height=height, width=width, is_global=is_global,
        limited_by_input=bool(touches and not is_global), input_size=size,
        support_fraction=float(box.mean()),
        declared_stride=int(declared) if declared is not None else None,
        measured_stride=measured_output_stride(model),
    )

