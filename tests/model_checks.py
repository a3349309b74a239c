"""The one shared tester every architecture and variant passes (smp's ``tests/models/base.py`` idea).

A new variant costs one line in a parametrisation: ``check_segmentation_model(model)`` runs a
forward and a backward pass on an odd-sized batch, checks the output contract
(``{"out": N×C×H×W at the input's H×W}``, ``"aux"`` likewise when present), that every trainable
parameter receives a gradient, the declarations the training code reads (``has_aux_head`` says
whether ``"aux"`` is returned; ``backbone`` is the pretrained part, or None), and, where the
model declares ``output_stride``, that the feature map returned by ``model.features(x)`` is at
that stride.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ODD_SIZE = (2, 3, 97, 131)


def check_segmentation_model(
    model: nn.Module,
    num_classes: int,
    size: tuple[int, int, int, int] = ODD_SIZE,
    expect_aux: bool | None = None,
) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model.train()
    x = torch.randn(*size)
    out = model(x)
    assert isinstance(out, dict) and "out" in out, f"forward must return a dict with 'out', got {type(out)}"
    n, _, h, w = size
    assert out["out"].shape == (n, num_classes, h, w), f"'out' is {tuple(out['out'].shape)}, expected {(n, num_classes, h, w)}"
    if expect_aux is not None:
        assert ("aux" in out) == expect_aux, f"'aux' present={('aux' in out)}, expected {expect_aux}"
    assert model.has_aux_head is ("aux" in out), (
        f"has_aux_head={model.has_aux_head!r} but 'aux' returned={'aux' in out}")
    assert model.backbone is None or isinstance(model.backbone, nn.Module), (
        f"backbone must be the pretrained nn.Module or None, got {type(model.backbone)}")
    if "aux" in out:
        assert out["aux"].shape == (n, num_classes, h, w), f"'aux' is {tuple(out['aux'].shape)}"
    # extra outputs: "aux" (a tensor) or "msc" (a list of score maps, models/msc.py)
    extras = [t for k, v in out.items() if k != "out" for t in (v if isinstance(v, list) else [v])]
    loss = out["out"].float().logsumexp(1).mean() + sum(t.float().mean() for t in extras)
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if "aux" not in out:
        missing = [m for m in missing if "aux" not in m]
    assert not missing, f"parameters without gradient: {missing[:10]}"
    check_output_stride(model, size)
    return out


def check_output_stride(model: nn.Module, size: tuple[int, int, int, int] = ODD_SIZE) -> None:
    """``model.features(x)`` must be at ``model.output_stride`` (within one pixel: padding arithmetic)."""
    stride = getattr(model, "output_stride", None)
    if stride is None:
        return
    model.eval()
    with torch.no_grad():
        feats = model.features(torch.randn(1, *size[1:]))
    h, w = size[2:]
    fh, fw = feats.shape[-2:]
    assert abs(fh - h / stride) <= 1 and abs(fw - w / stride) <= 1, (
        f"features are {fh}x{fw} for a {h}x{w} input: not output stride {stride} "
        f"(expected about {math.ceil(h / stride)}x{math.ceil(w / stride)})"
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
