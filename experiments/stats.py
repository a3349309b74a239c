"""Is a difference between two rows real? A paired bootstrap over seeds and images, and the claims' verdicts.

What is resampled. The evaluation images. Each run stores, per validation image, its per-class
intersection / label / prediction pixel counts (``lightning_modules/per_image.py``). A bootstrap
resample draws N of the N images with replacement; the dataset-level metric of that resample
(mIoU etc. of the summed counts) is recomputed for every run, and the difference B − A taken.
The 2.5 and 97.5 percentiles of 10,000 such differences are the 95% confidence interval
(the percentile bootstrap; Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13).

Why paired. Both variants are scored on the *same* resampled image set (and, with several seeds,
seed k of A against seed k of B): an image that is hard for one model is usually hard for the
other, so the difference varies far less across resamples than either metric does; resampling
the two variants independently would put that shared image difficulty into the interval twice
(Koehn, "Statistical significance tests for machine translation evaluation", EMNLP 2004, the
paired bootstrap used in NLP evaluation).

Why the dataset-level metric is recomputed per resample. mIoU of a dataset is not the mean of
per-image IoUs (a class's IoU is pooled over all pixels of all images; images without a class do
not count for it), so averaging per-image scores would test a different quantity from the one
the table reports. Summing counts reproduces the reported metric exactly on the full set
(tested) and any subset's metric on a resample.

COCO AP (``mask_ap``, ``box_ap``, ``*_ap50``, ``*_ap75``) is no sum of counts: it ranks all
detections of a class across the images by score. Each instance run stores COCOeval's own
per-image matching (``lightning_modules/per_image_ap.py``); a resample weighs every image's
detections and ground truth by its multiplicity and re-runs COCOeval's accumulation, which on
the full set reproduces the reported AP bit for bit (tested). The randomisation test ranks both
runs' detections together and assigns each image's to A or B. The checkerboard statistic is a
mean over images of a per-image value (stored per image), resampled as such.

Seeds. Two sources of uncertainty matter: *which images* were evaluated, and *which training run*
produced the models (Bouthillier et al., "Accounting for variance in machine learning
benchmarks", MLSys 2021). Seeds both variants have are paired (seed k of A with seed k of B). With
several paired seeds every resample also draws the seed pairs with replacement, and the metric
of each drawn seed on the resampled images is averaged with the draw's multiplicities — a
two-level (seeds, then images) bootstrap (Davison & Hinkley, "Bootstrap Methods and their
Application", 1997, Sec. 3.8) — so the interval includes training variance: with three seeds
that disagree it is wide, as it should be. With a single seed the interval covers the images
only (the claims table says so). Seeds only one variant has are left out (and named); the
between-seed spread of the per-seed differences is reported beside the interval.

p-value. A paired approximate randomisation test over images (Noreen 1989; Riezler & Maxwell,
"On some pitfalls in automatic evaluation and significance testing for MT", 2005): under the
null hypothesis the two variants' outputs on an image are exchangeable, so each image's counts
(all paired seeds together) are swapped between A and B with probability 1/2, and the two-sided
p is the share of swaps whose |Δ| reaches the observed one, ``(1 + hits) / (1 + permutations)``.
The verdict uses the interval only; the p-value is reported beside it.

Verdicts (:func:`verdict`), at 95%: a claim "B > A" is *supported* when the whole interval is
above 0, *contradicted* when it is below 0, else *inconclusive*; "B ≈ A" (equal within
``tolerance`` points) is supported when the interval lies inside ±tolerance and contradicted when
it lies entirely outside.

Everything is vectorised with numpy (resample weights as an R×N multiplicity matrix times the
N×(3C) count matrix): 10,000 resamples of VOC val (1,449 images × 21 classes) take seconds.

    python -m experiments.compare results/aspp/synthetic_multiscale-smoke LargeFOV ASPP-L
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lightning_modules import per_image, per_image_ap
from lightning_modules.metrics import metrics_from_counts

SEMANTIC_METRICS = ("miou", "trimap_miou", "pixel_acc", "mean_acc", "fwiou", "checkerboard")
DIRECTIONS = (">", "<", "≈")
VERDICTS = ("supported", "contradicted", "inconclusive")
INSTANCE_METRICS = tuple(per_image_ap.METRICS)


class NotComparable(ValueError):
    """The two runs cannot be compared (missing cells, different images, an instance metric)."""

    def __init__(self, message: str, status: str = "not run") -> None:
        super().__init__(message)
        self.status = status  # the claims table's short reason: "not run", "not testable: ..."


# --------------------------------------------------------------------------- metrics of counts
def metric_of_counts(tp: np.ndarray, label: np.ndarray, pred: np.ndarray, metric: str) -> np.ndarray:
    """A dataset-level metric (fraction) of summed counts (..., C), vectorised over leading axes.

    The same definitions as ``lightning_modules.metrics.metrics_from_counts`` (FCN Sec. 5): classes
    with an empty union (or, for mean accuracy, no label pixel) are left out of the means; nan
    when no class is left. ``trimap_miou`` is ``miou`` of the trimap counts.
    """
    tp, label, pred = (np.asarray(x, dtype=np.float64) for x in (tp, label, pred))
    union = label + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric in ("miou", "trimap_miou", "fwiou"):
            present = union > 0
            iou = np.where(present, tp / np.where(present, union, 1), 0.0)
            if metric == "fwiou":
                return (label * iou).sum(-1) / label.sum(-1)
            return iou.sum(-1) / present.sum(-1)
        if metric in ("pixel_acc", "checkerboard"):  # checkerboard: (value, 1, 0) per image -> the mean
            return tp.sum(-1) / label.sum(-1)
        if metric == "mean_acc":
            has = label > 0
            return np.where(has, tp / np.where(has, label, 1), 0.0).sum(-1) / has.sum(-1)
    raise ValueError(f"unknown metric {metric!r}; expected one of {SEMANTIC_METRICS}")


def exact_metric(tp: np.ndarray, label: np.ndarray, pred: np.ndarray, metric: str) -> float:
    """The metric of one set of summed counts (C,), by the very code the runs report with."""
    return metrics_from_counts(tp, label, pred)["miou" if metric == "trimap_miou" else metric]


# --------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class RunCounts:
    """One variant's per-image counts under one evaluation: S seeds × N images × 3 × C."""

    variant: str
    key: str                      # evaluation key: "val", "val_crf"
    seeds: tuple[int, ...]
    index: np.ndarray             # (N,) dataset indices
    image_id: np.ndarray | None   # (N,) the dataset's image names, if it has them
    counts: np.ndarray            # (S, N, 3, C) int64: tp, label, pred per image and class (float: checkerboard)

    def subset(self, seeds: Sequence[int]) -> RunCounts:
        rows = [self.seeds.index(s) for s in seeds]
        return RunCounts(self.variant, self.key, tuple(seeds), self.index, self.image_id, self.counts[rows])


@dataclass(frozen=True)
class RunRecords:
    """One variant's per-image COCO AP records (``lightning_modules/per_image_ap.py``), one per seed."""

    variant: str
    key: str
    seeds: tuple[int, ...]
    index: np.ndarray
    image_id: np.ndarray | None
    records: tuple[dict, ...]

    def subset(self, seeds: Sequence[int]) -> RunRecords:
        return RunRecords(self.variant, self.key, tuple(seeds), self.index, self.image_id,
                          tuple(self.records[self.seeds.index(s)] for s in seeds))


def _per_image_rows(dataset_dir: Path, variant: str, key: str, metric: str,
                    seeds: Sequence[int] | None) -> dict[int, dict[str, np.ndarray]]:
    """Each finished seed's (or each of ``seeds``') ``per_image_<key>.npz`` rows. Raises
    :class:`NotComparable` when no cell finished or a finished cell has no file."""
    folder = Path(dataset_dir) / variant
    finished = sorted((int(p.parent.name[4:]) for p in folder.glob("seed*/metrics.json")
                       if p.parent.name[4:].isdigit()))
    wanted = list(seeds) if seeds is not None else finished
    if not finished or not set(wanted) & set(finished):
        raise NotComparable(f"{variant}: no finished cell{' for seeds ' + str(wanted) if seeds else ''} "
                            f"in {folder}", status="not run")
    present = [s for s in wanted if s in finished]
    files = {s: folder / f"seed{s}" / per_image.file_name(key) for s in present}
    lacking = [s for s, f in files.items() if not f.exists()]
    if lacking:
        done = json.loads((folder / f"seed{lacking[0]}" / "metrics.json").read_text())
        what = "no such evaluation" if key not in done else "no per-image records (run before they were stored)"
        raise NotComparable(f"{variant} seed(s) {lacking}: {what}: {files[lacking[0]]} missing",
                            status=f"not run ({key})" if key not in done else f"no per-image {metric}")
    rows = {s: per_image.load(f) for s, f in files.items()}
    for s, r in rows.items():
        if not np.array_equal(r["index"], rows[present[0]]["index"]):
            raise NotComparable(f"{variant} seed {s} was evaluated on other images than seed {present[0]}")
    return rows


def load_run_counts(dataset_dir: Path, variant: str, key: str = "val", metric: str = "miou",
                    seeds: Sequence[int] | None = None) -> RunCounts:
    """Read ``<dataset_dir>/<variant>/seed<k>/per_image_<key>.npz`` of every finished seed (or of
    ``seeds``); ``metric`` picks the plain or the trimap counts. Raises :class:`NotComparable`."""
    if metric not in SEMANTIC_METRICS:
        raise NotComparable(f"unknown metric {metric!r}; expected one of {SEMANTIC_METRICS + INSTANCE_METRICS}",
                            status=f"not testable: no per-image {metric}")
    rows = _per_image_rows(dataset_dir, variant, key, metric, seeds)
    first = next(iter(rows.values()))
    if metric == "checkerboard":  # one value an image: counts (value, 1, 0)
        if "checkerboard" not in first:
            raise NotComparable(f"{variant}: the per-image file holds no checkerboard values",
                                status="no per-image checkerboard")
        counts = [np.stack([r["checkerboard"], np.ones_like(r["checkerboard"]), np.zeros_like(r["checkerboard"])],
                           1)[:, :, None] for r in rows.values()]
        return RunCounts(variant, key, tuple(rows), first["index"], first.get("image_id"),
                         np.stack(counts).astype(np.float64))
    prefix = "trimap_" if metric == "trimap_miou" else ""
    if prefix + "tp" not in first:
        raise NotComparable(f"{variant}: the per-image file holds no {metric} counts", status=f"no per-image {metric}")
    counts = [np.stack([r[prefix + k] for k in per_image.COUNT_KEYS], 1) for r in rows.values()]
    return RunCounts(variant, key, tuple(rows), first["index"], first.get("image_id"),
                     np.stack(counts).astype(np.int64))


def load_run_records(dataset_dir: Path, variant: str, key: str = "val", metric: str = "mask_ap",
                     seeds: Sequence[int] | None = None) -> RunRecords:
    """The per-image AP records of every finished seed (or of ``seeds``). Raises :class:`NotComparable`."""
    rows = _per_image_rows(dataset_dir, variant, key, metric, seeds)
    first = next(iter(rows.values()))
    prefix = per_image_ap.METRICS[metric][0]
    if f"{prefix}_det_tp" not in first:
        raise NotComparable(f"{variant}: the per-image file holds no {metric} records", status=f"no per-image {metric}")
    return RunRecords(variant, key, tuple(rows), first["index"], first.get("image_id"), tuple(rows.values()))


# --------------------------------------------------------------------------- the comparison
@dataclass(frozen=True)
class Comparison:
    """B − A of a dataset-level metric (fractions; ``points`` = ×100), with a paired bootstrap CI."""

    a: str
    b: str
    metric: str
    eval_a: str
    eval_b: str
    a_value: float                # A's metric on all images, mean over the paired seeds
    b_value: float
    delta: float                  # b_value − a_value
    low: float                    # confidence interval of delta
    high: float
    p_value: float                # paired approximate randomisation over images, two-sided
    n_images: int
    seeds: tuple[int, ...]        # the paired seeds used
    seed_deltas: tuple[float, ...]  # per-seed Δ on all images
    left_out: dict[str, tuple[int, ...]] = field(default_factory=dict)  # seeds of one variant only
    resamples: int = 10_000
    confidence: float = 0.95
    bootstrap_seed: int = 0

    @property
    def seed_sd(self) -> float | None:
        """Sample standard deviation of the per-seed differences (None with one seed)."""
        return float(np.std(self.seed_deltas, ddof=1)) if len(self.seed_deltas) > 1 else None

    def label(self, which: str) -> str:
        name, key = (self.a, self.eval_a) if which == "a" else (self.b, self.eval_b)
        return name + eval_suffix(key)

    def text(self) -> str:
        pct = round(self.confidence * 100)
        lines = [
            f"{self.label('b')} − {self.label('a')}: {self.metric}, {self.n_images} images × "
            f"{len(self.seeds)} seed(s) {list(self.seeds)}",
            f"  {self.label('a')}: {self.a_value * 100:.2f}",
            f"  {self.label('b')}: {self.b_value * 100:.2f}",
            f"  Δ = {self.delta * 100:+.2f} points, {pct}% CI [{self.low * 100:+.2f}, {self.high * 100:+.2f}] "
            f"(paired bootstrap over {'seeds and ' if len(self.seeds) > 1 else ''}images, {self.resamples} "
            f"resamples, seed {self.bootstrap_seed})",
            f"  p = {self.p_value:.4f} (two-sided, paired approximate randomisation over images, "
            f"{self.resamples} permutations)",
            "  between seeds: per-seed Δ " + ", ".join(f"{d * 100:+.2f}" for d in self.seed_deltas)
            + (f" (sd {self.seed_sd * 100:.2f})" if self.seed_sd is not None else " (one seed: no spread)"),
        ]
        for name, seeds in self.left_out.items():
            lines.append(f"  left out (no partner seed): {name} seed(s) {list(seeds)}")
        return "\n".join(lines)


def eval_suffix(key: str) -> str:
    """How an evaluation key shows in a claim: "" for val, " + CRF" for val_crf."""
    if key == "val":
        return ""
    rest = key.split("_", 1)[1] if "_" in key else key
    return " + CRF" if rest == "crf" else f" ({rest})"


def _multiplicities(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """rows × n bootstrap weights: how often each image is drawn in each resample."""
    draws = rng.integers(0, n, size=(rows, n)) + (np.arange(rows) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def _seed_mean_metric(totals: np.ndarray, metric: str, weights: np.ndarray | None = None) -> np.ndarray:
    """totals (..., S, 3, C) → the metric per seed, averaged over seeds (with ``weights`` (..., S)
    summing to 1: a resample of the seeds): (...)."""
    per_seed = metric_of_counts(totals[..., 0, :], totals[..., 1, :], totals[..., 2, :], metric)
    return per_seed.mean(-1) if weights is None else (per_seed * weights).sum(-1)


def _summary(deltas: list[np.ndarray], swapped: list[np.ndarray], a_value: float, b_value: float,
             seed_deltas: np.ndarray, confidence: float) -> dict[str, object]:
    """The percentile interval of the bootstrap ``deltas``, the randomisation p-value of the
    ``swapped`` differences against the observed Δ = b_value − a_value, and the values."""
    deltas, swapped = np.concatenate(deltas), np.concatenate(swapped)
    delta = b_value - a_value
    tail = (1 - confidence) / 2
    low, high = np.quantile(deltas, [tail, 1 - tail]) if np.isfinite(deltas).all() else (np.nan, np.nan)
    hits = int((np.abs(swapped) >= abs(delta) - 1e-12).sum())
    return {"delta": float(delta), "low": float(low), "high": float(high),
            "p_value": (1 + hits) / (1 + len(swapped)), "a_value": float(a_value), "b_value": float(b_value),
            "seed_deltas": tuple(float(x) for x in seed_deltas), "deltas": deltas}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, metric: str, resamples: int = 10_000, seed: int = 0,
                     confidence: float = 0.95, chunk: int = 1000) -> dict[str, object]:
    """The paired bootstrap and randomisation test on counts ``a``, ``b`` of shape (S, N, 3, C)
    (the same N images, seed k of A paired with seed k of B).

    Returns ``delta`` (B − A on all images, seed-averaged), ``low``/``high`` (percentile interval),
    ``p_value``, ``a_value``, ``b_value``, ``seed_deltas`` and the bootstrap ``deltas`` (R,).
    """
    if a.shape != b.shape or a.ndim != 4 or a.shape[2] != 3:
        raise ValueError(f"counts must both be S×N×3×C, got {a.shape} and {b.shape}")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 1 and 0 < confidence < 1, got {resamples}, {confidence}")
    s, n = a.shape[:2]
    rng = np.random.default_rng(seed)
    # images as rows, (variant, seed, count, class) as columns: one matmul per chunk of resamples
    both = np.stack([a, b]).transpose(2, 0, 1, 3, 4).reshape(n, -1).astype(np.float64)
    diff = (b - a).transpose(1, 0, 2, 3).reshape(n, -1).astype(np.float64)
    full = both.sum(0).reshape(2, s, 3, -1)
    per_seed = metric_of_counts(full[:, :, 0], full[:, :, 1], full[:, :, 2], metric)  # (2, S)
    a_value, b_value = per_seed.mean(1)
    deltas, swapped = [], []
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        totals = (_multiplicities(rng, rows, n) @ both).reshape(rows, 2, s, 3, -1)
        seeds = _multiplicities(rng, rows, s) / s if s > 1 else None  # the seed pairs, resampled
        deltas.append(_seed_mean_metric(totals[:, 1], metric, seeds) - _seed_mean_metric(totals[:, 0], metric, seeds))
        # randomisation: image i's counts swapped between A and B where flip = 1
        flip = rng.integers(0, 2, size=(rows, n)).astype(np.float64)
        moved = (flip @ diff).reshape(rows, s, 3, -1)
        a_perm, b_perm = full[0] + moved, full[1] - moved
        swapped.append(_seed_mean_metric(b_perm, metric) - _seed_mean_metric(a_perm, metric))
    return _summary(deltas, swapped, a_value, b_value, per_seed[1] - per_seed[0], confidence)


def paired_bootstrap_ap(a: Sequence[dict], b: Sequence[dict], metric: str, resamples: int = 10_000, seed: int = 0,
                        confidence: float = 0.95, chunk: int = 250) -> dict[str, object]:
    """:func:`paired_bootstrap` for COCO AP: ``a``, ``b`` are per-seed per-image AP records
    (``lightning_modules/per_image_ap.py``; seed k of A paired with seed k of B, the same images).

    A bootstrap row weighs every image by its multiplicity (its detections in the class rankings,
    its ground truth in the recall's denominator) and recomputes COCOeval's AP; the randomisation
    test swaps each image's detections between A and B (both runs' detections ranked together,
    each counted in the set it is assigned to), all paired seeds with the same swaps.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same number (>= 1) of seeds for A and B, got {len(a)} and {len(b)}")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 1 and 0 < confidence < 1, got {resamples}, {confidence}")
    s, n = len(a), len(a[0]["index"])
    ap = per_image_ap.average_precision
    per_seed = []
    for ra, rb in zip(a, b):
        ranks_a, gt, rec = per_image_ap.rankings([ra], metric)
        ranks_b, _, _ = per_image_ap.rankings([rb], metric)
        merged, _, _ = per_image_ap.rankings([ra, rb], metric)  # also checks: same images, same ground truth
        per_seed.append((ranks_a, ranks_b, merged, gt, rec))
    ones = np.ones((1, n))
    full = np.array([[ap(ranks, gt, rec, ones, ones)[0] for ranks in (ra, rb)]
                     for ra, rb, _, gt, rec in per_seed])  # (S, 2)
    a_value, b_value = full.mean(0)
    rng = np.random.default_rng(seed)
    deltas, swapped = [], []
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        weights = _multiplicities(rng, rows, n)
        seed_w = _multiplicities(rng, rows, s) / s if s > 1 else np.ones((rows, 1))
        flip = rng.integers(0, 2, size=(rows, n)).astype(np.float64)
        to_a = np.concatenate([1 - flip, flip], 1)  # units (run, image) counted in the swapped A
        boot = np.zeros(rows)
        perm = np.zeros(rows)
        all_images = np.ones((rows, n))
        for k, (ra, rb, merged, gt, rec) in enumerate(per_seed):
            boot += seed_w[:, k] * (ap(rb, gt, rec, weights, weights) - ap(ra, gt, rec, weights, weights))
            perm += (ap(merged, gt, rec, 1 - to_a, all_images) - ap(merged, gt, rec, to_a, all_images)) / s
        deltas.append(boot)
        swapped.append(perm)
    return _summary(deltas, swapped, a_value, b_value, full[:, 1] - full[:, 0], confidence)


def compare(dataset_dir: Path, a: str, b: str, metric: str = "miou", *, eval_a: str = "val",
            eval_b: str = "val", seeds: Sequence[int] | None = None, resamples: int = 10_000,
            seed: int = 0, confidence: float = 0.95) -> Comparison:
    """B − A on ``metric`` for two variants of a results folder (``<ablation>/<dataset>-<preset>``),
    with a paired bootstrap CI over images and a randomisation p-value; see the module docstring.
    ``eval_a``/``eval_b`` pick the evaluation (``"val_crf"``: after the dense CRF). Raises
    :class:`NotComparable` when a cell is missing, the images differ or the metric is not per-image."""
    load = load_run_records if metric in INSTANCE_METRICS else load_run_counts
    runs_a = load(dataset_dir, a, eval_a, metric, seeds)
    runs_b = load(dataset_dir, b, eval_b, metric, seeds)
    common = tuple(s for s in runs_a.seeds if s in runs_b.seeds)
    if not common:
        raise NotComparable(f"{a} has seeds {list(runs_a.seeds)}, {b} has {list(runs_b.seeds)}: no seed to pair")
    if not np.array_equal(runs_a.index, runs_b.index) or (
            runs_a.image_id is not None and runs_b.image_id is not None
            and not np.array_equal(runs_a.image_id, runs_b.image_id)):
        raise NotComparable(f"{a} and {b} were evaluated on different images; a paired comparison needs the same")
    left_out = {r.variant + eval_suffix(r.key): tuple(s for s in r.seeds if s not in common)
                for r in (runs_a, runs_b)}
    if metric in INSTANCE_METRICS:
        result = paired_bootstrap_ap(runs_a.subset(common).records, runs_b.subset(common).records, metric,
                                     resamples, seed, confidence)
    else:
        result = paired_bootstrap(runs_a.subset(common).counts, runs_b.subset(common).counts, metric,
                                  resamples, seed, confidence)
    return Comparison(a=a, b=b, metric=metric, eval_a=eval_a, eval_b=eval_b,
                      a_value=result["a_value"], b_value=result["b_value"], delta=result["delta"],
                      low=result["low"], high=result["high"], p_value=result["p_value"],
                      n_images=len(runs_a.index), seeds=common, seed_deltas=result["seed_deltas"],
                      left_out={k: v for k, v in left_out.items() if v}, resamples=resamples,
                      confidence=confidence, bootstrap_seed=seed)


# --------------------------------------------------------------------------- verdicts
def verdict(direction: str, low: float, high: float, tolerance: float | None = None) -> str:
    """A claim's verdict from the confidence interval [low, high] of Δ = B − A.

    ``">"`` (B better): supported if low > 0, contradicted if high < 0. ``"<"``: the mirror.
    ``"≈"`` (|Δ| < tolerance, same units as the interval): supported if the interval lies inside
    (−tolerance, tolerance), contradicted if it lies entirely at or beyond ±tolerance. Anything
    else, or an undefined interval, is inconclusive.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if low > high:
        raise ValueError(f"interval [{low}, {high}] has low > high")
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if direction == ">":
        return "supported" if low > 0 else "contradicted" if high < 0 else "inconclusive"
    if direction == "<":
        return "supported" if high < 0 else "contradicted" if low > 0 else "inconclusive"
    if tolerance is None or tolerance <= 0:
        raise ValueError(f"a '≈' claim needs a tolerance > 0, got {tolerance}")
    if -tolerance < low and high < tolerance:
        return "supported"
    if low >= tolerance or high <= -tolerance:
        return "contradicted"
    return "inconclusive"
