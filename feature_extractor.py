"""Per-image feature rows for attribution (family signals of both families + variant likelihoods), cached by image content.

What a row holds, and how a batch of rows is computed, is :mod:`batch_features`
(:func:`batch_features.features_for_batch`); this module loads the models, serves the rows and
keeps them.

Both tokenizers run in channels-last memory layout (set up here,
:meth:`FamilyAdapter.use_channels_last`): one decode plus one encode takes 9–13 % less time and a
32-image batch of features 1–5 % less (two runs of ``python scripts/bench_speedups.py --rounds 12``,
paired medians, one thread); the values agree with the default layout to ~1e-5 (extractor
version 10; version 9 used the default layout).

Rows are cached in a :class:`feature_store.FeatureStore` keyed by the sha256 of the image file,
in a store named after this extractor's version and a digest of every weight file used (zoo or
official files and inverse decoders), and after the device when it is not the CPU
(:func:`store_name`), so a rerun computes only new images and a change of weights or code
version never reuses stale rows. Each image's per-token log-likelihoods (for
:mod:`flat_prada`) are kept the same way in a second store beside the first
(:meth:`FeatureExtractor.token_log_likelihoods`). Each batch is written as its own shards as soon
as it is computed: an interrupted run resumes where it stopped. ``workers=N`` spreads batches
over N single-threaded processes (each writes its own shards); results come back in batch order.

    python feature_extractor.py Dataset/val --out val_features.parquet
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

import inv_decoder
import variant_net
from batch_features import features_for_batch
from dataset import load_images
from feature_store import COMPLETENESS_PREFIX, FeatureStore, file_sha256, marker_columns
from models.adapter import FamilyAdapter
from models.files import file_digest
from models.zoo import check_weights_dir, is_zoo_dir, load_family
from provenance import ScoringGate, leave_out_unneeded
from runtime import exit_with_parent, keep_freed_memory, use_usable_cores

__all__ = ["EXTRACTOR_NAME", "EXTRACTOR_VERSION", "TOKEN_LL_SUFFIX", "FeatureExtractor", "store_name", "weight_files"]

EXTRACTOR_NAME = "iar_features"
# 11: the same features as 10, with per-token log-likelihoods stored beside them; 12: rows carry
# scored_{family} markers, and a ScoringGate may leave a family's variant features out (NaN);
# 13: variant features in fixed-size chunks (now chunks.CHUNK), whatever the batch mates
# 14: {variant}_fnet_nll (variant_net.py) for VAR; 15: for RAR too
# 16: VAR's net reads f after one re-encoding correction (variant_net.net_input) (RAR's net reading
# it too changed no code here, only the net's file, whose digest names the store)
# 17: {family}_aedr is AEDR's double reconstruction through the quantizer (up to 16 it repeated enc_loss)
# 18: every pass in fixed-size chunks (now chunks.CHUNK); the label
# marginals with the prior 1/C whatever the number of candidate labels (the larger variants' were
# log C / L nats per token off the smallest one's), every *_best statistic at the best label,
# Min-K%++'s spread in two passes
EXTRACTOR_VERSION = "18"
TOKEN_LL_SUFFIX = "_token_ll"  # the per-token store: <name>_token_ll-v<version>-<weights digest>


def _paths_ids_keys(paths: Sequence[Path | str], ids: Optional[Sequence[str]],
                    keys: Optional[Sequence[str]]) -> Tuple[List[Path], List[str], List[str]]:
    """The images as paths, their ids (default: the paths) and their keys (default: each file's sha256)."""
    paths = [Path(p) for p in paths]
    ids = list(ids) if ids is not None else [str(p) for p in paths]
    keys = list(keys) if keys is not None else [file_sha256(p) for p in paths]
    return paths, ids, keys



def _scored(rows: pd.DataFrame, families: Sequence[str]) -> pd.DataFrame:
    """Boolean frame (rows × families): which families' variant features each stored row has."""
    return pd.DataFrame({family: rows[f"{COMPLETENESS_PREFIX}{family}"].fillna(0).to_numpy() > 0
                         if f"{COMPLETENESS_PREFIX}{family}" in rows.columns else np.zeros(len(rows), dtype=bool)
                         for family in families}, index=rows.index)


def weight_files(weights_dir: Optional[Path]) -> List[Path]:
    """The weight files a run with ``weights_dir`` (default: the demo zoo) depends on: every file the
    two families' adapters load (:func:`cli.required_weight_files`, whatever their names and folders),
    and a zoo's ``zoo.json`` (their configurations and sampling settings). Not the folder's other
    files: a stray checkpoint beside them does not rename the feature store."""
    from cli import required_weight_files

    folder = check_weights_dir(weights_dir)
    return required_weight_files(weights_dir) + ([folder / "zoo.json"] if is_zoo_dir(folder) else [])


def store_name(refine_steps: int, device_type: str) -> str:
    """The feature store's name: features read with latent refinement, or computed on another
    device than the CPU (whose convolutions may round differently, e.g. in TF32 on a GPU), go to a
    store of their own, so a run never mixes rows computed two ways."""
    name = EXTRACTOR_NAME if not refine_steps else f"{EXTRACTOR_NAME}_refine{refine_steps}"
    return name if device_type == "cpu" else f"{name}_{device_type}"


class FeatureExtractor:
    """Loads both families with their inverse decoders and serves cached feature rows."""

    def __init__(self, *, weights_dir: Optional[Path] = None, inv_root: Path = Path("cache/inv_decoder"),
                 cache_dir: Path = Path("cache/features"), use_cache: bool = True, rebuild: bool = False,
                 batch_size: int = 32, device: str = "cpu", progress: bool = True, inv_config: Optional[dict] = None,
                 workers: int = 1, refine_steps: int = 0, fine_tune_missing: bool = True,
                 net_root: Path = Path("cache/variant_net")) -> None:
        self.batch_size, self.progress, self.workers = batch_size, progress, max(1, int(workers))
        self.refine_steps = max(0, int(refine_steps))
        self._worker_kwargs = dict(weights_dir=weights_dir, inv_root=inv_root, cache_dir=cache_dir, use_cache=use_cache,
                                   batch_size=batch_size, device=device, progress=False, inv_config=inv_config,
                                   refine_steps=self.refine_steps, net_root=net_root, fine_tune_missing=fine_tune_missing)
        self.adapters: Dict[str, FamilyAdapter] = {}
        files = weight_files(weights_dir)
        for family in ("VAR", "RAR"):
            path = inv_decoder.ensure_inverse_decoder(family, weights_dir, inv_root, False, device, inv_config, fine_tune_missing)
            self.adapters[family] = inv_decoder.load_inverse_decoder(load_family(family, weights_dir, device=device), path)
            files.append(path)
        self.nets: Dict[str, Tuple[variant_net.AnyVariantNet, List[str]]] = {}
        for family in variant_net.NET_FAMILIES:  # a missing net is trained on default-layout maps, as variant_net.py's are:
            # one map cache (variant_net_maps.maps_folder_name), so either command resumes the other's generation
            path = variant_net.ensure_variant_net(family, weights_dir, net_root, self.adapters[family], train_missing=fine_tune_missing,
                                                  progress=progress)
            net, names = variant_net.load_variant_net(path, self.adapters[family].variant_names)
            self.nets[family] = (net.to(self.adapters[family].device), names)  # beside the maps it reads
            files.append(path)
        for adapter in self.adapters.values():
            adapter.use_channels_last()
        self.image_size = self.adapters["VAR"].image_size
        # file_digest: file_sha256, each file read once per process (ensure_* may have hashed the weights already)
        digest = hashlib.sha256("".join(file_digest(p) for p in files).encode()).hexdigest()
        self.weights_digest = digest
        name = store_name(self.refine_steps, self.adapters["VAR"].device.type)
        self.store = FeatureStore(cache_dir, name, EXTRACTOR_VERSION, digest, enabled=use_cache, rebuild=rebuild)
        self.token_store = FeatureStore(cache_dir, f"{name}{TOKEN_LL_SUFFIX}", EXTRACTOR_VERSION, digest,
                                        enabled=use_cache, rebuild=rebuild)

    def features(self, paths: Sequence[Path | str], ids: Optional[Sequence[str]] = None,
                 keys: Optional[Sequence[str]] = None, with_tokens: bool = False,
                 variant_gate: Optional[ScoringGate] = None) -> pd.DataFrame:
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
            from concurrent.futures import ProcessPoolExecutor

            # not multiprocessing.Pool: a worker killed (OOM killer, kill -9) makes this raise
            # BrokenProcessPool instead of waiting forever; finished batches are in the store already
            with ProcessPoolExecutor(min(self.workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_worker_init, initargs=(self._worker_kwargs,)) as pool:
                computed = list(tqdm(pool.map(_worker_batch, jobs), **bar))
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
        """Per-token log-likelihood frame (see :func:`batch_features.features_for_batch`) indexed by ``ids``, of
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
               variant_gate: Optional[ScoringGate] = None) -> pd.DataFrame:
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
    exit_with_parent()
    torch.set_num_threads(1)
    keep_freed_memory()
    _WORKER = FeatureExtractor(**kwargs)


def _worker_batch(job: tuple) -> pd.DataFrame:
    return _WORKER._batch(*job)


def main(argv: Optional[list] = None) -> int:
    from cli import (add_weights_arguments, at_least, check_device, check_weight_files, output_file_with, output_folder,
                     readable_folder_images)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder of images (searched recursively)")
    parser.add_argument("--out", type=output_file_with(".parquet", ".csv"), required=True, help="output .parquet or .csv")
    add_weights_arguments(parser, nets=True)
    parser.add_argument("--cache-dir", type=output_folder, default=Path("cache/features"), help="the feature store (default cache/features)")
    store = parser.add_mutually_exclusive_group()  # --rebuild writes the store that --no-cache leaves alone
    store.add_argument("--no-cache", action="store_true", help="do not read or write the feature store")
    store.add_argument("--rebuild", action="store_true", help="discard this extractor's cached rows first")
    parser.add_argument("--batch-size", type=at_least(1), default=32, help="images per batch (default 32)")
    parser.add_argument("--workers", type=at_least(1), default=1, help="processes with one thread each (default 1: one process)")
    parser.add_argument("--refine-steps", type=at_least(0), default=0,
                        help="latent-refinement steps before RAR's tokens are read (default 0: off; slower)")
    parser.add_argument("--device", default="cpu", help="torch device of the models: cpu (default), cuda or cuda:N")
    args = parser.parse_args(argv)
    check_device(args.device)
    check_weight_files(args.weights_dir)  # every file of both families, before a missing inverse decoder is fine-tuned
    keep_freed_memory()
    use_usable_cores()
    readable = readable_folder_images(args.folder)  # each file read and hashed once
    paths = [Path(p) for p in readable.index]
    extractor = FeatureExtractor(weights_dir=args.weights_dir, inv_root=args.inv_root, net_root=args.net_root,
                                 cache_dir=args.cache_dir, use_cache=not args.no_cache, rebuild=args.rebuild,
                                 batch_size=args.batch_size, device=args.device, workers=args.workers,
                                 refine_steps=args.refine_steps)
    frame = extractor.features(paths, [str(p.relative_to(args.folder)) for p in paths], keys=list(readable["sha256"]))
    from atomic import atomic_path

    with atomic_path(args.out) as tmp:
        frame.to_parquet(tmp) if args.out.suffix.lower() == ".parquet" else frame.to_csv(tmp)
    print(f"{len(frame)} rows × {frame.shape[1]} features → {args.out}")
    return 0


if __name__ == "__main__":
    from cli import run_module

    sys.exit(run_module("feature_extractor"))
