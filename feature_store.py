"""Content-addressed feature cache: compute a feature row once per (image bytes, extractor, weights).

A row's key is ``sha256(image file bytes)``; a store lives in a folder named after the extractor's
name and version and a digest of every weight file it reads, so a change of code version or of
weights starts a fresh store and never mixes rows. Rows are written as parquet *shards*, one new
file per flush and process (``shard-<pid>-<time>-<random>.parquet``), first to a temporary name
and then atomically renamed: parallel jobs never write the same file, and a process killed at
any moment (even ``kill -9``) leaves only whole shards plus, at worst, a ``.tmp`` file that
readers ignore (a compaction deletes those an hour old). Reading merges all shards:
of the rows of one key, the most complete wins — the one with most of its
:data:`COMPLETENESS_PREFIX` marker columns set (a row the feature extractor computed again with more
parts), then the one written first (shards are read in the order of the time in their names), so a
row once read is not replaced by an equal-ranked one computed later. A lookup that finds more
than :data:`COMPACT_AFTER` shards merges them into one (:meth:`FeatureStore.compact`: the merged
shard is written and made durable before the shards it replaces are removed, so a crash or a
second process at any moment leaves every row readable, at worst twice), which keeps a store
that many runs have added to as quick to read as a fresh one. ``rebuild`` empties the store;
``enabled=False`` turns caching off.

Because rows are keyed by content and every process writes its own shards, any number of jobs
can fill one store at once: :func:`shard_keys` splits the images into disjoint, balanced parts
by their keys (what ``submission.py --stage features --shard K/N`` computes; see
``scripts/slurm_submit.py``), whatever order each job lists them in.
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import numpy as np
import pandas as pd

from atomic import atomic_path
from models.files import file_sha256  # re-exported: the store keys images by it

__all__ = ["file_sha256", "shard_keys", "FeatureStore", "COMPACT_AFTER", "COMPLETENESS_PREFIX", "marker_columns"]

# A lookup over more shards than this merges them into one. `python scripts/bench_feature_store.py`
# (the rows of one cold demo run: 142 shards, 4 504 rows × 157 features) read them in 1.38 / 1.29 s
# sharded and 0.029 / 0.031 s merged, in two runs.
COMPACT_AFTER = 32
ABANDONED_AFTER_S = 3600  # a temporary file older than this is a killed writer's (remove_abandoned_temp_files)
COMPLETENESS_PREFIX = "scored_"  # marker columns (1.0 / 0.0): which optional parts a row holds


def marker_columns(rows: pd.DataFrame) -> List[str]:
    """The :data:`COMPLETENESS_PREFIX` marker columns of ``rows`` (not features)."""
    return [c for c in rows.columns if c.startswith(COMPLETENESS_PREFIX)]


def shard_keys(keys: Iterable[str], index: int, count: int) -> List[str]:
    """Part ``index`` of ``count`` of the distinct ``keys``: every ``count``-th of them in sorted
    order, from the ``index``-th. The parts are disjoint, cover every key, differ in size by at most
    one, and do not depend on the order the keys come in (every job of an array computes the same
    split from its own listing)."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index} of {count} does not exist")
    return sorted(set(keys))[index::count]


def _written_order(shard: Path) -> Tuple[int, int, str]:
    """Sort key of a shard: the ``time_ns`` in ``shard-<pid>-<time>-<random>.parquet``, then the name."""
    parts = shard.name.split("-")
    if len(parts) == 4 and parts[2].isdigit():
        return 0, int(parts[2]), shard.name
    return 1, 0, shard.name


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
        """The shard files, oldest first (by the time in their names; foreign names last)."""
        return sorted(self.folder.glob("shard-*.parquet"), key=_written_order) if self.enabled else []

    def remove_abandoned_temp_files(self) -> int:
        """Delete the temporary files (``*.tmp``) untouched for :data:`ABANDONED_AFTER_S`: a shard is
        written in seconds, so they are the leftovers of writers killed mid-write (by age, not by
        process id, which another node of a cluster sharing the store would not see). Returns how many."""
        removed = 0
        for tmp in self.folder.glob("*.tmp") if self.enabled else []:
            try:
                if time.time() - tmp.stat().st_mtime > ABANDONED_AFTER_S:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:  # renamed into place or removed meanwhile
                continue
        return removed

    def _read_shards(self) -> Tuple[pd.DataFrame, List[Path]]:
        """All stored rows merged (the most complete row per key wins, else the first), and the shards that could be read."""
        frames, read = [], []
        for shard in self.shards():
            try:
                frames.append(pd.read_parquet(shard))
                read.append(shard)
            except Exception:  # noqa: BLE001 - a foreign or damaged file must not block the run
                continue
        if not frames:
            return pd.DataFrame(index=pd.Index([], name="key")), read
        merged = pd.concat(frames)
        markers = marker_columns(merged)
        if markers and merged.index.duplicated().any():  # most complete first, else oldest shard first
            parts = merged[markers].fillna(0).sum(axis=1).to_numpy()
            merged = merged.iloc[np.argsort(-parts, kind="stable")]
        merged = merged[~merged.index.duplicated(keep="first")]
        merged.index.name = "key"
        return merged, read

    def read(self, keys: Optional[Iterable[str]] = None) -> pd.DataFrame:
        """All stored rows (or those of ``keys``), indexed by key."""
        merged = self._read_shards()[0]
        return merged if keys is None else merged.reindex([k for k in keys if k in merged.index])

    def compact(self) -> Optional[Path]:
        """Merge every readable shard into one new shard and remove the ones merged (damaged or
        foreign files stay). Returns the new shard, or ``None`` when there was nothing to merge."""
        merged, read = self._read_shards()
        return self._replace(merged, read) if len(read) > 1 else None

    def _replace(self, merged: pd.DataFrame, shards: List[Path]) -> Optional[Path]:
        """Write ``merged`` as one shard in place of ``shards`` (also removing abandoned temporary
        files). The merged shard is named with the newest time of the shards it merges, so a shard
        another process wrote meanwhile still reads as later than every merged row."""
        self.remove_abandoned_temp_files()
        times = [written for named, written, _ in map(_written_order, shards) if named == 0]
        # atomic_path syncs the folder: the merged shard's name is durable before any old shard goes
        path = self.write(merged, written_ns=max(times) if times else None)
        for shard in shards:
            shard.unlink(missing_ok=True)
        return path

    def write(self, rows: pd.DataFrame, written_ns: Optional[int] = None) -> Optional[Path]:
        """Atomically add ``rows`` (indexed by key) as a new shard, named with the time now (or
        ``written_ns``: a compaction's merged rows keep the time of the newest shard they came from)."""
        if not self.enabled or rows.empty:
            return None
        stamp = time.time_ns() if written_ns is None else written_ns
        name = f"shard-{os.getpid()}-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
        rows = rows.copy()
        rows.index.name = "key"
        with atomic_path(self.folder / name) as tmp:
            rows.to_parquet(tmp)
        return self.folder / name

    def lookup(self, keys: Iterable[str]) -> Tuple[pd.DataFrame, List[str]]:
        """``(stored rows of keys, keys without a row)`` from one pass over the shards (merging
        them when there are more than :data:`COMPACT_AFTER`); both in input order, without
        duplicates (byte-identical images share one key and one row)."""
        keys = list(keys)
        if not self.enabled:
            return pd.DataFrame(index=pd.Index([], name="key")), list(dict.fromkeys(keys))
        merged, read = self._read_shards()
        if len(read) > COMPACT_AFTER:
            self._replace(merged, read)
        unique = list(dict.fromkeys(keys))
        stored = merged.reindex([k for k in unique if k in merged.index])
        return stored, [k for k in unique if k not in stored.index]

    def missing(self, keys: Iterable[str]) -> List[str]:
        """Keys without a stored row, in input order, without duplicates."""
        return self.lookup(keys)[1]
