"""Training speed of every paper configuration on the machine at hand: (a) the bare training step
and (b) the data loader that would feed it. Prints one markdown table; ``--json`` writes it all.

(a) Forward + backward + SGD step of each paper model at the paper's batch and crop on random
data (``benchmarks/train_step.py``'s timer): bf16 autocast + channels_last on a GPU (cuDNN
autotuning on, so warm-up includes it), fp32 on the CPU. Warm-up steps are excluded and their
time reported separately; the step time is the median of ``--steps`` timed steps. A
configuration that runs out of memory is skipped with a note.

(b) Items of the synthetic ``multiscale`` task exported (``export_synthetic``) in the real VOC
2012 or ADE20K layout at about the papers' image sizes (500 / 512 px squares; JPEG + PNG), read
by the real ``VOCDataModule`` / ``ADE20KDataModule`` with the paper's augmentation, crop and
batch and the paper preset's workers (auto: ``experiments.card.resolve_workers``; ``--workers`` to change). U-Net has no real dataset
here: its row reads the ``touching`` task through ``SyntheticDataModule`` at 572 px, the
array-backed path its ablation uses. Images/s after the first batch (worker start-up,
reported). If the loader is slower than the step, the GPU waits for data.

(c) The real runner: the paper preset of the ablation script and variant that trains this model
(``experiments/<name>_ablation.py --preset paper --variant ...``) on the exported dataset, in
this process, for ``--runner-steps`` optimiser steps after its own 3 warm-up steps, with the
preset's defaults (precision and channels_last auto, its workers), no pretrained weights (none
can be downloaded on an offline machine). Its steady-state images/s (``train_images_per_s`` of
the cell's metrics.json: time between training-batch ends after the warm-up, validation and
checkpoints excluded) against (a)'s, and the warm-up seconds. The bare step of a configuration
with a runner row is built from the same resolved cell (model, kwargs, per-device batch, crop,
auxiliary loss weight), so (a) and (c) train the same network.

(e) ``--sync-check``: the host-GPU synchronisations per training step of each runner row and of
the quickstart cell (``count_syncs``: CUDA's sync debug mode makes every operation that waits for
the GPU warn from the Python line that called it; two runs differing by ``--sync-steps`` steps,
so set-up, warm-up and validation cancel out), with the lines they come from. A step that
synchronises cannot queue the next step while the GPU runs this one: what made LargeFOV's
runner half as fast as its bare step (BENCHMARKS.md). The quickstart cell itself (ASPP-L, seed 0
of ``python experiments/aspp_ablation.py``, smoke preset, this machine's defaults) is timed
unless ``--no-quickstart``, beside its network's bare step (same batch, size, precision).

(d) The loss alone on PSPNet-sized logits (16 × 150 × 473 × 473, bf16 on a GPU; a small size on
a CPU): forward + backward of ``F.cross_entropy(logits.float())`` against the repository's
``segmentation_loss`` (``LowPrecisionCrossEntropy`` for half-precision logits), peak memory
above the logits and time.

    python benchmarks/gpu_train.py --json gpu_train.json       # one GPU: all rows, a few minutes
    python benchmarks/gpu_train.py --only deeplab_v3_os8 pspnet --steps 20
    python benchmarks/gpu_train.py --tiny --json /tmp/tiny.json  # anywhere (CPU): a check only
    python benchmarks/gpu_train.py --no-runner                   # (a), (b) and (d) only
    python benchmarks/gpu_train.py --sync-check --json g.json    # and (e): host syncs per step
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.data_pipeline import loader_throughput, machine  # noqa: E402
from benchmarks.train_step import time_train_step  # noqa: E402


@dataclass(frozen=True)
class Config:
    key: str
    title: str
    model: str                 # build_model name, or "torchvision" for the peer
    kwargs: dict
    num_classes: int
    batch: int
    crop: int
    layout: str                # "voc" | "ade20k" | "synthetic" (U-Net: touching)
    augment: str
    scale_range: tuple[float, float] = (1.0, 1.0)
    aux_weight: float = 0.0
    # (c): the paper cell that trains this model: (ablation script stem, variant, extra argv)
    runner: tuple[str, str, tuple[str, ...]] | None = None


VOC_SPLITS = ("--set", "data.train_split=train", "--set", "data.val_split=val")  # the export's lists

CONFIGS = [  # the papers' recipes (experiments/recipes/*.py), width 1, no pretrained weights
    # FCN trains on whole images, 1 per step with 20 accumulated (fcn.py): the bare step is that
    Config("fcn8s", "FCN-8s VGG16", "fcn8s", {}, 21, 1, 500, "voc", "flip",
           runner=("fcn_skip", "FCN-8s at-once", VOC_SPLITS)),
    Config("deeplab_largefov", "DeepLab LargeFOV VGG16", "deeplab_largefov", {}, 21, 10, 321,
           "voc", "deeplab", (0.5, 1.5), runner=("aspp", "LargeFOV", VOC_SPLITS)),
    Config("deeplab_v2_vgg16", "DeepLab v2 ASPP-L VGG16", "deeplab_v2",
           {"backbone": "vgg16", "atrous_rates": (6, 12, 18, 24)}, 21, 10, 321, "voc", "deeplab",
           (0.5, 1.5), runner=("aspp", "ASPP-L", VOC_SPLITS)),
    Config("deeplab_v2_r101", "DeepLab v2 ASPP-L ResNet-101 (MSC)", "deeplab_v2",
           {"backbone": "resnet101", "atrous_rates": (6, 12, 18, 24)}, 21, 10, 321, "voc",
           "deeplab", (0.5, 1.5), runner=("aspp", "ASPP-L-R101", ("--backbone", "resnet101", *VOC_SPLITS))),
    Config("pspnet", "PSPNet ResNet-50 + aux", "pspnet", {"backbone": "resnet50", "aux": True},
           150, 16, 473, "ade20k", "pspnet", (0.5, 2.0), aux_weight=0.4,
           runner=("psp_bins", "B1236 AVE DR", ())),
    Config("deeplab_v3_os16", "DeepLab v3 ResNet-101 OS16", "deeplab_v3",
           {"backbone": "resnet101", "output_stride": 16}, 21, 16, 513, "voc", "deeplab",
           (0.5, 2.0), runner=("deeplabv3", "MG(1,2,4) + image pooling", VOC_SPLITS)),
    Config("deeplab_v3_os8", "DeepLab v3 ResNet-101 OS8", "deeplab_v3",
           {"backbone": "resnet101", "output_stride": 8}, 21, 16, 513, "voc", "deeplab",
           (0.5, 2.0), runner=("deeplabv3", "MG(1,2,4) + image pooling",
                               ("--set", "model.output_stride=8", *VOC_SPLITS))),
    Config("torchvision_deeplabv3", "torchvision deeplabv3_resnet101 (peer)", "torchvision", {},
           21, 16, 513, "voc", "deeplab", (0.5, 2.0)),
    Config("deeplab_v3plus", "DeepLab v3+ Xception-65 OS16", "deeplab_v3plus",
           {"backbone": "xception65", "output_stride": 16}, 21, 16, 513, "voc", "deeplab",
           (0.5, 2.0), runner=("deeplabv3plus", "Xception-65 decoder, separable", VOC_SPLITS)),
    Config("unet", "U-Net (valid padding)", "unet", {}, 2, 1, 572, "synthetic", "flip",
           runner=("unet", "valid", ())),
]
EXPORT_SIZE = {"voc": 500, "ade20k": 512}  # VOC images are at most 500 px; ADE20K ~512 short side


def runner_argv(cfg: Config, args, root: Path | None, out: Path, steps: int | None = None) -> tuple[str, list[str]]:
    """The command line of (c)'s cell: the paper preset of ``cfg.runner``'s script and variant,
    ``steps`` optimiser steps (default ``--runner-steps`` + the runner's 3 warm-up steps)."""
    stem, variant, extra = cfg.runner
    data = {"voc": ["--data", "voc"], "ade20k": ["--data", "ade20k"], "synthetic": []}[cfg.layout]
    steps = steps if steps is not None else args.runner_steps + 3
    argv = ["--preset", "paper", *data, "--variant", variant, "--seed", "0", "--pretrained", "false",
            "--max-steps", str(steps), "--out", str(out), "--quiet", "--no-figures", "--no-reuse",  # measure training
            *extra]
    if cfg.layout != "synthetic":
        argv += ["--data-root", str(root), "--skip-data-check"]
    if args.tiny:  # small everything; the synthetic U-Net row also at a small image size
        argv += ["--width", str(args.width), "--batch-size", "2", "--set", "trainer.accumulate=1"]
        argv += ["--image-size", "96"] if cfg.layout == "synthetic" else ["--set", "data.crop_size=64"]
        argv += ["--set", "data.num_train=6", "--set", "data.num_val=1"] if cfg.layout == "synthetic" else []
    elif cfg.layout == "synthetic":
        argv += ["--set", f"data.num_train={args.n_images}", "--set", "data.num_val=1"]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    return stem, argv


def ablation_of(stem: str):
    import importlib

    return importlib.import_module(f"experiments.{stem}_ablation").ABLATION


def resolved_cell(cfg: Config, args):
    """The runner's resolved cell for ``cfg`` (what (c) trains), or None without a runner row."""
    if cfg.runner is None:
        return None
    from experiments.runner import parse_args

    stem, argv = runner_argv(cfg, args, Path("/nonexistent"), Path("/nonexistent"))
    parsed, _, _ = parse_args(ablation_of(stem), argv)
    return parsed.cells[cfg.runner[1]]


def build(cfg: Config, width: float, cell=None) -> torch.nn.Module:
    if cfg.model == "torchvision":  # no width knob: always full width
        from torchvision.models.segmentation import deeplabv3_resnet101

        return deeplabv3_resnet101(weights=None, weights_backbone=None,
                                   num_classes=cfg.num_classes, aux_loss=False)
    from models import build_model

    if cell is not None:  # the runner's model exactly (MSC, multi-grid, image pooling, ...)
        return build_model(cell.model, cfg.num_classes, **{**cell.model_kwargs, "pretrained": False})
    return build_model(cfg.model, cfg.num_classes, pretrained=False, width=width, **cfg.kwargs)


def measure_step(cfg: Config, args, device: str) -> dict:
    cell = resolved_cell(cfg, args)
    batch, crop = (2, 64) if args.tiny else (cfg.batch, cfg.crop)
    aux_weight = cfg.aux_weight
    if cell is not None and not args.tiny:
        batch = cell.batch_per_device
        crop = cell.recipe.data.crop_size or cell.recipe.data.image_size or EXPORT_SIZE[cfg.layout]
        aux_weight = cell.recipe.optim.aux_weight
    torch.manual_seed(0)
    gpu = device == "cuda"
    out = {"batch": batch, "crop": crop, "precision": "bf16-autocast" if gpu else "fp32",
           "channels_last": gpu, "steps": args.steps, "warmup_steps": args.warmup,
           "model": cell.model if cell else cfg.model,
           "model_kwargs": {k: v for k, v in (cell.model_kwargs if cell else cfg.kwargs).items()
                            if k != "pretrained"}}
    if args.tiny and cfg.model == "torchvision":
        out["note"] = "step not timed with --tiny: torchvision's model has no width knob"
        return out
    model = x = y = None
    try:
        if gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        model = build(cfg, args.width, cell)
        x = torch.randn(batch, 3, crop, crop, device=device)
        y = torch.randint(0, cfg.num_classes, (batch, crop, crop), device=device)
        out |= time_train_step(model, x, y, torch.bfloat16 if gpu else torch.float32, gpu,
                               args.steps, args.warmup, aux_weight)
        if gpu:
            out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    except torch.OutOfMemoryError:
        out["note"] = f"out of memory at batch {batch} x {crop}px: skipped"
    finally:
        model = x = y = None  # noqa: F841 (free before the next configuration)
        if gpu:
            torch.cuda.empty_cache()
    return out


def measure_loader(cfg: Config, args, roots: dict[str, Path], cache: dict) -> dict:
    batch = 2 if args.tiny else cfg.batch
    crop = 64 if args.tiny else cfg.crop
    what = (cfg.layout, cfg.augment, cfg.scale_range, crop, batch)
    if what in cache:
        return cache[what]
    kwargs = dict(batch_size=batch, crop_size=crop, scale_range=cfg.scale_range,
                  augment=cfg.augment, seed=0)
    if args.workers is not None:
        kwargs["num_workers"] = args.workers
    else:  # what the paper preset's runner uses here (auto: a core per worker, one kept)
        from experiments.card import resolve_workers

        kwargs["num_workers"] = resolve_workers(None, args.device, "paper")
    if cfg.layout == "voc":
        from datamodules.voc import VOCDataModule

        dm = VOCDataModule(str(roots["voc"]), train_split="train", **kwargs)
    elif cfg.layout == "ade20k":
        from datamodules.ade20k import ADE20KDataModule

        dm = ADE20KDataModule(str(roots["ade20k"]), **kwargs)
    else:
        from datamodules.synthetic import SyntheticDataModule

        size = 96 if args.tiny else crop
        dm = SyntheticDataModule("touching", num_train=args.n_images, num_val=1, image_size=size,
                                 cache_dir=args.synthetic_cache, **kwargs)
    dm.setup("fit")
    loader = dm.train_dataloader()
    # many batches: with W workers, 2·W batches are prefetched before the clock starts, and
    # timing fewer than that measures the queue, not the workers (15 workers: 4,279 "img/s")
    batches = 2 if args.tiny else max(10, 6 * dm.num_workers)
    result = loader_throughput(loader, passes=1 + batches * batch // args.n_images,
                               max_batches=batches)
    result |= {"dataset": f"synthetic multiscale, {cfg.layout} layout" if cfg.layout != "synthetic"
               else "synthetic touching (arrays)", "workers": dm.num_workers,
               "augment": cfg.augment, "crop": crop, "batch": batch}
    del loader, dm  # stops its workers
    cache[what] = result
    return result


def measure_runner(cfg: Config, args, roots: dict[str, Path], tmp: Path) -> dict:
    """(c): one paper cell through ``experiments.runner.main`` in this process; its metrics.json."""
    from experiments.runner import main as run_ablation

    stem, argv = runner_argv(cfg, args, roots.get(cfg.layout), tmp / f"runner_{cfg.key}")
    t0 = time.perf_counter()
    try:
        run_ablation(ablation_of(stem), argv)
    except torch.OutOfMemoryError:
        return {"note": "out of memory: skipped", "argv": argv}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    found = list((tmp / f"runner_{cfg.key}").rglob("metrics.json"))
    if len(found) != 1:
        return {"note": f"no metrics.json after the run ({len(found)} found)", "argv": argv}
    m = json.loads(found[0].read_text())
    config = json.loads((found[0].parent / "config.json").read_text())["card"]
    return {"images_per_s": m["train_images_per_s"], "warmup_s": m.get("train_warmup_s"),
            "warmup_steps": m.get("train_warmup_steps"), "steps": m["steps"],
            "train_time_s": m["train_time_s"], "wall_s": time.perf_counter() - t0,
            "precision": config["precision"], "channels_last": config["channels_last"],
            "workers": config["num_workers"], "batch_per_device": config["batch_size_per_device"],
            "accumulate": config.get("accumulate"), "argv": argv}


SYNC_WARNING = "called a synchronizing CUDA operation"  # torch's sync debug mode, c10/cuda


def count_syncs(run, set_mode=None) -> tuple[object, dict[str, int]]:
    """``run()`` with CUDA's sync debug mode on ("warn"): every operation that makes the host wait
    for the GPU (``.item()``, a copy to the CPU, a copy from pageable memory, ...) warns from
    the Python line that called it. Returns ``run()``'s result and the count per ``file:line``."""
    import warnings
    from collections import Counter

    set_mode = set_mode or torch.cuda.set_sync_debug_mode
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        set_mode("warn")
        try:
            result = run()
        finally:
            set_mode("default")
    counts = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if SYNC_WARNING in str(w.message))
    return result, dict(counts.most_common())


def syncs_per_step(short: dict[str, int], long: dict[str, int], extra_steps: int) -> dict:
    """Host-GPU synchronisations per training step, from two runs that differ by ``extra_steps``
    optimiser steps and nothing else: set-up, warm-up and the final validation cancel out."""
    where = {k: (long.get(k, 0) - short.get(k, 0)) / extra_steps for k in set(short) | set(long)}
    where = {k: v for k, v in sorted(where.items(), key=lambda kv: -kv[1]) if v > 0}
    return {"per_step": sum(where.values()), "where": where}


def measure_syncs(cfg: Config, args, roots: dict[str, Path], tmp: Path, stem_variant=None) -> dict:
    """(e) host syncs: ``cfg``'s runner cell (or ``stem_variant``'s smoke cell) for 4 and for
    4 + ``--sync-steps`` optimiser steps under the sync debug mode; the difference per step."""
    if args.device != "cuda":
        return {"note": "CPU: no host-GPU synchronisation to count"}
    from experiments.runner import main as run_ablation

    counts = []
    for steps in (4, 4 + args.sync_steps):
        out = tmp / f"syncs_{cfg.key}_{steps}"
        stem, argv = stem_variant(out, steps) if stem_variant else runner_argv(cfg, args, roots.get(cfg.layout), out, steps)
        counts.append(count_syncs(lambda stem=stem, argv=argv: run_ablation(ablation_of(stem), argv))[1])
    return {**syncs_per_step(*counts, args.sync_steps), "steps": args.sync_steps}


def quickstart_argv(args, out: Path, steps: int | None = None) -> tuple[str, list[str]]:
    """One cell of the quickstart (``python experiments/aspp_ablation.py``): ASPP-L, seed 0, the
    smoke preset as it runs by default on this machine (``--tiny``: smaller and shorter)."""
    argv = ["--variant", "ASPP-L", "--seed", "0", "--out", str(out), "--quiet", "--no-figures", "--no-reuse"]
    if steps is not None:
        argv += ["--max-steps", str(steps)]
    if args.tiny:
        argv += ["--width", "0.0625", "--image-size", "96", "--set", "data.num_train=16", "--set", "data.num_val=2"]
        argv += [] if steps is not None else ["--max-steps", "4"]
    return "aspp", argv


def bare_quickstart_step(stem: str, argv: list[str], card: dict, args) -> float:
    """Steps/s of the quickstart cell's network alone (``time_train_step``: random data, the
    cell's batch, size, precision and memory format; SGD where the cell uses AdamW): what the
    runner's steps/s is to be compared with."""
    from experiments.card import synthetic_task
    from experiments.runner import parse_args
    from experiments.tasks import get_task
    from models import build_model

    ablation = ablation_of(stem)
    parsed, run, _ = parse_args(ablation, argv)
    cell = parsed.cells[card["variant"]]
    classes = get_task(ablation.task).dataset(run.data).num_classes(synthetic_task(ablation, run))
    model = build_model(cell.model, classes, **{**cell.model_kwargs, "pretrained": False})
    size, batch = card["crop_size"], card["batch_size_per_device"]
    x = torch.randn(batch, 3, size, size, device=args.device)
    y = torch.randint(0, classes, (batch, size, size), device=args.device)
    dtype = torch.bfloat16 if card["precision"] == "bf16-mixed" else torch.float32
    timed = time_train_step(model, x, y, dtype, card["channels_last"], max(args.steps, 10), args.warmup)
    return 1 / timed["step_s"]


def measure_quickstart(args, tmp: Path) -> dict:
    """(e) the quickstart's own cell, as ``python experiments/aspp_ablation.py`` trains it here:
    wall time of the cell, its training steps/s (steady state), and its host syncs per step."""
    from experiments.runner import main as run_ablation

    out = tmp / "quickstart"
    stem, argv = quickstart_argv(args, out)
    t0 = time.perf_counter()
    run_ablation(ablation_of(stem), argv)
    wall = time.perf_counter() - t0
    m = json.loads(next(out.rglob("metrics.json")).read_text())
    card = json.loads(next(out.rglob("config.json")).read_text())["card"]
    row = {"wall_s": wall, "train_time_s": m["train_time_s"], "steps": m["steps"],
           "steps_per_s": m["train_images_per_s"] / card["global_batch"] if m["train_images_per_s"] else None,
           "precision": card["precision"], "channels_last": card["channels_last"], "workers": card["num_workers"],
           "argv": argv}
    row["bare_steps_per_s"] = bare_quickstart_step(stem, argv, card, args)
    if args.sync_check:
        cfg = Config("quickstart", "quickstart cell", "deeplab_v2", {}, 21, 8, 160, "synthetic", "flip")
        row["syncs"] = measure_syncs(cfg, args, {}, tmp, lambda o, n: quickstart_argv(args, o, n))
    return row


def measure_loss(args, device: str) -> list[dict]:
    """(d): forward + backward of the loss alone on PSPNet-sized logits; peak memory above them."""
    from lightning_modules.segmentation import segmentation_loss

    gpu = device == "cuda"
    n, c, size = (2, 150, 48) if args.tiny or not gpu else (16, 150, 473)
    dtype = torch.bfloat16 if gpu else torch.float32
    results = []
    for name, fn in (("F.cross_entropy(logits.float())",
                      lambda z, t: torch.nn.functional.cross_entropy(z.float(), t, ignore_index=255)),
                     ("segmentation_loss (ours)", segmentation_loss)):
        torch.manual_seed(0)
        logits = torch.randn(n, c, size, size, device=device, dtype=dtype, requires_grad=True)
        target = torch.randint(0, c, (n, size, size), device=device)
        times = []
        for _ in range(1 if args.tiny else 5):
            logits.grad = None
            if gpu:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            fn(logits, target).backward()
            if gpu:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        row = {"loss": name, "logits": f"{n}x{c}x{size}x{size} {str(dtype).replace('torch.', '')}",
               "logits_gib": logits.numel() * logits.element_size() / 2**30,
               "ms": 1e3 * sorted(times)[len(times) // 2]}
        if gpu:
            row["peak_above_logits_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
        results.append(row)
        del logits, target
    return results


def export_datasets(tmp: Path, args) -> dict[str, Path]:
    from datamodules.synthetic import export_synthetic

    roots = {}
    for layout in sorted({c.layout for c in args.configs} - {"synthetic"}):
        t0 = time.perf_counter()
        roots[layout] = export_synthetic("multiscale", tmp / layout, layout, args.n_images, 1,
                                         96 if args.tiny else EXPORT_SIZE[layout])
        print(f"exported {args.n_images} {layout} items in {time.perf_counter() - t0:.1f}s",
              file=sys.stderr)
    return roots


def table(rows: list[dict]) -> str:
    lines = ["| configuration | batch × crop | warm-up s | step ms (median) | bare img/s | "
             "peak GiB | loader img/s (workers) | runner img/s | runner / bare | runner warm-up s "
             "| note |", "|---" * 11 + "|"]
    for r in rows:
        s, ld, rn = r["step"], r.get("loader") or {}, r.get("runner") or {}
        step = (f"{s['warmup_s']:.1f} | {1e3 * s['step_s']:.0f} | {s['images_per_s']:.1f}"
                if "step_s" in s else "– | – | –")
        peak = f"{s['peak_memory_gib']:.1f}" if "peak_memory_gib" in s else "–"
        loader = f"{ld['images_per_s']:.0f} ({ld['workers']})" if ld else "–"
        runner = "– | – | –"
        if rn.get("images_per_s"):
            ratio = f"{100 * rn['images_per_s'] / s['images_per_s']:.0f}%" if "images_per_s" in s else "–"
            warm = f"{rn['warmup_s']:.1f}" if rn.get("warmup_s") is not None else "–"
            runner = f"{rn['images_per_s']:.1f} | {ratio} | {warm}"
        notes = [n for n in (s.get("note"), rn.get("note")) if n]
        if ld and "images_per_s" in s and ld["images_per_s"] < s["images_per_s"]:
            notes.append("loader-bound")
        lines.append(f"| {r['title']} | {s['batch']} × {s['crop']} | {step} | {peak} | {loader} "
                     f"| {runner} | {'; '.join(notes)} |")
    return "\n".join(lines)


def loss_table(rows: list[dict]) -> str:
    lines = ["| loss | logits | logits GiB | forward + backward ms | peak above the logits GiB |",
             "|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak_above_logits_gib']:.2f}" if "peak_above_logits_gib" in r else "–"
        lines.append(f"| {r['loss']} | {r['logits']} | {r['logits_gib']:.2f} | {r['ms']:.1f} | {peak} |")
    return "\n".join(lines)


def quickstart_table(q: dict) -> str:
    rate = f"{q['steps_per_s']:.1f}" if q.get("steps_per_s") else "–"
    ratio = f"{100 * q['steps_per_s'] / q['bare_steps_per_s']:.0f}%" if q.get("steps_per_s") else "–"
    return ("| quickstart cell | steps | wall s | train s | steps/s (steady) | bare steps/s | runner / bare "
            "| precision | channels_last | workers |\n|---|---|---|---|---|---|---|---|---|---|\n"
            f"| aspp_ablation.py {' '.join(q['argv'][:4])} | {q['steps']} | {q['wall_s']:.1f} | {q['train_time_s']:.1f} "
            f"| {rate} | {q['bare_steps_per_s']:.1f} | {ratio} | {q['precision']} | {q['channels_last']} | {q['workers']} |")


def syncs_table(rows: list[dict], quick: dict) -> str:
    lines = ["| configuration | host syncs per training step | where (file:line: per step) |", "|---|---|---|"]
    for title, sy in [(r["title"], r.get("syncs")) for r in rows] + [("quickstart cell", quick.get("syncs"))]:
        if not sy:
            continue
        if "note" in sy:
            lines.append(f"| {title} | – | {sy['note']} |")
        else:
            where = "; ".join(f"{k}: {v:g}" for k, v in list(sy["where"].items())[:5]) or "none"
            lines.append(f"| {title} | {sy['per_step']:g} | {where} |")
    return "\n".join(lines)


class _synthetic_cache:
    """``SEGABL_CACHE`` pointed at ``path`` for the runner's synthetic rows (U-Net), then restored."""

    def __init__(self, path: str) -> None:
        self.path, self.old = path, None

    def __enter__(self):
        import os

        self.old = os.environ.get("SEGABL_CACHE")
        os.environ["SEGABL_CACHE"] = self.path

    def __exit__(self, *exc):
        import os

        if self.old is None:
            os.environ.pop("SEGABL_CACHE", None)
        else:
            os.environ["SEGABL_CACHE"] = self.old


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true",
                   help="width 1/16, batch 2, 64 px crops, 2 timed steps: a check, not a figure")
    p.add_argument("--only", nargs="+", choices=[c.key for c in CONFIGS], help="default: all")
    p.add_argument("--steps", type=int, help="timed steps (default 10; --tiny 2)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default 3; --tiny 1)")
    p.add_argument("--width", type=float, help="model width (default 1; --tiny 1/16)")
    p.add_argument("--n-images", type=int, help="exported images per layout (default 640; --tiny 6)")
    p.add_argument("--workers", type=int, help="loader workers (default: the datamodules' own; "
                                               "--tiny 1)")
    p.add_argument("--no-loader", action="store_true", help="skip part (b)")
    p.add_argument("--no-runner", action="store_true", help="skip part (c)")
    p.add_argument("--runner-steps", type=int, help="(c): steps after the 3 warm-up steps (default 30; --tiny 2)")
    p.add_argument("--sync-check", action="store_true",
                   help="(e): count the host-GPU synchronisations per training step of each runner row "
                        "and of the quickstart cell, with where they come from (two extra short runs each)")
    p.add_argument("--sync-steps", type=int, default=8, help="(e): the steps the two runs differ by (default 8)")
    p.add_argument("--no-quickstart", action="store_true", help="skip the quickstart cell")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    tiny = args.tiny
    args.steps = args.steps or (2 if tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 3)
    args.width = args.width or (1 / 16 if tiny else 1.0)
    # 640: the runner's measured steps stay inside one epoch (at 64 images an epoch was 4 steps,
    # and each epoch's start drained the workers' prefetch queue: a cost real data pays every
    # 661 steps, not every 4)
    args.n_images = args.n_images or (6 if tiny else 640)
    args.runner_steps = args.runner_steps or (2 if tiny else 30)
    if tiny and args.workers is None:
        args.workers = 1
    args.configs = [c for c in CONFIGS if not args.only or c.key in args.only]
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    device_name = (torch.cuda.get_device_name() if args.device == "cuda" else "cpu")
    rows, loss_rows, quick = [], [], {}

    def save() -> None:  # after every measurement: a run cut short keeps what it measured
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "device": device_name,
                                             "tiny": tiny, "width": args.width, "rows": rows,
                                             "loss": loss_rows, "quickstart": quick,
                                             "runner_steps": args.runner_steps,
                                             "seconds": time.perf_counter() - started}, indent=1))

    for cfg in args.configs:
        t0 = time.perf_counter()
        rows.append({"key": cfg.key, "title": cfg.title, "config": asdict(cfg),
                     "step": measure_step(cfg, args, args.device)})
        print(f"{cfg.key}: step measured in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        save()
    loss_rows += measure_loss(args, args.device)
    save()
    if not (args.no_loader and args.no_runner):
        with tempfile.TemporaryDirectory() as tmp:
            roots, cache = export_datasets(Path(tmp), args), {}
            with tempfile.TemporaryDirectory() as args.synthetic_cache:  # U-Net row: built here
                for row, cfg in zip(rows, args.configs, strict=True):
                    if not args.no_loader:
                        row["loader"] = measure_loader(cfg, args, roots, cache)
                    if not args.no_runner and cfg.runner is not None:
                        t0 = time.perf_counter()
                        with _synthetic_cache(args.synthetic_cache):
                            row["runner"] = measure_runner(cfg, args, roots, Path(tmp))
                        print(f"{cfg.key}: runner measured in {time.perf_counter() - t0:.1f}s",
                              file=sys.stderr)
                    if args.sync_check and cfg.runner is not None:
                        with _synthetic_cache(args.synthetic_cache):
                            row["syncs"] = measure_syncs(cfg, args, roots, Path(tmp))
                    save()

    if not args.no_quickstart:  # its synthetic items built in an empty cache, as in a fresh clone
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp, _synthetic_cache(str(Path(tmp) / "cache")):
            quick.update(measure_quickstart(args, Path(tmp)))
        print(f"quickstart cell measured in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        save()
    header = (f"Machine: {machine()}; device {device_name}; width {args.width:g}; "
              f"{args.warmup} warm-up + median of {args.steps} steps (bare); runner "
              f"{args.runner_steps} steps after 3 warm-up; {time.perf_counter() - started:.0f}s in all")
    print(header + "\n\n" + table(rows) + "\n\n" + loss_table(loss_rows)
          + ("\n\n" + quickstart_table(quick) if quick else "")
          + ("\n\n" + syncs_table(rows, quick) if args.sync_check else ""))
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
