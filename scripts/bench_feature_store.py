"""Reading the feature store before and after compaction: what COMPACT_AFTER buys a warm run.

    python scripts/bench_feature_store.py [--shards 142] [--rows 4504] [--columns 157] [--repeats 3]

Writes ``--rows`` rows of ``--columns`` float features as ``--shards`` shards (a cold demo run
leaves 142 shards of 32 rows, 4 504 rows × 157 features) into a temporary store, times
:meth:`feature_store.FeatureStore.read` (best of ``--repeats``), merges the shards with
:meth:`~feature_store.FeatureStore.compact`, times the read again and checks both reads return
the same rows.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cli import at_least  # noqa: E402
from feature_store import FeatureStore  # noqa: E402


def best_read_seconds(store: FeatureStore, repeats: int) -> tuple:
    times, frame = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        frame = store.read()
        times.append(time.perf_counter() - start)
    return min(times), frame


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=at_least(1), default=142,
                        help="shards written before compaction (default %(default)s, as a cold demo run leaves)")
    parser.add_argument("--rows", type=at_least(1), default=4504, help="rows (images) in the store (default %(default)s)")
    parser.add_argument("--columns", type=at_least(1), default=157, help="random float features per row (default %(default)s)")
    parser.add_argument("--repeats", type=at_least(1), default=3,
                        help="reads timed before and after compaction; the fastest counts (default %(default)s)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    keys = [f"{i:064x}" for i in range(args.rows)]
    frame = pd.DataFrame(rng.normal(size=(args.rows, args.columns)), index=pd.Index(keys, name="key"),
                         columns=[f"feature_{j}" for j in range(args.columns)])
    with tempfile.TemporaryDirectory() as folder:
        store = FeatureStore(folder, "bench", "1", "0" * 64)
        for part in np.array_split(np.arange(args.rows), args.shards):
            store.write(frame.iloc[part])
        sharded, before = best_read_seconds(store, args.repeats)
        store.compact()
        merged, after = best_read_seconds(store, args.repeats)
    pd.testing.assert_frame_equal(before.sort_index(), after.sort_index())
    print(f"{args.rows} rows × {args.columns} features: read {sharded:.3f} s from {args.shards} shards, "
          f"{merged:.3f} s from 1 after compaction ({sharded / merged:.0f}×), same rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
