"""Loading ImageNet weights for the backbones.

``pretrained`` is the same argument everywhere:

- ``False`` — random initialisation (what the tests and the CPU smoke preset use);
- ``True`` — the timm ImageNet weights that correspond to the paper's backbone, fetched by timm
  from the Hugging Face hub (needs network on first use, then cached);
- a path — a checkpoint saved from a timm model of the same architecture
  (``torch.save(timm.create_model(name).state_dict(), path)`` or a ``.safetensors`` file), for
  clusters without network access.

ImageNet weights only exist for the paper's channel widths, so ``width != 1`` with pretrained
weights is an error rather than a silent partial load.
"""

from __future__ import annotations

from pathlib import Path

import torch

PretrainedArg = bool | str | Path


def load_timm_state_dict(pretrained: PretrainedArg, timm_name: str, width: float = 1.0) -> dict | None:
    """Return the state dict that ``pretrained`` designates for timm model ``timm_name``, or None."""
    if pretrained is False or pretrained is None:
        return None
    if width != 1.0:
        raise ValueError(
            f"pretrained={pretrained!r} needs width=1.0 (ImageNet weights exist only for the "
            f"paper's channel widths of {timm_name}), got width={width}"
        )
    if pretrained is True:
        import timm

        return timm.create_model(timm_name, pretrained=True).state_dict()
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained={str(path)!r}: no such file; expected a state dict saved from timm "
            f"model {timm_name!r} (.pth/.pt/.bin or .safetensors), or pretrained=True/False"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - re-raised with the file named
            raise ValueError(f"pretrained={str(path)!r}: cannot read it as a torch state dict: {err}") from err
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained={str(path)!r}: expected a dict of tensors (a state dict)")
    return state


def load_matching(module: torch.nn.Module, state: dict, source: str, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module`` strictly, except keys starting with ``ignore_prefixes``
    (e.g. the ImageNet classifier). Any other missing/unexpected key or shape mismatch raises,
    naming ``source``: a silently partial load would make every later number meaningless."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = module.state_dict()
    bad_shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items() if k in own and own[k].shape != v.shape
    ]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if bad_shapes or missing or unexpected:
        raise ValueError(
            f"pretrained weights from {source} do not match the backbone: "
            f"shape mismatches {bad_shapes[:5]}, missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    module.load_state_dict(state, strict=False)


def load_pretrained(module: torch.nn.Module, pretrained: PretrainedArg, timm_name: str, width: float = 1.0,
                    ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Resolve ``pretrained`` for timm model ``timm_name`` and load it strictly into ``module``."""
    state = load_timm_state_dict(pretrained, timm_name, width)
    if state is not None:
        source = timm_name if pretrained is True else str(pretrained)
        load_matching(module, state, source, ignore_prefixes=ignore_prefixes)
