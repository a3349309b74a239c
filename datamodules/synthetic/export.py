"""``export_synthetic``: a synthetic task written in the real VOC 2012 or ADE20K on-disk layout,
so the real-data loaders can be exercised end to end; and its command line::

    python -m datamodules.synthetic export --task thin --layout voc --out data/synth_voc
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from datamodules.constants import IGNORE_INDEX
from datamodules.synthetic.tasks import SYNTHETIC_TASKS, task_class


def _voc_palette() -> list[int]:
    from datamodules.voc import VOC_PALETTE  # one source of truth for the VOC colours

    flat = np.asarray(VOC_PALETTE, dtype=np.uint8).reshape(-1).tolist()
    return flat + [0] * (768 - len(flat))


def export_synthetic(
    task: str,
    out_dir: str | Path,
    layout: str = "voc",
    num_train: int = 200,
    num_val: int = 50,
    image_size: int | None = None,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Write `task`'s train and val items in the real VOC 2012 or ADE20K layout under `out_dir`.

    VOC: ``VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette PNG,
    255 = void), ImageSets/Segmentation/{train,val,trainval}.txt}``. ADE20K:
    ``ADEChallengeData2016/{images,annotations}/{training,validation}/<id>.{jpg,png}`` with
    class k stored as k + 1 and void as 0 (ADE's "other"). JPEGs are quality 95 without chroma
    subsampling, which would smear the 1 px coloured lines of ``thin``. A non-empty `out_dir`
    is refused unless `force`; then earlier ``synth_*`` files of the written folders are
    replaced. Returns `out_dir`.
    """
    from PIL import Image

    cls = task_class(task)
    if layout not in ("voc", "ade20k"):
        raise ValueError(f"unknown layout {layout!r}; expected 'voc' or 'ade20k'")
    if layout == "ade20k" and len(cls.class_names) > 150:
        raise ValueError(f"ADE20K stores at most 150 classes; {task!r} has {len(cls.class_names)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"output directory {out} is not empty; pass force=True (--force) "
                              "to write into it")
    palette = _voc_palette() if layout == "voc" else None
    voc = out / "VOCdevkit" / "VOC2012"
    ade = out / "ADEChallengeData2016"
    ids: dict[str, list[str]] = {}
    for split, n in (("train", num_train), ("val", num_val)):
        ds = cls(split, n, image_size, seed)
        if layout == "voc":
            img_dir, ann_dir = voc / "JPEGImages", voc / "SegmentationClass"
        else:
            folder = "training" if split == "train" else "validation"
            img_dir, ann_dir = ade / "images" / folder, ade / "annotations" / folder
        for d in (img_dir, ann_dir):
            d.mkdir(parents=True, exist_ok=True)
            for stale in d.glob(f"synth_{task}_{split}_*"):
                stale.unlink()
        ids[split] = []
        for i in range(n):
            name = f"synth_{task}_{split}_{i:06d}"
            img, mask = ds.generate(i)
            Image.fromarray(img).save(img_dir / f"{name}.jpg", quality=95, subsampling=0)
            if layout == "voc":
                ann = Image.fromarray(mask, mode="P")
                ann.putpalette(palette)
            else:
                shifted = np.where(mask == IGNORE_INDEX, 0, mask.astype(np.int64) + 1)
                ann = Image.fromarray(shifted.astype(np.uint8), mode="L")
            ann.save(ann_dir / f"{name}.png")
            ids[split].append(name)
    if layout == "voc":
        sets = voc / "ImageSets" / "Segmentation"
        sets.mkdir(parents=True, exist_ok=True)
        for split, names in (*ids.items(), ("trainval", ids["train"] + ids["val"])):
            (sets / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datamodules.synthetic",
                                     description="Synthetic segmentation tasks.")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write a task in the VOC 2012 or ADE20K on-disk layout")
    exp.add_argument("--task", required=True, choices=sorted(SYNTHETIC_TASKS))
    exp.add_argument("--layout", required=True, choices=["voc", "ade20k"])
    exp.add_argument("--out", required=True, type=Path, help="output directory")
    exp.add_argument("--num-train", type=int, default=200)
    exp.add_argument("--num-val", type=int, default=50)
    exp.add_argument("--image-size", type=int, default=None,
                     help="default: the task's (128; 160 for multiscale)")
    exp.add_argument("--seed", type=int, default=0)
    exp.add_argument("--force", action="store_true", help="write into a non-empty --out")
    args = parser.parse_args(argv)
    try:
        root = export_synthetic(args.task, args.out, args.layout, args.num_train, args.num_val,
                                args.image_size, args.seed, args.force)
    except (ValueError, FileExistsError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"wrote {args.num_train} train + {args.num_val} val {args.task!r} items "
          f"({args.layout} layout) to {root}")
    return 0
