"""The claims table: each ablation's paper directions (``Ablation.claims``) tested on our runs.

For every :class:`experiments.spec.Claim` the table shows the paper's Δ (from paper_numbers.toml),
our Δ = B − A with its 95% confidence interval from a paired bootstrap over seeds and images, the
randomisation p-value, images × paired seeds, the between-seed spread of Δ, and the verdict
computed from the interval by :func:`experiments.stats.verdict` (supported / contradicted /
inconclusive), never written by hand. Cells not run (or run before per-image counts were stored)
are shown as such ("no per-image ..."). Written as ``claims.md``/``claims.csv`` next to ``results.md``, and appended to
``results.md`` by the runner.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from experiments.spec import Ablation, Claim, load_paper_numbers, paper_values
from experiments.stats import NotComparable, compare, eval_suffix, verdict
from experiments.tasks import METRIC_LABELS


def claim_text(claim: Claim) -> str:
    """"ASPP-L > LargeFOV", "LargeFOV + CRF > LargeFOV": B, the direction, A."""
    return f"{claim.b}{eval_suffix(claim.eval_b)} {claim.direction} {claim.a}{eval_suffix(claim.eval_a)}"


def paper_delta(ablation: Ablation, claim: Claim) -> float | None:
    """The paper's B − A in points, from the claim's or the variants' paper keys; None if a number
    is missing (e.g. trimap mIoU, which the papers plot but do not tabulate)."""
    if claim.paper_delta is not None:
        return claim.paper_delta
    numbers = load_paper_numbers()

    def value(key: str | None, eval_key: str) -> float | None:
        if key is None:
            return None
        if eval_key != "val":
            key = f"{key}_{eval_key.split('_', 1)[1]}"
            if key not in numbers:
                return None
        number = paper_values(key).get(claim.metric)
        return number.value if number else None

    keys = claim.paper or (ablation.variants[claim.a].paper, ablation.variants[claim.b].paper)
    va, vb = value(keys[0], claim.eval_a), value(keys[1], claim.eval_b)
    return None if va is None or vb is None else round(vb - va, 4)


def evaluate_claims(ablation: Ablation, dataset_dir: Path, resamples: int = 10_000, seed: int = 0) -> list[dict]:
    """One row per claim whose variants are in ``ablation.variants``; Δ and interval in points."""
    rows = []
    for claim in ablation.claims:
        if claim.a not in ablation.variants or claim.b not in ablation.variants:
            continue  # a claim about another --option choice's variants
        scale = METRIC_LABELS[claim.metric][1]
        row = {"claim": claim_text(claim), "metric": claim.metric, "paper_delta": paper_delta(ablation, claim),
               "delta": None, "low": None, "high": None, "p_value": None, "n_images": None, "seeds": [],
               "seed_sd": None, "source": claim.source, "direction": claim.direction,
               "tolerance": claim.tolerance if claim.direction == "≈" else None}
        try:
            c = compare(dataset_dir, claim.a, claim.b, claim.metric, eval_a=claim.eval_a, eval_b=claim.eval_b,
                        resamples=resamples, seed=seed)
        except NotComparable as err:
            row["verdict"] = err.status
            row["reason"] = str(err)
        else:
            row.update(delta=c.delta * scale, low=c.low * scale, high=c.high * scale, p_value=c.p_value,
                       n_images=c.n_images, seeds=list(c.seeds),
                       seed_sd=None if c.seed_sd is None else c.seed_sd * scale,
                       verdict=verdict(claim.direction, c.low * scale, c.high * scale, claim.tolerance))
        rows.append(row)
    return rows


def _signed(x: float | None) -> str:
    return "—" if x is None else f"{x:+.2f}"


def render_markdown(title: str, rows: list[dict], resamples: int = 10_000, seed: int = 0) -> str:
    out = [f"## Claims — {title}", "",
           "| claim | metric | paper Δ | our Δ [95% CI] | p | images × seeds | seed sd of Δ | verdict |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        claim = r["claim"] + (f" (±{r['tolerance']:g})" if r["tolerance"] is not None else "")
        ours = "—" if r["delta"] is None else f"{r['delta']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]"
        p = "—" if r["p_value"] is None else f"{r['p_value']:.4f}" if r["p_value"] >= 1e-4 else "<0.0001"
        n = "—" if r["n_images"] is None else f"{r['n_images']} × {len(r['seeds'])}"
        sd = "—" if r["seed_sd"] is None else f"{r['seed_sd']:.2f}"
        verdict_text = r["verdict"] if r["delta"] is not None else f"_{r['verdict']}_"
        out.append(f"| {claim} | {METRIC_LABELS[r['metric']][0]} | {_signed(r['paper_delta'])} | {ours} | {p} | "
                   f"{n} | {sd} | {verdict_text} |")
    sources = sorted({r["source"] for r in rows if r["source"]})
    out += ["",
            "- Δ = B − A in points for the claim \"B > A\"; paper Δ from the papers' tables (experiments/"
            "paper_numbers.toml), — where a paper gives no number. Claims: " + "; ".join(sources) + ".",
            f"- 95% CI: paired two-level percentile bootstrap ({resamples} resamples, seed {seed}): the seed pairs "
            "both variants have, then the validation images, drawn with replacement; the dataset-level metric "
            "recomputed per resample from per-image counts (COCO AP: from each image's matched detections, "
            "lightning_modules/per_image_ap.py; checkerboard: the mean of per-image values); with one seed: "
            "images only. p: paired approximate "
            "randomisation over images (two-sided). seed sd: sample std of the per-seed Δ. Method: "
            "experiments/stats.py.",
            "- Verdict at 95%: supported when the CI lies on the claimed side of 0 (for ≈: inside ±tolerance), "
            "contradicted when it lies on the other side (for ≈: outside), else inconclusive."]
    return "\n".join(out + [""])


def render_csv(rows: list[dict]) -> str:
    fields = ["claim", "metric", "direction", "tolerance", "paper_delta", "delta", "low", "high", "p_value",
              "n_images", "seeds", "seed_sd", "verdict", "source"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "seeds": " ".join(map(str, r["seeds"]))})
    return buf.getvalue()
