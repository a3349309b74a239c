"""Fetch and unpack dataset archives: resumable HTTP downloads and extraction that refuses
anything that could land outside the target folder (used by ``datamodules.download``).

- ``fetch`` writes ``<name>.part`` and resumes it with an HTTP ``Range`` request after a
  broken connection (in the same call, and in a later run); a server that answers 200 instead
  of 206 ignores ranges, so the transfer restarts from zero. Progress goes to stderr (tqdm), only
  on a terminal.
- ``safe_extract`` reads the whole member list first and writes nothing if any member is
  unsafe (absolute path, ``..``, a link leaving the folder, a member reached through a link,
  a device or FIFO) or unexpected (outside the archive's known top folders, or a required
  file absent): the check that tells a real release from an HTML error page or another file.
- Every failure is a ``DownloadError`` subclass whose message is one line: what went wrong,
  then what to do.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import posixpath
import re
import stat
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

__all__ = [
    "ArchiveError", "ChecksumError", "DiskFullError", "DownloadError", "HTTPStatusError",
    "NetworkError", "UnexpectedArchiveError", "UnsafeArchiveError", "fetch", "file_digest",
    "safe_extract",
]

CHUNK = 1 << 20
TIMEOUT_S = 60.0  # per socket operation, not per file
USER_AGENT = "segmentation-ablations-downloader/1.0 (python urllib)"


class DownloadError(RuntimeError):
    """Base class: a one-line message saying what went wrong and what to do."""


class NetworkError(DownloadError):
    """Host unreachable (DNS, refused, timeout) or a transfer that kept breaking off."""


class HTTPStatusError(DownloadError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ChecksumError(DownloadError):
    """A complete file whose digest is not the published one (it has been removed)."""


class DiskFullError(DownloadError):
    """ENOSPC while downloading or extracting."""


class ArchiveError(DownloadError):
    """The archive was rejected before anything was extracted."""


class UnsafeArchiveError(ArchiveError):
    """A member could be written outside the target folder (or is a device file)."""


class UnexpectedArchiveError(ArchiveError):
    """Not the expected archive: unreadable, or members other than the release's."""


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def disk_full(path: Path, what: str) -> DiskFullError:
    return DiskFullError(
        f"no space left on the device while {what} {path}; free some space (or choose another "
        f"--root on a larger disk) and rerun the same command: finished parts are kept"
    )


def _open_part(path: Path, append: bool):  # a seam for the ENOSPC test
    return open(path, "ab" if append else "wb")


def _request(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part already holds the whole file
            return None
        raise HTTPStatusError(
            f"HTTP {e.code} {e.reason} for {url}; the file may have moved: check the URL, pass "
            f"--mirror BASE_URL, or put the archive into <root>/downloads/ by hand", e.code
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise NetworkError(
            f"cannot reach {urllib.parse.urlsplit(url).netloc} ({reason}); check the network "
            f"connection or proxy (HTTP_PROXY), or pass --mirror BASE_URL"
        ) from None


def fetch(url: str, dest: Path, *, quiet: bool = False, timeout: float | None = None,
          retries: int = 3) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming with ``Range`` after a
    broken connection (up to ``retries`` times in this call; the ``.part`` stays for a rerun).
    ``timeout``: seconds per socket operation (default ``TIMEOUT_S``)."""
    timeout = TIMEOUT_S if timeout is None else timeout
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        resp = _request(url, have, timeout)
        if resp is None:
            break
        with resp:
            if resp.status == 206:
                m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != have:
                    have = 0  # a range we did not ask for: start again
            else:
                have = 0  # 200: the server ignored Range, restart from zero
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            resumable = resp.status == 206 or resp.headers.get("Accept-Ranges", "") == "bytes"
            broke: BaseException | None = None
            try:
                with _open_part(part, append=have > 0) as out, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=dest.name, file=sys.stderr, disable=quiet or not sys.stderr.isatty(),
                ) as bar:
                    while True:
                        try:
                            chunk = resp.read(CHUNK)
                        except (OSError, http.client.HTTPException) as e:
                            broke = e
                            break
                        if not chunk:
                            break
                        out.write(chunk)
                        bar.update(len(chunk))
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise disk_full(part, "downloading to") from None
                raise
        size = part.stat().st_size
        if broke is None and (total is None or size >= total):
            break
        if not resumable:
            part.unlink()  # nothing to resume from
        failures += 1
        if failures > retries:
            keep = f"rerun the same command to resume from {part}" if resumable else "rerun later"
            raise NetworkError(
                f"the transfer of {url} broke off {failures} times (last at {size:,} of "
                f"{total or '?'} bytes: {broke or 'connection closed early'}); {keep}"
            )
    part.replace(dest)
    return dest


# ------------------------------------------------------------------------------ extraction
def _norm(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def _members(path: Path) -> list[tuple[str, str, str]]:
    """(name, kind, link target) of every member; kind: file, dir, symlink, hardlink, special."""
    if tarfile.is_tarfile(path):
        with tarfile.open(path, "r:*") as tf:
            out = []
            for m in tf.getmembers():
                kind = ("file" if m.isreg() else "dir" if m.isdir() else "symlink" if m.issym()
                        else "hardlink" if m.islnk() else "special")
                out.append((_norm(m.name), kind, m.linkname))
            return out
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            out = []
            for info in zf.infolist():
                fmt = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix mode recorded
                kind = ("symlink" if fmt == stat.S_IFLNK else "dir" if info.is_dir()
                        else "special" if fmt not in (0, stat.S_IFREG, stat.S_IFDIR) else "file")
                out.append((info.filename, kind, ""))
            return out
    raise UnexpectedArchiveError(
        f"{path} is neither a tar nor a zip archive (an HTML error page instead of the file?); "
        f"delete it and rerun, or pass --mirror BASE_URL"
    )


def _escapes(target: str) -> bool:
    return (target.startswith("/") or bool(re.match(r"^[A-Za-z]:", target))
            or posixpath.normpath(target).split("/")[0] == "..")


def _unsafe(members: list[tuple[str, str, str]]) -> list[str]:
    links = {n.rstrip("/") for n, k, _ in members if k in ("symlink", "hardlink")}
    bad = []
    for name, kind, link in members:
        parts = name.replace("\\", "/").split("/")
        if _escapes(name.replace("\\", "/")) or ".." in parts:
            bad.append(f"{name} (path outside the folder)")
        elif kind == "special":
            bad.append(f"{name} (device, FIFO or other special file)")
        elif kind == "symlink" and _escapes(posixpath.join(posixpath.dirname(name), link)):
            bad.append(f"{name} -> {link} (symlink pointing outside the folder)")
        elif kind == "hardlink" and _escapes(link):
            bad.append(f"{name} -> {link} (hard link pointing outside the folder)")
        elif any("/".join(parts[:i]) in links for i in range(1, len(parts))):
            bad.append(f"{name} (written through a link)")
    return bad


def safe_extract(path: Path, dest: Path, *, prefixes: Sequence[str], required: Sequence[str],
                 skip: Sequence[str] = ("__MACOSX/",), test_integrity: bool = False) -> dict:
    """Check every member of the tar/zip ``path``, then extract it into ``dest``.

    ``prefixes``: the top folders every member must lie in; ``required``: members that must be
    present; members starting with one of ``skip`` are ignored. ``test_integrity`` reads every
    zip member to check its CRC (for archives without a published checksum). Returns
    ``{member name: size}`` of the extracted files."""
    members = [m for m in _members(path) if not m[0].startswith(tuple(skip))]
    bad = _unsafe(members)
    if bad:
        raise UnsafeArchiveError(
            f"refusing to extract {path}: {len(bad)} unsafe member(s), e.g. {'; '.join(bad[:3])}; "
            f"nothing was written. This is not the official archive: delete it and download it "
            f"from the official URL"
        )
    names = {n.rstrip("/") for n, _, _ in members}
    stray = [n for n in names if not any(n == p.rstrip("/") or n.startswith(p) for p in prefixes)]
    absent = [r for r in required if r not in names]
    if stray or absent:
        what = f"members outside {list(prefixes)}, e.g. {stray[:3]}" if stray else (
            f"no {absent[:3]}")
        raise UnexpectedArchiveError(
            f"{path} is not the expected archive ({what}); nothing was extracted. Delete it and "
            f"rerun, or check the --mirror URL"
        )
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if tarfile.is_tarfile(path):
            with tarfile.open(path, "r:*") as tf:
                kept = [m for m in tf.getmembers() if not _norm(m.name).startswith(tuple(skip))]
                tf.extractall(dest, members=kept, filter="data")
                return {_norm(m.name): m.size for m in kept if m.isreg()}
        with zipfile.ZipFile(path) as zf:
            if test_integrity and (broken := zf.testzip()) is not None:
                raise UnexpectedArchiveError(
                    f"{path} is damaged (bad CRC in {broken}); delete it and download it again")
            kept = [i for i in zf.infolist() if not i.filename.startswith(tuple(skip))]
            for info in kept:
                zf.extract(info, dest)
            return {i.filename: i.file_size for i in kept if not i.is_dir()}
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise disk_full(dest, "extracting into") from None
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise UnexpectedArchiveError(
            f"{path} is truncated or damaged ({e}); delete it and download it again") from None
