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


def test_search_returns_each_images_best_check_not_its_last(quant, generated_f, monkeypatch):
    """Every check's hard tokens are a candidate; each image keeps the best of them (and greedy's),
    up to the search's relative tolerance, not the last one that beat greedy."""
    import quantizer

    checked, hard_fhat = [], quantizer._hard_fhat
    monkeypatch.setattr(quantizer, "_hard_fhat", lambda q, idx: checked.append(per_image_mse(hard_fhat(q, idx), generated_f)) or hard_fhat(q, idx))
    found = search_tokens(quant, generated_f, max_iters=40)
    best = torch.stack([greedy_tokens(quant, generated_f).mse, *checked]).min(0).values
    assert len(checked) == 40 // 5 + 1  # the checks and the final f̂
    assert torch.all(found.mse <= best * (1 + 2e-4) + 1e-12)


def test_restricted_candidates_run_the_whole_anneal(quant, generated_f):
    found = search_tokens(quant, generated_f, candidates=8, max_iters=40)
    assert torch.all(found.mse <= greedy_tokens(quant, generated_f).mse + 1e-12)
    # no check can count as a gain (rel_tol=1: the error would have to vanish): greedy's tokens
    stalled = search_tokens(quant, generated_f, max_iters=40, rel_tol=1.0)
    assert torch.equal(stalled.tokens, greedy_tokens(quant, generated_f).tokens)


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
    """Each image's loss and Adam's element-wise steps: the tokens of an image searched alone are
    those it gets among others, for the reference (whose batch-mean loss made them differ) and for ours."""
    noisy = generated_f + 0.05 * torch.randn(generated_f.shape, generator=torch.Generator().manual_seed(3))
    together = search_tokens_reference(quant, noisy, iters_per_round=30, rounds=2).tokens
    for i in range(len(noisy)):
        assert torch.equal(search_tokens_reference(quant, noisy[i:i + 1], iters_per_round=30, rounds=2).tokens[0], together[i])
    # 40 iterations: batched kernels round in other ways for other batch sizes, and an anneal of 120
    # can amplify that into other tokens (batch_features pads every pass to fixed chunks for exact rows)
    together = search_tokens(quant, noisy, max_iters=40)
    for i in range(len(noisy)):
        assert torch.equal(search_tokens(quant, noisy[i:i + 1], max_iters=40).tokens[0], together.tokens[i])
