"""Training data pipeline throughput (images/s) on VOC-sized JPEGs: decoder × recipe × workers.

Writes ``--n`` synthetic but photo-like JPEGs (~500×375, smooth shading, textured blobs,
quality 90, in VOC's mix of landscape and portrait sizes) with palette PNG masks (255
boundaries) into a temporary VOC layout, then times ``VOCSegmentation`` + ``train_transforms``
through a ``DataLoader`` (batch 8, shuffled, ``pad_collate``), once with 1 worker and once with
``--workers``, decoding JPEGs with ``torchvision.io.decode_jpeg`` or with Pillow. Throughput
counts the images of all batches after the first (worker start-up excluded); each cell is
the median of ``--repeats`` timings, interleaving the two decoders. A decode-only
row (main process, no transforms) isolates the decoder. Prints a markdown table and the
machine.

    python benchmarks/data_pipeline.py                 # 64 images, 1 and 2 workers
    python benchmarks/data_pipeline.py --n 128 --workers 8 --passes 2 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from datamodules.base import pad_collate  # noqa: E402
from datamodules.io import read_image, read_mask  # noqa: E402
from datamodules.transforms import train_transforms  # noqa: E402
from datamodules.voc import VOC_PALETTE, VOCSegmentation  # noqa: E402

SIZES = [(375, 500), (333, 500), (500, 375), (366, 500), (281, 500), (500, 333)]


def _smooth(rng: np.random.Generator, h: int, w: int, cells: int, channels: int) -> np.ndarray:
    """Bicubic-upsampled coarse noise: smooth, photo-like shading."""
    coarse = rng.uniform(0, 255, (cells, cells * w // h + 1, channels)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse.squeeze()).resize((w, h), Image.BICUBIC), np.float32)


def make_dataset(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    flat_palette = [c for rgb in VOC_PALETTE for c in rgb]
    ids = [f"2007_{i:06d}" for i in range(n)]
    yy_xx = {}
    for k, i in enumerate(ids):
        h, w = SIZES[k % len(SIZES)]
        if (h, w) not in yy_xx:
            yy_xx[h, w] = np.mgrid[0:h, 0:w]
        yy, xx = yy_xx[h, w]
        img = _smooth(rng, h, w, 4, 3)
        texture = _smooth(rng, h, w, 40, 1)[..., None] - 128
        mask = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
            ry, rx = rng.uniform(0.1, 0.3) * h, rng.uniform(0.1, 0.3) * w
            d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
            inside = d <= 1
            img[inside] = 0.5 * img[inside] + 0.5 * rng.uniform(0, 255, 3) + 0.6 * texture[inside]
            mask[(d > 1) & (d <= 1.08)] = 255  # VOC-style void boundary
            mask[d <= 1] = int(rng.integers(1, 21))
        img += rng.normal(0, 4, img.shape)  # sensor noise
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            voc / "JPEGImages" / f"{i}.jpg", quality=90
        )
        m = Image.fromarray(mask, mode="P")
        m.putpalette(flat_palette)
        m.save(voc / "SegmentationClass" / f"{i}.png")
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("\n".join(ids) + "\n")
    (lists / "val.txt").write_text(ids[0] + "\n")


def decode_only(ds: VOCSegmentation, decoder: str) -> float:
    for p in ds.images[:4]:  # warm-up
        read_image(p, decoder)
    t0 = time.perf_counter()
    for p, m in zip(ds.images, ds.masks, strict=True):
        read_image(p, decoder)
        read_mask(m)
    return len(ds) / (time.perf_counter() - t0)


def pipeline(ds: VOCSegmentation, workers: int, batch: int, passes: int) -> dict[str, float]:
    loader = DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        collate_fn=pad_collate,
        persistent_workers=True,
        generator=torch.Generator().manual_seed(0),
    )
    return loader_throughput(loader, passes)


def loader_throughput(loader, passes: int = 1, max_batches: int | None = None) -> dict[str, float]:
    """Images/s that `loader` yields over `passes` epochs (or `max_batches` batches), its first
    batch excluded (worker start-up: ``first_batch_s``). Also used by
    ``benchmarks/gpu_train.py``."""
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)  # workers started, first batch out
    first = time.perf_counter() - t0
    count, batches, t0 = 0, 0, time.perf_counter()
    for p in range(passes):
        for x, _ in it:
            count, batches = count + x.shape[0], batches + 1
            if max_batches is not None and batches >= max_batches:
                break
        if (max_batches is not None and batches >= max_batches) or p + 1 == passes:
            break
        it = iter(loader)
    return {"images_per_s": count / (time.perf_counter() - t0), "first_batch_s": first,
            "images": count}


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} logical cores ({usable} usable), load average {load:.1f} at "
        f"start; Python {platform.python_version()}, torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, Pillow {PIL.__version__}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64, help="number of images")
    ap.add_argument("--workers", type=int, default=2, help="the multi-worker setting")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--passes", type=int, default=1, help="epochs over the images per timing")
    ap.add_argument("--repeats", type=int, default=3, help="timings per cell (median reported)")
    args = ap.parse_args()
    header = machine()
    cells = [("decode only (image + mask)", None, None, "main")]
    for augment, crop in [("deeplab", 321), ("deeplab", 513), ("pspnet", 473)]:
        for w in sorted({1, args.workers}):
            cells.append((f"{augment} crop {crop}", augment, crop, w))
    decoders = ("torchvision", "pil")
    results: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        make_dataset(root, args.n)
        print(f"wrote {args.n} images in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        ds = VOCSegmentation(root, "train")
        for name, augment, crop, w in cells:
            ds.transforms = None if augment is None else train_transforms(crop, (0.5, 2.0), augment)
            timings: dict[str, list[float]] = {d: [] for d in decoders}
            for _ in range(args.repeats):  # interleaved, so load changes hit both decoders
                for decoder in decoders:
                    ds.image_decoder = decoder
                    if augment is None:
                        timings[decoder].append(decode_only(ds, decoder))
                    else:
                        timings[decoder].append(
                            pipeline(ds, w, args.batch_size, args.passes)["images_per_s"])
            for decoder in decoders:
                results[name, str(w), decoder] = statistics.median(timings[decoder])
            print(
                name, w, {d: [round(t, 1) for t in v] for d, v in timings.items()}, file=sys.stderr
            )
    print(f"Machine: {header}\n")
    print(
        f"{args.n} JPEGs ~500×375 (q90) + palette PNG masks; batch {args.batch_size}; median of "
        f"{args.repeats} interleaved timings of {args.passes} pass(es), first batch excluded.\n"
    )
    print("| pipeline | workers | torchvision.io.decode_jpeg img/s | Pillow img/s | ratio |")
    print("|---|---|---|---|---|")
    for name, _, _, w in cells:
        tv, pil = results[name, str(w), "torchvision"], results[name, str(w), "pil"]
        print(f"| {name} | {w} | {tv:.1f} | {pil:.1f} | {tv / pil:.2f} |")


if __name__ == "__main__":
    main()
