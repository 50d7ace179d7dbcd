"""Token search recovers multi-scale tokens better than greedy and never returns worse."""
from __future__ import annotations

import pytest
import torch

from models.registry import build_var_vae
from quantizer import greedy_tokens, per_image_mse, prior_guided_tokens, search_tokens, search_tokens_reference


@pytest.fixture(scope="module")
def quant(var_fixture):
    meta, t = var_fixture
    vae = build_var_vae(meta["config"]).eval()
    vae.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("vae.")})
    return vae.quantize


@pytest.fixture(scope="module")
def generated_f(quant):
    """Feature maps that are exact sums of codebook entries, as for a VAR-generated image."""
    gen = torch.Generator().manual_seed(0)
    idx = [torch.randint(0, quant.vocab_size, (6, pn * pn), generator=gen) for pn in quant.patch_nums]
    with torch.no_grad():
        return quant.tokens_to_fhat(idx)


def test_search_beats_greedy_on_generated_maps(quant, generated_f):
    greedy = greedy_tokens(quant, generated_f)
    found = search_tokens(quant, generated_f)
    assert torch.all(found.mse <= greedy.mse + 1e-12)
    assert found.mse.mean() < 0.5 * greedy.mse.mean()
    assert torch.allclose(found.f_hat, quant.tokens_to_fhat(found.idx_per_scale))
    assert torch.allclose(found.mse, per_image_mse(found.f_hat, generated_f))


def test_search_never_worse_than_greedy_even_when_it_cannot_help(quant):
    f = torch.randn(4, quant.Cvae, quant.patch_nums[-1], quant.patch_nums[-1], generator=torch.Generator().manual_seed(1)) * 5
    greedy = greedy_tokens(quant, f)
    found = search_tokens(quant, f, max_iters=10, lr=5.0)
    assert torch.all(found.mse <= greedy.mse + 1e-12)


def test_restricted_candidates_and_early_stop(quant, generated_f):
    found = search_tokens(quant, generated_f, candidates=8, max_iters=200, patience=2)
    assert found.iterations < 200
    assert torch.all(found.mse <= greedy_tokens(quant, generated_f).mse + 1e-12)


def test_early_stop_waits_for_the_anneal(quant, generated_f):
    """When no check can count as a gain (``rel_tol=1``: the error would have to vanish), the search
    still anneals to ``min_iters`` (half of ``max_iters`` by default) before ``patience`` checks stop
    it, and returns greedy's tokens."""
    stalled = dict(max_iters=120, check_every=5, patience=2, rel_tol=1.0)
    found = search_tokens(quant, generated_f, **stalled)
    assert found.iterations == 65  # the checks at 60 and 65; never those at 5 … 55
    assert torch.equal(found.tokens, greedy_tokens(quant, generated_f).tokens)
    assert search_tokens(quant, generated_f, **stalled, min_iters=0).iterations == 10


def test_reference_runs_and_improves(quant, generated_f):
    ref = search_tokens_reference(quant, generated_f, iters_per_round=30, rounds=3)
    assert ref.iterations == 90
    assert [t.shape for t in ref.idx_per_scale] == [(6, pn * pn) for pn in quant.patch_nums]
    assert ref.mse.mean() < greedy_tokens(quant, generated_f).mse.mean()


def test_prior_guided_reading_is_greedy_under_a_flat_prior(quant, generated_f):
    """A prior that prefers no code leaves greedy's choice at every scale; the callback sees the
    coarser scales' tokens it has chosen so far."""
    seen = []

    def flat_prior(si, coarser):
        seen.append([c.shape[1] for c in coarser])
        pn = quant.patch_nums[si]
        return torch.zeros(generated_f.shape[0], pn * pn, quant.vocab_size)

    read, objective = prior_guided_tokens(quant, generated_f, flat_prior, weight=1.0)
    greedy = greedy_tokens(quant, generated_f)
    assert torch.equal(read.tokens, greedy.tokens)
    assert torch.allclose(read.mse, greedy.mse)
    assert seen == [[pn * pn for pn in quant.patch_nums[:si]] for si in range(len(quant.patch_nums))]
    assert torch.all(objective <= 0)


def test_prior_guided_reading_follows_a_confident_prior(quant, generated_f):
    """A prior that allows one code per position (−inf elsewhere, as a sampler's top-p filter can)
    returns those codes whatever the distances, and its objective is −weight·Σ distance to them."""
    gen = torch.Generator().manual_seed(1)
    B = generated_f.shape[0]
    wanted = [torch.randint(0, quant.vocab_size, (B, pn * pn), generator=gen) for pn in quant.patch_nums]

    def only_wanted(si, coarser):
        for c, w in zip(coarser, wanted):
            assert torch.equal(c, w)
        log_p = torch.full((B, quant.patch_nums[si] ** 2, quant.vocab_size), -torch.inf)
        return log_p.scatter(-1, wanted[si].unsqueeze(-1), 0.0)

    read, objective = prior_guided_tokens(quant, generated_f, only_wanted, weight=3.0)
    assert torch.equal(read.tokens, torch.cat(wanted, dim=1))
    distances = torch.cat(quant.residual_code_distances(generated_f, wanted), dim=1)
    expected = -3.0 * distances.gather(-1, torch.cat(wanted, dim=1).unsqueeze(-1)).squeeze(-1).sum(1)
    assert torch.allclose(objective, expected, rtol=1e-5)


def test_the_searches_write_no_gradient_into_the_quantizer(var_fixture, generated_f):
    """Only the searched logits get gradients: a quantizer whose weights are trainable (one being
    fine-tuned, a full-size model built for a benchmark) keeps ``.grad`` unset."""
    meta, t = var_fixture
    vae = build_var_vae(meta["config"]).eval()
    vae.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("vae.")})
    trainable = vae.quantize
    assert all(p.requires_grad for p in trainable.parameters())
    search_tokens(trainable, generated_f[:2], max_iters=5)
    search_tokens_reference(trainable, generated_f[:2], iters_per_round=3, rounds=2)
    assert all(p.grad is None for p in trainable.parameters())


def test_an_image_gets_the_same_tokens_whatever_its_batch(quant, generated_f):
    """Each image's loss, Adam's element-wise steps and (ours) its own early stop: the tokens of an
    image searched alone are those it gets among others, for the reference and for a long anneal
    whose images stop at different iterations."""
    noisy = generated_f + 0.05 * torch.randn(generated_f.shape, generator=torch.Generator().manual_seed(3))
    together = search_tokens_reference(quant, noisy, iters_per_round=30, rounds=2).tokens
    for i in range(len(noisy)):
        assert torch.equal(search_tokens_reference(quant, noisy[i:i + 1], iters_per_round=30, rounds=2).tokens[0], together[i])
    long = dict(max_iters=120, patience=2)
    together = search_tokens(quant, noisy, **long)
    alone = [search_tokens(quant, noisy[i:i + 1], **long) for i in range(len(noisy))]
    assert len({a.iterations for a in alone}) > 1, "the images should stop at different iterations"
    assert together.iterations == max(a.iterations for a in alone)
    for i, single in enumerate(alone):
        assert torch.equal(single.tokens[0], together.tokens[i])
