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
