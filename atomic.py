"""Files that appear whole or not at all.

A process killed while writing (``kill -9``, a full disk, a lost node) must not leave a
truncated file that a later run takes for a finished one. :func:`atomic_path` hands out a
temporary name beside the target; when the block ends without an error the file is flushed to
disk, renamed over the target (``os.replace``, atomic on POSIX within one file system) and the
folder synced, so the new name survives a power loss too; else the temporary file is removed.
Readers therefore see the old file or the new one, never part of one. Used for
``submission.csv``, feature-store shards and inverse-decoder checkpoints.
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path"]

# the process's file-creation mask, read once (setting it to read it is not safe while other threads create files)
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path | str, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` (fsynced first if ``durable``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if tmp.is_file():  # the mode a plain open() gives; some writers (safetensors) make their files 0600
            os.chmod(tmp, 0o666 & ~_UMASK)
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if durable:  # the rename itself survives a power loss only once the folder is synced
            _sync_folder(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _sync_folder(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform or file system without folder handles
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
