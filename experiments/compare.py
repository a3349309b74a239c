"""Compare two variants of a results folder: B − A with a paired bootstrap CI over images.

    python -m experiments.compare results/aspp/synthetic_multiscale-smoke LargeFOV ASPP-L
    python -m experiments.compare results/fcn_skip/voc-paper FCN-16s FCN-8s --metric trimap_miou
    # the same variant before and after the dense CRF
    python -m experiments.compare results/crf/voc-paper LargeFOV LargeFOV --eval-b val_crf
    # COCO mask AP of two Mask R-CNN variants; the checkerboard statistic of two decoders
    python -m experiments.compare results/roi_align/synthetic_instances-smoke RoIPool RoIAlign --metric mask_ap
    python -m experiments.compare results/upsampling/synthetic_thin-smoke "U-Net transposed" "U-Net bilinear" --metric checkerboard

The method (what is resampled, why paired, why dataset-level metrics are recomputed per
resample, how seeds enter) is described in ``experiments/stats.py``; :func:`experiments.stats.compare`
is the same as a function (``Comparison`` objects) for notebooks and the claims table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.stats import INSTANCE_METRICS, SEMANTIC_METRICS, Comparison, NotComparable, compare  # noqa: E402

__all__ = ["Comparison", "compare", "main"]


def main(argv: list[str] | None = None) -> Comparison | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results_dir", type=Path, help="a <results>/<ablation>/<dataset>-<preset> folder")
    p.add_argument("a", help="variant A (the reference)")
    p.add_argument("b", help="variant B; Δ = B − A")
    p.add_argument("--metric", default="miou", help=f"one of {', '.join(SEMANTIC_METRICS + INSTANCE_METRICS)} (default miou)")
    p.add_argument("--eval-a", default="val", help="A's evaluation: val (default) or val_crf")
    p.add_argument("--eval-b", default="val", help="B's evaluation: val (default) or val_crf")
    p.add_argument("--seeds", nargs="+", type=int, help="only these seeds (default: every finished seed)")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples and permutations")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling (same seed, same interval)")
    p.add_argument("--confidence", type=float, default=0.95)
    args = p.parse_args(argv)
    if not args.results_dir.is_dir():
        p.error(f"{args.results_dir} is not a folder")
    if args.resamples < 1 or not 0 < args.confidence < 1:
        p.error("--resamples must be >= 1 and --confidence in (0, 1)")
    try:
        result = compare(args.results_dir, args.a, args.b, args.metric, eval_a=args.eval_a, eval_b=args.eval_b,
                         seeds=args.seeds, resamples=args.resamples, seed=args.seed, confidence=args.confidence)
    except NotComparable as err:
        p.error(str(err))
    print(result.text())
    return result


if __name__ == "__main__":
    main()
