"""The family adapters expose the fixtures' official outputs through one interface, in [0, 1] units."""
from __future__ import annotations

import pytest
import torch

from models.zoo import load_family


@pytest.fixture(scope="module")
def var_adapter(small_zoo_dir):
    return load_family("VAR", small_zoo_dir)


@pytest.fixture(scope="module")
def rar_adapter(small_zoo_dir):
    return load_family("RAR", small_zoo_dir)


def _log_probs(logits, tokens):
    return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def test_var_primitive_matches_official(var_adapter, var_fixture):
    _, t = var_fixture
    img01 = (t["in.image"] + 1) / 2
    rec, tokens, f, f_hat = var_adapter.img_to_reconstructed_img(img01)
    expected_tokens = torch.cat([t[f"out.idx_scale{k}"] for k in range(4)], dim=1)
    assert torch.equal(tokens, expected_tokens)
    assert torch.allclose(f, t["out.f"], atol=1e-4)
    assert torch.allclose(f_hat, t["out.f_hat"], atol=1e-4)
    assert torch.allclose(rec, (t["out.fhat_to_img"] + 1) / 2, atol=1e-4)
    assert rec.min() >= 0 and rec.max() <= 1
    assert torch.allclose(var_adapter.tokens_to_fhat(tokens), f_hat, atol=1e-5)


def test_var_likelihoods_match_official_logits(var_adapter, var_fixture):
    _, t = var_fixture
    tokens = torch.cat([t[f"out.idx_scale{k}"] for k in range(4)], dim=1)
    with torch.no_grad():
        cond = var_adapter.token_log_probs("var16", tokens, t["in.labels"])
        uncond = var_adapter.token_log_probs("var16", tokens, None)
    assert cond.shape == tokens.shape
    assert torch.allclose(cond, _log_probs(t["out.logits_cond"], tokens), atol=1e-4)
    assert torch.allclose(uncond, _log_probs(t["out.logits_uncond"], tokens), atol=1e-4)


def test_rar_primitive_and_likelihoods_match_official(rar_adapter, rar_fixture):
    _, t = rar_fixture
    rec, tokens, f, f_hat = rar_adapter.img_to_reconstructed_img(t["in.image"])
    assert torch.equal(tokens, t["out.codes"])
    assert torch.allclose(f_hat, t["out.quantized"], atol=1e-5)
    assert torch.allclose(rec, t["out.decode"], atol=1e-4)
    with torch.no_grad():
        cond = rar_adapter.token_log_probs("rarb", tokens, t["in.labels"])
        uncond = rar_adapter.token_log_probs("rarb", tokens, None)
    assert torch.allclose(cond, _log_probs(t["out.logits_cond"][:, :16], tokens), atol=1e-4)
    assert torch.allclose(uncond, _log_probs(t["out.logits_uncond"][:, :16], tokens), atol=1e-4)


def test_generate_uses_the_official_random_stream(var_adapter, rar_adapter, var_fixture, rar_fixture):
    _, vt = var_fixture
    images, tokens, f_hat = var_adapter.generate("var16", vt["in.labels"], seed=7)
    assert torch.allclose(images, vt["out.sample_cfg1.5_topk10_topp0.9_seed7"], atol=1e-4)
    assert tokens.shape == (2, 30)
    _, rt = rar_fixture
    images, tokens, f_hat = rar_adapter.generate("rarb", rt["in.labels"], seed=11)
    assert torch.equal(tokens, rt["out.sample_cfg4.0_pow2.5_temp1.02_seed11"])
    assert images.shape == (2, 3, 64, 64)
    assert torch.allclose(rar_adapter.decode(f_hat), images)


def test_generate_is_reproducible_and_seed_dependent(rar_adapter):
    labels = rar_adapter.random_labels(4, seed=1)
    a = rar_adapter.generate("rarb", labels, seed=5)[1]
    b = rar_adapter.generate("rarb", labels, seed=5)[1]
    c = rar_adapter.generate("rarb", labels, seed=6)[1]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_unknown_variant_names_the_choices(var_adapter):
    with pytest.raises(KeyError, match="var16"):
        var_adapter.generator("var99")


def test_encode_is_differentiable_for_inverse_decoder_training(rar_adapter, rar_fixture):
    _, t = rar_fixture
    params = [p for m in rar_adapter.encoder_modules() for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    try:
        f = rar_adapter.encode(t["in.image"])
        f.square().mean().backward()
        assert all(p.grad is not None for p in params)
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None


def test_token_distances_follow_the_quantizer(var_adapter, rar_adapter, var_fixture, rar_fixture):
    """Along greedy's own token path every greedy token is its position's nearest code (VAR's
    residuals included), and the distances are squared L2 to the codebook."""
    for adapter, img01 in ((var_adapter, (var_fixture[1]["in.image"] + 1) / 2), (rar_adapter, rar_fixture[1]["in.image"])):
        with torch.no_grad():
            f = adapter.encode(img01)
            tokens, _ = adapter.quantize(f)
            distances = adapter.token_distances(f, tokens)
        assert distances.shape[:2] == tokens.shape
        assert torch.equal(distances.argmin(-1), tokens), adapter.family
        assert (distances > -1e-5).all()
    codebook = rar_adapter.tokenizer.quantize.embedding.weight
    cell = f[0, :, 0, 0]
    assert torch.allclose(distances[0, 0], (codebook - cell).square().sum(-1), atol=1e-4)
