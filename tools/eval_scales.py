"""Per-scale evaluation of a finished cell: its trained weights tested at each scale alone (with
and without flips) under the cell's own protocol otherwise, then with all the scales together —
to see which scales help or hurt a multi-scale test (PSPNet "+MS", DeepLab "MS + flip").

    python -m tools.eval_scales "results/psp_aux_depth/synthetic_context_tokens-smoke/ResNet50 + MS/seed0"
    python -m tools.eval_scales CELL --scales 0.5 1 1.75 --num 50 --data-root /data

The protocol is the cell's (``lightning_modules.inference``): ``semseg`` (hszhao/semseg: each
scale of the long side, then windows) or ``ms_flip`` (DeepLab: the whole image at each scale); a
cell evaluated ``whole`` is tested as ``ms_flip`` with its padding dropped (a scaled image has
no fixed size to pad to). Prints one markdown table: scales, flip, mIoU and pixel accuracy in %
over the first ``--num`` validation images (default: all), from one dataset-level confusion
matrix (``lightning_modules.metrics``), as the runner computes them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.results_folder import load_cell, validation_samples  # noqa: E402
from lightning_modules.inference import DEEPLAB_V3_SCALES, predict_probs  # noqa: E402
from lightning_modules.metrics import confusion_matrix_metric, metrics_from_confusion  # noqa: E402


def protocol(module) -> dict:
    """The cell's evaluation protocol as ``predict_probs`` keywords, scales and flip left out."""
    hp = module.hparams
    if hp.eval_mode == "semseg":
        return {"mode": "semseg", "window": hp.eval_window, "stride": hp.eval_stride,
                "base_size": hp.get("eval_base_size")}
    if hp.eval_mode in ("ms_flip", "whole"):
        return {"mode": "ms_flip", "pad_to": hp.eval_pad_to if hp.eval_mode == "ms_flip" else None}
    raise ValueError(f"eval_mode={hp.eval_mode!r} has no scales to vary (semseg, ms_flip or whole only)")


def evaluate(module, samples, scales: Sequence[float], flip: bool, **kwargs) -> dict[str, float]:
    """mIoU and pixel accuracy (%) of ``module`` on ``samples`` at ``scales`` (± flips)."""
    cm = confusion_matrix_metric(module.hparams.num_classes)
    with torch.no_grad():
        for image, mask in zip(samples.images, samples.masks, strict=True):
            probs = predict_probs(module, image[None], scales=tuple(scales), flip=flip, **kwargs)
            cm.update(probs.argmax(1), torch.as_tensor(mask, dtype=torch.long)[None])
    m = metrics_from_confusion(cm.compute())
    return {"miou": 100 * m["miou"], "pixel_acc": 100 * m["pixel_acc"]}


def scale_table(run_dir: Path, scales: Sequence[float], num: int | None = None,
                root: str | Path | None = None) -> list[dict]:
    """One row per single scale (without, then with flips), then all ``scales`` with flips."""
    module, config = load_cell(run_dir)
    samples = validation_samples(config, n=num or 10**9, root=root)
    kwargs = protocol(module)
    rows = []
    for s in scales:
        for flip in (False, True):
            rows.append({"scales": (s,), "flip": flip, **evaluate(module, samples, (s,), flip, **kwargs)})
    rows.append({"scales": tuple(scales), "flip": True, **evaluate(module, samples, scales, True, **kwargs)})
    for r in rows:
        r["images"], r["mode"] = len(samples.images), kwargs["mode"]
    return rows


def render(rows: list[dict], run_dir: Path) -> str:
    lines = [f"{run_dir}: {rows[0]['images']} validation images, protocol {rows[0]['mode']}", "",
             "| scales | flip | mIoU | pixel acc |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {', '.join(f'{s:g}' for s in r['scales'])} | {'yes' if r['flip'] else 'no'} "
                     f"| {r['miou']:.2f} | {r['pixel_acc']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cell", type=Path, help="a finished cell: results/<ablation>/<dataset>-<preset>/<variant>/seed<k>")
    p.add_argument("--scales", type=float, nargs="+", default=list(DEEPLAB_V3_SCALES),
                   help="default 0.5 0.75 1 1.25 1.5 1.75 (DeepLab v3 and hszhao/semseg alike)")
    p.add_argument("--num", type=int, help="the first N validation images (default: all)")
    p.add_argument("--data-root", help="real data: the folder the run read (if its config records none)")
    args = p.parse_args(argv)
    if not (args.cell / "metrics.json").is_file():
        p.error(f"{args.cell}: no metrics.json there (not a finished cell)")
    if any(s <= 0 for s in args.scales):
        p.error(f"--scales must be > 0, got {args.scales}")
    try:
        rows = scale_table(args.cell, args.scales, args.num, args.data_root)
    except ValueError as err:  # a protocol without scales (sliding), a real dataset without its root
        p.error(f"{args.cell}: {err}")
    print(render(rows, args.cell))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
