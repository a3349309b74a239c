"""``python -m datamodules.download`` against a loopback HTTP server (no internet): tiny archives
in the real formats (VOC tar, SBD tgz, ADE20K zip built from tests/data_fixtures.py), resumed
transfers, named errors, unsafe archives, idempotent reruns and ``verify``."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import re
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datamodules.archives as archives
import datamodules.download as dl
from datamodules.ade20k import ADE20KDataModule
from datamodules.archives import (
    ChecksumError,
    DiskFullError,
    HTTPStatusError,
    NetworkError,
    UnexpectedArchiveError,
    UnsafeArchiveError,
    safe_extract,
)
from datamodules.download import ARCHIVES, download
from datamodules.instance import InstanceDataModule
from datamodules.verify import main as verify_main
from datamodules.verify import verify
from datamodules.voc import VOCDataModule
from tests.data_fixtures import make_ade20k, make_aug, make_sbd, make_voc

VOC_TRAIN, VOC_VAL = ["t1", "t2", "t3"], ["v1", "v2"]
SBD_TRAIN, SBD_VAL = ["t1", "s1", "s2", "v1"], ["s3", "t2", "v2"]
TINY = {  # the tiny tree's split sizes, in place of the real ones
    "voc2012/train": 3, "voc2012/val": 2, "sbd/train": 4, "sbd/val": 3, "sbd/train_aug": 6,
    "ade20k/training": 3, "ade20k/validation": 2,
}
VOC_TAR = "VOCtrainval_11-May-2012.tar"


def _tar(src: Path, top: str, mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        tf.add(src / top, arcname=top)
    return buf.getvalue()


def _zip(src: Path, top: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted((src / top).rglob("*")):
            zf.write(p, p.relative_to(src).as_posix())
    return buf.getvalue()


@pytest.fixture(scope="module")
def payloads(tmp_path_factory) -> dict[str, bytes]:
    src = tmp_path_factory.mktemp("src")
    make_voc(src, VOC_TRAIN, VOC_VAL, extra_images=["s1", "s2", "s3"])
    make_sbd(src, SBD_TRAIN, SBD_VAL)
    make_ade20k(src, n_train=3, n_val=2)
    make_aug(src, sorted({*VOC_TRAIN, *VOC_VAL, *SBD_TRAIN, *SBD_VAL}))
    aug = io.BytesIO(_zip(src, "SegmentationClassAug"))
    with zipfile.ZipFile(aug, "a") as zf:  # macOS metadata, as in archives zipped on a Mac
        zf.writestr("__MACOSX/SegmentationClassAug/._t1.png", b"\0\5\26\7")
    return {
        VOC_TAR: _tar(src, "VOCdevkit"),
        "benchmark.tgz": _tar(src, "benchmark_RELEASE", "w:gz"),
        "ADEChallengeData2016.zip": _zip(src, "ADEChallengeData2016"),
        "SegmentationClassAug.zip": aug.getvalue(),
    }


class Server:
    """Serves ``files`` on 127.0.0.1 with Range support; logs (path, Range header) per request.
    ``cut[name] = n``: the next response for ``name`` stops after byte n and closes the
    connection (once); ``ranges = False``: ignores Range and answers 200."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.requests, self.cut, self.ranges = dict(files), [], {}, True
        srv = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # every socket operation of the handler

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                name, rng = self.path.lstrip("/"), self.headers.get("Range")
                srv.requests.append((name, rng))
                if name not in srv.files:
                    self.send_error(404, "Not Found")
                    return
                data, start = srv.files[name], 0
                if rng and srv.ranges:
                    start = int(re.match(r"bytes=(\d+)-", rng).group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                if srv.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                stop = srv.cut.pop(name, len(data))
                self.wfile.write(data[start:stop])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def catalogue(self, **checksums) -> dict[str, dl.Archive]:
        """``ARCHIVES`` pointing here, with the digests of the served files (or ``checksums``)."""
        out = {}
        for name, a in ARCHIVES.items():
            data = self.files.get(a.filename, b"")
            digest = (a.checksum[0], hashlib.new(a.checksum[0], data).hexdigest()) if a.checksum \
                else None
            out[name] = dataclasses.replace(
                a, url=f"{self.url}/{a.filename}", checksum=checksums.get(name, digest))
        return out

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(payloads, monkeypatch):
    monkeypatch.setattr(archives, "TIMEOUT_S", 5.0)  # no client wait exceeds 5 s
    s = Server(payloads)
    yield s
    s.close()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()}


def test_download_gives_a_tree_the_datamodules_read_and_reruns_download_nothing(
        server, tmp_path, capsys):
    cat = server.catalogue()
    got = download(["voc2012", "sbd", "ade20k"], tmp_path, quiet=True, archives=cat)
    assert got == dict.fromkeys(["voc2012", "sbd", "ade20k"], "downloaded")
    assert len(server.requests) == 3
    voc = VOCDataModule(str(tmp_path), train_split="train_aug", num_workers=0)
    voc.setup("fit")
    assert (len(voc.train_set), len(voc.val_set)) == (6, 2)  # (train ∪ SBD) − val
    ade = ADE20KDataModule(str(tmp_path), num_workers=0)
    ade.setup("fit")
    assert (len(ade.train_set), len(ade.val_set)) == (3, 2)
    # archives removed after unpacking, one marker per dataset
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == [
        "ade20k.json", "sbd.json", "voc2012.json"]
    assert all(c.ok for c in verify(tmp_path, expected=TINY))

    # a second run checks the marker and the files, and sends no request
    assert download(["all"], tmp_path, quiet=True, archives=cat) == dict.fromkeys(
        ["voc2012", "sbd", "ade20k"], "present")
    assert len(server.requests) == 3

    # verify: the real sizes are reported as wrong; a removed mask is named, exit status 1
    assert verify_main(["--root", str(tmp_path)], expected=TINY) == 0
    real = {(c.dataset, c.item): c for c in verify(tmp_path)}
    assert real["voc2012", "train"].status == "wrong"
    assert (real["voc2012", "train"].found, real["voc2012", "train"].expected) == (
        "3 items", "1,464 items")
    assert real["sbd", "train_aug"].expected == "10,582 items"
    removed = tmp_path / "VOCdevkit/VOC2012/SegmentationClass/t3.png"
    removed.unlink()
    capsys.readouterr()
    assert verify_main(["--root", str(tmp_path)], expected=TINY) == 1
    out = capsys.readouterr().out
    assert "MISSING" in out and str(removed) in out
    assert f"python -m datamodules.download voc2012 --root {tmp_path}" in out

    # the fix it prints works: the incomplete tree is fetched and unpacked again
    assert download(["voc2012"], tmp_path, quiet=True, archives=cat) == {"voc2012": "downloaded"}
    assert removed.is_file() and len(server.requests) == 4
    assert all(c.ok for c in verify(tmp_path, expected=TINY))


def test_verify_catches_rgb_masks_and_wrong_ade_labels(server, tmp_path):
    download(["voc2012", "ade20k"], tmp_path, quiet=True, archives=server.catalogue())
    mask = tmp_path / "VOCdevkit/VOC2012/SegmentationClass/t1.png"
    Image.open(mask).convert("RGB").save(mask)
    ann = tmp_path / "ADEChallengeData2016/annotations/training/ADE_train_00000002.png"
    a = np.asarray(Image.open(ann)).copy()
    a[0, 0] = 151
    Image.fromarray(a, mode="L").save(ann)
    checks = {(c.dataset, c.item): c for c in
              verify(tmp_path, ["voc2012", "ade20k"], expected=TINY, sample=100)}
    assert checks["voc2012", "masks"].status == "wrong"
    assert "'RGB'" in checks["voc2012", "masks"].found
    assert checks["ade20k", "annotations"].status == "wrong"
    assert "151" in checks["ade20k", "annotations"].found
    assert checks["voc2012", "train"].ok and checks["ade20k", "training"].ok


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    n = len(server.files[VOC_TAR]) // 3
    server.cut[VOC_TAR] = n  # the first response stops after n bytes
    assert download(["voc2012"], tmp_path, quiet=True, archives=server.catalogue()) == {
        "voc2012": "downloaded"}
    assert server.requests == [(VOC_TAR, None), (VOC_TAR, f"bytes={n}-")]
    assert (tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt").is_file()


def test_part_file_of_an_earlier_run_is_resumed_or_restarted(server, tmp_path):
    data = server.files["benchmark.tgz"]
    part = tmp_path / "downloads" / "benchmark.tgz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    download(["sbd"], tmp_path, quiet=True, archives=server.catalogue())
    assert server.requests == [("benchmark.tgz", "bytes=1000-")]
    # a server that ignores Range (200): the garbage .part is dropped and the file restarts
    root2 = tmp_path / "other"
    (root2 / "downloads").mkdir(parents=True)
    (root2 / "downloads" / "benchmark.tgz.part").write_bytes(b"x" * 1000)
    server.ranges = False
    assert download(["sbd"], root2, quiet=True, archives=server.catalogue()) == {
        "sbd": "downloaded"}
    assert server.requests[-1] == ("benchmark.tgz", "bytes=1000-")
    assert (root2 / "benchmark_RELEASE/dataset/train.txt").is_file()


def test_wrong_checksum_removes_the_file(server, tmp_path):
    cat = server.catalogue(voc2012=("md5", "0" * 32))
    with pytest.raises(ChecksumError, match=r"expected 0{32}.*removed"):
        download(["voc2012"], tmp_path, quiet=True, archives=cat)
    assert _files(tmp_path) == set()


def test_http_404_and_refused_connection(server, tmp_path):
    cat = server.catalogue()
    cat["voc2012"] = dataclasses.replace(cat["voc2012"], url=f"{server.url}/missing.tar")
    with pytest.raises(HTTPStatusError, match="HTTP 404") as e:
        download(["voc2012"], tmp_path, quiet=True, archives=cat)
    assert e.value.status == 404
    with pytest.raises(NetworkError, match=r"cannot reach 127\.0\.0\.1:\d+ .*network"):
        download(["voc2012"], tmp_path, quiet=True, base_urls=[_closed_port_url()],
                 archives=server.catalogue())
    assert _files(tmp_path) == set()


def test_mirrors_are_tried_in_order(server, tmp_path):
    cat = server.catalogue()
    cat = {k: dataclasses.replace(a, url=_closed_port_url() + "/x") for k, a in cat.items()}
    got = download(["ade20k"], tmp_path, quiet=True,
                   base_urls=[_closed_port_url(), server.url + "/"], archives=cat)
    assert got == {"ade20k": "downloaded"}
    assert server.requests == [("ADEChallengeData2016.zip", None)]


def test_full_disk_is_named(server, tmp_path, monkeypatch):
    class Full(io.BytesIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archives, "_open_part", lambda path, append: Full())
    with pytest.raises(DiskFullError, match="no space left.*free some space"):
        download(["voc2012"], tmp_path, quiet=True, archives=server.catalogue())


def _evil_tar(kind: str, outside: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        good = tarfile.TarInfo("VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt")
        good.size = 3
        tf.addfile(good, io.BytesIO(b"t1\n"))
        if kind == "dotdot":
            ti = tarfile.TarInfo("VOCdevkit/../../evil")
            ti.size = 4
            tf.addfile(ti, io.BytesIO(b"evil"))
        elif kind == "absolute":
            ti = tarfile.TarInfo(str(outside / "abs_evil"))
            ti.size = 4
            tf.addfile(ti, io.BytesIO(b"evil"))
        else:  # a symlink to /etc and a file written through it
            ti = tarfile.TarInfo("VOCdevkit/etc")
            ti.type, ti.linkname = tarfile.SYMTYPE, "/etc"
            tf.addfile(ti)
            ti = tarfile.TarInfo("VOCdevkit/etc/evil")
            ti.size = 4
            tf.addfile(ti, io.BytesIO(b"evil"))
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_unsafe_tar_is_refused_and_writes_nothing(server, tmp_path, kind):
    root = tmp_path / "root"
    server.files[VOC_TAR] = _evil_tar(kind, tmp_path)
    with pytest.raises(UnsafeArchiveError, match="nothing was written"):
        download(["voc2012"], root, quiet=True, archives=server.catalogue())
    assert _files(tmp_path) == set()  # nothing inside root (the archive is removed) or beside it
    assert not (tmp_path / "abs_evil").exists() and not (tmp_path / "evil").exists()


def test_unexpected_archives_are_refused(tmp_path):
    wrong = tmp_path / "wrong.zip"
    with zipfile.ZipFile(wrong, "w") as zf:
        zf.writestr("ADEChallengeData2016/images/training/ADE_train_00000001.jpg", b"x")
        zf.writestr("something_else/readme.txt", b"x")
    with pytest.raises(UnexpectedArchiveError, match="not the expected archive"):
        safe_extract(wrong, tmp_path / "out", prefixes=("ADEChallengeData2016/",), required=())
    with pytest.raises(UnexpectedArchiveError, match=r"no \['ADEChallengeData2016/x'\]"):
        safe_extract(wrong, tmp_path / "out", prefixes=("ADEChallengeData2016/", "something_else/"),
                     required=("ADEChallengeData2016/x",))
    html = tmp_path / "page.zip"
    html.write_bytes(b"<html>Sign in to Dropbox</html>")
    with pytest.raises(UnexpectedArchiveError, match="neither a tar nor a zip"):
        safe_extract(html, tmp_path / "out", prefixes=("x/",), required=())
    assert not (tmp_path / "out").exists()


def test_datamodule_prepare_data_downloads_once(server, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "ARCHIVES", server.catalogue())
    dm = VOCDataModule(str(tmp_path), train_split="train_aug", download=True, num_workers=0)
    assert dm.prepare_data_per_node is False and dm.hparams.download is True
    dm.prepare_data()
    assert sorted(n for n, _ in server.requests) == sorted(["benchmark.tgz", VOC_TAR])
    dm.prepare_data()  # the tree is there: nothing is fetched
    assert len(server.requests) == 2
    dm.setup("fit")
    assert len(dm.train_set) == 6
    VOCDataModule(str(tmp_path / "none"), download=False).prepare_data()
    assert len(server.requests) == 2
    ade = ADE20KDataModule(str(tmp_path), download=True, num_workers=0)
    ade.prepare_data()
    ade.setup("fit")
    assert len(ade.val_set) == 2 and server.requests[-1][0] == "ADEChallengeData2016.zip"
    inst = InstanceDataModule("voc", str(tmp_path / "inst"), download=True)
    assert inst.prepare_data_per_node is False
    inst.prepare_data()
    assert server.requests[-1] == (VOC_TAR, None)
    assert (tmp_path / "inst/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").is_file()


def test_aug_pngs_without_published_checksum(server, tmp_path):
    cat = server.catalogue()
    assert cat["voc_aug_png"].checksum is None  # as in the real catalogue
    download(["voc2012", "voc_aug_png"], tmp_path, quiet=True, archives=cat)
    marker = json.loads((tmp_path / "downloads/voc_aug_png.json").read_text())
    sha = hashlib.sha256(server.files["SegmentationClassAug.zip"]).hexdigest()
    assert marker["checksum"] == ["sha256", sha]  # recorded on first download
    assert not (tmp_path / "__MACOSX").exists()
    checks = verify(tmp_path, ["voc2012", "voc_aug_png"],
                    expected={**TINY, "voc_aug_png/train_aug": 6})
    assert all(c.ok for c in checks), checks
    again = download(["voc_aug_png"], tmp_path, quiet=True, archives=cat)
    assert again == {"voc_aug_png": "present"}
