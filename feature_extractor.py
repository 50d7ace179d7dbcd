"""Per-image feature rows for attribution: family signals of both families + variant likelihoods.

For every image, with each family's inverse decoder:

* ``{VAR,RAR}_{signal}`` — the stage-one signals of :mod:`signals` (QuantLoss, searched
  QuantLoss for VAR, EncLoss raw and calibrated, Combined, Reconstruction, AEDR);
* ``{variant}_{feature}`` — for all 8 variants, the likelihood features of
  :mod:`variant_features` on the tokens recovered by that variant's family (searched for VAR;
  re-encoded for RAR, see ``REENCODE_ITERS``),
  including the likelihood under each variant's own sampler and its mix with the image's code
  posterior (:func:`variant_features.token_evidence` over :meth:`FamilyAdapter.token_distances`).
  The family's first (smallest) variant is evaluated under every class label; the others only
  under its ``SHARED_CANDIDATES`` most likely label(s) (and unconditionally), which keeps the cost
  at two teacher-forced passes per larger variant — labels the smallest model finds unlikely
  carry little mass in the others' marginals too. On the demo zoo (cold ``submission.py --demo``,
  2 cores), 1 and 2 shared labels gave 59.0 and 58.8 % test accuracy at 2.9 and 3.4 s per
  32-image batch of features (an earlier zoo and extractor); 3 labels (with the earlier LightGBM
  grid) gave 60.8 % at 4.8 s before the allocator fix of :mod:`runtime`. Two were used up to
  extractor version 6; one since version 7, to bring the cold run under 10 minutes.

Both tokenizers run in channels-last memory layout here (:meth:`FamilyAdapter.use_channels_last`):
one decode plus one encode takes 9–13 % less time and a 32-image batch of features 1–5 % less
(two runs of ``python scripts/bench_speedups.py --rounds 12``, paired medians, one thread); the
values agree with the default layout to ~1e-5 (version 10; version 9 used the default layout).

Besides the features, each image's per-token log-likelihoods under every variant (conditional at
the best label, and unconditional) are kept for PRADA's score functions (:mod:`flat_prada`), in a
second store beside the first (:meth:`FeatureExtractor.token_log_likelihoods`): 876 float32 values
per image on the demo zoo, 7 488 (about 30 kB) with the official models' 680 + 256 tokens.

Rows are cached in a :class:`feature_store.FeatureStore` keyed by the sha256 of the image file,
in a store named after this extractor's version and a digest of every weight file used (zoo or
official files and inverse decoders), so a rerun computes only new images and a change of
weights or code version never reuses stale rows. Each batch is written as its own shard as soon
as it is computed: an interrupted run resumes where it stopped. ``workers=N`` spreads batches
over N single-threaded processes (each writes its own shards); results come back in batch order.

    python feature_extractor.py Dataset/val --out val_features.parquet
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

import inv_decoder
from dataset import load_images
from feature_store import FeatureStore, file_sha256
from models.adapter import FamilyAdapter
from models.zoo import check_weights_dir, is_zoo_dir, load_family
from quantizer import search_tokens
from runtime import keep_freed_memory, use_usable_cores
from signals import family_signals_and_tokens, refine_tokens
from variant_features import token_evidence, variant_features

__all__ = ["EXTRACTOR_NAME", "EXTRACTOR_VERSION", "TOKEN_LL_SUFFIX", "FeatureExtractor", "features_for_batch", "weight_files"]

EXTRACTOR_NAME = "iar_features"
EXTRACTOR_VERSION = "11"  # 11: the same features as 10, with per-token log-likelihoods stored beside them
TOKEN_LL_SUFFIX = "_token_ll"  # the per-token store: <name>_token_ll-v<version>-<weights digest>
SHARED_CANDIDATES = 1  # labels the larger variants of a family are evaluated under
# VAR's token search anneals over 10 iterations here instead of ``search_tokens``' default 20, at
# half the cost; ``scripts/bench_token_search.py`` prints both (time, QuantLoss TPR, mean f-MSE).
SEARCH_ITERS = 10
# Latent refinement before quantizing (opt-in, ``refine_steps``): on 192 fresh RAR generations it
# took token recovery from 41.5 % to 54.1 % (25 steps, lr 0.02) and the untrained likelihood-ratio
# rule from 93.2 % to 97.4 %; VAR's tokens gain nothing from it (scripts/diagnose_zoo.py).
REFINE_FAMILIES = ("RAR",)
REFINE_LR = 0.02
# Without refinement, RAR's tokens are read after one re-encoding correction of the inverse
# decoder's bias (signals.reencode_tokens; one decode and one encode, no gradients). On 192 fresh
# RAR generations (scripts/diagnose_zoo.py --families RAR --per-variant 48 --reencode-iters N) one
# correction took token recovery from 41.5 to 52.1 % and the untrained rule on nll_marginal /
# nll_evidence from 92.2 / 93.2 to 95.3 / 94.8 %; two (extractor version 8) gave 56.4 % and
# 96.9 / 94.8 %, for twice the cost. VAR's tokens do not gain (44.2 → 43.6 %), so VAR is not re-encoded.
REENCODE_FAMILIES = ("RAR",)
REENCODE_ITERS = 1


@torch.no_grad()
def features_for_batch(adapters: Dict[str, FamilyAdapter], img01_B3HW: torch.Tensor,
                       refine_steps: int = 0, timings: Optional[Dict[str, float]] = None) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Feature columns for one batch of images (rows in input order), and its per-token
    log-likelihoods: ``{variant}_cond`` (at the best label) and ``{variant}_uncond``, one float32
    array per image and column, the input of PRADA's score functions (:mod:`flat_prada`).

    The variant features of the :data:`REENCODE_FAMILIES` use tokens recovered after
    :data:`REENCODE_ITERS` re-encoding corrections (:func:`signals.reencode_tokens`);
    ``refine_steps > 0`` replaces them, for the :data:`REFINE_FAMILIES`, by tokens recovered after
    that many latent-refinement steps (:func:`signals.refine_tokens`). The family signals always
    use the inverse decoder's own ``f``.

    ``timings``, when given, gets the seconds each part took added to it: ``{family}_signals``
    (inverse decoder, round trips and token reading, with the code posterior) and one entry per
    variant (its likelihood features); ``scripts/bench_features.py --breakdown`` prints them.
    """
    clock = _Stopwatch(timings)
    columns: Dict[str, object] = {}
    token_columns: Dict[str, List[np.ndarray]] = {}
    for family, adapter in adapters.items():
        refine = refine_steps > 0 and family in REFINE_FAMILIES
        reencode_iters = REENCODE_ITERS if family in REENCODE_FAMILIES and not refine else 0
        search = partial(search_tokens, max_iters=SEARCH_ITERS) if family == "VAR" else None
        signals, tokens, f = family_signals_and_tokens(adapter, img01_B3HW, search, reencode_iters)
        if refine:
            tokens, f = refine_tokens(adapter, img01_B3HW, f, refine_steps, REFINE_LR, search)
        evidence = token_evidence(adapter.token_distances(f, tokens))
        clock.lap(f"{family}_signals")
        for name, values in signals.items():
            columns[f"{family}_{name}"] = values.detach().cpu().double().numpy()
        scale_sizes = [pn * pn for pn in adapter.patch_nums] if family == "VAR" else None
        candidates = None  # the first (smallest) variant scores every label; the others reuse its best ones
        for variant in adapter.variant_names:
            feats = variant_features(adapter, variant, tokens, scale_sizes=scale_sizes, candidates_BK=candidates, evidence_BLV=evidence)
            if candidates is None:
                candidates = feats.pop("label_ranking")[:, :SHARED_CANDIDATES]
            feats.pop("label_ranking", None)
            for kind in ("cond", "uncond"):
                token_columns[f"{variant}_{kind}"] = list(feats.pop(f"token_ll_{kind}"))
            for name, values in feats.items():
                columns[f"{variant}_{name}"] = values
            clock.lap(variant)
    return pd.DataFrame(columns), pd.DataFrame(token_columns)


def _paths_ids_keys(paths: Sequence[Path | str], ids: Optional[Sequence[str]],
                    keys: Optional[Sequence[str]]) -> Tuple[List[Path], List[str], List[str]]:
    """The images as paths, their ids (default: the paths) and their keys (default: each file's sha256)."""
    paths = [Path(p) for p in paths]
    ids = list(ids) if ids is not None else [str(p) for p in paths]
    keys = list(keys) if keys is not None else [file_sha256(p) for p in paths]
    return paths, ids, keys


class _Stopwatch:
    """Adds the seconds since the last lap to ``timings[part]``; does nothing without ``timings``."""

    def __init__(self, timings: Optional[Dict[str, float]]) -> None:
        self.timings, self.last = timings, time.perf_counter()

    def lap(self, part: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[part] = self.timings.get(part, 0.0) + now - self.last
            self.last = now


def weight_files(weights_dir: Optional[Path]) -> List[Path]:
    """The weight files a run with ``weights_dir`` (default: the demo zoo) depends on."""
    folder = check_weights_dir(weights_dir)
    if is_zoo_dir(folder):
        return sorted(folder.glob("*.safetensors")) + [folder / "zoo.json"]
    return sorted(p for p in folder.iterdir() if p.suffix in (".pth", ".bin", ".safetensors"))


class FeatureExtractor:
    """Loads both families with their inverse decoders and serves cached feature rows."""

    def __init__(self, *, weights_dir: Optional[Path] = None, inv_root: Path = Path("runs/inv_decoder"),
                 cache_dir: Path = Path("cache/features"), use_cache: bool = True, rebuild: bool = False,
                 batch_size: int = 32, device: str = "cpu", progress: bool = True, inv_config: Optional[dict] = None,
                 workers: int = 1, refine_steps: int = 0, fine_tune_missing: bool = True) -> None:
        self.batch_size, self.progress, self.workers = batch_size, progress, max(1, int(workers))
        self.refine_steps = max(0, int(refine_steps))
        self._worker_kwargs = dict(weights_dir=weights_dir, inv_root=inv_root, cache_dir=cache_dir, use_cache=use_cache,
                                   batch_size=batch_size, device=device, progress=False, inv_config=inv_config,
                                   refine_steps=self.refine_steps)
        self.adapters: Dict[str, FamilyAdapter] = {}
        files = weight_files(weights_dir)
        for family in ("VAR", "RAR"):
            path = inv_decoder.ensure_inverse_decoder(family, weights_dir, inv_root, False, device, inv_config, fine_tune_missing)
            adapter = inv_decoder.load_inverse_decoder(load_family(family, weights_dir, device=device), path)
            self.adapters[family] = adapter.use_channels_last()
            files.append(path)
        self.image_size = self.adapters["VAR"].image_size
        digest = hashlib.sha256("".join(file_sha256(p) for p in files).encode()).hexdigest()
        self.weights_digest = digest
        name = EXTRACTOR_NAME if not self.refine_steps else f"{EXTRACTOR_NAME}_refine{self.refine_steps}"
        self.store = FeatureStore(cache_dir, name, EXTRACTOR_VERSION, digest, enabled=use_cache, rebuild=rebuild)
        self.token_store = FeatureStore(cache_dir, f"{name}{TOKEN_LL_SUFFIX}", EXTRACTOR_VERSION, digest,
                                        enabled=use_cache, rebuild=rebuild)

    def features(self, paths: Sequence[Path | str], ids: Optional[Sequence[str]] = None,
                 keys: Optional[Sequence[str]] = None, with_tokens: bool = False) -> pd.DataFrame:
        """Feature frame indexed by ``ids`` (default: the paths), computing only uncached images.
        ``keys``: the files' sha256, when the caller has them already (else they are computed).
        ``with_tokens``: compute again the images whose per-token rows are missing too (a run
        killed between writing a batch's two shards), for :meth:`token_log_likelihoods`."""
        from tqdm.auto import tqdm

        paths, ids, keys = _paths_ids_keys(paths, ids, keys)
        stored, todo = self.store.lookup(keys)  # one pass over the shards, which are many
        if with_tokens:
            redo = set(todo) | set(self.token_store.missing(keys))
            todo = [k for k in dict.fromkeys(keys) if k in redo]
            stored = stored.drop(index=[k for k in stored.index if k in redo])
        if self.progress:
            print(f"features: {len(set(keys)) - len(todo)} images cached, {len(todo)} to compute", file=sys.stderr)
        first_path = {k: p for k, p in zip(keys, paths)}
        jobs = [(todo[s:s + self.batch_size], [first_path[k] for k in todo[s:s + self.batch_size]])
                for s in range(0, len(todo), self.batch_size)]
        bar = dict(desc="features", disable=not self.progress or not todo, unit="batch", total=len(jobs))
        if self.workers > 1 and len(jobs) > 1:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(min(self.workers, len(jobs)), _worker_init, (self._worker_kwargs,)) as pool:
                computed = list(tqdm(pool.imap(_worker_batch, jobs), **bar))
        else:
            computed = [self._batch(keys_, paths_) for keys_, paths_ in tqdm(jobs, **bar)]
        table = pd.concat([stored] + computed) if computed else stored
        table = table[~table.index.duplicated(keep="first")]
        out = table.reindex(keys)
        out.index = pd.Index(ids, name="image_id")
        return out

    def token_log_likelihoods(self, paths: Sequence[Path | str], ids: Optional[Sequence[str]] = None,
                              keys: Optional[Sequence[str]] = None) -> pd.DataFrame:
        """Per-token log-likelihood frame (see :func:`features_for_batch`) indexed by ``ids``,
        computing what is missing (with the features, which are cached alongside)."""
        paths, ids, keys = _paths_ids_keys(paths, ids, keys)
        if not self.token_store.enabled:
            raise ValueError("per-token log-likelihoods are read from the cache: do not turn it off (--no-cache) for them")
        stored, missing = self.token_store.lookup(keys)
        if missing:
            self.features(paths, ids, keys, with_tokens=True)
            stored = self.token_store.read(keys)
        out = stored.reindex(keys)
        out.index = pd.Index(ids, name="image_id")
        return out

    def _batch(self, keys: List[str], paths: List[Path]) -> pd.DataFrame:
        """Compute, store and return the feature rows of one batch (its token rows are stored too)."""
        rows, token_rows = features_for_batch(self.adapters, load_images(paths, size=self.image_size), self.refine_steps)
        rows.index = token_rows.index = pd.Index(keys, name="key")
        self.store.write(rows)
        self.token_store.write(token_rows)
        return rows


_WORKER: Optional[FeatureExtractor] = None


def _worker_init(kwargs: dict) -> None:
    """A worker process: one thread, its own models; writes its own shards to the shared store."""
    global _WORKER
    torch.set_num_threads(1)
    keep_freed_memory()
    _WORKER = FeatureExtractor(**kwargs)


def _worker_batch(job) -> pd.DataFrame:
    return _WORKER._batch(*job)


def main(argv: Optional[list] = None) -> int:
    from cli import at_least, readable_folder_images

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder of images (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="output .parquet or .csv")
    parser.add_argument("--weights-dir", type=Path)
    parser.add_argument("--inv-root", type=Path, default=Path("runs/inv_decoder"))
    parser.add_argument("--cache-dir", type=Path, default=Path("cache/features"))
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--rebuild", action="store_true", help="discard this extractor's cached rows first")
    parser.add_argument("--batch-size", type=at_least(1), default=32)
    parser.add_argument("--workers", type=at_least(1), default=1, help="processes with one thread each (default 1: one process)")
    parser.add_argument("--refine-steps", type=at_least(0), default=0,
                        help="latent-refinement steps before RAR's tokens are read (default 0: off; slower)")
    args = parser.parse_args(argv)
    keep_freed_memory()
    use_usable_cores()
    readable = readable_folder_images(args.folder)  # each file read and hashed once
    paths = [Path(p) for p in readable.index]
    extractor = FeatureExtractor(weights_dir=args.weights_dir, inv_root=args.inv_root, cache_dir=args.cache_dir,
                                 use_cache=not args.no_cache, rebuild=args.rebuild, batch_size=args.batch_size,
                                 workers=args.workers, refine_steps=args.refine_steps)
    frame = extractor.features(paths, [str(p.relative_to(args.folder)) for p in paths], keys=list(readable["sha256"]))
    frame.to_parquet(args.out) if args.out.suffix == ".parquet" else frame.to_csv(args.out)
    print(f"{len(frame)} rows × {frame.shape[1]} features → {args.out}")
    return 0


if __name__ == "__main__":
    from cli import run_main

    sys.exit(run_main(main))
