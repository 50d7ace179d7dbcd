"""Variant features: how likely each variant's transformer finds an image's recovered tokens.

Variants of a family share the tokenizer, so only their transformers tell them apart. With
the tokens ``t`` recovered from an image, one teacher-forced pass per (image batch, label
batch) gives ``log p_v(tᵢ | t<ᵢ, c)`` for every position and candidate label ``c``, and one more
pass the unconditional ``log p_v(tᵢ | t<ᵢ, ∅)``. The true label is never known, so labels are
marginalised, ``log p_v(t) = log Σ_c p_v(t | c) / C`` over the ``C`` classes (uniform prior): over
every class when there are few, else over the ``num_candidates`` classes that best explain the first
``scan_positions`` tokens (a cheap prefix pass). Over fewer than ``C`` candidate labels the sum
leaves the other labels' terms out, a lower bound with the same prior ``1/C`` whatever the number
of candidates, so variants scored under different numbers of labels stay comparable (a caller may
score the larger variants under the smallest one's best label only, :mod:`batch_features`).

Per variant ``v`` (all NLLs in nats per token, lower = more likely):
``nll_marginal`` (log-sum-exp over candidate labels), ``nll_topk`` (over the ``topk_labels`` best),
``nll_best`` (best label, the one of highest likelihood; every ``*_best`` statistic is taken at
it), ``nll_uncond``, ``cfg_gap = nll_uncond − nll_best`` (CFG / conditional
probability difference), ``nll_scale{k}`` (VAR, per scale, best label), and membership-inference
statistics at the best label: ``mink`` (mean of the lowest 20 % token log-likelihoods, negated),
``minkpp`` (Min-K%++: the same on log-likelihoods standardised by the model's own mean and
spread over the vocabulary), ``hinge`` (true-token logit minus the best other logit, mean) and
``zlib`` (total NLL divided by the zlib-compressed size of the tokens, in bytes).
Against the official code of "Privacy Attacks on Image AutoRegressive Models"
(sprintml/privacy_attacks_against_iars, ``src/attacks/llm_mia.py``): Min-K%++ here divides by the standard
deviation, as the Min-K%++ paper defines it (that code divides by the variance); ``zlib`` here divides the
total NLL, not the mean per token (a constant factor per family, whose token count is fixed), and
compresses the tokens as 16-bit integers, not as their text; ``hinge`` has the opposite sign (that code
negates it); ``cfg_gap`` is a difference of NLLs, not that code's CFG attack (the same statistics taken
on the logit difference, unconditional minus conditional); and every statistic is taken at the best
label, not the true one, which is never known.

The variant's *sampler* is a model of its own: each variant draws tokens from guided logits
(its CFG schedule and temperature; VAR also filters by top-k/top-p), so the likelihood of a
generation is also taken under that distribution, not only under the plain conditional one:
``nll_sampling`` (marginal over candidate labels), ``nll_sampling_best`` and, for filtering
samplers, ``support_miss`` — the fraction of tokens the sampler could not have drawn (at the best
label). The likelihood is the guided distribution's before the filter (not renormalised over the
tokens the filter keeps): a recovered token the filter would have dropped keeps a finite cost, and
``support_miss`` counts the filter.
For its own generations, the true tokens and the true label, a variant's ``support_miss`` is 0.

Recovered tokens are often wrong (small tokenizers do not invert well), and one wrong token
costs its full log-likelihood. With ``evidence_BLV`` — what the image says about each position,
``log q(c)`` from :func:`token_evidence` — ``nll_evidence`` scores the image rather than the hard
tokens: ``−Σᵢ log Σ_c p_sampler(c | t<ᵢ) q_i(c)`` per token, marginal over labels
(``nll_evidence_best``: best label). A position whose token was missed still counts through the
codes the image finds likely. The result also
carries ``label_ranking`` (``B×K`` candidate labels, likeliest first — not a feature) so a caller
can evaluate larger variants under a smaller one's best labels via ``candidates_BK``, and, per token
(``B×L``, not features either), ``token_ll_cond`` (at the best label) and ``token_ll_uncond``: what
PRADA's score function reads (:mod:`flat_prada`).
"""
from __future__ import annotations

import math
import zlib
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from models.adapter import FamilyAdapter, at_tokens

__all__ = ["token_statistics", "sampling_statistics", "token_evidence", "candidate_labels", "variant_features", "MINK_FRACTION",
           "NOT_FEATURES"]

MINK_FRACTION = 0.2
NOT_FEATURES = ("label_ranking", "token_ll_cond", "token_ll_uncond")  # outputs of variant_features that are no feature columns


def token_statistics(logits_NLV: torch.Tensor, tokens_NL: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-position log-likelihood, Min-K%++ z-score and hinge margin, each ``N×L``."""
    log_probs = torch.log_softmax(logits_NLV.float(), dim=-1)
    ll = at_tokens(log_probs, tokens_NL)
    probs = log_probs.exp()
    mu = (probs * log_probs).sum(-1)
    # two passes: E[log²p] − μ² cancels in float32 when the distribution is nearly flat
    sigma = (probs * (log_probs - mu.unsqueeze(-1)).square()).sum(-1).clamp_min(1e-12).sqrt()
    true_logit = at_tokens(logits_NLV, tokens_NL)
    others = logits_NLV.scatter(-1, tokens_NL.unsqueeze(-1), float("-inf"))
    return {"ll": ll, "zpp": (ll - mu) / sigma, "hinge": true_logit - others.amax(-1)}


def sampling_statistics(adapter: FamilyAdapter, variant: str, cond_logits_NLV: torch.Tensor, uncond_logits_NLV: torch.Tensor,
                        tokens_NL: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Under the variant's own sampler (guidance schedule, temperature): per-position log-likelihood
    ``ll`` (``N×L``, before top-k/top-p filtering), ``miss``, the fraction of tokens outside what
    the sampler's filter lets it draw (``N``; ``None`` for samplers without a filter), and the
    sampler's ``log_probs`` over the vocabulary (``N×L×V``). ``N`` may be several leading
    dimensions, and the unconditional logits may broadcast against the conditional ones."""
    logits = adapter.sampling_logits(variant, cond_logits_NLV.float(), uncond_logits_NLV.float())
    log_probs = torch.log_softmax(logits, -1)
    ll = at_tokens(log_probs, tokens_NL)
    inside = adapter.in_sampling_support(variant, logits, tokens_NL)
    miss = None if inside is None else (~inside).float().mean(-1)
    return {"ll": ll, "miss": miss, "log_probs": log_probs}


def token_evidence(distances_BLV: torch.Tensor) -> torch.Tensor:
    """What the image says about each token, ``log q(c)`` per position (``B×L×V``).

    ``q ∝ exp(−d/T)`` over the codes' squared distances ``d`` to the recovered feature map, with
    the temperature ``T`` the image's median nearest-code distance: scale-free, and flatter for
    images whose features sit far from every code (natural photos).
    """
    temperature_B = distances_BLV.amin(-1).median(-1).values.clamp_min(1e-8)
    return torch.log_softmax(-distances_BLV.float() / temperature_B[:, None, None], dim=-1)


def _marginal_nll(ll_BK: torch.Tensor, num_classes: int, L: int) -> torch.Tensor:
    """``−log(Σ_k exp(ll_k) / num_classes) / L``: the labels' marginal under a uniform prior over
    all ``num_classes`` classes, in nats per token, from the log-likelihoods of ``K`` candidates."""
    return -(torch.logsumexp(ll_BK, 1) - math.log(num_classes)) / L


def _lowest_fraction_mean(values_NL: torch.Tensor, fraction: float = MINK_FRACTION) -> torch.Tensor:
    k = max(1, int(math.ceil(values_NL.shape[1] * fraction)))
    return values_NL.topk(k, dim=1, largest=False).values.mean(1)


@torch.no_grad()
def candidate_labels(adapter: FamilyAdapter, variant: str, tokens_BL: torch.Tensor, *, max_full: int = 32,
                     num_candidates: int = 8, scan_positions: int = 32, label_batch: int = 64) -> torch.Tensor:
    """``B×K`` labels to marginalise over: all classes if ≤ ``max_full``, else the prefix scan's
    ``num_candidates`` best (the scan scores the first ``scan_positions`` tokens)."""
    B, C = tokens_BL.shape[0], adapter.num_classes
    if C <= max_full:
        return torch.arange(C, device=adapter.device).expand(B, C)
    scores = torch.empty(B, C, device=adapter.device)
    for start in range(0, C, label_batch):
        labels = torch.arange(start, min(C, start + label_batch), device=adapter.device)
        n = len(labels)
        ll = adapter.token_log_probs(variant, tokens_BL.repeat_interleave(n, 0), labels.repeat(B), positions=scan_positions)
        scores[:, start:start + n] = ll.sum(1).view(B, n)
    return scores.topk(min(num_candidates, C), dim=1).indices


@torch.no_grad()
def variant_features(adapter: FamilyAdapter, variant: str, tokens_BL: torch.Tensor, *, scale_sizes: Optional[Sequence[int]] = None,
                     topk_labels: int = 3, label_batch: int = 16, candidates_BK: Optional[torch.Tensor] = None,
                     evidence_BLV: Optional[torch.Tensor] = None) -> Dict[str, np.ndarray]:
    """All features of one variant for a batch of recovered tokens (names without the variant prefix)."""
    tokens_BL = tokens_BL.to(adapter.device)
    B, L = tokens_BL.shape
    cand = candidate_labels(adapter, variant, tokens_BL) if candidates_BK is None else candidates_BK.to(adapter.device)
    K = cand.shape[1]
    uncond_logits = adapter.token_logits(variant, tokens_BL, None)
    uncond = at_tokens(torch.log_softmax(uncond_logits.float(), -1), tokens_BL)
    per_label: Dict[str, List[torch.Tensor]] = {"ll": [], "mink": [], "minkpp": [], "hinge": [], "ll_sampling": [], "miss": [], "ll_evidence": []}
    per_label_positions: List[torch.Tensor] = []
    for start in range(0, K, label_batch):
        labels_BK = cand[:, start:start + label_batch]
        k = labels_BK.shape[1]
        tokens = tokens_BL.repeat_interleave(k, 0)
        cond_logits = adapter.token_logits(variant, tokens, labels_BK.reshape(-1))
        stats = token_statistics(cond_logits, tokens)
        # B×k×L×V against the B×1×L×V unconditional logits: the guidance broadcasts over labels
        sampled = sampling_statistics(adapter, variant, cond_logits.view(B, k, L, -1), uncond_logits.unsqueeze(1),
                                      tokens_BL.unsqueeze(1).expand(B, k, L))
        per_label["ll_sampling"].append(sampled["ll"].sum(-1))
        if evidence_BLV is not None:
            joint_BkLV = sampled["log_probs"] + evidence_BLV.to(adapter.device).unsqueeze(1)
            per_label["ll_evidence"].append(torch.logsumexp(joint_BkLV, -1).sum(-1))
        if sampled["miss"] is not None:
            per_label["miss"].append(sampled["miss"])
        per_label["ll"].append(stats["ll"].sum(1).view(B, k))
        per_label["mink"].append(-_lowest_fraction_mean(stats["ll"]).view(B, k))
        per_label["minkpp"].append(-_lowest_fraction_mean(stats["zpp"]).view(B, k))
        per_label["hinge"].append(stats["hinge"].mean(1).view(B, k))
        per_label_positions.append(stats["ll"].view(B, k, L))
    ll_BK = torch.cat(per_label["ll"], 1)
    positions_BKL = torch.cat(per_label_positions, 1)
    best = ll_BK.argmax(1)
    rows = torch.arange(B, device=adapter.device)
    top = ll_BK.topk(min(topk_labels, K), dim=1).values
    C = adapter.num_classes
    out = {
        "nll_marginal": _marginal_nll(ll_BK, C, L),
        "nll_topk": _marginal_nll(top, C, L),
        "nll_best": -ll_BK[rows, best] / L,
        "nll_uncond": -uncond.sum(1) / L,
        "mink": torch.cat(per_label["mink"], 1)[rows, best],
        "minkpp": torch.cat(per_label["minkpp"], 1)[rows, best],
        "hinge": torch.cat(per_label["hinge"], 1)[rows, best],
        "best_label": cand[rows, best].float(),
    }
    out["cfg_gap"] = out["nll_uncond"] - out["nll_best"]
    ll_sampling_BK = torch.cat(per_label["ll_sampling"], 1)
    out["nll_sampling"] = _marginal_nll(ll_sampling_BK, C, L)
    out["nll_sampling_best"] = -ll_sampling_BK[rows, best] / L
    if per_label["ll_evidence"]:
        ll_evidence_BK = torch.cat(per_label["ll_evidence"], 1)
        out["nll_evidence"] = _marginal_nll(ll_evidence_BK, C, L)
        out["nll_evidence_best"] = -ll_evidence_BK[rows, best] / L
    if per_label["miss"]:
        out["support_miss"] = torch.cat(per_label["miss"], 1)[rows, best]
    best_positions = positions_BKL[rows, best]
    if scale_sizes:
        for k_scale, chunk in enumerate(torch.split(best_positions, list(scale_sizes), dim=1)):
            out[f"nll_scale{k_scale}"] = -chunk.mean(1)
    token_bytes = tokens_BL.cpu().numpy().astype(np.uint16)
    compressed = torch.tensor([len(zlib.compress(row.tobytes(), 9)) for row in token_bytes], dtype=torch.float32)
    out["zlib"] = (-ll_BK[rows, best]).cpu() / compressed
    features = {name: value.detach().cpu().double().numpy() for name, value in out.items()}
    # not features: labels, best first; and the per-token log-likelihoods PRADA scores (flat_prada.py)
    features["label_ranking"] = torch.gather(cand, 1, ll_BK.argsort(1, descending=True)).cpu()
    features["token_ll_cond"] = best_positions.detach().cpu().float().numpy()
    features["token_ll_uncond"] = uncond.detach().cpu().float().numpy()
    return features
