"""Per-image COCO AP records and per-image checkerboard values: exact recomputation and the bootstrap."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from experiments import stats
from experiments.atomic import write_atomic
from lightning_modules import per_image
from lightning_modules.instance import METRIC_KEYS, detection_metric
from lightning_modules.per_image_ap import PerImageMeanAveragePrecision, run_ap


def _instances(g, n, size=40, classes=3, scores=False):
    boxes, masks = [], []
    for _ in range(n):
        x0, y0 = torch.randint(0, size - 14, (2,), generator=g).tolist()
        w, h = torch.randint(4, 13, (2,), generator=g).tolist()
        m = torch.zeros(size, size, dtype=torch.bool)
        m[y0:y0 + h, x0:x0 + w] = True
        m[y0, x0] = False  # masks that are not their boxes
        boxes.append([x0, y0, x0 + w, y0 + h])
        masks.append(m)
    out = {"boxes": torch.tensor(boxes, dtype=torch.float).reshape(-1, 4),
           "labels": torch.randint(1, classes + 1, (n,), generator=g),
           "masks": torch.stack(masks) if n else torch.zeros(0, size, size, dtype=torch.bool)}
    if scores:
        out["scores"] = torch.rand(n, generator=g)
    return out


def fake_detections(n_images=16, seed=0, quality=1.0):
    """Ground truth, and detections: jittered copies of the ground truth (a share ``quality`` of
    them kept, scores random) plus random false positives. The ground truth depends on the image
    only (generator seeded per image), the detections on ``seed`` too."""
    gts, preds = [], []
    for i in range(n_images):
        g = torch.Generator().manual_seed(1000 + i)
        gt = _instances(g, int(torch.randint(0, 5, (1,), generator=g)))
        gd = torch.Generator().manual_seed(seed * 7919 + i)
        fp = _instances(gd, int(torch.randint(0, 4, (1,), generator=gd)), scores=True)
        keep = torch.rand(len(gt["labels"]), generator=gd) < quality
        jitter = torch.randn(int(keep.sum()), 4, generator=gd) * (2.5 - 2 * quality)
        preds.append({"boxes": torch.cat([fp["boxes"], gt["boxes"][keep] + jitter]),
                      "labels": torch.cat([fp["labels"], gt["labels"][keep]]),
                      "masks": torch.cat([fp["masks"], gt["masks"][keep]]),
                      "scores": torch.cat([fp["scores"] * 0.8, 0.2 + 0.8 * torch.rand(int(keep.sum()), generator=gd)])})
        gts.append(gt)
    return preds, gts


def evaluate(preds, gts, order=None, batch=5):
    """The metric updated in batches, images in ``order`` (dataset indices)."""
    metric = detection_metric()
    order = list(range(len(gts))) if order is None else order
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        metric.update([preds[i] for i in idx], [gts[i] for i in idx], index=idx)
    result = metric.compute()
    return result, metric.records


@pytest.mark.parametrize("order", ["sequential", "interleaved"])
def test_records_reproduce_every_reported_ap_exactly(order):
    preds, gts = fake_detections()
    # interleaved: the order two DDP ranks' gathered states come in (0, 8, 1, 9, ...)
    idx = None if order == "sequential" else [i for pair in zip(range(8), range(8, 16)) for i in pair]
    result, records = evaluate(preds, gts, idx)
    assert records["index"].tolist() == list(range(16))
    for key, name in METRIC_KEYS.items():
        assert float(result[name]) > 0
        assert torch.tensor(run_ap(records, key)).float() == result[name].float(), key
    # a subset's AP is the AP of evaluating that subset alone
    subset = [0, 3, 4, 9, 10, 15]
    sub_result, _ = evaluate([preds[i] for i in subset], [gts[i] for i in subset])
    weights = np.zeros(16)
    weights[subset] = 1
    assert_weighted_ap_is(records, weights, sub_result)


def assert_weighted_ap_is(records, weights, result):
    """AP of the records with one weight per image equals ``result`` (an evaluation's output)."""
    from lightning_modules import per_image_ap

    weights = np.asarray(weights, dtype=np.float64)[None]
    for key, name in METRIC_KEYS.items():
        ranks, gt, rec = per_image_ap.rankings([records], key)
        ours = per_image_ap.average_precision(ranks, gt, rec, weights, weights)[0]
        assert ours == pytest.approx(float(result[name]), abs=1e-6), key


def test_a_doubled_image_weighs_as_two_copies():
    preds, gts = fake_detections(n_images=6)
    _, records = evaluate(preds, gts)
    copies = [0, 1, 1, 2, 3, 4, 5]  # image 1 twice
    copied, _ = evaluate([preds[i] for i in copies], [gts[i] for i in copies], batch=7)
    assert_weighted_ap_is(records, [1, 2, 1, 1, 1, 1], copied)


def test_unknown_or_repeated_indices_give_no_records():
    preds, gts = fake_detections(n_images=4)
    metric = PerImageMeanAveragePrecision()
    metric.update(preds[:2], gts[:2], index=[0, 1])
    metric.update(preds[2:], gts[2:], index=[1, 2])  # image 1 twice: a padded sampler
    with pytest.warns(UserWarning, match="evaluated twice"):
        metric.compute()
    assert metric.records is None
    metric.reset()
    metric.update(preds, gts)  # no index
    with pytest.warns(UserWarning, match="order is unknown"):
        metric.compute()
    assert metric.records is None


def ap_run(dataset_dir, variant, seed, records):
    d = dataset_dir / variant / f"seed{seed}"
    d.mkdir(parents=True)
    write_atomic(d / per_image.file_name("val"), lambda f: per_image.write(f, records))
    (d / "metrics.json").write_text(json.dumps({"seed": seed, "val": {}}))


@pytest.fixture(scope="module")
def ap_records():
    weak = [evaluate(*fake_detections(n_images=40, seed=s, quality=0.5))[1] for s in range(2)]
    strong = [evaluate(*fake_detections(n_images=40, seed=s + 10, quality=1.0))[1] for s in range(2)]
    return weak, strong


def test_ap_bootstrap_same_run_is_zero_better_run_is_supported(tmp_path, ap_records):
    weak, strong = ap_records
    for s in range(2):
        ap_run(tmp_path, "weak", s, weak[s])
        ap_run(tmp_path, "strong", s, strong[s])
        ap_run(tmp_path, "same", s, weak[s])
    same = stats.compare(tmp_path, "weak", "same", "mask_ap", resamples=300)
    assert same.delta == 0 and same.low == 0 and same.high == 0 and same.p_value == 1.0
    better = stats.compare(tmp_path, "weak", "strong", "box_ap50", resamples=300)
    assert better.low > 0 and better.p_value < 0.05
    assert better.a_value == pytest.approx(np.mean([run_ap(r, "box_ap50") for r in weak]))
    assert better.seeds == (0, 1) and len(better.seed_deltas) == 2
    again = stats.compare(tmp_path, "weak", "strong", "box_ap50", resamples=300)
    assert (again.low, again.high, again.p_value) == (better.low, better.high, better.p_value)
    assert stats.verdict(">", better.low * 100, better.high * 100) == "supported"


def test_ap_records_of_other_images_are_refused(tmp_path, ap_records):
    weak, _ = ap_records
    ap_run(tmp_path, "A", 0, weak[0])
    other = evaluate(*fake_detections(n_images=12))[1]
    ap_run(tmp_path, "B", 0, other)
    with pytest.raises(stats.NotComparable, match="different images"):
        stats.compare(tmp_path, "A", "B", "mask_ap", resamples=10)
    # a semantic per-image file holds no AP records
    d = tmp_path / "C" / "seed0"
    d.mkdir(parents=True)
    write_atomic(d / per_image.file_name("val"), lambda f: per_image.write(f, {"index": np.arange(3)}))
    (d / "metrics.json").write_text(json.dumps({"val": {}}))
    with pytest.raises(stats.NotComparable, match="no mask_ap records") as err:
        stats.compare(tmp_path, "C", "C", "mask_ap")
    assert err.value.status == "no per-image mask_ap"


def test_checkerboard_values_are_resampled_as_a_mean(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.0, 0.02, size=30)
    for variant, values in (("transposed", base + 0.01), ("resize", base), ("resize again", base.copy())):
        d = tmp_path / variant / "seed0"
        d.mkdir(parents=True)
        rows = {"index": np.arange(30), "checkerboard": values}
        write_atomic(d / per_image.file_name("val"), lambda f, r=rows: per_image.write(f, r))
        (d / "metrics.json").write_text(json.dumps({"val": {}}))
    c = stats.compare(tmp_path, "transposed", "resize", "checkerboard", resamples=500)
    assert c.a_value == pytest.approx(base.mean() + 0.01) and c.b_value == pytest.approx(base.mean())
    assert c.delta == pytest.approx(-0.01) and c.high == pytest.approx(-0.01) and c.low == pytest.approx(-0.01)
    same = stats.compare(tmp_path, "resize", "resize again", "checkerboard", resamples=500)
    assert same.delta == 0 and same.p_value == 1.0


def test_roi_align_runs_store_records_and_the_claims_get_verdicts(tmp_path):
    """The runner end to end on the instance task: each cell's per_image_val.npz reproduces its
    reported AP, and the claims table computes verdicts for the AP claims."""
    from experiments.roi_align_ablation import ABLATION
    from experiments.runner import main

    main(ABLATION, ["--out", str(tmp_path), "--quiet", "--no-figures", "--seeds", "0", "--variants", "RoIPool",
                    "RoIAlign", "--max-steps", "2", "--set", "data.num_train=8", "--set", "data.num_val=6"])
    folder = next((tmp_path / "roi_align").iterdir())
    for variant in ("RoIPool", "RoIAlign"):
        for seed in (0,):
            run = folder / variant / f"seed{seed}"
            reported = json.loads((run / "metrics.json").read_text())["val"]
            records = per_image.load(run / per_image.file_name("val"))
            assert records["index"].tolist() == list(range(6))
            for key in METRIC_KEYS:
                if not np.isnan(reported[key]):
                    assert np.float32(run_ap(records, key)) == np.float32(reported[key]), (variant, seed, key)
    claims_md = (folder / "claims.md").read_text()
    rows = [line for line in claims_md.splitlines() if line.startswith("| RoIAlign > RoIPool")]
    assert len(rows) == 2 and not any("not testable" in r or "no per-image" in r for r in rows)
    assert all(any(v in r for v in stats.VERDICTS) for r in rows)


def test_upsampling_runs_store_checkerboard_per_image(tmp_path):
    from experiments.runner import main
    from experiments.upsampling_ablation import ABLATION

    main(ABLATION, ["--out", str(tmp_path), "--quiet", "--no-figures", "--seeds", "0", "--variants",
                    "FCN-8s transposed", "FCN-8s bilinear", "--max-steps", "2", "--image-size", "64",
                    "--set", "data.num_train=8", "--set", "data.num_val=5"])
    folder = next((tmp_path / "upsampling").iterdir())
    run = folder / "FCN-8s transposed" / "seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    reported = metrics["val"]
    # recorded with the result: what bit-for-bit reproduction needs besides the seed
    assert metrics["environment"] == {"torch": torch.__version__, "device": "cpu",
                                      "cpu_threads": torch.get_num_threads()}
    rows = per_image.load(run / per_image.file_name("val"))
    assert rows["index"].tolist() == list(range(5)) and rows["tp"].shape[0] == 5  # with the counts
    assert rows["checkerboard"].mean() == pytest.approx(reported["checkerboard"], rel=1e-5)
    claim = next(line for line in (folder / "claims.md").read_text().splitlines()
                 if line.startswith("| FCN-8s bilinear < FCN-8s transposed"))
    assert any(v in claim for v in stats.VERDICTS) and "1 × 1" not in claim and "5 × 1" in claim


@pytest.mark.slow
def test_two_process_evaluation_gathers_records_of_every_image_once(tmp_path):
    """Under DDP (gloo, 2 processes, images dealt round-robin) the synced records are those of
    one process evaluating all images: same dataset indices, same AP to the last bit."""
    import torch.multiprocessing as mp

    from tests.experiment_scripts import ap_records_worker

    mp.spawn(ap_records_worker, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    single, records = evaluate(*fake_detections(n_images=12))
    for rank in (0, 1):
        with np.load(tmp_path / f"rank{rank}.npz") as got:
            assert got["index"].tolist() == list(range(12))
            for key, name in METRIC_KEYS.items():
                assert got[f"reported_{key}"] == float(single[name])
                assert run_ap(dict(got), key) == run_ap(records, key)
