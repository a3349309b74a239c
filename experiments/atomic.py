"""One way to write a file so that readers see the old file or the complete new one, never a part.

``write_atomic(path, write)`` writes through ``write(file)`` into a temporary file in the target's
own folder (so the rename never crosses file systems, and nothing is left outside the results
folder), flushes and ``fsync``s it, renames it over the target (``os.replace``, atomic within a
folder on POSIX file systems, NFS and the common parallel file systems) and ``fsync``s the folder.
On any failure (a full disk, an exception, Ctrl-C) the temporary file is removed and the previous
file is untouched. Checkpoints, configs, metrics, per-image counts and tables all use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform or file system without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[IO[Any]], object], binary: bool = True) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; results are not
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, lambda f: f.write(text), binary=False)
