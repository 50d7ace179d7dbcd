"""Variant likelihood features agree with direct log-likelihoods and marginalise labels correctly."""
from __future__ import annotations

import math

import numpy as np
import torch

from models.zoo import load_family
from variant_features import candidate_labels, token_statistics, variant_features


def test_token_statistics_by_hand():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]])
    tokens = torch.tensor([[0, 1]])
    stats = token_statistics(logits, tokens)
    lp = torch.log_softmax(logits, -1)
    assert torch.allclose(stats["ll"], torch.stack([lp[0, 0, 0], lp[0, 1, 1]]).view(1, 2))
    assert torch.allclose(stats["hinge"], torch.tensor([[2.0, -2.0]]))


def test_features_match_direct_likelihoods(small_zoo_dir, rar_fixture):
    adapter = load_family("RAR", small_zoo_dir)
    _, t = rar_fixture
    tokens = t["out.codes"]
    feats = variant_features(adapter, "rarb", tokens, label_batch=3)
    with torch.no_grad():
        per_label = torch.stack([adapter.token_log_probs("rarb", tokens, torch.full((2,), c)).sum(1) for c in range(10)], 1)
        uncond = adapter.token_log_probs("rarb", tokens, None).sum(1)
    L = tokens.shape[1]
    np.testing.assert_allclose(feats["nll_best"], (-per_label.max(1).values / L).numpy(), rtol=1e-5)
    np.testing.assert_allclose(feats["nll_marginal"], (-(torch.logsumexp(per_label, 1) - math.log(10)) / L).numpy(), rtol=1e-5)
    np.testing.assert_allclose(feats["nll_uncond"], (-uncond / L).numpy(), rtol=1e-5)
    np.testing.assert_allclose(feats["cfg_gap"], feats["nll_uncond"] - feats["nll_best"], rtol=1e-6)
    assert (feats["best_label"] == per_label.argmax(1).numpy()).all()
    assert torch.equal(feats["label_ranking"], per_label.argsort(1, descending=True))
    shared = variant_features(adapter, "rarb", tokens, candidates_BK=feats["label_ranking"][:, :3])
    np.testing.assert_allclose(shared["nll_best"], feats["nll_best"], rtol=1e-5)  # the best label is among the shared ones
    assert np.all(feats["nll_marginal"] >= feats["nll_best"] - 1e-9)


def test_var_per_scale_features_and_prefix_scan(small_zoo_dir, var_fixture):
    adapter = load_family("VAR", small_zoo_dir)
    _, t = var_fixture
    tokens = torch.cat([t[f"out.idx_scale{k}"] for k in range(4)], 1)
    feats = variant_features(adapter, "var16", tokens, scale_sizes=[1, 4, 9, 16])
    weights = np.array([1, 4, 9, 16]) / 30
    by_scale = np.stack([feats[f"nll_scale{k}"] for k in range(4)], 1)
    np.testing.assert_allclose(by_scale @ weights, feats["nll_best"], rtol=1e-5)
    with torch.no_grad():
        full = adapter.token_log_probs("var16", tokens, t["in.labels"])
        prefix = adapter.token_log_probs("var16", tokens, t["in.labels"], positions=5)
    assert torch.allclose(prefix, full[:, :5], atol=1e-5)
    # a prefix that stops inside a scale (the third ends at 14): the scale's positions attend to each
    # other, so its first ones must still see the whole scale's inputs
    inside = adapter.token_log_probs("var16", tokens, t["in.labels"], positions=7)
    assert inside.shape == (2, 7) and torch.allclose(inside, full[:, :7], atol=1e-5)
    scanned = candidate_labels(adapter, "var16", tokens, max_full=4, num_candidates=3, scan_positions=5)
    assert scanned.shape == (2, 3)


def test_sampling_and_evidence_features_by_hand(small_zoo_dir, rar_fixture):
    """``nll_sampling`` is the likelihood under the sampler's guided distribution; ``nll_evidence``
    mixes it with the image's code posterior; a one-hot evidence on the tokens gives back
    ``nll_sampling`` exactly."""
    from variant_features import token_evidence

    adapter = load_family("RAR", small_zoo_dir)
    tokens = rar_fixture[1]["out.codes"]
    B, L = tokens.shape
    V = adapter.tokenizer.codebook_size
    distances = torch.rand(B, L, V, generator=torch.Generator().manual_seed(0))
    evidence = token_evidence(distances)
    assert torch.allclose(evidence.exp().sum(-1), torch.ones(B, L), atol=1e-5)
    feats = variant_features(adapter, "rarb", tokens, evidence_BLV=evidence)
    with torch.no_grad():
        uncond = adapter.token_logits("rarb", tokens, None)
        per_label_ll, per_label_ev = [], []
        for c in range(10):
            logits = adapter.sampling_logits("rarb", adapter.token_logits("rarb", tokens, torch.full((B,), c)), uncond)
            log_probs = torch.log_softmax(logits, -1)
            per_label_ll.append(log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).sum(1))
            per_label_ev.append(torch.logsumexp(log_probs + evidence, -1).sum(1))
    ll, ev = torch.stack(per_label_ll, 1), torch.stack(per_label_ev, 1)
    np.testing.assert_allclose(feats["nll_sampling"], (-(torch.logsumexp(ll, 1) - math.log(10)) / L).numpy(), rtol=1e-5)
    best = torch.as_tensor(feats["best_label"]).long()  # every *_best statistic is taken at the plain likelihood's best label
    np.testing.assert_allclose(feats["nll_sampling_best"], (-ll[torch.arange(B), best] / L).numpy(), rtol=1e-5)
    np.testing.assert_allclose(feats["nll_evidence"], (-(torch.logsumexp(ev, 1) - math.log(10)) / L).numpy(), rtol=1e-5)
    assert "support_miss" not in feats  # RAR's sampler does not filter
    one_hot = torch.full((B, L, V), -1e4).scatter(-1, tokens.unsqueeze(-1), 0.0)
    exact = variant_features(adapter, "rarb", tokens, evidence_BLV=one_hot)
    np.testing.assert_allclose(exact["nll_evidence"], exact["nll_sampling"], rtol=1e-5)


def test_support_miss_is_zero_for_the_samplers_own_tokens(small_zoo_dir):
    adapter = load_family("VAR", small_zoo_dir)
    labels = torch.tensor([2, 4, 6])
    _, tokens, _ = adapter.generate("var16", labels, seed=3)
    own = variant_features(adapter, "var16", tokens, scale_sizes=[1, 4, 9, 16], candidates_BK=labels[:, None])  # at the true label
    assert (own["support_miss"] == 0).all()
    shuffled = tokens[:, torch.randperm(tokens.shape[1], generator=torch.Generator().manual_seed(0))]
    assert (variant_features(adapter, "var16", shuffled, scale_sizes=[1, 4, 9, 16])["support_miss"] > 0).any()


def test_marginals_share_one_prior_whatever_the_number_of_candidate_labels(small_zoo_dir, rar_fixture):
    """Scored under only its best label (as :mod:`batch_features` scores the larger variants), a
    variant's marginals are the same lower bound with the same prior 1/C as under every label: the
    columns of variants scored under 1 and under C labels can be compared."""
    adapter = load_family("RAR", small_zoo_dir)
    tokens = rar_fixture[1]["out.codes"]
    B, L = tokens.shape
    C = adapter.num_classes
    everything = variant_features(adapter, "rarb", tokens)
    only_best = variant_features(adapter, "rarb", tokens, candidates_BK=everything["label_ranking"][:, :1])
    np.testing.assert_allclose(only_best["nll_best"], everything["nll_best"], rtol=1e-5)
    for name in ("nll_marginal", "nll_topk", "nll_sampling"):
        np.testing.assert_allclose(only_best[name], only_best[name.replace("marginal", "best").replace("topk", "best")
                                                                .replace("nll_sampling", "nll_sampling_best")] + math.log(C) / L, rtol=1e-5)
        assert np.all(only_best[name] >= everything[name] - 1e-6), name  # fewer labels: a looser bound, never a tighter one
    np.testing.assert_allclose(only_best["nll_sampling_best"], everything["nll_sampling_best"], rtol=1e-5)
    np.testing.assert_allclose(only_best["zlib"], everything["zlib"], rtol=1e-5)


def test_minkpp_spread_survives_a_nearly_flat_distribution():
    """Min-K%++ standardises by the spread of log p over the vocabulary; for a nearly flat
    distribution over many codes the one-pass E[x²] − μ² loses it to float32 cancellation."""
    generator = torch.Generator().manual_seed(0)
    logits = 0.01 * torch.randn(2, 5, 4096, generator=generator, dtype=torch.float64)
    tokens = torch.randint(0, 4096, (2, 5), generator=generator)
    exact = token_statistics(logits, tokens)["zpp"]  # computed in float32 inside, from float64 logits
    log_probs = torch.log_softmax(logits, -1)
    probs = log_probs.exp()
    mu = (probs * log_probs).sum(-1)
    sigma = (probs * (log_probs - mu[..., None]).square()).sum(-1).sqrt()
    reference = (log_probs.gather(-1, tokens[..., None])[..., 0] - mu) / sigma
    assert torch.allclose(exact.double(), reference, atol=0.05), (exact - reference).abs().max()
