"""Feature-extraction cost per batch: what one worker of ``submission.py`` spends on an image batch.

    python scripts/bench_features.py [--dataset Dataset] [--batches 4] [--batch-size 32] [--threads 1] [--breakdown]

Times :func:`batch_features.features_for_batch` on ``--batches`` batches of the Dataset's
training images (one warm-up batch first, not counted), with ``--threads`` threads — one, as in
the cold run's worker processes — and no cache. Prints the extractor version, seconds per batch
(each, and the median) and milliseconds per image. Machine speed drifts between sessions, so
compare two versions by running this script on both checkouts back to back, not against a figure
from another day.

``--breakdown`` also prints where a batch's time goes (medians over the batches, and their share
of the median batch): each family's signals (inverse decoder, round trips, token reading) and each
variant's likelihood features.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import batch_features  # noqa: E402
import feature_extractor  # noqa: E402
from dataset import images_under, load_images  # noqa: E402
from runtime import keep_freed_memory  # noqa: E402


def training_sample(dataset: Path, needed: int) -> list:
    """``needed`` training images of ``dataset``, spread evenly over its classes."""
    paths = images_under(dataset / "train")
    if len(paths) < needed:
        raise SystemExit(f"{dataset}/train has {len(paths)} images, {needed} needed: build the demo Dataset "
                         "(python scripts/make_demo_dataset.py) or ask for fewer")
    return paths[::max(1, len(paths) // needed)][:needed]


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=ROOT / "Dataset",
                        help="Dataset root whose train/ images are read (default: the repository's Dataset)")
    parser.add_argument("--batches", type=int, default=4,
                        help="batches timed, after one untimed warm-up batch (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default %(default)s, as in the cold run's worker processes)")
    parser.add_argument("--breakdown", action="store_true", help="also print the seconds per part of the extractor")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    paths = training_sample(args.dataset, (args.batches + 1) * args.batch_size)
    extractor = feature_extractor.FeatureExtractor(use_cache=False, progress=False)
    images = load_images(paths, size=extractor.image_size)
    batch_features.features_for_batch(extractor.adapters, images[:args.batch_size], nets=extractor.nets)  # warm-up
    seconds, parts = [], []
    for b in range(1, args.batches + 1):
        timings: dict = {}
        start = time.perf_counter()
        batch_features.features_for_batch(extractor.adapters, images[b * args.batch_size:(b + 1) * args.batch_size],
                                             timings=timings, nets=extractor.nets)
        seconds.append(time.perf_counter() - start)
        parts.append(timings)
    median = statistics.median(seconds)
    print(f"extractor version {feature_extractor.EXTRACTOR_VERSION}, {args.threads} thread(s): "
          f"{' '.join(f'{s:.2f}' for s in seconds)} s per {args.batch_size}-image batch; "
          f"median {median:.2f} s ({1000 * median / args.batch_size:.0f} ms/image)")
    if args.breakdown:
        for part in parts[0]:
            part_median = statistics.median(t[part] for t in parts)
            print(f"  {part:<12} {part_median:6.2f} s  {100 * part_median / median:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
