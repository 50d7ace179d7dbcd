"""Signals are pure per-image functions of an adapter and images, with the documented algebra."""
from __future__ import annotations

import torch

from models.zoo import load_family
from quantizer import search_tokens
from signals import family_signals, latent_tracer, signal_frame


def test_signal_algebra(small_zoo_dir, var_fixture):
    adapter = load_family("VAR", small_zoo_dir)
    _, t = var_fixture
    x = (t["in.image"] + 1) / 2
    s = family_signals(adapter, x, token_search=search_tokens)
    assert set(s) == {"quant_loss", "quant_loss_searched", "enc_loss_raw", "enc_loss", "combined", "reconstruction", "aedr"}
    assert all(v.shape == (2,) and torch.isfinite(v).all() for v in s.values())
    assert torch.allclose(s["combined"], s["quant_loss_searched"] * s["enc_loss"])
    assert torch.all(s["quant_loss_searched"] <= s["quant_loss"] + 1e-9)
    f = adapter.encode(x)
    rec = adapter.decode(f)
    first = (rec - x).square().flatten(1).mean(1)
    second = (adapter.decode(adapter.encode(rec)) - rec).square().flatten(1).mean(1)
    assert torch.allclose(s["enc_loss_raw"], first)
    assert torch.allclose(s["enc_loss"], (first + 1e-10) / (second + 1e-10))
    # AEDR: the same ratio through the whole autoencoder, quantizer included
    once = adapter.decode(adapter.quantize(f)[1])
    twice = adapter.decode(adapter.quantize(adapter.encode(once))[1])
    assert torch.allclose(s["reconstruction"], (once - x).square().flatten(1).mean(1))
    assert torch.allclose(s["aedr"], (s["reconstruction"] + 1e-10) / ((twice - once).square().flatten(1).mean(1) + 1e-10))
    assert not torch.allclose(s["aedr"], s["enc_loss"])


def test_rar_signals_have_no_search_and_frame_is_indexed(small_zoo_dir, rar_fixture):
    adapter = load_family("RAR", small_zoo_dir)
    _, t = rar_fixture
    frame = signal_frame(adapter, t["in.image"], ["a.png", "b.png"], batch_size=1, token_search=search_tokens,
                         prefix="rar_", progress=False)
    assert list(frame.index) == ["a.png", "b.png"]
    assert "rar_quant_loss_searched" not in frame.columns
    assert {"rar_quant_loss", "rar_enc_loss", "rar_combined", "rar_aedr"} <= set(frame.columns)
    direct = family_signals(adapter, t["in.image"][:1])["quant_loss"].item()
    assert abs(frame.loc["a.png", "rar_quant_loss"] - direct) < 1e-9


def test_optimise_latent_reports_the_error_of_the_latent_it_returns(small_zoo_dir, rar_fixture):
    from quantizer import per_image_mse
    from signals import optimise_latent

    adapter = load_family("RAR", small_zoo_dir)
    x = (rar_fixture[1]["in.image"] + 1) / 2
    start = adapter.encode(x)
    for steps in (0, 3):
        latent, error = optimise_latent(adapter, x, start, iters=steps, lr=0.05)
        assert torch.allclose(error, per_image_mse(adapter.decode_raw(latent).clamp(0, 1), x))
    assert torch.equal(optimise_latent(adapter, x, start, iters=0)[0], start)


def test_latent_tracer_improves_on_the_decoded_quantization(small_zoo_dir, rar_fixture):
    adapter = load_family("RAR", small_zoo_dir)
    _, t = rar_fixture
    x = t["in.image"]
    with torch.no_grad():
        start = (adapter.decode(adapter.quantize(adapter.encode(x))[1]) - x).square().flatten(1).mean(1)
    traced = latent_tracer(adapter, x, iters=20, lr=0.05, halve_every=10)
    assert torch.all(traced < start)


def test_refine_tokens_moves_f_toward_the_image(small_zoo_dir, rar_fixture):
    from models.zoo import load_family
    from quantizer import per_image_mse
    from signals import refine_tokens

    adapter = load_family("RAR", small_zoo_dir)
    x = rar_fixture[1]["in.image"]
    with torch.no_grad():
        f = adapter.encode(x)
    tokens, refined = refine_tokens(adapter, x, f, steps=10, lr=0.02)
    with torch.no_grad():
        before = per_image_mse(adapter.decode(f), x)
        after = per_image_mse(adapter.decode(refined), x)
        assert torch.equal(tokens, adapter.quantize(refined)[0])
    assert (after < before).all()
    assert tokens.shape == adapter.quantize(f)[0].shape


def test_reencode_tokens_applies_the_bias_correction(small_zoo_dir, rar_fixture):
    from signals import reencode_tokens

    adapter = load_family("RAR", small_zoo_dir)
    x = rar_fixture[1]["in.image"]
    with torch.no_grad():
        f = adapter.encode(x)
        tokens0, f_hat0 = adapter.quantize(f)
        expected_target = f_hat0 + f - adapter.encode(adapter.decode(f_hat0))
    plain_tokens, plain_target = reencode_tokens(adapter, f, 0)
    assert torch.equal(plain_tokens, tokens0) and plain_target is f
    tokens, target = reencode_tokens(adapter, f, 1)
    assert torch.allclose(target, expected_target)
    assert torch.equal(tokens, adapter.quantize(expected_target)[0])


def test_signals_reuse_their_decode_for_reencoding(small_zoo_dir, rar_fixture):
    from signals import family_signals_and_tokens, reencode_tokens

    adapter = load_family("RAR", small_zoo_dir)
    x = rar_fixture[1]["in.image"]
    plain_signals, plain_tokens, f, same_f, round_trip = family_signals_and_tokens(adapter, x)
    signals, tokens, target, f_again, _ = family_signals_and_tokens(adapter, x, reencode_iters=2)
    assert same_f is f and torch.equal(f_again, f), "f is the inverse decoder's own map, re-encoded or not"
    with torch.no_grad():
        assert torch.equal(round_trip, adapter.encode(adapter.decode(f))), "the round trip EncLoss made, D⁻¹(D(f))"
    expected_tokens, expected_target = reencode_tokens(adapter, f, 2)
    assert torch.equal(tokens, expected_tokens) and torch.equal(target, expected_target)
    assert torch.equal(plain_tokens, adapter.quantize(f)[0])
    assert all(torch.equal(signals[k], plain_signals[k]) for k in plain_signals)


def test_colour_fit_recovers_an_affine_colour_map():
    from signals import apply_colour, colour_fit

    gen = torch.Generator().manual_seed(0)
    source = torch.rand(2, 3, 16, 16, generator=gen)
    M = torch.tensor([[[1.6, 0.0, 0.0], [0.0, 1.6, 0.0], [0.0, 0.0, 1.6]],
                      [[1.4, -0.2, -0.2], [-0.3, 1.5, -0.2], [-0.3, -0.2, 1.5]]])
    b = torch.tensor([[0.0, 0.0, 0.0], [0.05, -0.1, 0.02]])
    fitted_M, fitted_b = colour_fit(source, apply_colour(M, b, source))
    assert torch.allclose(fitted_M, M, atol=1e-4) and torch.allclose(fitted_b, b, atol=1e-4)


def test_slow_signals_are_named_and_checked(small_zoo_dir, rar_fixture):
    import pytest

    adapter = load_family("RAR", small_zoo_dir)
    x = rar_fixture[1]["in.image"][:2]
    frame = signal_frame(adapter, x, ["a", "b"], slow=["enc_loss_refined", "enc_loss_refined_colour"], progress=False)
    assert {"enc_loss_refined", "enc_loss_refined_colour"} <= set(frame.columns)
    assert (frame["enc_loss_refined_colour"] > 0).all()
    with pytest.raises(ValueError, match="unknown slow signals"):
        signal_frame(adapter, x, ["a", "b"], slow=["enc_loss_refind"], progress=False)
