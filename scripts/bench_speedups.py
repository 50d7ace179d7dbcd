"""What the feature extractor's channels-last tokenizers save (``FamilyAdapter.use_channels_last``).

    python scripts/bench_speedups.py [--dataset Dataset] [--rounds 8] [--threads 1]

1. One decode plus one encode of a 32-image batch per family, NHWC against the default layout.
2. ``features_for_batch`` on one 32-image batch of training images, as the extractor runs it
   (channels-last, with its variant nets) against the default layout.

This machine's speed drifts by 10–20 % within minutes, more than the savings, so every
comparison alternates the two paths in one process, ``--rounds`` times (the order flips every
round; one warm-up run of each is dropped), and reports both medians and the median of the
paired differences.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import batch_features  # noqa: E402
import feature_extractor  # noqa: E402
from bench_features import training_sample  # noqa: E402
from dataset import load_images  # noqa: E402
from runtime import keep_freed_memory  # noqa: E402


def alternate(plain: Callable[[], object], fast: Callable[[], object], rounds: int) -> Dict[str, list]:
    """Seconds per call of each, alternating (order flipped every round); a warm-up of each first."""
    plain(), fast()
    seconds: Dict[str, list] = {"plain": [], "fast": []}
    for r in range(rounds):
        for name in (("plain", "fast") if r % 2 == 0 else ("fast", "plain")):
            start = time.perf_counter()
            (plain if name == "plain" else fast)()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def report(what: str, seconds: Dict[str, list]) -> None:
    plain, fast = statistics.median(seconds["plain"]), statistics.median(seconds["fast"])
    paired = statistics.median(p - f for p, f in zip(seconds["plain"], seconds["fast"]))
    print(f"{what}: plain {plain * 1000:.1f} ms, fast {fast * 1000:.1f} ms (medians); "
          f"paired saving {paired * 1000:.1f} ms = {100 * paired / plain:.1f} %")


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=ROOT / "Dataset",
                        help="Dataset root; 32 of its train/ images are used (default: the repository's Dataset)")
    parser.add_argument("--rounds", type=int, default=8,
                        help="timed runs of each path per comparison, after one warm-up each (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    paths = training_sample(args.dataset, 32)

    fast = feature_extractor.FeatureExtractor(use_cache=False, progress=False)
    plain = feature_extractor.FeatureExtractor(use_cache=False, progress=False)
    for adapter in plain.adapters.values():
        adapter.use_channels_last(False)
    images = load_images(paths, size=fast.image_size)
    with torch.no_grad():
        for family in ("VAR", "RAR"):
            f = fast.adapters[family].encode(images)

            def round_trip(adapter):
                return lambda: (adapter.decode(f), adapter.encode(images))

            report(f"{family} decode + encode, channels-last", alternate(
                round_trip(plain.adapters[family]), round_trip(fast.adapters[family]), args.rounds))

    report("features_for_batch (32 images)", alternate(
        lambda: batch_features.features_for_batch(plain.adapters, images, nets=plain.nets),
        lambda: batch_features.features_for_batch(fast.adapters, images, nets=fast.nets), args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
