"""Per-image feature rows for attribution: family signals of both families + variant likelihoods.

For every image, with each family's inverse decoder:

* ``{VAR,RAR}_{signal}`` — the stage-one signals of :mod:`signals` (QuantLoss, searched
  QuantLoss for VAR, EncLoss raw and calibrated, Combined, Reconstruction, AEDR);
* ``{variant}_fnet_nll`` — for the variants of the families with a variant net (both):
  ``−log p(variant | f)`` from :mod:`variant_net`, a small CNN trained on the family's fresh
  generations to name the variant from the inverse decoder's ``f`` without reading tokens (both
  read ``f`` after one re-encoding correction, :func:`variant_net.net_input`);
* ``{variant}_{feature}`` — for all 8 variants, the likelihood features of
  :mod:`variant_features` on the tokens recovered by that variant's family (searched for VAR;
  re-encoded for RAR, see ``REENCODE_ITERS``),
  including the likelihood under each variant's own sampler and its mix with the image's code
  posterior (:func:`variant_features.token_evidence` over :meth:`FamilyAdapter.token_distances`).
  The family's first (smallest) variant is evaluated under every class label; the others only
  under its ``SHARED_CANDIDATES`` most likely label(s) (and unconditionally), which keeps the cost
  at two teacher-forced passes per larger variant — labels the smallest model finds unlikely
  carry little mass in the others' marginals too (one label since version 7, two before; on an
  earlier zoo 1 and 2 gave the same test accuracy, 59.0 and 58.8 %, at 2.9 and 3.4 s per batch).

Variant likelihoods are most of the cost (about 55 % of a batch: ``python scripts/bench_features.py
--breakdown``), and an image needs only those of the families it may come from. With a
``variant_gate`` (:class:`provenance.ScoringGate`, which ``submission.py`` fits on the full features
of a sample of training images), each image gets the variant features of the families the gate
gives a probability of at least 3 % (NaN for the others; family signals always); stored rows mark
what they hold (``scored_{family}``), and a row that lacks a family a later call needs is computed
again in full.

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
import variant_net
from dataset import load_images
from feature_store import COMPLETENESS_PREFIX, FeatureStore, file_sha256, marker_columns
from models.adapter import FamilyAdapter
from models.zoo import check_weights_dir, is_zoo_dir, load_family
from provenance import leave_out_unneeded
from quantizer import search_tokens
from runtime import keep_freed_memory, use_usable_cores
from signals import family_signals_and_tokens, refine_tokens
from variant_features import token_evidence, variant_features

__all__ = ["EXTRACTOR_NAME", "EXTRACTOR_VERSION", "TOKEN_LL_SUFFIX", "FeatureExtractor", "features_for_batch", "weight_files"]

EXTRACTOR_NAME = "iar_features"
# 11: the same features as 10, with per-token log-likelihoods stored beside them; 12: rows carry
# scored_{family} markers, and a ScoringGate may leave a family's variant features out (NaN);
# 13: variant features in fixed-size chunks (VARIANT_CHUNK), whatever the batch mates
# 14: {variant}_fnet_nll (variant_net.py) for VAR; 15: for RAR too
EXTRACTOR_VERSION = "16"  # 16: VAR's net reads f after one re-encoding correction (variant_net.net_input)
# (RAR's net reading it too changed no code here, only the net's file, whose digest names the store)
TOKEN_LL_SUFFIX = "_token_ll"  # the per-token store: <name>_token_ll-v<version>-<weights digest>
SHARED_CANDIDATES = 1  # labels the larger variants of a family are evaluated under
# Variant features are computed this many images at a time, always (the last chunk padded): the
# passes then have the same shapes whichever images share a batch, so an image's features do not
# depend on its batch mates (with the scoring gate, the images a family is computed for vary per
# batch; matrix products of other sizes round differently, ~1e-6, enough to move a LightGBM split).
VARIANT_CHUNK = 8
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
def features_for_batch(adapters: Dict[str, FamilyAdapter], img01_B3HW: torch.Tensor, refine_steps: int = 0,
                       timings: Optional[Dict[str, float]] = None, variant_gate=None,
                       forced: Optional[Dict[str, np.ndarray]] = None,
                       nets: Optional[Dict[str, Tuple[variant_net.AnyVariantNet, List[str]]]] = None) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Feature columns for one batch of images (rows in input order), and its per-token
    log-likelihoods: ``{variant}_cond`` (at the best label) and ``{variant}_uncond``, one float32
    array per image and column, the input of PRADA's score functions (:mod:`flat_prada`).

    The variant features of the :data:`REENCODE_FAMILIES` use tokens recovered after
    :data:`REENCODE_ITERS` re-encoding corrections (:func:`signals.reencode_tokens`);
    ``refine_steps > 0`` replaces them, for the :data:`REFINE_FAMILIES`, by tokens recovered after
    that many latent-refinement steps (:func:`signals.refine_tokens`). The family signals always
    use the inverse decoder's own ``f``, and so do the variant nets (``nets``: family → net and
    its variant names, :func:`variant_net.load_variant_net`; each reads its map of ``f``,
    :func:`variant_net.net_input`), which add ``{variant}_fnet_nll``.

    ``variant_gate`` (a :class:`provenance.ScoringGate`), when given, decides from the batch's
    family signals which families' variant features each image gets; the others are NaN (their
    per-token arrays empty). ``forced`` (family → boolean array over the batch) adds images that
    get a family's variant features whatever the gate says. Without a gate every image gets all.
    Both frames carry ``scored_{family}`` (1.0 / 0.0, not features): whether the image got them.

    ``timings``, when given, gets the seconds each part took added to it: ``{family}_signals``
    (inverse decoder, round trips and token reading, with the code posterior) and one entry per
    variant (its likelihood features); ``scripts/bench_features.py --breakdown`` prints them.
    """
    clock = _Stopwatch(timings)
    B = img01_B3HW.shape[0]
    columns: Dict[str, Dict[str, object]] = {family: {} for family in adapters}  # per family: signals, then variants
    token_columns: Dict[str, List[np.ndarray]] = {}
    read: Dict[str, tuple] = {}
    for family, adapter in adapters.items():
        refine = refine_steps > 0 and family in REFINE_FAMILIES
        reencode_iters = REENCODE_ITERS if family in REENCODE_FAMILIES and not refine else 0
        search = partial(search_tokens, max_iters=SEARCH_ITERS) if family == "VAR" else None
        signals, tokens, f, f_net, f_round_trip = family_signals_and_tokens(adapter, img01_B3HW, search, reencode_iters)
        if nets and family in nets:  # the net reads its map of D⁻¹(x), as it was trained, whatever the tokens are read from
            net, names = nets[family]
            net_map = variant_net.net_input(adapter, f_net, variant_net.input_map_of(net), f_round_trip)  # EncLoss's round trip reused
            columns[family].update(variant_net.variant_nll(net, names, net_map))
        if refine:
            tokens, f = refine_tokens(adapter, img01_B3HW, f, refine_steps, REFINE_LR, search)
        read[family] = (tokens, token_evidence(adapter.token_distances(f, tokens)))
        clock.lap(f"{family}_signals")
        for name, values in signals.items():
            columns[family][f"{family}_{name}"] = values.detach().cpu().double().numpy()
    needs = _needed(variant_gate, pd.DataFrame({k: v for part in columns.values() for k, v in part.items()}), adapters, forced, B)
    for family, adapter in adapters.items():
        chosen = np.flatnonzero(needs[family])
        # with none chosen, one image is scored anyway (unpadded) so the columns exist; then set to NaN
        feats, token_lists = (_variant_columns(adapter, *read[family], chosen, clock) if len(chosen)
                              else _variant_columns(adapter, *read[family], np.zeros(1, dtype=int), clock, chunk_size=1))
        for name, values in feats.items():
            columns[family][name] = values if len(chosen) == B else _scatter(values, chosen, B)
        for name, arrays in token_lists.items():
            token_columns[name] = _scatter_arrays(arrays, chosen, B)
        # which images got them (not a feature): the store's completeness marker
        columns[family][f"{COMPLETENESS_PREFIX}{family}"] = token_columns[f"{COMPLETENESS_PREFIX}{family}"] = needs[family].astype(np.float64)
    return pd.DataFrame({k: v for part in columns.values() for k, v in part.items()}), pd.DataFrame(token_columns)


def _variant_columns(adapter: FamilyAdapter, tokens_BL: torch.Tensor, evidence_BLV: torch.Tensor, rows: np.ndarray,
                     clock: "_Stopwatch", chunk_size: int = VARIANT_CHUNK) -> Tuple[Dict[str, np.ndarray], Dict[str, List[np.ndarray]]]:
    """The family's variant feature columns (``{variant}_{name}``, one value per image of ``rows``)
    and per-token arrays, computed ``chunk_size`` images at a time (the last chunk padded with
    copies of its first image)."""
    scale_sizes = [pn * pn for pn in adapter.patch_nums] if adapter.family == "VAR" else None
    features: Dict[str, List[np.ndarray]] = {}
    token_lists: Dict[str, List[np.ndarray]] = {}
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start:start + chunk_size]
        index = torch.as_tensor(np.concatenate([chunk, np.repeat(chunk[:1], chunk_size - len(chunk))]), dtype=torch.long)
        tokens, evidence = tokens_BL[index.to(tokens_BL.device)], evidence_BLV[index.to(evidence_BLV.device)]
        candidates = None  # the first (smallest) variant scores every label; the others reuse its best ones
        for variant in adapter.variant_names:
            feats = variant_features(adapter, variant, tokens, scale_sizes=scale_sizes, candidates_BK=candidates, evidence_BLV=evidence)
            if candidates is None:
                candidates = feats.pop("label_ranking")[:, :SHARED_CANDIDATES]
            feats.pop("label_ranking", None)
            for kind in ("cond", "uncond"):
                token_lists.setdefault(f"{variant}_{kind}", []).extend(list(feats.pop(f"token_ll_{kind}"))[:len(chunk)])
            for name, values in feats.items():
                features.setdefault(f"{variant}_{name}", []).append(np.asarray(values)[:len(chunk)])
            clock.lap(variant)
    return {name: np.concatenate(parts) for name, parts in features.items()}, token_lists


def _needed(variant_gate, signals: pd.DataFrame, adapters: Dict[str, FamilyAdapter],
            forced: Optional[Dict[str, np.ndarray]], B: int) -> Dict[str, np.ndarray]:
    """Family → which images of the batch get its variant features (see :func:`features_for_batch`)."""
    if variant_gate is None:
        return {family: np.ones(B, dtype=bool) for family in adapters}
    gated = variant_gate.needs(signals)
    forced = forced or {}
    return {family: gated[family].to_numpy(dtype=bool) | np.asarray(forced.get(family, np.zeros(B, dtype=bool)), dtype=bool)
            for family in adapters}


def _scatter(values: np.ndarray, chosen: np.ndarray, B: int) -> np.ndarray:
    """A batch-long float column with ``values`` at the ``chosen`` rows and NaN elsewhere."""
    out = np.full(B, np.nan)
    out[chosen] = np.asarray(values, dtype=np.float64)[:len(chosen)]
    return out


def _scatter_arrays(arrays: List[np.ndarray], chosen: np.ndarray, B: int) -> List[np.ndarray]:
    """Per-image arrays at the ``chosen`` rows; empty float32 arrays elsewhere."""
    if len(chosen) == B:
        return arrays
    out = [np.zeros(0, dtype=np.float32) for _ in range(B)]
    for i, row in enumerate(chosen):
        out[row] = arrays[i]
    return out


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


def _scored(rows: pd.DataFrame, families: Sequence[str]) -> pd.DataFrame:
    """Boolean frame (rows × families): which families' variant features each stored row has."""
    return pd.DataFrame({family: rows[f"{COMPLETENESS_PREFIX}{family}"].fillna(0).to_numpy() > 0
                         if f"{COMPLETENESS_PREFIX}{family}" in rows.columns else np.zeros(len(rows), dtype=bool)
                         for family in families}, index=rows.index)


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
                 workers: int = 1, refine_steps: int = 0, fine_tune_missing: bool = True,
                 net_root: Path = Path("runs/variant_net")) -> None:
        self.batch_size, self.progress, self.workers = batch_size, progress, max(1, int(workers))
        self.refine_steps = max(0, int(refine_steps))
        self._worker_kwargs = dict(weights_dir=weights_dir, inv_root=inv_root, cache_dir=cache_dir, use_cache=use_cache,
                                   batch_size=batch_size, device=device, progress=False, inv_config=inv_config,
                                   refine_steps=self.refine_steps, net_root=net_root, fine_tune_missing=fine_tune_missing)
        self.adapters: Dict[str, FamilyAdapter] = {}
        files = weight_files(weights_dir)
        for family in ("VAR", "RAR"):
            path = inv_decoder.ensure_inverse_decoder(family, weights_dir, inv_root, False, device, inv_config, fine_tune_missing)
            adapter = inv_decoder.load_inverse_decoder(load_family(family, weights_dir, device=device), path)
            self.adapters[family] = adapter.use_channels_last()
            files.append(path)
        self.nets: Dict[str, Tuple[variant_net.AnyVariantNet, List[str]]] = {}
        for family in variant_net.NET_FAMILIES:
            path = variant_net.ensure_variant_net(family, weights_dir, net_root, self.adapters[family], train_missing=fine_tune_missing,
                                                  progress=progress)
            self.nets[family] = variant_net.load_variant_net(path)
            files.append(path)
        self.image_size = self.adapters["VAR"].image_size
        digest = hashlib.sha256("".join(file_sha256(p) for p in files).encode()).hexdigest()
        self.weights_digest = digest
        name = EXTRACTOR_NAME if not self.refine_steps else f"{EXTRACTOR_NAME}_refine{self.refine_steps}"
        self.store = FeatureStore(cache_dir, name, EXTRACTOR_VERSION, digest, enabled=use_cache, rebuild=rebuild)
        self.token_store = FeatureStore(cache_dir, f"{name}{TOKEN_LL_SUFFIX}", EXTRACTOR_VERSION, digest,
                                        enabled=use_cache, rebuild=rebuild)

    def features(self, paths: Sequence[Path | str], ids: Optional[Sequence[str]] = None,
                 keys: Optional[Sequence[str]] = None, with_tokens: bool = False, variant_gate=None) -> pd.DataFrame:
        """Feature frame indexed by ``ids`` (default: the paths), computing only what is not cached.
        ``keys``: the files' sha256, when the caller has them already (else they are computed).
        ``variant_gate`` (a :class:`provenance.ScoringGate`): each image gets the variant features
        of the families the gate names for it (NaN for the others, even where the cache holds
        them, so the frame does not depend on what earlier runs cached); without one, of every
        family. A cached row that lacks a family now needed is computed again with it.
        ``with_tokens``: every family, and compute again the images whose per-token rows are
        missing or lack a family too (a run killed between writing a batch's two shards), for
        :meth:`token_log_likelihoods`."""
        from tqdm.auto import tqdm

        paths, ids, keys = _paths_ids_keys(paths, ids, keys)
        if with_tokens:
            variant_gate = None
        stored, todo = self.store.lookup(keys)  # one pass over the shards, which are many
        families = list(self.adapters)
        scored = _scored(stored, families)
        wanted = (variant_gate.needs(stored) if variant_gate is not None and len(stored)
                  else pd.DataFrame(True, index=scored.index, columns=scored.columns))
        if with_tokens:
            token_rows, token_missing = self.token_store.lookup(keys)
            scored &= _scored(token_rows, families).reindex(scored.index, fill_value=False)
            scored.loc[scored.index.isin(token_missing)] = False
        short = (wanted & ~scored).any(axis=1)
        forced = (wanted | scored)[short]  # a row computed again keeps every family it had
        if short.any():
            redo = set(forced.index) | set(todo)
            todo = [k for k in dict.fromkeys(keys) if k in redo]
            stored = stored.drop(index=list(forced.index))
        if self.progress:
            print(f"features: {len(set(keys)) - len(todo)} images cached, {len(todo)} to compute"
                  + (f" ({int(short.sum())} of them to complete)" if short.any() else ""), file=sys.stderr)
        first_path = {k: p for k, p in zip(keys, paths)}
        jobs = []
        for s in range(0, len(todo), self.batch_size):
            batch = todo[s:s + self.batch_size]
            must = {family: np.array([bool(forced.at[k, family]) if k in forced.index else False for k in batch])
                    for family in families}
            jobs.append((batch, [first_path[k] for k in batch], must, variant_gate))
        bar = dict(desc="features", disable=not self.progress or not todo, unit="batch", total=len(jobs))
        if self.workers > 1 and len(jobs) > 1:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(min(self.workers, len(jobs)), _worker_init, (self._worker_kwargs,)) as pool:
                computed = list(tqdm(pool.imap(_worker_batch, jobs), **bar))
        else:
            computed = [self._batch(*job) for job in tqdm(jobs, **bar)]
        table = pd.concat([stored] + computed) if computed else stored
        table = table[~table.index.duplicated(keep="first")].reindex(keys)
        if variant_gate is not None:  # what the gate needs, whatever else the cache holds: the same frame either way
            table = leave_out_unneeded(table, variant_gate.needs(table))
        out = table.drop(columns=marker_columns(table))
        out.index = pd.Index(ids, name="image_id")
        return out

    def token_log_likelihoods(self, paths: Sequence[Path | str], ids: Optional[Sequence[str]] = None,
                              keys: Optional[Sequence[str]] = None) -> pd.DataFrame:
        """Per-token log-likelihood frame (see :func:`features_for_batch`) indexed by ``ids``, of
        every variant, computing what is missing (with the features, which are cached alongside)."""
        paths, ids, keys = _paths_ids_keys(paths, ids, keys)
        if not self.token_store.enabled:
            raise ValueError("per-token log-likelihoods are read from the cache: do not turn it off (--no-cache) for them")
        stored, missing = self.token_store.lookup(keys)
        if missing or not _scored(stored, list(self.adapters)).all(axis=None):
            self.features(paths, ids, keys, with_tokens=True)
            stored = self.token_store.read(keys)
        out = stored.reindex(keys).drop(columns=marker_columns(stored))
        out.index = pd.Index(ids, name="image_id")
        return out

    def _batch(self, keys: List[str], paths: List[Path], forced: Optional[Dict[str, np.ndarray]] = None,
               variant_gate=None) -> pd.DataFrame:
        """Compute, store and return the feature rows of one batch (its token rows are stored too)."""
        rows, token_rows = features_for_batch(self.adapters, load_images(paths, size=self.image_size), self.refine_steps,
                                              variant_gate=variant_gate, forced=forced, nets=self.nets)
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
    from cli import add_weights_arguments, at_least, readable_folder_images

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder of images (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="output .parquet or .csv")
    add_weights_arguments(parser)
    parser.add_argument("--cache-dir", type=Path, default=Path("cache/features"), help="the feature store (default cache/features)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the feature store")
    parser.add_argument("--rebuild", action="store_true", help="discard this extractor's cached rows first")
    parser.add_argument("--batch-size", type=at_least(1), default=32, help="images per batch (default 32)")
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
