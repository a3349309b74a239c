"""Check a data root against what the datamodules need, and say how to fix what is not there::

    python -m datamodules.download verify --root /data [--datasets voc2012 sbd ade20k]

For each dataset: the split lists are present, every listed image and mask exists (through the
datamodules' own dataset classes, so "ok" means they will load), the split sizes are the real
ones (VOC train 1,464 / val 1,449; SBD train 8,498 / val 2,857; train_aug 10,582; ADE20K
training 20,210 / validation 2,000), and a sample of masks has the right format (VOC: palette
PNG, labels in {0..20, 255}; SBD: readable ``GTcls`` .mat, 0..20; ADE20K: 8-bit 'L' PNG,
0..150). Each row that is not ok carries the download command that fixes it. Exit status 0
only when every row is ok. ``verify(root, datasets, expected=...)`` takes other sizes (tests).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["DATASETS", "EXPECTED_COUNTS", "Check", "format_table", "main", "verify"]

DATASETS = ("voc2012", "sbd", "voc_aug_png", "ade20k")
DEFAULT = ("voc2012", "sbd", "ade20k")
EXPECTED_COUNTS = {
    "voc2012/train": 1464, "voc2012/val": 1449,
    "sbd/train": 8498, "sbd/val": 2857, "sbd/train_aug": 10582,
    "voc_aug_png/train_aug": 10582,
    "ade20k/training": 20210, "ade20k/validation": 2000,
}


@dataclass(frozen=True)
class Check:
    dataset: str
    item: str
    status: str  # "ok" | "missing" | "wrong"
    found: str
    expected: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _fix(root: Path, *names: str) -> str:
    return f"python -m datamodules.download {' '.join(names)} --root {root}"


def _first_line(e: BaseException) -> str:
    """The message's first line, and the first file it lists (an indented second line)."""
    lines = str(e).splitlines() or [""]
    extra = f" {lines[1].strip()}" if len(lines) > 1 and lines[1].startswith("  ") else ""
    return f"{type(e).__name__}: {lines[0]}{extra}"


def _count(dataset: str, item: str, build: Callable[[], Sequence], want: int, fix: str) -> Check:
    """A split built by the datamodules' own class: its constructor checks every listed file."""
    try:
        n = len(build())
    except FileNotFoundError as e:
        return Check(dataset, item, "missing", _first_line(e), f"{want:,} items", fix)
    except Exception as e:  # a wrong layout or an empty list: the message says which
        return Check(dataset, item, "wrong", _first_line(e), f"{want:,} items", fix)
    status = "ok" if n == want else "wrong"
    return Check(dataset, item, status, f"{n:,} items", f"{want:,} items", "" if n == want else fix)


def _sample(paths: Sequence[Path], k: int) -> list[Path]:
    if len(paths) <= k:
        return list(paths)
    return [paths[i] for i in np.linspace(0, len(paths) - 1, k).round().astype(int)]


def _png_masks(dataset, item, paths, modes, valid: set[int], what: str, k: int, fix) -> Check:
    for p in _sample(paths, k):
        try:
            with Image.open(p) as im:
                mode, arr = im.mode, np.asarray(im)
        except Exception as e:
            return Check(dataset, item, "wrong", f"{p}: {_first_line(e)}", what, fix)
        bad = sorted(set(np.unique(arr).tolist()) - valid)
        if mode not in modes or bad:
            found = f"{p}: mode {mode!r}" + (f", labels {bad[:5]}" if bad else "")
            return Check(dataset, item, "wrong", found, what, fix)
    n = len(_sample(paths, k))
    return Check(dataset, item, "ok" if n else "missing", f"{n} sampled", what, "" if n else fix)


def _voc(root: Path, exp: Mapping[str, int], k: int) -> list[Check]:
    from datamodules.voc import VOCSegmentation

    fix, voc = _fix(root, "voc2012"), root / "VOCdevkit" / "VOC2012"
    lists = [voc / "ImageSets" / "Segmentation" / f"{s}.txt" for s in ("train", "val")]
    absent = [str(p) for p in lists if not p.is_file()]
    out = [Check("voc2012", "split lists", "missing" if absent else "ok",
                 f"absent: {', '.join(absent)}" if absent else "train.txt, val.txt",
                 "ImageSets/Segmentation/{train,val}.txt", fix if absent else "")]
    splits = {}
    for s in ("train", "val"):
        c = _count("voc2012", s, lambda s=s: splits.setdefault(s, VOCSegmentation(root, s)),
                   exp["voc2012/" + s], fix)
        out.append(c)
    masks = [Path(m) for ds in splits.values() for m in ds.masks]
    out.append(_png_masks("voc2012", "masks", masks, ("P",), {*range(21), 255},
                          "palette PNG, labels {0..20, 255}", k, fix))
    return out


def _sbd(root: Path, exp: Mapping[str, int], k: int) -> list[Check]:
    from datamodules.voc import VOCSegmentation, read_sbd_mat

    fix, ds = _fix(root, "sbd"), root / "benchmark_RELEASE" / "dataset"
    out, mats = [], []
    for s in ("train", "val"):
        want = exp["sbd/" + s]
        lst = ds / f"{s}.txt"
        if not lst.is_file():
            out.append(Check("sbd", s, "missing", f"no {lst}", f"{want:,} items", fix))
            continue
        ids = lst.read_text().split()
        gone = [str(p) for i in ids for p in (ds / "img" / f"{i}.jpg", ds / "cls" / f"{i}.mat")
                if not p.is_file()]
        mats += [ds / "cls" / f"{i}.mat" for i in ids]
        if gone:
            out.append(Check("sbd", s, "missing", f"{len(gone)} listed files absent, e.g. "
                             f"{gone[0]}", f"{want:,} items", fix))
        else:
            ok = len(ids) == want
            out.append(Check("sbd", s, "ok" if ok else "wrong", f"{len(ids):,} items",
                             f"{want:,} items", "" if ok else fix))
    bad = None
    sampled = [m for m in _sample(mats, k) if m.is_file()]
    for m in sampled:
        try:
            values = set(read_sbd_mat(m).unique().tolist())
        except Exception as e:
            bad = f"{m}: {_first_line(e)}"
            break
        if not values <= set(range(21)):
            bad = f"{m}: labels {sorted(values - set(range(21)))[:5]}"
            break
    status = "wrong" if bad else "ok" if sampled else "missing"
    out.append(Check("sbd", "masks", status, bad or f"{len(sampled)} sampled",
                     "GTcls.Segmentation, labels 0..20", "" if status == "ok" else fix))
    out.append(_count("sbd", "train_aug", lambda: VOCSegmentation(root, "train_aug"),
                      exp["sbd/train_aug"], _fix(root, "voc2012", "sbd")))
    return out


def _aug(root: Path, exp: Mapping[str, int], k: int) -> list[Check]:
    from datamodules.voc import VOCSegmentation

    fix = _fix(root, "voc_aug_png")
    folder = next((d for d in (root / "SegmentationClassAug",
                               root / "VOCdevkit" / "VOC2012" / "SegmentationClassAug")
                   if d.is_dir()), root / "SegmentationClassAug")
    pngs = sorted(folder.glob("*.png"))
    return [
        _png_masks("voc_aug_png", "masks", pngs, ("P", "L"), {*range(21), 255},
                   "PNG of class indices {0..20, 255}", k, fix),
        _count("voc_aug_png", "train_aug", lambda: VOCSegmentation(root, "train_aug"),
               exp["voc_aug_png/train_aug"], _fix(root, "voc2012", "voc_aug_png")),
    ]


def _ade(root: Path, exp: Mapping[str, int], k: int) -> list[Check]:
    from datamodules.ade20k import ADE20KSegmentation

    fix, out, splits = _fix(root, "ade20k"), [], {}
    for s in ("training", "validation"):
        out.append(_count("ade20k", s,
                          lambda s=s: splits.setdefault(s, ADE20KSegmentation(root, s)),
                          exp["ade20k/" + s], fix))
    masks = [Path(m) for ds in splits.values() for m in ds.masks]
    out.append(_png_masks("ade20k", "annotations", masks, ("L",), set(range(151)),
                          "8-bit 'L' PNG, labels 0..150", k, fix))
    return out


_CHECKS = {"voc2012": _voc, "sbd": _sbd, "voc_aug_png": _aug, "ade20k": _ade}


def verify(root: str | Path, datasets: Sequence[str] = DEFAULT,
           expected: Mapping[str, int] | None = None, sample: int = 8) -> list[Check]:
    """One ``Check`` per item of each dataset; ``expected`` overrides ``EXPECTED_COUNTS`` keys
    ("voc2012/train", "sbd/train_aug", "ade20k/validation", ...); ``sample`` masks are read
    per dataset, spread evenly over the splits."""
    unknown = [d for d in datasets if d not in _CHECKS]
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; choose from {list(_CHECKS)}")
    exp = {**EXPECTED_COUNTS, **(expected or {})}
    root = Path(root)
    return [c for d in datasets for c in _CHECKS[d](root, exp, sample)]


def format_table(checks: Sequence[Check]) -> str:
    """One row per check (the long "found" column last), and under every row that is not ok
    the command that fixes it."""
    head = ("dataset", "item", "status", "expected", "found")
    rows = [(c.dataset, c.item, c.status if c.ok else c.status.upper(), c.expected, c.found)
            for c in checks]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]

    def line(r) -> str:
        return "  ".join([*(v.ljust(w) for v, w in zip(r[:4], widths, strict=True)), r[4]])

    lines = [line(head), line(["-" * w for w in widths] + ["-----"])]
    for c, r in zip(checks, rows, strict=True):
        lines.append(line(r))
        if not c.ok and c.fix:
            lines.append(f"{'':{widths[0]}}  fix: {c.fix}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, expected: Mapping[str, int] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m datamodules.download verify",
                                description="Check a data root against what the datamodules need.")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DEFAULT))
    p.add_argument("--sample", type=int, default=8, help="masks read per dataset")
    args = p.parse_args(argv)
    checks = verify(args.root, args.datasets, expected, sample=args.sample)
    print(format_table(checks))
    bad = sum(not c.ok for c in checks)
    print(f"\n{len(checks) - bad} of {len(checks)} checks ok" + ("" if not bad else
          "; run the fix commands above, then verify again"))
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
