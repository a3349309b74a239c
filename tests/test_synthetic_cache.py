"""The synthetic-data cache (``datamodules/synthetic/cache.py``): items served from arrays equal
freshly drawn ones, the key follows the generator, concurrent builders agree, bad files are
rebuilt."""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import warnings

import numpy as np
import pytest
import torch

from datamodules.synthetic import SYNTHETIC_TASKS, MultiScaleShapes, SyntheticDataModule
from datamodules.synthetic import cache
from datamodules.synthetic.cache import CacheWarning, cached_items

TASKS = sorted(SYNTHETIC_TASKS)


@pytest.fixture(autouse=True)
def _empty_memory():
    """Each test starts without the in-process copies, so the disk is what gets exercised."""
    cache._MEMORY.clear()
    yield
    cache._MEMORY.clear()


def _fresh(cls, split, n, size, seed):
    ds = cls(split, n, size, seed)
    return [ds[i] for i in range(n)]  # drawn item by item, as before the cache


def _same(items_a, items_b) -> bool:
    return all(torch.equal(ia, ib) and torch.equal(ma, mb) and ma.dtype == mb.dtype == torch.int64
               for (ia, ma), (ib, mb) in zip(items_a, items_b, strict=True))


@pytest.mark.parametrize("task", TASKS)
def test_cached_items_equal_fresh_ones_and_follow_the_data_seed(task, tmp_path):
    cls = SYNTHETIC_TASKS[task]
    fresh = _fresh(cls, "train", 4, 96, 0)
    for cache_dir in (tmp_path, tmp_path, False):  # write, read back, memory only
        cache._MEMORY.clear()
        ds = cls("train", 4, 96, 0).materialize(cache_dir)
        assert ds._items is not None
        assert _same([ds[i] for i in range(4)], fresh)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    other = cls("train", 4, 96, 1).materialize(tmp_path)
    assert not torch.equal(other[0][0], fresh[0][0])
    assert len(list(tmp_path.glob("*.npy"))) == 2
    with pytest.raises(IndexError):
        ds[4]


def test_cache_dir_default_is_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGABL_CACHE", str(tmp_path / "env"))
    dm = SyntheticDataModule("thin", num_train=4, num_val=2, image_size=64, batch_size=2)
    dm.setup("fit")
    assert dm.train_set._items_file.parent == tmp_path / "env"
    assert len(list((tmp_path / "env").glob("thin_*.npy"))) == 2  # train and val
    dm = SyntheticDataModule("thin", num_train=4, num_val=2, image_size=64, batch_size=2,
                             cache_dir=tmp_path / "arg")
    dm.setup("fit")
    assert dm.val_set._items_file.parent == tmp_path / "arg"
    dm = SyntheticDataModule("thin", num_train=4, num_val=2, image_size=64, batch_size=2,
                             cache_dir=False)
    dm.setup("fit")
    assert dm.train_set._items_file is None and dm.train_set._items is not None


def test_cache_is_rebuilt_when_the_generator_changes(tmp_path, monkeypatch):
    first, _ = cached_items(MultiScaleShapes("val", 3, 96), tmp_path)
    monkeypatch.setattr(MultiScaleShapes, "generator_version", 2)
    again, _ = cached_items(MultiScaleShapes("val", 3, 96), tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 2  # a new key, a new file
    np.testing.assert_array_equal(first, again)  # (nothing was really changed)
    monkeypatch.setattr(MultiScaleShapes, "gap", 12.0)  # a real parameter change
    changed, _ = cached_items(MultiScaleShapes("val", 3, 96), tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 3
    assert not np.array_equal(first, changed)
    np.testing.assert_array_equal(changed, cache.generate_items(MultiScaleShapes("val", 3, 96)))
    monkeypatch.setattr(cache, "generator_fingerprint", lambda cls: "edited source")
    cached_items(MultiScaleShapes("val", 3, 96), tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 4


def _build_in_child(cache_dir, barrier):
    """Spawned process: build the same key as the other child; report whether it generated."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger(cache.__name__).addHandler(handler)
    logging.getLogger(cache.__name__).setLevel(logging.INFO)
    barrier.wait()
    array, path = cached_items(MultiScaleShapes("train", 24, 96), cache_dir, workers=1)
    built = any("generating" in r.getMessage() for r in records)
    return built, str(path), np.asarray(array).tobytes()


@pytest.mark.slow
def test_two_processes_building_one_key_write_one_valid_file(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(2)
        with ctx.Pool(2) as pool:
            results = pool.starmap(_build_in_child, [(tmp_path, barrier)] * 2)
    (built_a, path_a, bytes_a), (built_b, path_b, bytes_b) = results
    assert sorted([built_a, built_b]) == [False, True]  # one built, the other waited and read
    assert path_a == path_b and bytes_a == bytes_b
    assert [p.name for p in tmp_path.glob("*.npy")] == [path_a.rsplit("/", 1)[1]]
    assert not list(tmp_path.glob("*.tmp"))
    expected = cache.generate_items(MultiScaleShapes("train", 24, 96), workers=1)
    assert bytes_a == expected.tobytes()


@pytest.mark.parametrize("damage", ["truncate", "flip_a_byte", "garbage"])
def test_a_damaged_cache_file_is_rebuilt_with_a_warning(tmp_path, damage):
    ds = MultiScaleShapes("val", 3, 96)
    expected = cache.generate_items(ds)
    _, path = cached_items(ds, tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "flip_a_byte":
        data[len(data) // 2] ^= 1
    else:
        data = bytearray(b"not a numpy file")
    path.write_bytes(bytes(data))
    cache._MEMORY.clear()
    with pytest.warns(CacheWarning, match="unusable"):
        array, again = cached_items(ds, tmp_path)
    assert again == path
    np.testing.assert_array_equal(array, expected)
    cache._MEMORY.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(cached_items(ds, tmp_path)[0], expected)  # valid again


def test_unwritable_cache_dir_falls_back_to_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    ds = MultiScaleShapes("val", 2, 96)
    with pytest.warns(CacheWarning, match="generating in memory"):
        array, path = cached_items(ds, blocker / "cache")
    assert path is None
    np.testing.assert_array_equal(array, cache.generate_items(ds))


def test_a_pickled_dataset_maps_the_file_instead_of_copying_it(tmp_path):
    ds = MultiScaleShapes("train", 6, 96).materialize(tmp_path)
    blob = pickle.dumps(ds)
    assert len(blob) < 10_000  # the arrays are 6 x 4 x 96 x 96 = 221 kB
    copy = pickle.loads(blob)
    assert _same([copy[i] for i in range(6)], [ds[i] for i in range(6)])
    assert isinstance(copy._items, np.memmap)


def test_process_pool_generation_is_bit_identical():
    ds = MultiScaleShapes("val", 8, 96)
    np.testing.assert_array_equal(cache.generate_items(ds, workers=2),
                                  cache.generate_items(ds, workers=1))


@pytest.mark.slow
def test_gpu_train_benchmark_tiny_runs_on_the_cpu_and_writes_one_row_per_configuration(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    from benchmarks.gpu_train import CONFIGS

    out = tmp_path / "tiny.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

    def bench(*extra: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, str(repo / "benchmarks" / "gpu_train.py"), "--tiny",
                               "--device", "cpu", "--json", str(out), *extra], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=420)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    # (c), the real runner, on two configurations: a VOC-layout one and the synthetic U-Net
    proc = bench("--only", "deeplab_largefov", "unet", "--no-loader", "--runner-steps", "2", "--sync-check")
    runs = json.loads(out.read_text())
    # (e) the quickstart's cell (smoke preset, tiny) and the sync check, which needs a GPU
    quick = runs["quickstart"]
    assert quick["steps"] == 4 and quick["steps_per_s"] > 0 and quick["argv"][:2] == ["--variant", "ASPP-L"]
    assert quick["bare_steps_per_s"] > 0
    assert quick["precision"] == "32-true" and quick["syncs"] == {"note": "CPU: no host-GPU synchronisation to count"}
    assert all(r["syncs"]["note"].startswith("CPU") for r in runs["rows"])
    assert "| aspp_ablation.py --variant ASPP-L --seed 0 |" in proc.stdout and "| host syncs per training step |" in proc.stdout
    for row in runs["rows"]:
        runner = row["runner"]
        assert runner["images_per_s"] > 0 and runner["warmup_s"] > 0 and runner["steps"] == 5, runner
        assert runner["precision"] == "32-true" and runner["channels_last"] is False
        assert "--preset" in runner["argv"] and row["step"]["model"] == {
            "deeplab_largefov": "deeplab_largefov", "unet": "unet"}[row["key"]]
    assert [r["loss"] for r in runs["loss"]] == ["F.cross_entropy(logits.float())", "segmentation_loss (ours)"]
    # (a), (b) and (d) on every configuration
    proc = bench("--no-runner", "--no-quickstart")
    result = json.loads(out.read_text())
    assert [r["key"] for r in result["rows"]] == [c.key for c in CONFIGS]
    for row in result["rows"]:
        step, loader = row["step"], row["loader"]
        timed = "step_s" in step
        assert timed or row["key"] == "torchvision_deeplabv3", row
        if timed:
            assert step["step_s"] > 0 and step["images_per_s"] > 0 and step["warmup_s"] > 0
        assert loader["images_per_s"] > 0 and loader["images"] > 0
        assert f"| {row['title']} |" in proc.stdout  # and one markdown row each


@pytest.mark.slow
def test_cpu_jobs_benchmark_tiny_times_a_sweep_per_setting(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "jobs.json"
    proc = subprocess.run([sys.executable, str(repo / "benchmarks" / "cpu_jobs.py"), "--tiny", "--variants", "ASPP-S",
                           "--seeds", "0", "1", "--jobs", "2", "--json", str(out)], cwd=repo, capture_output=True,
                          text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["jobs"], r["cells"]) for r in rows] == [(2, 2)] and rows[0]["wall_s"] > 0
    assert "| 2 |" in proc.stdout


def test_sync_count_is_per_source_line_and_per_step_cancels_set_up():
    """(e) of benchmarks/gpu_train.py, without a GPU: the sync debug mode's warnings counted per
    line (other warnings ignored, the mode switched on and back), and two runs' difference per
    step (lines that only run in set-up or validation drop out)."""
    import sys
    import warnings
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.gpu_train import SYNC_WARNING, count_syncs, syncs_per_step

    modes = []

    def run(steps: int) -> str:
        warnings.warn(SYNC_WARNING, stacklevel=1)  # set-up: once per run
        for _ in range(steps):
            warnings.warn(SYNC_WARNING, stacklevel=1)  # a per-step sync
            warnings.warn(SYNC_WARNING, stacklevel=1)  # another line, also once per step
            warnings.warn("an unrelated warning", stacklevel=1)
        return "done"

    result, short = count_syncs(lambda: run(4), modes.append)
    assert result == "done" and modes == ["warn", "default"]
    this = Path(__file__).name
    assert sum(short.values()) == 1 + 2 * 4 and all(k.startswith(f"{this}:") for k in short)
    _, long = count_syncs(lambda: run(12), modes.append)
    per_step = syncs_per_step(short, long, 8)
    assert per_step["per_step"] == 2 and len(per_step["where"]) == 2
    assert sorted(per_step["where"].values()) == [1, 1]  # the set-up line dropped out
