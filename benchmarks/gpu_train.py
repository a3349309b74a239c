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
batch and the datamodules' default workers (``--workers`` to change). U-Net has no real dataset
here: its row reads the ``touching`` task through ``SyntheticDataModule`` at 572 px, the
array-backed path its ablation uses. Images/s after the first batch (worker start-up,
reported). If the loader is slower than the step, the GPU waits for data.

    python benchmarks/gpu_train.py --json gpu_train.json       # one GPU: all rows, a few minutes
    python benchmarks/gpu_train.py --only deeplab_v3_os8 pspnet --steps 20
    python benchmarks/gpu_train.py --tiny --json /tmp/tiny.json  # anywhere (CPU): a check only
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


CONFIGS = [  # the papers' recipes (experiments/recipes/*.py), width 1, no pretrained weights
    Config("fcn8s", "FCN-8s VGG16", "fcn8s", {}, 21, 20, 500, "voc", "flip"),
    Config("deeplab_largefov", "DeepLab LargeFOV VGG16", "deeplab_largefov", {}, 21, 10, 321,
           "voc", "deeplab", (0.5, 1.5)),
    Config("deeplab_v2_vgg16", "DeepLab v2 ASPP-L VGG16", "deeplab_v2",
           {"backbone": "vgg16", "atrous_rates": (6, 12, 18, 24)}, 21, 10, 321, "voc", "deeplab",
           (0.5, 1.5)),
    Config("deeplab_v2_r101", "DeepLab v2 ASPP-L ResNet-101", "deeplab_v2",
           {"backbone": "resnet101", "atrous_rates": (6, 12, 18, 24)}, 21, 10, 321, "voc",
           "deeplab", (0.5, 1.5)),
    Config("pspnet", "PSPNet ResNet-50 + aux", "pspnet", {"backbone": "resnet50", "aux": True},
           150, 16, 473, "ade20k", "pspnet", (0.5, 2.0), aux_weight=0.4),
    Config("deeplab_v3_os16", "DeepLab v3 ResNet-101 OS16", "deeplab_v3",
           {"backbone": "resnet101", "output_stride": 16}, 21, 16, 513, "voc", "deeplab",
           (0.5, 2.0)),
    Config("deeplab_v3_os8", "DeepLab v3 ResNet-101 OS8", "deeplab_v3",
           {"backbone": "resnet101", "output_stride": 8}, 21, 16, 513, "voc", "deeplab",
           (0.5, 2.0)),
    Config("torchvision_deeplabv3", "torchvision deeplabv3_resnet101 (peer)", "torchvision", {},
           21, 16, 513, "voc", "deeplab", (0.5, 2.0)),
    Config("deeplab_v3plus", "DeepLab v3+ Xception-65 OS16", "deeplab_v3plus",
           {"backbone": "xception65", "output_stride": 16}, 21, 16, 513, "voc", "deeplab",
           (0.5, 2.0)),
    Config("unet", "U-Net (valid padding)", "unet", {}, 2, 1, 572, "synthetic", "flip"),
]
EXPORT_SIZE = {"voc": 500, "ade20k": 512}  # VOC images are at most 500 px; ADE20K ~512 short side


def build(cfg: Config, width: float) -> torch.nn.Module:
    if cfg.model == "torchvision":  # no width knob: always full width
        from torchvision.models.segmentation import deeplabv3_resnet101

        return deeplabv3_resnet101(weights=None, weights_backbone=None,
                                   num_classes=cfg.num_classes, aux_loss=False)
    from models import build_model

    return build_model(cfg.model, cfg.num_classes, pretrained=False, width=width, **cfg.kwargs)


def measure_step(cfg: Config, args, device: str) -> dict:
    batch, crop = (2, 64) if args.tiny else (cfg.batch, cfg.crop)
    torch.manual_seed(0)
    gpu = device == "cuda"
    out = {"batch": batch, "crop": crop, "precision": "bf16-autocast" if gpu else "fp32",
           "channels_last": gpu, "steps": args.steps, "warmup_steps": args.warmup}
    if args.tiny and cfg.model == "torchvision":
        out["note"] = "step not timed with --tiny: torchvision's model has no width knob"
        return out
    model = x = y = None
    try:
        if gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        model = build(cfg, args.width)
        x = torch.randn(batch, 3, crop, crop, device=device)
        y = torch.randint(0, cfg.num_classes, (batch, crop, crop), device=device)
        out |= time_train_step(model, x, y, torch.bfloat16 if gpu else torch.float32, gpu,
                               args.steps, args.warmup, cfg.aux_weight)
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
    batches = 2 if args.tiny else 10
    result = loader_throughput(loader, passes=1 + batches * batch // args.n_images,
                               max_batches=batches)
    result |= {"dataset": f"synthetic multiscale, {cfg.layout} layout" if cfg.layout != "synthetic"
               else "synthetic touching (arrays)", "workers": dm.num_workers,
               "augment": cfg.augment, "crop": crop, "batch": batch}
    del loader, dm  # stops its workers
    cache[what] = result
    return result


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
    lines = ["| configuration | batch × crop | warm-up s | step ms (median) | train img/s | "
             "peak GiB | loader img/s (workers) | note |", "|---" * 8 + "|"]
    for r in rows:
        s, ld = r["step"], r.get("loader") or {}
        step = (f"{s['warmup_s']:.1f} | {1e3 * s['step_s']:.0f} | {s['images_per_s']:.1f}"
                if "step_s" in s else "– | – | –")
        peak = f"{s['peak_memory_gib']:.1f}" if "peak_memory_gib" in s else "–"
        loader = f"{ld['images_per_s']:.0f} ({ld['workers']})" if ld else "–"
        note = s.get("note", "")
        if ld and "images_per_s" in s and ld["images_per_s"] < s["images_per_s"]:
            note = (note + "; " if note else "") + "loader-bound"
        lines.append(f"| {r['title']} | {s['batch']} × {s['crop']} | {step} | {peak} | {loader} "
                     f"| {note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true",
                   help="width 1/16, batch 2, 64 px crops, 2 timed steps: a check, not a figure")
    p.add_argument("--only", nargs="+", choices=[c.key for c in CONFIGS], help="default: all")
    p.add_argument("--steps", type=int, help="timed steps (default 10; --tiny 2)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default 3; --tiny 1)")
    p.add_argument("--width", type=float, help="model width (default 1; --tiny 1/16)")
    p.add_argument("--n-images", type=int, help="exported images per layout (default 64; --tiny 6)")
    p.add_argument("--workers", type=int, help="loader workers (default: the datamodules' own; "
                                               "--tiny 1)")
    p.add_argument("--no-loader", action="store_true", help="skip part (b)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    tiny = args.tiny
    args.steps = args.steps or (2 if tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 3)
    args.width = args.width or (1 / 16 if tiny else 1.0)
    args.n_images = args.n_images or (6 if tiny else 64)
    if tiny and args.workers is None:
        args.workers = 1
    args.configs = [c for c in CONFIGS if not args.only or c.key in args.only]
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    device_name = (torch.cuda.get_device_name() if args.device == "cuda" else "cpu")
    rows = []
    for cfg in args.configs:
        t0 = time.perf_counter()
        rows.append({"key": cfg.key, "title": cfg.title, "config": asdict(cfg),
                     "step": measure_step(cfg, args, args.device)})
        print(f"{cfg.key}: step measured in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    if not args.no_loader:
        with tempfile.TemporaryDirectory() as tmp:
            roots, cache = export_datasets(Path(tmp), args), {}
            with tempfile.TemporaryDirectory() as args.synthetic_cache:  # U-Net row: built here
                for row, cfg in zip(rows, args.configs, strict=True):
                    row["loader"] = measure_loader(cfg, args, roots, cache)
    header = (f"Machine: {machine()}; device {device_name}; width {args.width:g}; "
              f"{args.warmup} warm-up + median of {args.steps} steps; "
              f"{time.perf_counter() - started:.0f}s in all")
    print(header + "\n\n" + table(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "device": device_name,
                                         "tiny": tiny, "width": args.width, "rows": rows,
                                         "seconds": time.perf_counter() - started}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
