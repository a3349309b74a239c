"""What the checkerboard statistic gives *without* any upsampling artefact: the labels themselves.

``lightning_modules.checkerboard.checkerboard_energy`` is the share of a probability map's
variance explained by the position within the ``period × period`` stride cell. A map with sharp
class boundaries has that share well above 0 even when nothing repeats: a step edge has energy
at every frequency, the aliasing peaks included. So the level a *perfect* prediction would reach
is the statistic of the ground truth as one-hot probabilities; a blurred copy of the labels shows
how softer edges lower it. Read an upsampling table's checkerboard column against these::

    python -m tools.checkerboard_baseline --task thin --image-size 128 --period 16
    python -m tools.checkerboard_baseline --task thin --num 20 --blur 3 5

It prints, for the synthetic task's validation set (the images the runner evaluates: same task,
size and count), the mean ± sample std over images of the statistic of the one-hot labels and of
the labels box-blurred with each ``--blur`` kernel, ×1000 as in the tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.constants import IGNORE_INDEX  # noqa: E402
from datamodules.synthetic import SYNTHETIC_TASKS  # noqa: E402
from lightning_modules.checkerboard import checkerboard_energy  # noqa: E402


def label_baseline(task: str, image_size: int, num: int, period: int, blurs: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    """Per-image statistic of the one-hot validation labels (``"labels"``) and of their k×k box
    blurs (``"blur k"``); void pixels count as background."""
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; expected one of {sorted(SYNTHETIC_TASKS)}")
    data = SYNTHETIC_TASKS[task]("val", num, image_size=image_size)
    masks = torch.stack([data[i][1] for i in range(len(data))])
    masks = torch.where(masks == IGNORE_INDEX, torch.zeros_like(masks), masks)
    onehot = F.one_hot(masks, data.num_classes).permute(0, 3, 1, 2).double()
    out = {"labels": checkerboard_energy(onehot, period)}
    for k in blurs:
        if k < 2:
            raise ValueError(f"--blur kernels must be >= 2 pixels, got {k}")
        blurred = F.avg_pool2d(onehot, k, 1, k // 2, count_include_pad=False)[..., :image_size, :image_size]
        out[f"blur {k}"] = checkerboard_energy(blurred, period)
    return out


def main(argv: list[str] | None = None) -> dict[str, torch.Tensor]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="thin", help="synthetic task (default thin: the upsampling ablation's)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--num", type=int, default=100, help="validation images (default 100, the smoke preset's)")
    p.add_argument("--period", type=int, default=16, help="output pixels (default 16, the upsampling ablation's)")
    p.add_argument("--blur", type=int, nargs="*", default=[3], help="box-blur kernels to compare (default 3)")
    args = p.parse_args(argv)
    try:
        values = label_baseline(args.task, args.image_size, args.num, args.period, tuple(args.blur))
    except ValueError as err:
        p.error(str(err))
    print(f"checkerboard ×1000 of the '{args.task}' validation labels ({args.num} images, {args.image_size} px, "
          f"period {args.period}):")
    for name, v in values.items():
        sd = v.std().item() * 1000 if len(v) > 1 else float("nan")
        print(f"  {name:>8}: {v.mean().item() * 1000:.2f} ± {sd:.2f}")
    return values


if __name__ == "__main__":
    main()
