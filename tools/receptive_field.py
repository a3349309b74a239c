"""Theoretical and effective receptive fields of the model zoo (issue #8).

The lectures' receptive-field argument, measured: PSPNet (Zhao et al., CVPR'17, Sec. 3.1)
observes that "the empirical receptive field of CNN is much smaller than the theoretical one
especially on high-level layers" and answers with global pyramid pooling; DeepLab's atrous rates
(v1 Sec. 3.1, v2 Sec. 3.1) exist to enlarge the field of view without adding parameters.

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

**Effective receptive field (ERF)** — Luo, Li, Urtasun & Zemel, "Understanding the Effective
Receptive Field in Deep Convolutional Neural Networks", NeurIPS 2016: the gradient of one
output unit with respect to the input, ``|∂y_centre/∂x|``, averaged over inputs.
:func:`effective_receptive_field` back-propagates from the logits ``model(x)["out"]`` at the
centre pixel (or from any map given by ``output``, e.g. ``lambda m, x: m.features(x)``),
projected on a random direction ``v ~ N(0, I)`` in class space (a fresh ``v`` per input; for
one class this is that logit), sums ``|grad|`` over the input channels, averages over
``n_inputs`` random inputs (N(0, 1) pixels, or the given ``inputs``, e.g. real normalised
images) in eval mode (dropout off, BatchNorm with its running statistics), normalises the map
to sum 1 per initialisation and averages over ``n_inits`` random initialisations (or uses the
given, e.g. trained, weights: :func:`load_lightning_weights`).
**ERF size** = side ``2r + 1`` of the smallest square centred on the output pixel that holds
``mass`` (95 %) of the normalised map; ``r`` is how far (Chebyshev distance, pixels) from the
centre 95 % of the gradient reaches. The table also gives ERF side / theoretical RF side.

Caveats:

- Random initialisation is not training. Luo et al. (Sec. 4.2, Fig. 3) find the ERF *grows*
  during training, and trained weights are what matter for a task; pass ``--checkpoints`` to
  measure trained models too. At random init the study re-draws layers that are initialised
  to exactly zero, which would otherwise make the gradient vanish or skip a branch: FCN's
  zero-initialised score layers (torch's default conv init instead) and timm's ``zero_init_last`` (the
  last BatchNorm γ of every ResNet bottleneck is 0, so at init each residual branch is off and
  a ResNet is its shortcut path; γ = 1 instead). Without that, a fresh ResNet's ERF is that of
  its stem and 1×1 shortcuts.
- The ERF depends on the inputs (ReLU masks) and on the input size: a field larger than the
  input is cut at the border (flagged "input-limited"), and zero padding changes the statistics
  near it. With BatchNorm in eval mode at random init (running mean 0, variance 1) BN is the
  identity, which is not what a from-scratch network trains with.
- The 95 % square is one summary; Luo et al. describe the ERF as roughly Gaussian, so it has
  no hard edge. The maps are written on a log scale to show the tails.

DeepLab v1 Table 2 lists "receptive field" 224 for LargeFOV (3×3, input stride 12). That number
is ``(k - 1)·rate·8 + 32``: the span of fc6's taps on the stride-8 map plus one stride-32 cell,
the same 224 = 6·32 + 32 as VGG's original 7×7 fc6 on pool5 (the table's 7×7/4, 4×4/8 rows
give 224, the 4×4/4 row 128 by the same formula). It leaves out the field of the pool5 units fc6
reads. Our LargeFOV's fc6 units have the full field 243 + 192 = 435: 227 at pool5 (VGG16 with
DeepLab's 3×3 pools and conv5 dilated by 2), 243 after ``pool5a`` (3×3/1 average), plus 192
for fc6; the logits' centre pixel reads two fc6 cells per axis through the bilinear upsampling
(443). Tested in ``tests/test_receptive_field.py``.

Study (``python -m tools.receptive_field --out DIR``): FCN-32s, FCN-8s, DeepLab LargeFOV, ASPP-S,
ASPP-L (DeepLab v2, VGG16) and PSPNet ResNet-50 with bins (1, 2, 3, 6) and without pyramid
(``bins=()``), built by :func:`models.build_model` with random weights. It writes
``DIR/receptive_fields.md`` (table) and ``DIR/erf_maps.png`` (log-scale ERF maps; red square =
theoretical RF, white dashed = ERF 95 %). Defaults: ``--size 256 --width 0.125 --inputs 4
--inits 2`` (ERF at 256 px, channel width 1/8, 4 random inputs for each of 2 initialisations);
the theoretical RF runs on a width-1/32 copy of each architecture (the support does not depend
on the channel counts). 70-100 s on 2 CPU cores (measured on a shared 2-core machine; 35-50 s
of CPU time).
``--checkpoints RESULTS_DIR`` adds the trained runs found under it (``*/config.json`` +
``checkpoints/last.ckpt``, seeds averaged), on validation images of their synthetic task at
their training size::

    python -m tools.receptive_field --out /tmp/rf
    python -m tools.receptive_field --out /tmp/rf --checkpoints results/psp_bins
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # also runnable as ``python tools/receptive_field.py``
    sys.path.insert(0, str(ROOT))

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


# --------------------------------------------------------------------------- (2) effective RF
@dataclass
class ERF:
    """Normalised mean |gradient| map (sums to 1) and its centred-square summary."""

    map: np.ndarray
    centre: tuple[int, int]
    mass: float
    radius: int               # 95 % of the map lies within this Chebyshev distance of centre
    side: int                 # 2·radius + 1
    limited_by_input: bool    # the square reached the image border before holding ``mass``
    n_inputs: int
    n_inits: int
    redrawn: list[str] = field(default_factory=list)  # zero-initialised layers re-drawn


def centred_mass_radius(m: np.ndarray, centre: tuple[int, int], mass: float = 0.95) -> tuple[int, bool]:
    """Smallest ``r`` with ``mass`` of ``m`` in the square ``[c - r, c + r]²`` (clipped to the
    image), and whether that square reaches the image border."""
    h, w = m.shape
    cy, cx = centre
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = m.cumsum(0).cumsum(1)
    total = integral[-1, -1]
    for r in range(max(h, w)):
        y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
        inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        if inside >= mass * total - 1e-12:
            return r, (y0 == 0 or x0 == 0 or y1 == h or x1 == w)
    return max(h, w), True


def redraw_zero_init(model: nn.Module) -> list[str]:
    """Re-draw weights initialised to exactly zero (FCN's score layers: torch's default conv
    init, like the VGG layers around them; timm's ``zero_init_last`` BatchNorm γ: 1), which at
    random init cut the gradient or switch a branch off."""
    redrawn = []
    with torch.no_grad():
        for name, m in model.named_modules():
            weight = getattr(m, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.numel() == 0 or weight.any():
                continue
            if isinstance(m, nn.modules.conv._ConvNd):
                m.reset_parameters()  # torch's default init, as the layers around it
            elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
                weight.fill_(1.0)
            else:
                continue
            redrawn.append(name)
    return redrawn


def effective_receptive_field(
    model: nn.Module | Sequence[nn.Module] | Callable[[], nn.Module],
    input_size: int = 256,
    n_inputs: int = 8,
    n_inits: int = 1,
    seed: int = 0,
    inputs: torch.Tensor | None = None,
    output: Output = logits,
    mass: float = 0.95,
    redraw: bool | None = None,
    batch_size: int = 4,
) -> ERF:
    """ERF (Luo et al. 2016) of the centre unit of ``output(model, x)``; see the module doc.

    ``model`` is a module (its weights are used as they are, e.g. trained), a sequence of them
    (e.g. the seeds of a trained run; maps averaged) or a zero-argument factory, called
    ``n_inits`` times under seeds ``seed, seed + 1, ...`` for random inits.
    ``inputs`` (N×C×H×W) replaces the N(0, 1) random inputs. ``redraw`` applies
    :func:`redraw_zero_init`; by default for factories only.
    """
    if isinstance(model, (nn.Module, Sequence)):
        modules = [model] if isinstance(model, nn.Module) else list(model)
        if n_inits != 1:
            raise ValueError("n_inits > 1 needs a model factory, not given modules")
        makers = [lambda m=m: m for m in modules]
        redraw = False if redraw is None else redraw
    else:
        makers = [model] * n_inits
        redraw = True if redraw is None else redraw
    generator = torch.Generator().manual_seed(seed)
    total, redrawn, centre, n_seen = None, [], None, 0
    for i, make in enumerate(makers):
        torch.manual_seed(seed + i)
        net = make()
        if redraw:
            redrawn = redraw_zero_init(net)
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        xs = inputs if inputs is not None else torch.randn(
            n_inputs, _in_channels(net), input_size, input_size, generator=generator)
        acc = torch.zeros(xs.shape[-2:], dtype=torch.float64)
        for batch in xs.split(batch_size):
            x = batch.detach().clone().float().requires_grad_(True)
            out = output(net, x)
            h, w = out.shape[-2:]
            v = torch.randn(out.shape[0], out.shape[1], generator=generator)
            (out[:, :, h // 2, w // 2] * v).sum().backward()
            acc += x.grad.detach().abs().sum((0, 1)).double()
        if acc.sum() == 0:
            raise RuntimeError("zero gradient: is the output layer initialised to zero?")
        total = acc / acc.sum() if total is None else total + acc / acc.sum()
        n_seen = len(xs)
        if centre is None:
            same_grid = (h, w) == tuple(xs.shape[-2:])
            centre = (h // 2, w // 2) if same_grid else None
    erf_map = (total / len(makers)).numpy()
    if centre is None:  # a coarser map: centre the square on the map's centre of mass
        yy, xx = np.indices(erf_map.shape)
        centre = (int(round((yy * erf_map).sum())), int(round((xx * erf_map).sum())))
    radius, limited = centred_mass_radius(erf_map, centre, mass)
    return ERF(erf_map, centre, mass, radius, 2 * radius + 1, limited, n_seen, len(makers),
               redrawn)


def load_lightning_weights(model: nn.Module, checkpoint: str | Path) -> nn.Module:
    """Load the ``model.``-prefixed weights of a Lightning ``SegmentationModule`` checkpoint."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    prefix = "model."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{checkpoint}: no 'model.'-prefixed weights in the state dict")
    model.load_state_dict(weights, strict=True)
    return model


# --------------------------------------------------------------------------- (3) the study
# name, build_model name, kwargs (the papers' variants; see README "Models")
STUDY: list[tuple[str, str, dict]] = [
    ("FCN-32s", "fcn32s", {}),
    ("FCN-8s", "fcn8s", {}),
    ("DeepLab LargeFOV", "deeplab_largefov", {}),
    ("ASPP-S (2,4,8,12)", "deeplab_v2", {"backbone": "vgg16", "atrous_rates": (2, 4, 8, 12)}),
    ("ASPP-L (6,12,18,24)", "deeplab_v2", {"backbone": "vgg16", "atrous_rates": (6, 12, 18, 24)}),
    ("PSPNet R50 B1236", "pspnet", {"backbone": "resnet50", "bins": (1, 2, 3, 6)}),
    ("PSPNet R50 no pyramid", "pspnet", {"backbone": "resnet50", "bins": ()}),
]
RF_WIDTH = 1 / 32  # channel width of the copy the theoretical RF is computed on
STUDY_CLASSES = 21


@dataclass
class StudyRow:
    name: str
    theoretical: ModelRF
    erf: ERF
    input_size: int
    source: str  # "random init (n inits)" or the trained run

    @property
    def ratio(self) -> float:
        """ERF side / theoretical RF side (/ input side when the RF is global)."""
        return self.erf.side / (self.input_size if self.theoretical.is_global else self.theoretical.rf)


def _tuples(kwargs: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def theoretical_rf(name: str, kwargs: dict, num_classes: int = STUDY_CLASSES) -> ModelRF:
    """:func:`model_receptive_field` of architecture ``name`` built at width 1/32."""
    from models import build_model

    kwargs = {**_tuples(kwargs), "width": RF_WIDTH, "pretrained": False}
    # start at 512 px: the fields here are 400-650 px, so fewer doublings to reach them
    return model_receptive_field(build_model(name, num_classes, **kwargs), input_size=512)


def study_random_init(size: int = 256, width: float = 0.125, n_inputs: int = 4, n_inits: int = 2,
                      seed: int = 0, study=STUDY, log=print) -> list[StudyRow]:
    """Theoretical RF and random-init ERF of every entry of ``study``."""
    from models import build_model

    rows = []
    for name, model_name, kwargs in study:
        start = time.perf_counter()

        def factory(model_name=model_name, kwargs=kwargs):
            return build_model(model_name, STUDY_CLASSES, width=width, pretrained=False, **kwargs)

        rf = theoretical_rf(model_name, kwargs)
        erf = effective_receptive_field(factory, size, n_inputs, n_inits, seed)
        rows.append(StudyRow(name, rf, erf, size, f"random init ({n_inits})"))
        log(f"{name}: RF {rf.label}, ERF95 {erf.side} px ({time.perf_counter() - start:.1f} s)")
    return rows


def find_runs(results_dir: str | Path) -> dict[str, list[Path]]:
    """Run folders (``config.json`` + ``checkpoints/last.ckpt``) grouped by ablation/dataset/variant."""
    groups: dict[str, list[Path]] = {}
    for cfg in sorted(Path(results_dir).rglob("config.json")):
        if (cfg.parent / "checkpoints" / "last.ckpt").is_file():
            c = json.loads(cfg.read_text())
            groups.setdefault(f"{c['ablation']}/{c['dataset']}/{c['variant']}", []).append(cfg.parent)
    return groups


def load_run(run_dir: str | Path, checkpoint: str = "last.ckpt"):
    """(model with the run's trained weights, its config.json, the module's hyper-parameters)."""
    from models import build_model

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    ckpt_path = run_dir / "checkpoints" / checkpoint
    hparams = torch.load(ckpt_path, map_location="cpu", weights_only=True)["hyper_parameters"]
    resolved = config["resolved"]
    model = build_model(resolved["model"], int(hparams["num_classes"]), **_tuples(resolved["model_kwargs"]))
    return load_lightning_weights(model, ckpt_path), config, hparams


def task_images(dataset: str, image_size: int, n: int, mean: Sequence[float], std: Sequence[float],
                seed: int = 0) -> torch.Tensor | None:
    """``n`` normalised validation images of a synthetic dataset name ("synthetic_context-smoke",
    "synthetic_context256px-smoke"); None for other datasets (random inputs are used)."""
    from datamodules.synthetic import SYNTHETIC_TASKS

    task = dataset.removeprefix("synthetic_").split("-")[0].rstrip("0123456789px")
    if not dataset.startswith("synthetic_") or task not in SYNTHETIC_TASKS:
        return None
    data = SYNTHETIC_TASKS[task]("val", n, image_size, seed)
    images = torch.stack([data[i][0] for i in range(n)]).float() / 255
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def study_trained(results_dir: str | Path, n_inputs: int = 4, log=print) -> list[StudyRow]:
    """ERF of every trained run under ``results_dir`` (seeds averaged), on its task's images."""
    rows = []
    for key, runs in find_runs(results_dir).items():
        start = time.perf_counter()
        loaded = [load_run(r) for r in runs]
        config, hparams = loaded[0][1], loaded[0][2]
        size = int(config["resolved"]["data"]["image_size"])
        images = task_images(config["dataset"], size, n_inputs, hparams["mean"], hparams["std"])
        erf = effective_receptive_field([m for m, _, _ in loaded], size, n_inputs, inputs=images)
        rf = theoretical_rf(config["resolved"]["model"], config["resolved"]["model_kwargs"],
                            int(hparams["num_classes"]))
        inputs = "task images" if images is not None else "random inputs"
        seeds = f"{len(runs)} seed" + ("s" if len(runs) > 1 else "")
        rows.append(StudyRow(key, rf, erf, size, f"trained ({seeds}, {inputs})"))
        log(f"{key}: RF {rf.label}, ERF95 {erf.side} px ({time.perf_counter() - start:.1f} s)")
    return rows


def markdown_table(rows: Sequence[StudyRow]) -> str:
    lines = [
        "| model | weights | input (px) | output stride (declared / measured) | theoretical RF (px) "
        "| ERF 95 % side (px) | ERF 95 % radius (px) | ERF / theoretical RF |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        t, e = row.theoretical, row.erf
        erf = f"{e.side}" + (" (input-limited)" if e.limited_by_input else "")
        ratio = f"{row.ratio:.2f}"
        if t.is_global:
            ratio += " of the input"
        elif t.rf > row.input_size:  # the ERF cannot exceed the input it is measured on
            ratio += f" (at most {row.input_size / t.rf:.2f}: RF > input)"
        lines.append(f"| {row.name} | {row.source} | {row.input_size} | {t.declared_stride} / "
                     f"{t.measured_stride} | {t.label} | {erf} | {e.radius} | {ratio} |")
    return "\n".join(lines)


def plot_maps(rows: Sequence[StudyRow], path: str | Path | None = None, decades: float = 4.0):
    """Grid of log10 ERF maps (red = theoretical RF, white dashed = ERF 95 % square), saved to
    ``path`` (then closed) or returned as a matplotlib figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cols = min(4, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        m = np.log10(row.erf.map / row.erf.map.max() + 1e-30)
        im = ax.imshow(m, cmap="magma", vmin=-decades, vmax=0)
        for spine in ax.spines.values():  # let the RF square show at the panel's edge
            spine.set_visible(False)
        cy, cx = row.erf.centre
        h, w = m.shape
        if not row.theoretical.is_global:
            half = row.theoretical.rf / 2
            ax.add_patch(Rectangle((cx - half, cy - half), 2 * half, 2 * half, fill=False,
                                   edgecolor="red", linewidth=1.5))
        r = row.erf.radius + 0.5
        ax.add_patch(Rectangle((cx - r, cy - r), 2 * r, 2 * r, fill=False, edgecolor="white",
                               linestyle="--", linewidth=1.2))
        # show the whole theoretical RF square even where it is larger than the input
        reach = max(cy + 0.5, cx + 0.5, h - cy - 0.5, w - cx - 0.5,
                    0 if row.theoretical.is_global else row.theoretical.rf / 2) + 2
        ax.set_xlim(cx - reach, cx + reach)
        ax.set_ylim(cy + reach, cy - reach)
        ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, edgecolor="grey", linewidth=0.8))
        ax.set_title(f"{row.name}\nRF {row.theoretical.label}, ERF95 {row.erf.side}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="log10 (|grad| / its maximum)")
    fig.suptitle("ERF maps (grey: input; red: theoretical RF; white dashed: 95 % of the gradient)",
                 fontsize=9)
    if path is None:
        return fig
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_report(rows: Sequence[StudyRow], out: str | Path, settings: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_maps(rows, out / "erf_maps.png")
    text = (
        "# Theoretical vs effective receptive fields\n\n"
        f"Generated by `python -m tools.receptive_field` ({settings}); definitions and caveats "
        "in the module docstring of `tools/receptive_field.py`.\n\n"
        + markdown_table(rows) + "\n\n"
        "- Theoretical RF: side of the bounding box of the pixels the logits' centre pixel "
        "depends on (exact, via a linearised copy); \"global\" = the whole input at any size "
        "(global pooling). It includes the final bilinear upsampling (+1 feature cell).\n"
        "- ERF 95 %: side 2r+1 of the smallest square centred on that pixel holding 95 % of the "
        "mean |gradient| (Luo et al., NeurIPS 2016); radius r in pixels. \"input-limited\": the "
        "square reached the image border.\n"
        "- Random init: zero-initialised layers (FCN score layers, timm's zero-init-last BN γ) "
        "re-drawn; Luo et al. find the ERF grows with training.\n"
        "- Maps: `erf_maps.png` (log10 of |grad| / its maximum over 4 decades; grey = input, red = "
        "theoretical RF, white dashed = ERF 95 %).\n"
    )
    (out / "receptive_fields.md").write_text(text)
    return out / "receptive_fields.md"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for receptive_fields.md and erf_maps.png")
    parser.add_argument("--size", type=int, default=256, help="ERF input side in pixels")
    parser.add_argument("--width", type=float, default=0.125, help="channel width of the ERF models")
    parser.add_argument("--inputs", type=int, default=4, help="random inputs per initialisation")
    parser.add_argument("--inits", type=int, default=2, help="random initialisations per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoints", help="results folder: also measure its trained runs")
    parser.add_argument("--models", nargs="+", choices=[name for name, _, _ in STUDY],
                        help="a subset of the study (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    study = [entry for entry in STUDY if not args.models or entry[0] in args.models]
    rows = study_random_init(args.size, args.width, args.inputs, args.inits, args.seed, study)
    if args.checkpoints:
        rows += study_trained(args.checkpoints, args.inputs)
    settings = (f"--size {args.size} --width {args.width} --inputs {args.inputs} --inits "
                f"{args.inits} --seed {args.seed}"
                + (f" --checkpoints {args.checkpoints}" if args.checkpoints else ""))
    report = write_report(rows, args.out, settings)
    print(report.read_text())
    print(f"wrote {report} and {report.parent / 'erf_maps.png'} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
