"""Token search: the paper's Algorithm 3 (faithful reference) vs ours, on the same images, one run.

    python scripts/bench_token_search.py [--dataset Dataset] [--split test] [--per-group 50]

Takes up to ``--per-group`` VAR-made test images and as many non-belonging ones (natural,
RAR, outlier IAR, in equal shares), encodes them with the VAR inverse decoder, and runs greedy
quantization, the reference search, our search (its defaults: a 20-iteration anneal), our search
with the feature extractor's shorter anneal (``batch_features.SEARCH_ITERS``) and with a
120-iteration anneal, on the same feature maps.
Prints wall-clock time per image, the QuantLoss TPR@1%FPR of each, the mean QuantLoss (f-MSE) of
the VAR-made images (how well each fits them), and the speed-ups. With ``--full-size`` it also
times our search (and greedy) per image on the full-size official VAR VQVAE (random weights,
256×256, 680 tokens over 10 scales, V=4096) — the reference's time there is measured on
``--full-size-images`` images only, because it is slow on a CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import family_eval  # noqa: E402
import inv_decoder  # noqa: E402
from cli import add_scored_split_arguments, at_least, scored_split  # noqa: E402
from dataset import load_images  # noqa: E402
from batch_features import SEARCH_ITERS  # noqa: E402
from metrics import tpr_at_fpr  # noqa: E402
from quantizer import greedy_tokens, search_tokens, search_tokens_reference  # noqa: E402


LONG_ANNEAL = 120  # the search's default anneal up to commit dc90aa5


def _timed(fn, f_chunks):
    start = time.perf_counter()
    mse = torch.cat([fn(f).mse for f in f_chunks])
    return time.perf_counter() - start, mse


def full_size_timing(images: int, reference_images: int, threads: int) -> None:
    from models.registry import build_var_vae, official_variant

    torch.manual_seed(0)
    vae = build_var_vae(official_variant("var16")["tokenizer"]).eval()
    with torch.no_grad():
        f = vae.encode_f(torch.rand(images, 3, 256, 256) * 2 - 1)
    for name, fn, n in [("greedy", lambda x: greedy_tokens(vae.quantize, x), images),
                        ("ours", lambda x: search_tokens(vae.quantize, x), images),
                        ("reference (Alg. 3)", lambda x: search_tokens_reference(vae.quantize, x), reference_images)]:
        if n == 0:
            continue
        seconds, _ = _timed(fn, [f[i:i + 1] for i in range(n)])
        print(f"full-size VAR VAE, {threads} threads: {name:18s} {seconds / n:8.2f} s/image  ({n} images)")


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scored_split_arguments(parser, ROOT)
    parser.add_argument("--per-group", type=at_least(1), default=50,
                        help="belonging images (and as many non-belonging) (default %(default)s)")
    parser.add_argument("--batch-size", type=at_least(1), default=25, help="feature maps per search call (default %(default)s)")
    parser.add_argument("--threads", type=at_least(1), default=2,
                        help="torch threads (torch.set_num_threads), --full-size included (default %(default)s)")
    parser.add_argument("--full-size", action="store_true", help="also time the full-size VAR VAE (random weights)")
    parser.add_argument("--full-size-images", type=at_least(1), default=2,
                        help="random images greedy and our search are timed on with --full-size (default %(default)s)")
    parser.add_argument("--full-size-reference-images", type=at_least(0), default=1,
                        help="of those, images the reference search is timed on (default %(default)s; 0: skip it)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random choice of images from each group (default %(default)s; "
                             "the --full-size images always use seed 0)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = scored_split(args.dataset, args.split)
    groups = pd.Series([family_eval.source_group(s, l, "VAR") for s, l in zip(meta["source"], meta["label"])], index=meta.index)
    belonging = groups[groups == "belonging"].sample(frac=1, random_state=args.seed).index[: args.per_group]
    others = groups[groups != "belonging"]
    per_other = max(1, args.per_group // max(1, others.nunique()))
    non_belonging = others.groupby(others).apply(lambda g: g.sample(min(len(g), per_other), random_state=args.seed)).index.get_level_values(-1)
    chosen = list(belonging) + list(non_belonging)
    is_belonging = torch.tensor([i in set(belonging) for i in chosen])
    adapter = inv_decoder.inverse_adapter("VAR", args.weights_dir, args.inv_root, False, "cpu")
    with torch.no_grad():
        f = adapter.encode(load_images(meta.loc[chosen, "path"], size=adapter.image_size))
    chunks = list(torch.split(f, args.batch_size))
    quant = adapter.tokenizer.quantize
    results = {}
    for name, fn in [("greedy", lambda x: greedy_tokens(quant, x)), ("reference (Alg. 3)", lambda x: search_tokens_reference(quant, x)),
                     ("ours", lambda x: search_tokens(quant, x)),
                     (f"ours, {SEARCH_ITERS} iters", lambda x: search_tokens(quant, x, max_iters=SEARCH_ITERS)),
                     (f"ours, {LONG_ANNEAL} iters", lambda x: search_tokens(quant, x, max_iters=LONG_ANNEAL))]:
        seconds, mse = _timed(fn, chunks)
        tpr = tpr_at_fpr(mse[is_belonging].numpy(), mse[~is_belonging].numpy())
        results[name] = seconds
        print(f"{name:18s} {1000 * seconds / len(chosen):9.1f} ms/image   QuantLoss TPR@1%FPR {100 * tpr:5.1f}%   "
              f"belonging mean {mse[is_belonging].mean():.4e} median {mse[is_belonging].median():.3e}  "
              f"non-belonging median {mse[~is_belonging].median():.3e}", flush=True)
    print(f"images: {int(is_belonging.sum())} VAR-made + {int((~is_belonging).sum())} others; "
          f"speed-up over the reference: ours {results['reference (Alg. 3)'] / results['ours']:.1f}×, "
          f"ours with {SEARCH_ITERS} iterations (the feature extractor's) {results['reference (Alg. 3)'] / results[f'ours, {SEARCH_ITERS} iters']:.1f}×, "
          f"ours with {LONG_ANNEAL} iterations {results['reference (Alg. 3)'] / results[f'ours, {LONG_ANNEAL} iters']:.1f}×")
    if args.full_size:
        full_size_timing(args.full_size_images, args.full_size_reference_images, args.threads)
    return 0


if __name__ == "__main__":
    from cli import run_main

    sys.exit(run_main(main))
