"""Cross-validate the dense-CRF parameters of one trained cell, as DeepLab did per model.

DeepLab v1 (ICLR'15) Sec. 4.1 and v2 (TPAMI'17) Sec. 4.1: the Gaussian (smoothness) kernel is
fixed at w2 = 3, σγ = 3; w1 (bilateral weight), σα (bilateral spatial σ) and σβ (bilateral colour
σ) are searched by cross-validation on 100 val images, coarse to fine, with 10 mean-field
iterations. The coarse grid (MATLAB notation) is v2's w1 ∈ [3:6], σα ∈ [30:10:100], σβ ∈ [3:6]
(``--paper v2``, the default: the CRF ablation reproduces v2 Table 3) or v1's w1 ∈ [5:10],
σα ∈ [50:10:100], σβ ∈ [3:5] (``--paper v1``); the fine round then "refines the search step
sizes around the first round's best values": here half the coarse step, one half-step on each
side of the coarse best (3 values per parameter). In ``lightning_modules.crf.CRFParams`` terms:
w1 = ``bi_w``, σα = ``bi_xy_std``, σβ = ``bi_rgb_std``, w2 = ``pos_w``, σγ = ``pos_xy_std``.

The cell's own probabilities (its recorded evaluation protocol) of ``--val-subset`` val images
(a seeded random subset, recorded) are computed once; every grid point refines them and is
scored by the mIoU of one confusion matrix over the subset. The result goes to the cell folder
as ``crf_params.json`` (the grids, every score, the chosen point, the subset), and the CRF
ablation uses it: ``python experiments/crf_ablation.py ... --crf-params-from CELL_OR_FOLDER``
(see ``experiments/runner.py``); the card shows the values and ``eval.crf_params_from``.

    python -m experiments.crf_search results/aspp/voc-paper/LargeFOV/seed0 --data-root /data
    python -m experiments.crf_search CELL --val-subset 100 --grid coarse --workers 8

Note: the 100 images are part of val, on which the ablation then reports, as in the papers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from lightning_modules.crf import CRFParams, dense_crf

SEARCHED = ("bi_w", "bi_xy_std", "bi_rgb_std")          # w1, σα, σβ
FIXED = {"pos_w": 3.0, "pos_xy_std": 3.0, "iterations": 10}   # w2 = 3, σγ = 3, 10 iterations
COARSE = {  # MATLAB ranges of the papers' first round
    "v2": {"bi_w": [3, 4, 5, 6], "bi_xy_std": list(range(30, 101, 10)), "bi_rgb_std": [3, 4, 5, 6]},
    "v1": {"bi_w": [5, 6, 7, 8, 9, 10], "bi_xy_std": list(range(50, 101, 10)), "bi_rgb_std": [3, 4, 5]},
}
FILE = "crf_params.json"


@dataclass
class Sample:
    rgb: np.ndarray      # H×W×3 uint8
    probs: np.ndarray    # C×H×W float32
    mask: np.ndarray     # H×W int64, 255 = void


def miou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes present in the labels or the predictions."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    valid = union > 0
    return float((tp[valid] / union[valid]).mean()) if valid.any() else 0.0


def confusion(pred: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
    keep = mask != 255
    return np.bincount(num_classes * mask[keep] + pred[keep], minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def score(samples: Sequence[Sample], params: CRFParams | None) -> float:
    """mIoU of the (CRF-refined, if ``params``) argmax over all samples."""
    c = samples[0].probs.shape[0]
    total = np.zeros((c, c), dtype=np.int64)
    for s in samples:
        probs = s.probs if params is None else dense_crf(s.rgb, s.probs, params)
        total += confusion(probs.argmax(0), s.mask, c)
    return miou(total)


def fine_grid(coarse: Mapping[str, Sequence[float]], best: Mapping[str, float]) -> dict[str, list[float]]:
    """Half the coarse step, one half-step either side of the coarse best."""
    out = {}
    for name, values in coarse.items():
        step = (values[1] - values[0]) / 2 if len(values) > 1 else 0
        centre = best[name]
        out[name] = sorted({v for v in (centre - step, centre, centre + step) if v > 0})
    return out


def _score_point(args) -> float:
    samples, params = args
    return score(samples, params)


def search_round(samples: Sequence[Sample], grid: Mapping[str, Sequence[float]], base: CRFParams,
                 workers: int = 1) -> list[dict]:
    """Every grid point (the product of ``grid``'s values over ``base``) with its mIoU."""
    names = list(grid)
    points = [replace(base, **dict(zip(names, map(float, values))))
              for values in itertools.product(*(grid[n] for n in names))]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            scores = list(pool.map(_score_point, [(samples, p) for p in points]))
    else:
        scores = [score(samples, p) for p in points]
    return [{"params": asdict(p), "miou": s} for p, s in zip(points, scores, strict=True)]


def best_of(results: Sequence[dict]) -> dict:
    """The highest mIoU; ties go to the first point in grid order (deterministic)."""
    return max(results, key=lambda r: r["miou"])


def search(samples: Sequence[Sample], coarse: Mapping[str, Sequence[float]], fine: bool = True,
           base: CRFParams | None = None, workers: int = 1) -> dict:
    """The coarse(-to-fine) search; returns the grids, every score and the chosen parameters."""
    base = base or CRFParams(**FIXED)
    rounds = [{"grid": {k: list(map(float, v)) for k, v in coarse.items()},
               "scores": search_round(samples, coarse, base, workers)}]
    best = best_of(rounds[0]["scores"])
    if fine:
        grid = fine_grid(coarse, best["params"])
        rounds.append({"grid": grid, "scores": search_round(samples, grid, base, workers)})
        best = max([best, best_of(rounds[1]["scores"])], key=lambda r: r["miou"])
    return {"params": best["params"], "miou": best["miou"], "miou_without_crf": score(samples, None),
            "fixed": {k: getattr(base, k) for k in asdict(base) if k not in coarse}, "rounds": rounds}


def cell_samples(run_dir: Path, n: int, seed: int, root: str | None, device: str) -> tuple[list[Sample], list[int]]:
    """The cell's probabilities (its own evaluation protocol) on a seeded subset of val."""
    import torch

    from experiments.results_folder import load_cell, validation_samples

    module, config = load_cell(run_dir, device=device)
    from experiments.recipe import from_dict
    from experiments.tasks import get_task

    source = config["card"]["data_source"]
    data = from_dict(config["recipe"]).data
    dm = get_task("semantic").dataset(source["kind"]).build(
        root or source.get("root"), source["synthetic_task"], config["card"]["seed"], 1, data)
    dm.setup("validate")
    count = len(dm.val_set)
    indices = sorted(random.Random(seed).sample(range(count), min(n, count)))
    items = validation_samples(config, indices=indices, root=root)
    module.on_validation_epoch_start()  # e.g. a DeepLab v3 evaluated at another output stride
    samples = []
    with torch.no_grad():
        for image, rgb, mask in zip(items.images, items.rgb, items.masks, strict=True):
            probs = module.predict_probs(image[None].to(module.device))[0].float().cpu().numpy()
            samples.append(Sample(np.ascontiguousarray(rgb), probs, mask))
    return samples, indices


def load_crf_params(path: Path) -> tuple[dict[str, float], str]:
    """(parameters, the json's path) from a crf_params.json or the cell folder holding one."""
    path = Path(path)
    file = path / FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"{file} does not exist: run python -m experiments.crf_search {path} first")
    return json.loads(file.read_text())["params"], str(file)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cell", type=Path, help="a finished cell folder (config.json, checkpoints/last.ckpt)")
    p.add_argument("--val-subset", type=int, default=100, help="val images to cross-validate on (papers: 100)")
    p.add_argument("--grid", choices=["coarse", "fine"], default="fine",
                   help="coarse: the papers' first round only; fine: then the refined round around its best")
    p.add_argument("--paper", choices=sorted(COARSE), default="v2", help="whose coarse grid (v1 or v2 Sec. 4.1)")
    p.add_argument("--seed", type=int, default=0, help="seeds the choice of the val subset")
    p.add_argument("--data-root", help="real data: the --data-root of the run, if its config records none")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1, help="processes for the grid points (the CRF runs on CPU)")
    args = p.parse_args(argv)
    if args.val_subset < 1:
        p.error("--val-subset must be >= 1")
    if not (args.cell / "config.json").exists():
        p.error(f"{args.cell}: no config.json (not a cell folder)")
    samples, indices = cell_samples(args.cell, args.val_subset, args.seed, args.data_root, args.device)
    result = search(samples, COARSE[args.paper], fine=args.grid == "fine", workers=args.workers)
    result = {"cell": str(args.cell), "paper_grid": args.paper, "grid_mode": args.grid,
              "source": f"DeepLab {args.paper} Sec. 4.1: w2 = 3, σγ = 3 fixed; w1, σα, σβ cross-validated "
                        "on val images, coarse to fine",
              "val_subset": {"n": len(indices), "seed": args.seed, "indices": indices}, **result}
    (args.cell / FILE).write_text(json.dumps(result, indent=1))
    print(f"[crf_search] {args.cell / FILE}: {result['params']} mIoU {100 * result['miou']:.2f} "
          f"(without CRF {100 * result['miou_without_crf']:.2f}) on {len(indices)} val images")
    return result


if __name__ == "__main__":
    main()
