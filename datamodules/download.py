"""Get the datasets in one command (issue #16), then check them::

    python -m datamodules.download all --root /data          # VOC 2012 + SBD + ADE20K
    python -m datamodules.download voc2012 sbd --root /data  # or any of them
    python -m datamodules.download verify --root /data       # table of what is there

Names: ``voc2012`` (VOCtrainval_11-May-2012.tar, 1.9 GB), ``sbd`` (benchmark.tgz, 1.4 GB, for
the 10,582-image ``train_aug``), ``ade20k`` (ADEChallengeData2016.zip, 0.9 GB) and, optional
and not part of ``all``, ``voc_aug_png`` (DeepLab's SegmentationClassAug PNGs, an alternative to
SBD's .mat files whose checksum nobody publishes). Each archive goes to
``<root>/downloads/<file>`` (``.part`` while incomplete, resumed with HTTP Range), is checked
against its published digest, unpacked safely (``datamodules.archives``) into the layout the
datamodules read, and deleted unless ``--keep-archives``. ``<root>/downloads/<name>.json``
records the digest and every extracted file with its size: a second run checks them and
downloads nothing; a missing or truncated file makes it fetch and unpack the archive again.

``--mirror BASE_URL`` (repeatable) fetches ``BASE_URL/<file>`` instead of the official URL,
trying mirrors in order; the published digest must still match.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from datamodules.archives import (
    ArchiveError,
    ChecksumError,
    DownloadError,
    HTTPStatusError,
    NetworkError,
    UnexpectedArchiveError,
    fetch,
    file_digest,
    safe_extract,
)

__all__ = ["ALL", "ARCHIVES", "Archive", "DownloadError", "download", "main"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Archive:
    name: str
    filename: str
    url: str
    checksum: tuple[str, str] | None  # (hashlib algorithm, hex digest); None: none published
    source: str  # where the URL and the digest come from
    prefixes: tuple[str, ...]  # top folders of every member
    required: tuple[str, ...]  # members that tell the real release from another file


ARCHIVES: dict[str, Archive] = {
    "voc2012": Archive(
        "voc2012", "VOCtrainval_11-May-2012.tar",
        # URL and MD5: torchvision, torchvision/datasets/voc.py, DATASET_YEAR_DICT["2012"]
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        ("md5", "6cd6e144f989b92b3379bac3b3de84fd"),
        "torchvision/datasets/voc.py DATASET_YEAR_DICT['2012']",
        ("VOCdevkit/",),
        ("VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt",
         "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"),
    ),
    "sbd": Archive(
        "sbd", "benchmark.tgz",
        # URL and MD5: torchvision, torchvision/datasets/sbd.py, SBDataset.url / SBDataset.md5
        # (dmlc/gluon-cv scripts/datasets/pascal_voc.py lists SHA1 7129e0a4...aa35 for it)
        "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
        "benchmark.tgz",
        ("md5", "82b4d87ceb2ed10f6038a1cba92111cb"),
        "torchvision/datasets/sbd.py SBDataset.url/md5",
        ("benchmark_RELEASE/",),
        ("benchmark_RELEASE/dataset/train.txt", "benchmark_RELEASE/dataset/val.txt"),
    ),
    "ade20k": Archive(
        "ade20k", "ADEChallengeData2016.zip",
        # URL: MIT CSAIL scene parsing benchmark (sceneparsing.csail.mit.edu, as linked from
        # CSAILVision/sceneparsing). MIT publishes no digest; this SHA1 is the one in
        # dmlc/gluon-cv scripts/datasets/ade20k.py (also zhanghang1989/PyTorch-Encoding
        # scripts/prepare_ade20k.py), used by many downloaders since 2018.
        "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
        ("sha1", "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7"),
        "URL: sceneparsing.csail.mit.edu; SHA1: dmlc/gluon-cv scripts/datasets/ade20k.py",
        ("ADEChallengeData2016/",),
        ("ADEChallengeData2016/images/training/ADE_train_00000001.jpg",
         "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png"),
    ),
    "voc_aug_png": Archive(
        "voc_aug_png", "SegmentationClassAug.zip",
        # URL: the Dropbox link in DrSleep/tensorflow-deeplab-resnet's README (the conversion
        # DeepLab users share; dl=1 returns the file instead of a preview page). No checksum
        # is published anywhere we could find (searched gluon-cv, mmsegmentation, torchvision,
        # DeepLab forks): checked by zip CRCs and member names instead, and the SHA256 of the
        # first download is recorded in the marker.
        "https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1",
        None,
        "URL: DrSleep/tensorflow-deeplab-resnet README; checksum: none published",
        ("SegmentationClassAug/",),
        (),
    ),
}
ALL = ("voc2012", "sbd", "ade20k")  # voc_aug_png duplicates sbd and cannot be verified


def _marker(root: Path, a: Archive) -> Path:
    return root / "downloads" / f"{a.name}.json"


def _present(root: Path, a: Archive) -> bool:
    """The marker matches this archive's digest and every file it lists is there, same size."""
    try:
        record = json.loads(_marker(root, a).read_text())
    except (OSError, ValueError):
        return False
    if a.checksum is not None and record.get("checksum") != list(a.checksum):
        return False
    for name, size in record.get("files", {}).items():
        try:
            if (root / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return bool(record.get("files"))


def _digest_ok(path: Path, a: Archive) -> tuple[bool, str]:
    algorithm, want = a.checksum or ("sha256", None)
    got = file_digest(path, algorithm)
    return want is None or got == want, got


def _urls(a: Archive, base_urls: Sequence[str] | None) -> list[str]:
    if not base_urls:
        return [a.url]
    return [f"{b.rstrip('/')}/{a.filename}" for b in base_urls]


def _fetch_verified(a: Archive, path: Path, urls: list[str], quiet: bool) -> str:
    """Download from the first URL that works; the digest must match. Returns the digest."""
    for k, url in enumerate(urls):
        try:
            log.info("downloading %s from %s", a.filename, url)
            fetch(url, path, quiet=quiet)
        except (NetworkError, HTTPStatusError) as e:
            if k + 1 == len(urls):
                raise
            log.warning("%s; trying the next mirror", e)
            continue
        ok, got = _digest_ok(path, a)
        if ok:
            return got
        path.unlink()
        raise ChecksumError(
            f"{a.filename} from {url} has {a.checksum[0]} {got}, expected {a.checksum[1]} "
            f"({a.source}); the file was removed: rerun to download it again, or use another "
            f"--mirror"
        )
    raise AssertionError("no URL")  # urls is never empty


def _prepare(a: Archive, root: Path, quiet: bool, base_urls, keep_archives: bool) -> str:
    if _present(root, a):
        log.info("%s: already present in %s (%s)", a.name, root, _marker(root, a))
        return "present"
    path = root / "downloads" / a.filename
    status = "extracted"
    digest = None
    if path.is_file():  # kept from an earlier run, or downloaded by hand
        ok, digest = _digest_ok(path, a)
        if not ok:
            log.warning("%s does not match its checksum; downloading it again", path)
            path.unlink()
    if not path.is_file():
        digest = _fetch_verified(a, path, _urls(a, base_urls), quiet)
        status = "downloaded"
    try:
        files = safe_extract(path, root, prefixes=a.prefixes, required=a.required,
                             test_integrity=a.checksum is None)
    except ArchiveError:
        path.unlink()  # not the release: never extract it on a later run either
        raise
    if not files:
        path.unlink()
        raise UnexpectedArchiveError(f"{a.filename} holds no files; it was removed: rerun")
    record = {"archive": a.filename, "checksum": list(a.checksum or ("sha256", digest)),
              "source": a.source, "files": files}
    _marker(root, a).write_text(json.dumps(record, indent=0))
    if not keep_archives:
        path.unlink()
    log.info("%s: %s %d files into %s", a.name, status, len(files), root)
    return status


def download(names: Sequence[str], root: Path, quiet: bool = False,
             base_urls: Sequence[str] | None = None, *, keep_archives: bool = False,
             archives: Mapping[str, Archive] | None = None) -> dict[str, str]:
    """Download, verify and unpack the named datasets (``"all"`` = ``ALL``) into ``root``.

    ``base_urls``: mirrors used instead of the official URLs, each ``BASE/<archive file>``,
    tried in order. ``archives``: the catalogue (default ``ARCHIVES``; tests substitute their
    own). Returns ``{name: "present" | "downloaded" | "extracted"}``; raises a
    ``DownloadError`` subclass (one line: what went wrong and what to do)."""
    catalogue = ARCHIVES if archives is None else archives
    wanted = []
    for n in names:
        for m in (ALL if n == "all" else (n,)):
            if m not in catalogue:
                raise ValueError(f"unknown dataset {m!r}; choose from {sorted(catalogue)} or all")
            if m not in wanted:
                wanted.append(m)
    root = Path(root)
    (root / "downloads").mkdir(parents=True, exist_ok=True)
    return {n: _prepare(catalogue[n], root, quiet, base_urls, keep_archives) for n in wanted}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["verify"]:
        from datamodules.verify import main as verify_main

        return verify_main(argv[1:])
    p = argparse.ArgumentParser(
        prog="python -m datamodules.download",
        description="Download, verify and unpack VOC 2012, SBD and ADE20K in the layout the "
        "datamodules read. 'python -m datamodules.download verify --root DIR' checks a tree.")
    p.add_argument("names", nargs="+", choices=[*ARCHIVES, "all"], metavar="NAME",
                   help=f"{', '.join(ARCHIVES)} or all (= {' '.join(ALL)})")
    p.add_argument("--root", type=Path, required=True, help="folder that will hold the datasets")
    p.add_argument("--mirror", action="append", metavar="BASE_URL",
                   help="fetch BASE_URL/<archive file> instead of the official URL (repeatable)")
    p.add_argument("--keep-archives", action="store_true", help="keep the archives after unpacking")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        done = download(args.names, args.root, args.quiet, args.mirror,
                        keep_archives=args.keep_archives)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name, status in done.items():
        print(f"{name}: {status}")
    print(f"next: python -m datamodules.download verify --root {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
