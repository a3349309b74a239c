"""Effective receptive field (ERF) of a unit: the mean |gradient| map and its 95 % square.

Part of the receptive-field study: :mod:`tools.receptive_field` holds the study (model list,
table, figure, CLI; also the caveats of measuring the ERF at random initialisation);
:mod:`tools.rf_theory` the theoretical receptive field and the default ``output``
(:func:`~tools.rf_theory.logits`).

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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tools.rf_theory import Output, _in_channels, logits


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
