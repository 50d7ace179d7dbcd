"""Content-addressed feature cache: compute a feature row once per (image bytes, extractor, weights).

A row's key is ``sha256(image file bytes)``; a store lives in a folder named after the extractor's
name and version and a digest of every weight file it reads, so a change of code version or of
weights starts a fresh store and never mixes rows. Rows are written as parquet *shards*, one new
file per flush and process (``shard-<pid>-<time>-<random>.parquet``), first to a temporary name
and then atomically renamed: parallel jobs never write the same file, and a process killed at
any moment (even ``kill -9``) leaves only whole shards plus, at worst, a ``.tmp`` file that
readers ignore. Reading merges all shards (first row per key wins). ``rebuild`` empties the
store; ``enabled=False`` turns caching off.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import pandas as pd

__all__ = ["file_sha256", "FeatureStore"]


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


class FeatureStore:
    """Parquet-sharded rows keyed by image hash, for one extractor version and one set of weights."""

    def __init__(self, root: Path | str, extractor: str, version: str, weights_digest: str, *,
                 enabled: bool = True, rebuild: bool = False) -> None:
        self.enabled = enabled
        self.folder = Path(root) / f"{extractor}-v{version}-{weights_digest[:16]}"
        if enabled and rebuild and self.folder.exists():
            shutil.rmtree(self.folder)
        if enabled:
            self.folder.mkdir(parents=True, exist_ok=True)

    def shards(self) -> List[Path]:
        return sorted(self.folder.glob("shard-*.parquet")) if self.enabled else []

    def read(self, keys: Optional[Iterable[str]] = None) -> pd.DataFrame:
        """All stored rows (or those of ``keys``), indexed by key."""
        frames = []
        for shard in self.shards():
            try:
                frames.append(pd.read_parquet(shard))
            except Exception:  # noqa: BLE001 - a foreign or damaged file must not block the run
                continue
        if not frames:
            return pd.DataFrame(index=pd.Index([], name="key"))
        merged = pd.concat(frames)
        merged = merged[~merged.index.duplicated(keep="first")]
        merged.index.name = "key"
        return merged if keys is None else merged.reindex([k for k in keys if k in merged.index])

    def write(self, rows: pd.DataFrame) -> Optional[Path]:
        """Atomically add ``rows`` (indexed by key) as a new shard."""
        if not self.enabled or rows.empty:
            return None
        name = f"shard-{os.getpid()}-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.folder / (name + ".tmp")
        rows = rows.copy()
        rows.index.name = "key"
        rows.to_parquet(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.folder / name)
        return self.folder / name

    def lookup(self, keys: Iterable[str]) -> Tuple[pd.DataFrame, List[str]]:
        """``(stored rows of keys, keys without a row)`` from one pass over the shards; the missing
        keys in input order, without duplicates."""
        keys = list(keys)
        stored = self.read(keys) if self.enabled else pd.DataFrame(index=pd.Index([], name="key"))
        return stored, [k for k in dict.fromkeys(keys) if k not in stored.index]

    def missing(self, keys: Iterable[str]) -> List[str]:
        """Keys without a stored row, in input order, without duplicates."""
        return self.lookup(keys)[1]
