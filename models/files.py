"""A file's sha256: the one home of file hashing (no torch import, so cheap to use anywhere).

:func:`file_sha256` reads the file each time: image keys of the feature store, whose files a run
reads once anyway. :func:`file_digest` remembers each file's digest while its size and
modification time stay the same: weight files, which several parts of a run name
(:func:`models.zoo.weights_digest`, the feature store's weights digest).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Tuple

__all__ = ["file_sha256", "file_digest"]

_DIGESTS: Dict[Tuple[str, int, int], str] = {}  # (resolved path, size, mtime) → sha256


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    """sha256 of the file's bytes, read in ``chunk``-byte blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path | str) -> str:
    """:func:`file_sha256`, remembered while the file's size and mtime stay the same (``"missing"``
    for no file)."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]
