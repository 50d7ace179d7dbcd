"""The feature store is content-addressed, atomic, resumable and never mixes versions or weights."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pandas as pd
import pytest

from feature_store import FeatureStore, file_sha256


def _rows(keys, value):
    return pd.DataFrame({"a": [value] * len(keys), "b": list(range(len(keys)))}, index=pd.Index(keys, name="key"))


def test_write_read_merge_and_missing(tmp_path):
    store = FeatureStore(tmp_path, "x", "1", "d" * 64)
    store.write(_rows(["k1", "k2"], 1.0))
    store.write(_rows(["k2", "k3"], 2.0))
    merged = store.read()
    assert sorted(merged.index) == ["k1", "k2", "k3"]
    assert merged.loc["k2", "a"] == 1.0  # first row per key wins
    assert store.missing(["k3", "k4", "k4", "k0"]) == ["k4", "k0"]
    assert len(store.shards()) == 2


@pytest.mark.parametrize("complete_first", [True, False])
def test_the_most_complete_row_of_a_key_wins_whatever_the_shard_order(tmp_path, complete_first):
    """A row computed again with more parts (``scored_*`` markers set) replaces the older one on read."""
    store = FeatureStore(tmp_path, "x", "1", "d" * 64)
    partial = pd.DataFrame({"a": [1.0, 5.0], "scored_A": [1.0, 1.0], "scored_B": [0.0, 1.0]}, index=pd.Index(["k", "j"], name="key"))
    complete = pd.DataFrame({"a": [2.0], "scored_A": [1.0], "scored_B": [1.0]}, index=pd.Index(["k"], name="key"))
    for rows in ((complete, partial) if complete_first else (partial, complete)):
        store.write(rows)
    merged = store.read()
    assert merged.loc["k", "a"] == 2.0 and merged.loc["j", "a"] == 5.0 and len(merged) == 2
    assert store.read(["k"]).loc["k", "scored_B"] == 1.0
    store.compact()
    assert store.read().loc["k", "a"] == 2.0 and len(store.shards()) == 1


def test_of_equal_rows_the_one_written_first_wins_whatever_the_process_ids(tmp_path):
    """Shards are read oldest first by the time in their names: process 10000's later shard does
    not win over process 9999's earlier one because "10000" sorts before "9999" as text."""
    store = FeatureStore(tmp_path, "x", "1", "d" * 64)
    _rows(["k"], 1.0).to_parquet(store.folder / "shard-9999-100-aaaaaaaa.parquet")
    _rows(["k"], 2.0).to_parquet(store.folder / "shard-10000-200-bbbbbbbb.parquet")
    assert store.read().loc["k", "a"] == 1.0
    store.write(_rows(["k"], 3.0))  # written now: later than both
    assert store.read().loc["k", "a"] == 1.0
    store.compact()
    assert store.read().loc["k", "a"] == 1.0 and len(store.shards()) == 1


def test_of_equally_complete_rows_the_oldest_wins(tmp_path):
    """With completeness markers, rows of a key that are equally complete keep the oldest shard's,
    for every key, among keys of mixed completeness."""
    store = FeatureStore(tmp_path, "x", "1", "d" * 64)
    keys = pd.Index([f"k{i}" for i in range(20)], name="key")
    marks = [float(i % 2) for i in range(20)]
    store.write(pd.DataFrame({"a": 1.0, "scored_A": marks}, index=keys))
    store.write(pd.DataFrame({"a": 2.0, "scored_A": marks}, index=keys))
    assert (store.read()["a"] == 1.0).all()


def test_a_compaction_keeps_the_merged_rows_older_than_a_shard_written_meanwhile(tmp_path):
    """Another process's shard written while a compaction merges (not among the shards it read)
    stays later than every merged row: the merged shard takes the newest time it merged."""
    store = FeatureStore(tmp_path, "x", "1", "d" * 64)
    _rows(["k"], 1.0).to_parquet(store.folder / "shard-1-100-aaaaaaaa.parquet")
    _rows(["j"], 2.0).to_parquet(store.folder / "shard-1-200-bbbbbbbb.parquet")
    merged, read = store._read_shards()
    _rows(["k"], 3.0).to_parquet(store.folder / "shard-2-300-cccccccc.parquet")  # the other process, meanwhile
    store._replace(merged, read)
    assert store.read().loc["k", "a"] == 1.0 and store.read().loc["j", "a"] == 2.0


def test_a_compaction_removes_temporary_files_left_by_killed_writers(tmp_path, monkeypatch):
    """A temporary file an hour old is a killed writer's; a recent one may be a live writer's on
    another node, and stays."""
    import feature_store

    store = FeatureStore(tmp_path, "x", "1", "d" * 64)
    store.write(_rows(["k1"], 1.0))
    store.write(_rows(["k2"], 1.0))
    old, recent = store.folder / "shard-1-2-3.parquet.4-abcd.tmp", store.folder / "shard-5-6-7.parquet.8-ef01.tmp"
    for tmp in (old, recent):
        tmp.write_bytes(b"half a file")
    os.utime(old, (1e9, 1e9))
    monkeypatch.setattr(feature_store, "COMPACT_AFTER", 1)  # the compaction a lookup makes
    store.lookup(["k1"])
    assert not old.exists() and recent.exists() and sorted(store.read().index) == ["k1", "k2"]
    assert len(store.shards()) == 1


def test_versions_and_weights_are_separate_stores(tmp_path):
    FeatureStore(tmp_path, "x", "1", "a" * 64).write(_rows(["k"], 1.0))
    assert FeatureStore(tmp_path, "x", "2", "a" * 64).read().empty
    assert FeatureStore(tmp_path, "x", "1", "b" * 64).read().empty
    assert not FeatureStore(tmp_path, "x", "1", "a" * 64).read().empty


def test_rebuild_and_disabled(tmp_path):
    FeatureStore(tmp_path, "x", "1", "a" * 64).write(_rows(["k"], 1.0))
    assert FeatureStore(tmp_path, "x", "1", "a" * 64, rebuild=True).read().empty
    off = FeatureStore(tmp_path / "off", "x", "1", "a" * 64, enabled=False)
    assert off.write(_rows(["k"], 1.0)) is None and off.read().empty and not (tmp_path / "off").exists()


def test_leftover_temp_files_and_damaged_shards_are_ignored(tmp_path):
    store = FeatureStore(tmp_path, "x", "1", "a" * 64)
    store.write(_rows(["k1"], 1.0))
    (store.folder / "shard-1-2-3.parquet.tmp").write_bytes(b"half a file")
    (store.folder / "shard-9-9-9.parquet").write_bytes(b"not parquet")
    assert list(store.read().index) == ["k1"]


def test_a_lookup_over_many_shards_merges_them_and_keeps_every_row(tmp_path, monkeypatch):
    import feature_store

    monkeypatch.setattr(feature_store, "COMPACT_AFTER", 3)
    store = FeatureStore(tmp_path, "x", "1", "a" * 64)
    for i in range(4):
        store.write(_rows([f"k{i}", "shared"], float(i)))
    damaged = store.folder / "shard-0-0-0.parquet"
    damaged.write_bytes(b"not parquet")
    before = store.read()
    assert len(store.shards()) == 5
    stored, missing = store.lookup(["k3", "k9", "shared"])
    assert missing == ["k9"] and list(stored.index) == ["k3", "shared"]
    assert damaged in store.shards() and len(store.shards()) == 2
    pd.testing.assert_frame_equal(store.read().sort_index(), before.sort_index())  # first-wins values kept
    store.lookup(["k0"])  # two shards (one damaged): nothing to merge
    assert len(store.shards()) == 2 and damaged.exists()


def test_a_compaction_cut_short_before_removing_shards_loses_nothing(tmp_path, monkeypatch):
    """The merged shard is in place before any old one goes: a crash in between leaves duplicates only."""
    store = FeatureStore(tmp_path, "x", "1", "a" * 64)
    store.write(_rows(["k1"], 1.0))
    store.write(_rows(["k2"], 2.0))
    before = store.read()

    def crash(self, missing_ok=False):
        raise KeyboardInterrupt("killed while removing merged shards")

    monkeypatch.setattr(Path, "unlink", crash)
    with pytest.raises(KeyboardInterrupt):
        store.compact()
    monkeypatch.undo()
    assert len(store.shards()) == 3
    pd.testing.assert_frame_equal(store.read().sort_index(), before.sort_index())


def test_compact_merges_on_request(tmp_path):
    store = FeatureStore(tmp_path, "x", "1", "a" * 64)
    assert store.compact() is None
    store.write(_rows(["k1"], 1.0))
    assert store.compact() is None  # one shard: nothing to merge
    store.write(_rows(["k2"], 2.0))
    merged = store.compact()
    assert store.shards() == [merged] and sorted(store.read().index) == ["k1", "k2"]


def test_kill_9_mid_run_keeps_every_finished_shard(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})  # this checkout's code, from any folder
        import pandas as pd
        from feature_store import FeatureStore
        store = FeatureStore({str(tmp_path)!r}, "x", "1", "a" * 64)
        for i in range(10_000):
            store.write(pd.DataFrame({{"a": [float(i)]}}, index=pd.Index([f"k{{i}}"], name="key")))
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    killer = threading.Timer(120, proc.kill)  # a writer that stalls fails the test, not the suite
    killer.start()
    try:
        lines = [proc.stdout.readline() for _ in range(30)]
    finally:
        killer.cancel()
    assert all(lines), "the writer died or stalled before 30 rows"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows = FeatureStore(tmp_path, "x", "1", "a" * 64).read()
    assert len(rows) >= 30
    assert all(rows.loc[f"k{i}", "a"] == float(i) for i in range(30))


def test_file_sha256(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    import hashlib

    data = bytes(range(256)) * 41  # 10 496 bytes: read in blocks of 1 000, the last one short
    path.write_bytes(data)
    assert file_sha256(path, chunk=1000) == hashlib.sha256(data).hexdigest() == file_sha256(path)


def test_inspected_images_carry_the_store_key(tmp_path):
    """submission.py hands dataset.inspect_images' digests to the extractor as store keys."""
    from PIL import Image

    from dataset import inspect_images

    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not an image")
    frame = inspect_images([tmp_path / "a.png", tmp_path / "b.png"])
    assert frame.loc[str(tmp_path / "a.png"), "sha256"] == file_sha256(tmp_path / "a.png")
    assert frame["readable"].tolist() == [True, False]


def test_refined_or_gpu_features_get_stores_of_their_own():
    from feature_extractor import EXTRACTOR_NAME, store_name

    names = {store_name(0, "cpu"), store_name(25, "cpu"), store_name(0, "cuda"), store_name(25, "cuda")}
    assert store_name(0, "cpu") == EXTRACTOR_NAME and len(names) == 4
