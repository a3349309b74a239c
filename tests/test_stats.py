"""Per-image counts, the paired bootstrap, the claims' verdicts and the compare CLI."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from datamodules.base import UnpaddedDistributedSampler
from experiments.atomic import write_atomic
from experiments import claims, compare, stats
from experiments.runner import main
from experiments.spec import Claim
from lightning_modules import per_image
from lightning_modules.metrics import image_class_counts, metrics_from_counts, segmentation_metrics, summarise
from tests.test_runner import TINY


def random_batch(n=6, c=4, size=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, (n, size, size), generator=g)
    target[:, 0, :3] = 255
    preds = torch.where(torch.rand(n, size, size, generator=g) < 0.6, target.clamp(max=c - 1),
                        torch.randint(0, c, (n, size, size), generator=g))
    return preds, target


def test_image_class_counts_are_those_of_each_image():
    preds, target = random_batch()
    counts = image_class_counts(preds, target, 4)
    for i in range(len(target)):
        valid = target[i] != 255
        for k in range(4):
            t, p = target[i][valid] == k, preds[i][valid] == k
            assert counts[i, :, k].tolist() == [int((t & p).sum()), int(t.sum()), int(p.sum())]


def test_metric_of_counts_equals_the_reported_metrics():
    rng = np.random.default_rng(0)
    for _ in range(20):
        label = rng.integers(0, 50, size=7) * (rng.random(7) < 0.8)
        tp = np.minimum(label, rng.integers(0, 50, size=7))
        pred = tp + rng.integers(0, 20, size=7) * (rng.random(7) < 0.7)
        if label.sum() == 0:
            continue
        exact = metrics_from_counts(tp, label, pred)
        for m in ("miou", "pixel_acc", "mean_acc", "fwiou"):
            assert stats.metric_of_counts(tp, label, pred, m) == pytest.approx(exact[m], rel=1e-12, abs=1e-15)
            assert stats.exact_metric(tp, label, pred, m) == exact[m]


def fake_run(dataset_dir: Path, variant: str, seed: int, counts: np.ndarray, key: str = "val") -> None:
    """A finished cell with hand-built per-image counts (N×3×C): metrics.json + the npz."""
    d = dataset_dir / variant / f"seed{seed}"
    d.mkdir(parents=True)
    rows = {"index": np.arange(len(counts)), "tp": counts[:, 0], "label": counts[:, 1], "pred": counts[:, 2]}
    rows.update({f"trimap_{k}": v for k, v in list(rows.items())[1:]})
    write_atomic(d / per_image.file_name(key), lambda f: per_image.write(f, rows))
    (d / "metrics.json").write_text(json.dumps({"seed": seed, key: {}}))


def base_counts(n=60, c=5, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    label = rng.integers(50, 400, size=(n, c)) * (rng.random((n, c)) < 0.6)
    tp = (label * rng.uniform(0.3, 0.9, size=(n, c))).astype(np.int64)
    wrong = label - tp  # each missed pixel predicted as another class: column sums
    pred = tp + np.roll(wrong, 1, axis=1)
    return np.stack([tp, label, pred], 1)


def improved(counts: np.ndarray, pixels: int = 10) -> np.ndarray:
    """On every image, ``pixels`` more correct pixels of each present class (taken from errors)."""
    tp, label, pred = counts[:, 0].copy(), counts[:, 1], counts[:, 2].copy()
    gain = np.minimum(pixels, label - tp)
    tp += gain
    pred += gain - np.roll(gain, 1, axis=1)  # the moved pixels leave their wrong class
    return np.stack([tp, label, pred], 1)


def test_identical_variants_give_a_zero_interval_and_p_one(tmp_path):
    counts = base_counts()
    for s in (0, 1):
        fake_run(tmp_path, "A", s, counts)
        fake_run(tmp_path, "B", s, counts)
    c = stats.compare(tmp_path, "A", "B", resamples=2000)
    assert c.delta == 0 and c.low == 0 and c.high == 0 and c.p_value == 1.0
    assert c.n_images == 60 and c.seeds == (0, 1) and c.seed_sd == 0
    assert stats.verdict(">", c.low, c.high) == "inconclusive"


def test_two_equally_good_variants_give_an_interval_around_zero(tmp_path):
    fake_run(tmp_path, "A", 0, base_counts(seed=0))
    fake_run(tmp_path, "B", 0, base_counts(seed=0)[np.random.default_rng(5).permutation(60)])
    c = stats.compare(tmp_path, "A", "B", resamples=4000)
    assert c.low < 0 < c.high and c.p_value > 0.05


def test_a_constant_improvement_on_every_image_is_significant(tmp_path):
    a = base_counts()
    fake_run(tmp_path, "A", 0, a)
    fake_run(tmp_path, "B", 0, improved(a))
    c = stats.compare(tmp_path, "A", "B", resamples=4000)
    assert 0 < c.low <= c.delta <= c.high and c.p_value < 0.05
    assert c.delta == pytest.approx(stats.metric_of_counts(*improved(a).sum(0), "miou")
                                    - stats.metric_of_counts(*a.sum(0), "miou"))
    assert stats.verdict(">", c.low, c.high) == "supported" and stats.verdict("<", c.low, c.high) == "contradicted"
    back = stats.compare(tmp_path, "B", "A", "pixel_acc", resamples=1000)
    assert back.high < 0


def test_same_seed_same_interval_and_seeds_paired(tmp_path):
    a = base_counts()
    for s in (0, 1, 2):
        fake_run(tmp_path, "A", s, a)
    for s in (1, 2):
        fake_run(tmp_path, "B", s, improved(a, 3 * s))
    one = stats.compare(tmp_path, "A", "B", "fwiou", resamples=1000, seed=7)
    two = stats.compare(tmp_path, "A", "B", "fwiou", resamples=1000, seed=7)
    other = stats.compare(tmp_path, "A", "B", "fwiou", resamples=1000, seed=8)
    assert (one.low, one.high, one.p_value) == (two.low, two.high, two.p_value)
    assert (one.low, one.high) != (other.low, other.high)
    assert one.seeds == (1, 2) and one.left_out == {"A": (0,)}
    assert len(one.seed_deltas) == 2 and one.seed_deltas[1] > one.seed_deltas[0] > 0 and one.seed_sd > 0


def test_bootstrap_is_fast_at_voc_size():
    import time

    rng = np.random.default_rng(0)
    a = rng.integers(0, 1000, size=(2, 1449, 3, 21))
    started = time.perf_counter()
    stats.paired_bootstrap(a, a[:, rng.permutation(1449)], "miou", resamples=10_000)
    assert time.perf_counter() - started < 30  # seconds, on 2 shared cores


@pytest.mark.parametrize("direction,low,high,tol,expected", [
    (">", 0.1, 2.0, None, "supported"), (">", -2.0, -0.1, None, "contradicted"),
    (">", -0.5, 1.0, None, "inconclusive"), (">", 0.0, 1.0, None, "inconclusive"),
    ("<", -2.0, -0.1, None, "supported"), ("<", 0.1, 2.0, None, "contradicted"),
    ("<", -1.0, 0.5, None, "inconclusive"),
    ("≈", -0.5, 0.8, 1.0, "supported"), ("≈", 1.2, 3.0, 1.0, "contradicted"),
    ("≈", -3.0, -1.0, 1.0, "contradicted"), ("≈", 0.5, 1.5, 1.0, "inconclusive"),
    ("≈", -2.0, 2.0, 1.0, "inconclusive"), (">", float("nan"), float("nan"), None, "inconclusive"),
])
def test_verdict(direction, low, high, tol, expected):
    assert stats.verdict(direction, low, high, tol) == expected


def test_verdict_and_claim_reject_nonsense():
    with pytest.raises(ValueError, match="direction"):
        stats.verdict(">=", 0, 1)
    with pytest.raises(ValueError, match="tolerance"):
        stats.verdict("≈", -1, 1)
    with pytest.raises(ValueError, match="low > high"):
        stats.verdict(">", 1, 0)
    with pytest.raises(ValueError, match="direction"):
        Claim("a", "b", "better")
    with pytest.raises(ValueError, match="itself"):
        Claim("a", "a", ">")


def test_missing_cells_and_instance_metrics_are_named(tmp_path):
    fake_run(tmp_path, "A", 0, base_counts())
    with pytest.raises(stats.NotComparable, match="B: no finished cell") as err:
        stats.compare(tmp_path, "A", "B")
    assert err.value.status == "not run"
    with pytest.raises(stats.NotComparable, match="no such evaluation") as err:
        stats.compare(tmp_path, "A", "A", eval_b="val_crf")
    with pytest.raises(stats.NotComparable, match="no mask_ap records") as err:
        stats.compare(tmp_path, "A", "A", "mask_ap")  # a semantic run's file
    assert err.value.status == "no per-image mask_ap"
    with pytest.raises(stats.NotComparable, match="unknown metric") as err:
        stats.compare(tmp_path, "A", "A", "dice")
    assert err.value.status.startswith("not testable")
    fake_run(tmp_path, "C", 0, base_counts(n=59))
    with pytest.raises(stats.NotComparable, match="different images"):
        stats.compare(tmp_path, "A", "C")


def test_ddp_rows_are_put_back_in_dataset_order_each_image_once():
    """Two ranks of UnpaddedDistributedSampler (rank 0: 0, 2, 4; rank 1: 1, 3) evaluate in
    batches of 2; torchmetrics' sync concatenates the ranks' rows and sums the matrices, which
    is what updating one collection with rank 0's batches then rank 1's gives."""
    preds, target = random_batch(n=5)
    single = segmentation_metrics(4, 1)
    single.update(preds, target, index=torch.arange(5))
    expected = per_image.per_image_counts(single)
    gathered = segmentation_metrics(4, 1)
    data = list(range(5))
    for rank in (0, 1):
        order = per_image.evaluation_order(torch.utils.data.DataLoader(
            data, sampler=UnpaddedDistributedSampler(data, 2, rank)))
        assert order == data[rank::2]
        for start in range(0, len(order), 2):
            idx = torch.tensor(order[start:start + 2])
            gathered.update(preds[idx], target[idx], index=idx)
    rows = per_image.per_image_counts(gathered)
    assert rows["index"].tolist() == [0, 1, 2, 3, 4]
    for key in expected:
        np.testing.assert_array_equal(rows[key], expected[key])
    assert summarise(gathered)["miou"] == summarise(single)["miou"]
    # a padded sampler repeats an image: no per-image rows rather than wrong ones
    padded = segmentation_metrics(4, 1)
    for rank in (0, 1):
        order = per_image.evaluation_order(torch.utils.data.DataLoader(
            data, sampler=DistributedSampler(data, 2, rank, shuffle=False)))
        idx = torch.tensor(order)
        padded.update(preds[idx], target[idx], index=idx)
    with pytest.warns(UserWarning, match="evaluated twice"):
        assert per_image.per_image_counts(padded) is None
    shuffled = torch.utils.data.DataLoader(data, shuffle=True)
    assert per_image.evaluation_order(shuffled) is None


TINY_CLAIMS = replace(TINY, claims=(
    Claim("32s", "8s", ">", source="FCN Table 2"),
    Claim("32s", "8s", "≈", "trimap_miou", tolerance=1.0, source="made up"),
    Claim("8s", "8s", ">", eval_b="val_crf", source="DeepLab v2 Table 3"),
    Claim("32s", "16s", ">", source="a variant of another option"),
))


def test_tiny_run_stores_per_image_counts_that_give_the_reported_metrics(tmp_path, capsys):
    rows = main(TINY_CLAIMS, ["--out", str(tmp_path), "--quiet", "--no-figures", "--seeds", "0", "1",
                              "--variants", "8s", "--crf", "--crf-param", "iterations=1"])
    assert rows
    d = tmp_path / "tiny" / "synthetic_thin-smoke"
    for seed in (0, 1):
        metrics = json.loads((d / "8s" / f"seed{seed}" / "metrics.json").read_text())
        for key in ("val", "val_crf"):
            counts = per_image.load(d / "8s" / f"seed{seed}" / per_image.file_name(key))
            assert counts["index"].tolist() == [0, 1, 2, 3, 4] and counts["tp"].shape == (5, 5)
            for m in ("miou", "pixel_acc", "mean_acc", "fwiou"):  # exactly the reported numbers
                assert stats.exact_metric(counts["tp"].sum(0), counts["label"].sum(0), counts["pred"].sum(0),
                                          m) == metrics[key][m], (key, m)
            assert stats.exact_metric(counts["trimap_tp"].sum(0), counts["trimap_label"].sum(0),
                                      counts["trimap_pred"].sum(0), "miou") == metrics[key]["trimap_miou"]
    table = (d / "results.md").read_text()
    assert "## Claims — [SMOKE] tiny FCN check" in table and (d / "claims.csv").exists()
    lines = {line.split(" | ")[0]: line for line in (d / "claims.md").read_text().splitlines()}
    assert "_not run_" in lines["| 8s > 32s"] and "+3.30" in lines["| 8s > 32s"]   # 32s not run; paper Δ
    assert "5 × 2" in lines["| 8s + CRF > 8s"]
    assert not any("16s" in k for k in lines)  # a claim about variants this ablation lacks: left out
    # the CLI on the same folder
    capsys.readouterr()
    result = compare.main([str(d), "8s", "8s", "--eval-b", "val_crf", "--resamples", "500"])
    out = capsys.readouterr().out
    assert "8s + CRF − 8s: miou, 5 images × 2 seed(s) [0, 1]" in out and "95% CI" in out
    assert result.n_images == 5 and result.resamples == 500
    with pytest.raises(SystemExit):
        compare.main([str(d), "8s", "32s"])
    assert "32s: no finished cell" in capsys.readouterr().err


def test_declared_claims_name_variants_and_metrics_of_their_ablation():
    import importlib.util

    from experiments.tasks import get_task

    declared = 0
    for script in sorted(Path("experiments").glob("*_ablation.py")):
        spec = importlib.util.spec_from_file_location(script.stem, script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        ablation = module.ABLATION
        task = get_task(ablation.task)
        sets = [ablation.variants] + [o.variants(c) for o in ablation.options.values() for c in o.choices]
        assert ablation.claims, f"{script.name} declares no claims (issue #17: every ablation does)"
        for claim in ablation.claims:
            declared += 1
            owner = next((v for v in sets if claim.a in v and claim.b in v), None)
            assert owner is not None, f"{script.name}: {claim} names unknown variants"
            assert claim.metric in (task.primary, *task.secondary), f"{script.name}: {claim.metric}"
            assert claim.source, f"{script.name}: {claim} has no source"
            claims.paper_delta(replace(ablation, variants=owner), claim)  # keys resolve
    assert declared >= 50


def test_paper_deltas_come_from_the_paper_numbers():
    from experiments.aspp_ablation import ABLATION as ASPP
    from experiments.crf_ablation import ABLATION as CRF
    from experiments.roi_align_ablation import ABLATION as ROI

    assert claims.paper_delta(ASPP, Claim("LargeFOV", "ASPP-L", ">")) == pytest.approx(68.96 - 65.76)
    assert claims.paper_delta(CRF, Claim("LargeFOV", "LargeFOV", ">", eval_b="val_crf")) == pytest.approx(69.84 - 65.76)
    assert claims.paper_delta(CRF, Claim("LargeFOV", "LargeFOV", ">", "trimap_miou", eval_b="val_crf")) is None
    box = next(c for c in ROI.claims if c.metric == "box_ap")
    assert claims.paper_delta(ROI, box) == pytest.approx(34.0 - 28.2)


def test_instance_claims_without_records_are_shown_as_not_run(tmp_path):
    from experiments.roi_align_ablation import ABLATION as ROI

    rows = claims.evaluate_claims(ROI, tmp_path)
    assert [r["verdict"] for r in rows] == ["not run", "not run"]
    text = claims.render_markdown("roi", rows)
    assert "+3.40" in text and "COCO AP: from each image's matched detections" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        claims.render_csv(rows)


def test_readme_sections_put_the_claims_table_under_the_results_table(tmp_path, monkeypatch):
    from tools import readme_tables

    monkeypatch.setattr(readme_tables, "ROOT", tmp_path)
    folder = tmp_path / "results" / "aspp" / "synthetic_multiscale-smoke"
    folder.mkdir(parents=True)
    (folder / "results.md").write_text("## [SMOKE] DeepLab v2\n\n| variant |\n")
    (folder / "claims.md").write_text("## Claims — [SMOKE] DeepLab v2\n\n| claim |\n")
    text = readme_tables.results_section("aspp", "synthetic_multiscale-smoke")
    assert text.index("### [SMOKE] DeepLab v2") < text.index("### Claims — [SMOKE] DeepLab v2")
    # a results.md that already holds the claims (written by the runner) is not given them twice
    (folder / "results.md").write_text("## [SMOKE] DeepLab v2\n\n## Claims — [SMOKE] DeepLab v2\n")
    assert readme_tables.results_section("aspp", "synthetic_multiscale-smoke").count("### Claims") == 1


def test_module_per_image_counts_give_its_metrics_exactly(tmp_path):
    """A random-weight model (many classes predicted, unlike the tiny run's) through a Trainer:
    the rows are in loader order and recompute the reported metrics, plain and after the CRF."""
    from lightning_modules.crf import CRFEvaluator, CRFParams
    from lightning_modules.segmentation import SegmentationModule
    from tests.test_segmentation_module import Toy, toy_loader, trainer

    torch.manual_seed(3)
    module = SegmentationModule(Toy(), 3, trimap_width=1, evaluators=[CRFEvaluator(CRFParams(iterations=2))])
    trainer(tmp_path, 1).validate(module, toy_loader(n=7, size=16), verbose=False)
    assert set(module.last_per_image) == {"val", "val_crf"}
    for key in ("val", "val_crf"):
        rows, reported = module.last_per_image[key], module.last_metrics[key]
        assert rows["index"].tolist() == list(range(7)) and (rows["pred"].sum(0) > 0).sum() >= 2
        for m in ("miou", "pixel_acc", "mean_acc", "fwiou"):
            assert stats.exact_metric(rows["tp"].sum(0), rows["label"].sum(0), rows["pred"].sum(0), m) == reported[m]
            assert float(stats.metric_of_counts(rows["tp"].sum(0), rows["label"].sum(0), rows["pred"].sum(0), m)) \
                == pytest.approx(reported[m], rel=1e-12)
        trimap = [rows[f"trimap_{k}"].sum(0) for k in per_image.COUNT_KEYS]
        assert stats.exact_metric(*trimap, "trimap_miou") == reported["trimap_miou"]
    assert not np.array_equal(module.last_per_image["val"]["pred"], module.last_per_image["val_crf"]["pred"])


def test_a_single_evaluated_image_gives_one_row(tmp_path):
    """torchmetrics squeezes a one-element result to 0-d; one validation image is still a row."""
    from lightning_modules.segmentation import SegmentationModule
    from tests.test_segmentation_module import Toy, toy_loader, trainer

    module = SegmentationModule(Toy(), 3, trimap_width=1)
    trainer(tmp_path, 1).validate(module, toy_loader(n=1, size=16), verbose=False)
    rows = module.last_per_image["val"]
    assert rows["index"].tolist() == [0] and rows["tp"].shape == (1, 3)
    assert stats.exact_metric(rows["tp"].sum(0), rows["label"].sum(0), rows["pred"].sum(0), "miou") \
        == module.last_metrics["val"]["miou"]


def test_seeds_that_disagree_make_the_interval_wide():
    """Training variance is in the interval: seed 0 says B is much better, seed 1 that it is a
    little worse, each on every image. The seed-averaged delta is positive and every image agrees,
    so an images-only bootstrap would call B certainly better; resampling the seeds too does not."""
    from experiments.stats import paired_bootstrap

    rng = np.random.default_rng(0)
    n, c = 60, 3
    label = rng.integers(50, 100, size=(n, c)).astype(np.int64)
    good, bad, fair = ((label * f).astype(np.int64) for f in (0.9, 0.5, 0.8))

    def run(tp):  # predictions exactly where labelled: pred = label
        return np.stack([tp, label, label], axis=1)

    a = np.stack([run(bad), run(good)])    # seed 0: A bad, seed 1: A good
    b = np.stack([run(good), run(fair)])   # seed 0: B good, seed 1: B a little worse than A
    out = paired_bootstrap(a, b, "miou", resamples=2000, seed=0)
    assert out["seed_deltas"][0] > 0.2 and out["seed_deltas"][1] < -0.05 and out["delta"] > 0.1
    assert out["low"] < 0 < out["high"]    # inconclusive, not 'supported' or 'contradicted'
    single = paired_bootstrap(a[:1], b[:1], "miou", resamples=2000, seed=0)
    assert single["low"] > 0               # one seed: images only, a clear difference
