"""Sampling helpers and inference conventions."""
from __future__ import annotations

import torch

from models.rar_sampler import guidance_weight
from models.registry import build_var_transformer
from models.var_sampler import filter_top_k_top_p


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[[0.0, 3.0, 1.0, 2.0, -1.0]]])
    kept = torch.isfinite(filter_top_k_top_p(logits, top_k=2))
    assert kept.tolist() == [[[False, True, False, True, False]]]
    assert torch.equal(logits, torch.tensor([[[0.0, 3.0, 1.0, 2.0, -1.0]]])), "input must not be modified"


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = torch.isfinite(filter_top_k_top_p(probs.log().view(1, 1, 4), top_p=0.75)).view(-1)
    assert kept.tolist() == [True, True, False, False]


def test_rar_guidance_schedule_endpoints():
    assert torch.allclose(guidance_weight(0, 256, 16.0, 2.75), torch.tensor([1.0]))
    assert guidance_weight(255, 256, 16.0, 2.75).item() > 15.9
    assert torch.allclose(guidance_weight(128, 256, 3.0, 1.0), torch.tensor([2.0]))


def test_var_label_dropout_only_in_training():
    cfg = dict(V=16, Cvae=4, patch_nums=[1, 2])
    var = build_var_transformer(dict(depth=1, embed_dim=32, num_heads=2, num_classes=3, cond_drop_rate=1.0), cfg)
    var.init_weights(init_head=1.0, init_adaln_gamma=1.0)
    x = torch.randn(2, 4, 4)
    labels = torch.tensor([0, 1])
    var.eval()
    with torch.no_grad():
        cond, uncond = var(labels, x), var(torch.full_like(labels, 3), x)
        var.train()
        dropped = var(labels, x)
    assert not torch.allclose(cond, uncond)
    assert torch.allclose(dropped, uncond, atol=1e-6)


def _replay(probs_BLV: torch.Tensor, chunks, generator: torch.Generator) -> torch.Tensor:
    """Draw tokens chunk by chunk from teacher-forced probabilities with the sampler's generator calls."""
    drawn, start = [], 0
    for n in chunks:
        block = probs_BLV[:, start:start + n]
        drawn.append(torch.multinomial(block.reshape(-1, block.shape[-1]), 1, replacement=True, generator=generator).view(-1, n))
        start += n
    return torch.cat(drawn, 1)


def test_var_sampling_distribution_replays_the_sampler(small_zoo_dir):
    """Teacher-forced ``sampling_logits`` filtered as the sampler filters are exactly what it drew
    from: replaying its random draws on them gives its tokens back, and ``in_sampling_support``
    finds every one of them inside the filter."""
    from models.zoo import load_family

    adapter = load_family("VAR", small_zoo_dir)
    labels = torch.tensor([0, 3, 7, 9])
    _, tokens, _ = adapter.generate("var16", labels, seed=5)
    with torch.no_grad():
        logits = adapter.sampling_logits("var16", adapter.token_logits("var16", tokens, labels),
                                         adapter.token_logits("var16", tokens, None))
    settings = adapter.sampling["var16"]
    filtered = filter_top_k_top_p(logits, top_k=min(settings["top_k"], logits.shape[-1]), top_p=settings["top_p"])
    assert adapter.in_sampling_support("var16", logits, tokens).all()
    assert torch.isfinite(filtered).gather(-1, tokens.unsqueeze(-1)).all()
    assert not torch.isfinite(filtered).all(), "top-k / top-p must exclude some codes"
    probs = filtered.softmax(-1)
    replayed = _replay(probs, [pn * pn for pn in adapter.patch_nums], torch.Generator().manual_seed(5))
    assert torch.equal(replayed, tokens)


def test_rar_sampling_distribution_replays_the_sampler(small_zoo_dir):
    from models.zoo import load_family

    adapter = load_family("RAR", small_zoo_dir)
    # the fixture's random generator is nearly uniform: strong guidance makes the schedule matter
    adapter.sampling["rarb"] = dict(guidance_scale=16.0, guidance_scale_pow=2.75, temperature=1.3)
    labels = torch.tensor([1, 2, 8, 0, 5, 5, 9, 3])
    _, tokens, _ = adapter.generate("rarb", labels, seed=11)
    with torch.no_grad():
        cond, uncond = adapter.token_logits("rarb", tokens, labels), adapter.token_logits("rarb", tokens, None)
        logits = adapter.sampling_logits("rarb", cond, uncond)
        adapter.sampling["rarb"]["guidance_scale_pow"] = 1.0
        other_schedule = adapter.sampling_logits("rarb", cond, uncond)
    assert adapter.in_sampling_support("rarb", logits, tokens) is None

    def replay(sampling_logits: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(11)
        torch.rand(labels.shape, generator=gen)  # the sampler's label-dropout draw comes first
        return _replay(sampling_logits.softmax(-1), [1] * tokens.shape[1], gen)

    assert torch.equal(replay(logits), tokens)
    assert not torch.equal(replay(other_schedule), tokens), "the replay must be sensitive to the guidance schedule"


def test_survives_top_k_top_p_agrees_with_the_filter():
    from models.var_sampler import survives_top_k_top_p

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, 64, generator=gen) * 3
    tokens = torch.randint(0, 64, (4, 50), generator=gen)
    for top_k, top_p in [(0, 0.9), (10, 0.0), (20, 0.8), (64, 0.96), (5, 0.99)]:
        kept = torch.isfinite(filter_top_k_top_p(logits, top_k=top_k, top_p=top_p)).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        survived = survives_top_k_top_p(logits, tokens, top_k, top_p)
        assert torch.equal(survived, kept), (top_k, top_p)
        assert 0 < kept.float().mean() < 1 or top_k == 64
