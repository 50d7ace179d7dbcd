"""The feature columns of one batch of images: family signals of both families + variant likelihoods.

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
  carry little mass in the others' marginals too (one label since extractor version 7, two before; on an
  earlier zoo 1 and 2 gave the same test accuracy, 59.0 and 58.8 %, at 2.9 and 3.4 s per batch).

Variant likelihoods are most of the cost (about 55 % of a batch: ``python scripts/bench_features.py
--breakdown``), and an image needs only those of the families it may come from. With a
``variant_gate`` (:class:`provenance.ScoringGate`, which ``submission.py`` fits on the full features
of a sample of training images), each image gets the variant features of the families the gate
gives a probability of at least 3 % (NaN for the others; family signals always); stored rows mark
what they hold (``scored_{family}``), and a row that lacks a family a later call needs is computed
again in full.

Besides the features, each image's per-token log-likelihoods under every variant (conditional at
the best label, and unconditional) are returned for PRADA's score functions (:mod:`flat_prada`):
876 float32 values per image on the demo zoo, 7 488 (about 30 kB) with the official models' 680 +
256 tokens; :mod:`feature_extractor` keeps them in a second store beside the features.

Every pass runs :data:`chunks.CHUNK` images at a time, the last chunk padded, so an image's row
does not depend on its batch mates (:mod:`chunks`).

This module computes; :mod:`feature_extractor` caches its rows by image content and serves
them (``EXTRACTOR_VERSION`` there names what this module computes: change one, bump the other).
"""
from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch

import variant_net
from chunks import CHUNK, padded_chunks
from feature_store import COMPLETENESS_PREFIX
from models.adapter import FamilyAdapter
from quantizer import search_tokens
from signals import family_signals_and_tokens, refine_tokens
from variant_features import token_evidence, variant_features

if TYPE_CHECKING:
    from provenance import ScoringGate

__all__ = ["features_for_batch", "SHARED_CANDIDATES", "SEARCH_ITERS", "REFINE_FAMILIES", "REFINE_LR",
           "REENCODE_FAMILIES", "REENCODE_ITERS"]

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
def features_for_batch(adapters: Dict[str, FamilyAdapter], img01_B3HW: torch.Tensor, refine_steps: int = 0,
                       timings: Optional[Dict[str, float]] = None, variant_gate: Optional[ScoringGate] = None,
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
        net = nets.get(family) if nets else None
        parts = [_read_family(adapter, img01_B3HW[index], refine_steps, net) for index, _ in padded_chunks(B)]
        signals = {name: np.concatenate([part[0][name] for part in parts])[:B] for name in parts[0][0]}
        columns[family].update(signals)
        read[family] = tuple(torch.cat([part[i] for part in parts])[:B] for i in (1, 2))
        clock.lap(f"{family}_signals")
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
                     clock: "_Stopwatch", chunk_size: int = CHUNK) -> Tuple[Dict[str, np.ndarray], Dict[str, List[np.ndarray]]]:
    """The family's variant feature columns (``{variant}_{name}``, one value per image of ``rows``)
    and per-token arrays, computed ``chunk_size`` images at a time (the last chunk padded with
    copies of its first image)."""
    scale_sizes = adapter.scale_sizes() if adapter.family == "VAR" else None
    features: Dict[str, List[np.ndarray]] = {}
    token_lists: Dict[str, List[np.ndarray]] = {}
    for positions, count in padded_chunks(len(rows), chunk_size):
        index = torch.as_tensor(rows[positions.numpy()], dtype=torch.long)
        tokens, evidence = tokens_BL[index.to(tokens_BL.device)], evidence_BLV[index.to(evidence_BLV.device)]
        candidates = None  # the first (smallest) variant scores every label; the others reuse its best ones
        for variant in adapter.variant_names:
            feats = variant_features(adapter, variant, tokens, scale_sizes=scale_sizes, candidates_BK=candidates, evidence_BLV=evidence)
            if candidates is None:
                candidates = feats.pop("label_ranking")[:, :SHARED_CANDIDATES]
            feats.pop("label_ranking", None)
            for kind in ("cond", "uncond"):
                token_lists.setdefault(f"{variant}_{kind}", []).extend(list(feats.pop(f"token_ll_{kind}"))[:count])
            for name, values in feats.items():
                features.setdefault(f"{variant}_{name}", []).append(np.asarray(values)[:count])
            clock.lap(variant)
    return {name: np.concatenate(parts) for name, parts in features.items()}, token_lists


def _read_family(adapter: FamilyAdapter, img01_B3HW: torch.Tensor, refine_steps: int,
                 net: Optional[Tuple[variant_net.AnyVariantNet, List[str]]]) -> Tuple[Dict[str, np.ndarray], torch.Tensor, torch.Tensor]:
    """One chunk's family columns (signals, and the variant net's ``{variant}_fnet_nll`` when a net
    is given), its recovered tokens ``B×L`` and their code posterior ``B×L×V``."""
    family = adapter.family
    refine = refine_steps > 0 and family in REFINE_FAMILIES
    reencode_iters = REENCODE_ITERS if family in REENCODE_FAMILIES and not refine else 0
    search = partial(search_tokens, max_iters=SEARCH_ITERS) if family == "VAR" else None
    signals, tokens, f, f_net, f_round_trip = family_signals_and_tokens(adapter, img01_B3HW, search, reencode_iters)
    columns: Dict[str, np.ndarray] = {}
    if net is not None:  # the net reads its map of D⁻¹(x), as it was trained, whatever the tokens are read from
        model, names = net
        net_map = variant_net.net_input(adapter, f_net, variant_net.input_map_of(model), f_round_trip)  # EncLoss's round trip reused
        columns.update(variant_net.variant_nll(model, names, net_map))
    columns.update({f"{family}_{name}": values.detach().cpu().double().numpy() for name, values in signals.items()})
    if refine:
        tokens, f = refine_tokens(adapter, img01_B3HW, f, refine_steps, REFINE_LR, search)
    return columns, tokens, token_evidence(adapter.token_distances(f, tokens))


def _needed(variant_gate: Optional[ScoringGate], signals: pd.DataFrame, adapters: Dict[str, FamilyAdapter],
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


class _Stopwatch:
    """Adds the seconds since the last lap to ``timings[part]``; does nothing without ``timings``."""

    def __init__(self, timings: Optional[Dict[str, float]]) -> None:
        self.timings, self.last = timings, time.perf_counter()

    def lap(self, part: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[part] = self.timings.get(part, 0.0) + now - self.last
            self.last = now

