"""Provenance signals: per-image scores that are LOW for images the target model made.

With ``D⁻¹`` the (inverse) encoder, ``Q`` the family's quantizer and ``D`` the decoder:

* **QuantLoss** ``‖f − f̂‖²`` with ``f = D⁻¹(x)``, ``f̂ = Q(f)``: a generated image inverts to a
  feature map that already sits on codebook entries. For VAR, ``f̂`` comes from greedy
  quantization (*naive*) or from a joint token search (``quant_loss_searched``; see
  ``quantizer.py``).
* **EncLoss** ``‖D(D⁻¹(x)) − x‖²`` (no quantization): what a decode/re-encode round trip loses;
  **calibrated** by a second round trip, ``(‖x̂ − x‖² + ε) / (‖x̂̂ − x̂‖² + ε)`` with ``x̂ = D(D⁻¹(x))``
  and ``x̂̂ = D(D⁻¹(x̂))``, which cancels the image's intrinsic difficulty.
* **Combined** = QuantLoss × calibrated EncLoss (searched QuantLoss for VAR when available).
* **Refined EncLoss** (``enc_loss_refined``, evaluation only): the image error after
  :data:`REFINED_ENC_STEPS` Adam steps (lr 0.01) that move the inverse decoder's ``f`` toward
  ``D(f) = x`` — LatentTracer's optimisation started from ``D⁻¹(x)`` instead of ``f̂``, with a
  tenth of its steps. A generated image lies in the decoder's range and a good start reaches it
  in a few steps; other images do not. It is not in the feature extractor (too slow for the
  10-minute demo run on 2 cores).
* **Colour-corrected refined EncLoss** (``enc_loss_refined_colour``, evaluation only): the same,
  with a per-image affine colour map ``x ≈ clamp(M·D(f) + b)`` (3×3 ``M``, bias ``b``) fitted
  and then optimised jointly with the latent. Brightness, contrast and saturation changes are such
  maps (up to clipping), so a post-processed generation stays in the *colour-mapped* decoder's
  range. The map is first fitted by least squares to ``D(D⁻¹(x))``, undone on ``x``, and ``x`` is
  encoded again, so the inverse decoder starts from colours like the ones it was trained on.
* Baselines, computed with the *original* encoder: **Reconstruction** ``‖D(Q(D⁻¹(x))) − x‖²``,
  **AEDR** (the double-reconstruction ratio ``(‖x̃ − x‖² + ε) / (‖x̃̃ − x̃‖² + ε)`` of the whole
  autoencoder, quantizer included: ``x̃ = D(Q(D⁻¹(x)))``, ``x̃̃ = D(Q(D⁻¹(x̃)))``; EncLoss's
  calibration is the same ratio without ``Q``), and **LatentTracer** (optimise the latent
  from ``f̂`` for 100 Adam steps, lr 0.01 halved at step 50, to reconstruct ``x``; the final error).

Where these differ from the official research code (sprintml/DataProvenanceIAR, ``dataprov/signals.py``
and ``dataprov/baselines.py``): its AEDR baseline is the calibrated EncLoss ratio with the original
encoder, *without* ``Q`` (here that is ``enc_loss`` with the original encoder); ``aedr`` here goes
through ``Q`` (chosen in extractor version 17, ``docs/attribution.md``), and neither applies the AEDR
paper's image-homogeneity calibration. For VAR, its Reconstruction decodes, and its LatentTracer
starts from, the Algorithm-3 ``f̂`` (``quantizer.search_tokens_reference``); here both use greedy
``f̂`` (only ``quant_loss_searched`` and Combined use a search, ``quantizer.search_tokens``). It reads
LatentTracer's error before the last Adam step, here after it. Errors here are in ``[0, 1]`` pixel
units (there: the model's native range, 4× larger for VAR's ``[−1, 1]``; the ratios are the same).

The token readers serve the variant features: :func:`reencode_tokens` cancels the inverse
decoder's bias by re-encoding the decoded estimate (cheap; the pipeline's default for RAR) and
:func:`refine_tokens` moves ``f`` by Adam on the image error through the frozen decoder (opt-in).

All squared errors are means over elements, per image. Every function is pure: it reads an
adapter and images in ``[0, 1]`` and returns numbers; :func:`signal_frame` runs them over a list
of images in batches and returns a pandas frame indexed by image id.
"""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import pandas as pd
import torch

from models.adapter import FamilyAdapter
from quantizer import SearchResult, per_image_mse

__all__ = ["SIGNALS", "SLOW_SIGNALS", "REFINED_ENC_STEPS", "family_signals", "refined_enc_loss", "colour_refined_enc_loss",
           "colour_fit", "apply_colour", "family_signals_and_tokens", "latent_tracer", "optimise_latent", "refine_tokens",
           "reencode_target", "reencode_tokens", "signal_frame", "TokenSearch", "FamilyReading"]

TokenSearch = Callable[..., SearchResult]
SIGNALS = ("quant_loss", "quant_loss_searched", "enc_loss_raw", "enc_loss", "combined", "reconstruction", "aedr")
REFINED_ENC_STEPS = 10
_EPS = 1e-10


class FamilyReading(NamedTuple):
    """What :func:`family_signals_and_tokens` reads from a batch for one family."""
    signals: Dict[str, torch.Tensor]  # name → B values
    tokens: torch.Tensor  # B×L recovered tokens
    f_tokens: torch.Tensor  # the feature map they were read from: f, or the last re-encoding target
    f: torch.Tensor  # f = D⁻¹(x), the inverse decoder's own map (what the variant nets read)
    f_round_trip: torch.Tensor  # D⁻¹(D(f)), from EncLoss's round trip (the re-encoded map of a variant net reuses it)


@torch.no_grad()
def family_signals_and_tokens(adapter: FamilyAdapter, img01_B3HW: torch.Tensor, token_search: Optional[TokenSearch] = None,
                              reencode_iters: int = 0) -> FamilyReading:
    """:func:`family_signals` plus the recovered tokens ``B×L`` (searched for VAR when a search is
    given; after ``reencode_iters`` steps of :func:`reencode_tokens`, which reuses the decode the
    signals already made), the feature map they were read from (``f = D⁻¹(x)``, or the last
    re-encoding target), ``f`` itself and its round trip ``D⁻¹(D(f))``."""
    x = img01_B3HW.to(adapter.device).float()
    f = adapter.encode(x)
    tokens, f_hat = adapter.quantize(f)
    decoded = adapter.decode(f_hat)
    out = {"quant_loss": per_image_mse(f, f_hat), "reconstruction": per_image_mse(decoded, x)}
    start = (tokens, f_hat, decoded)
    if token_search is not None and adapter.family == "VAR":
        found = token_search(adapter.tokenizer.quantize, f)
        out["quant_loss_searched"] = found.mse
        tokens = found.tokens
        start = (found.tokens, found.f_hat, None)
    f_tokens = f
    if reencode_iters > 0:
        tokens, f_tokens = reencode_tokens(adapter, f, reencode_iters, token_search, start=start)
    x_rec = adapter.decode(f)
    f_round_trip = adapter.encode(x_rec)
    x_rec2 = adapter.decode(f_round_trip)
    first, second = per_image_mse(x_rec, x), per_image_mse(x_rec2, x_rec)
    out["enc_loss_raw"] = first
    out["enc_loss"] = (first + _EPS) / (second + _EPS)
    decoded_twice = adapter.decode(adapter.quantize(adapter.encode(decoded))[1])
    out["aedr"] = (out["reconstruction"] + _EPS) / (per_image_mse(decoded_twice, decoded) + _EPS)
    out["combined"] = out.get("quant_loss_searched", out["quant_loss"]) * out["enc_loss"]
    return FamilyReading(out, tokens, f_tokens, f, f_round_trip)


def family_signals(adapter: FamilyAdapter, img01_B3HW: torch.Tensor, token_search: Optional[TokenSearch] = None) -> Dict[str, torch.Tensor]:
    """Every closed-form signal for a batch (``B`` values each).

    ``token_search(quantizer, f)`` is used for VAR's ``quant_loss_searched``; ``aedr`` and
    ``reconstruction`` equal the baselines when ``adapter`` holds the original encoder.
    """
    return family_signals_and_tokens(adapter, img01_B3HW, token_search)[0]


def colour_fit(source_B3HW: torch.Tensor, target_B3HW: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per image, the affine colour map ``target ≈ M·source + b`` of least squares over the pixels:
    ``M`` is ``B×3×3``, ``b`` is ``B×3``."""
    B = source_B3HW.shape[0]
    ones = torch.ones(B, 1, source_B3HW[0, 0].numel(), device=source_B3HW.device)
    design_BN4 = torch.cat([source_B3HW.reshape(B, 3, -1), ones], 1).transpose(1, 2)
    # solved on the CPU whatever the images' device: torch's default driver there (gelsy, which drops
    # directions below its rcond) is not CUDA's (gels, plain QR), and fits a near-grey image otherwise
    solution_B43 = torch.linalg.lstsq(design_BN4.cpu(), target_B3HW.reshape(B, 3, -1).transpose(1, 2).cpu()).solution
    return solution_B43[:, :3].transpose(1, 2).to(source_B3HW.device), solution_B43[:, 3].to(source_B3HW.device)


def apply_colour(M_B33: torch.Tensor, b_B3: torch.Tensor, img_B3HW: torch.Tensor) -> torch.Tensor:
    """``M·img + b`` per pixel (not clamped)."""
    B = img_B3HW.shape[0]
    return (torch.bmm(M_B33, img_B3HW.reshape(B, 3, -1)) + b_B3[:, :, None]).reshape_as(img_B3HW)


def optimise_latent(adapter: FamilyAdapter, img01_B3HW: torch.Tensor, init_BChw: torch.Tensor, iters: int = 100,
                    lr: float = 0.01, halve_every: int = 50,
                    colour: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Adam on a continuous latent, from ``init``, to minimise ``‖clamp(D(latent)) − x‖²`` per image.

    With ``colour = (M, b)`` (see :func:`colour_fit`) the per-image affine colour map is optimised
    too, from that start, and the error is ``‖clamp(M·clamp(D(latent)) + b) − x‖²``.
    Returns ``(latent, per-image error of that latent)``; the learning rate halves every
    ``halve_every`` steps. The decoder is frozen; only the latent (and the colour map) moves.
    """
    x = img01_B3HW.to(adapter.device).float()
    latent = init_BChw.detach().clone().to(adapter.device).requires_grad_(True)
    # contiguous copies: colour_fit returns strided views, and the optimisation is sensitive to rounding
    M, b = ((t.detach().to(adapter.device).clone(memory_format=torch.contiguous_format).requires_grad_(True) for t in colour)
            if colour is not None else (None, None))
    opt = torch.optim.Adam([latent] + ([M, b] if colour is not None else []), lr=lr)
    def error() -> torch.Tensor:
        decoded = adapter.decode_raw(latent).clamp(0, 1)
        return per_image_mse(apply_colour(M, b, decoded).clamp(0, 1) if colour is not None else decoded, x)

    with torch.enable_grad():
        for step in range(1, iters + 1):
            per_image = error()
            opt.zero_grad(set_to_none=True)
            per_image.sum().backward()
            opt.step()
            if step % halve_every == 0:
                for group in opt.param_groups:
                    group["lr"] *= 0.5
    with torch.no_grad():
        return latent.detach(), error().cpu()


def refine_tokens(adapter: FamilyAdapter, img01_B3HW: torch.Tensor, f_BChw: torch.Tensor, steps: int, lr: float = 0.02,
                  token_search: Optional[TokenSearch] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tokens of ``f`` after :func:`optimise_latent` moved it ``steps`` Adam steps toward ``D(f) = x``.

    The inverse decoder's ``f`` misses most tokens of the zoo's small tokenizers; the image error
    through the frozen decoder leads part of the way back (``scripts/diagnose_zoo.py
    --refine-steps``). Returns ``(tokens B×L, refined f)``; VAR's tokens come from ``token_search``
    when given, else greedy. ``steps = 0`` quantizes ``f`` as it is.
    """
    refined = optimise_latent(adapter, img01_B3HW, f_BChw, steps, lr, halve_every=max(1, steps // 2))[0]
    with torch.no_grad():
        return _token_reader(adapter, token_search)(refined)[0], refined


def _token_reader(adapter: FamilyAdapter, token_search: Optional[TokenSearch]) -> Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """``f → (tokens, f̂)``: ``token_search`` for VAR when given, else the adapter's greedy quantization."""
    def read(f_BChw: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if token_search is not None and adapter.family == "VAR":
            found = token_search(adapter.tokenizer.quantize, f_BChw)
            return found.tokens, found.f_hat
        return adapter.quantize(f_BChw)
    return read


def reencode_target(adapter: FamilyAdapter, f_BChw: torch.Tensor, estimate_BChw: torch.Tensor,
                    decoded_B3HW: Optional[torch.Tensor] = None, round_trip_BChw: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``estimate + f − D⁻¹(D(estimate))``: ``f = D⁻¹(x)`` with the inverse decoder's bias at
    ``estimate`` taken out (:func:`reencode_tokens`; ``estimate = f`` is its continuous form, without
    quantization). ``decoded_B3HW = D(estimate)``, or ``round_trip_BChw = D⁻¹(D(estimate))``
    itself, when the caller already has it."""
    if round_trip_BChw is None:
        round_trip_BChw = adapter.encode(adapter.decode(estimate_BChw) if decoded_B3HW is None else decoded_B3HW)
    return estimate_BChw + f_BChw - round_trip_BChw


@torch.no_grad()
def reencode_tokens(adapter: FamilyAdapter, f_BChw: torch.Tensor, iterations: int, token_search: Optional[TokenSearch] = None,
                    *, start: Optional[Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tokens of ``f = D⁻¹(x)`` after ``iterations`` steps that cancel the inverse decoder's bias.

    Re-encoding a decoded feature map does not give it back exactly: ``D⁻¹(D(f̂)) = f̂ + b(f̂)``
    with a bias ``b`` that varies slowly with ``f̂``. For a generated image ``x = D(f̂*)`` that
    makes ``f = f̂* + b(f̂*)``. From the current estimate ``f̂ₙ`` (at first, ``f`` quantized), the
    target ``f̂ₙ + f − D⁻¹(D(f̂ₙ))`` ``= f̂* + b(f̂*) − b(f̂ₙ)`` has most of the bias removed, and its
    quantization is the next estimate. Each step costs one decode and one encode, no gradients.
    VAR's tokens come from ``token_search`` when given, else greedy. ``start = (tokens, f̂, D(f̂))``
    is ``f``'s own quantization when the caller already has it (``D(f̂)`` may be ``None``).
    Returns ``(tokens B×L, last target)``; ``iterations = 0`` quantizes ``f`` as it is.
    """
    read = _token_reader(adapter, token_search)
    tokens, f_hat, decoded = start if start is not None else (*read(f_BChw), None)
    target = f_BChw
    for _ in range(iterations):
        target = reencode_target(adapter, f_BChw, f_hat, decoded)
        tokens, f_hat = read(target)
        decoded = None
    return tokens, target


def latent_tracer(adapter: FamilyAdapter, img01_B3HW: torch.Tensor, iters: int = 100, lr: float = 0.01,
                  halve_every: int = 50) -> torch.Tensor:
    """LatentTracer baseline: final per-image reconstruction error after latent optimisation from ``f̂``."""
    with torch.no_grad():
        _, f_hat = adapter.quantize(adapter.encode(img01_B3HW.to(adapter.device).float()))
    return optimise_latent(adapter, img01_B3HW, f_hat, iters, lr, halve_every)[1]


def refined_enc_loss(adapter: FamilyAdapter, img01_B3HW: torch.Tensor, steps: int = REFINED_ENC_STEPS, lr: float = 0.01) -> torch.Tensor:
    """Refined EncLoss: the per-image error ``‖clamp(D(f)) − x‖²`` after ``steps`` Adam steps
    from ``f = D⁻¹(x)`` (constant learning rate; see the module doc)."""
    with torch.no_grad():
        f = adapter.encode(img01_B3HW.to(adapter.device).float())
    return optimise_latent(adapter, img01_B3HW, f, steps, lr, halve_every=steps + 1)[1]


def colour_refined_enc_loss(adapter: FamilyAdapter, img01_B3HW: torch.Tensor, steps: int = REFINED_ENC_STEPS,
                            lr: float = 0.01) -> torch.Tensor:
    """Colour-corrected refined EncLoss: the per-image error ``‖clamp(M·clamp(D(f)) + b) − x‖²`` at
    the ``steps``-th Adam step on ``(f, M, b)`` (see the module doc for the start)."""
    x = img01_B3HW.to(adapter.device).float()
    with torch.no_grad():
        M, b = colour_fit(adapter.decode_raw(adapter.encode(x)).clamp(0, 1), x)
        inverse_B33 = torch.linalg.inv(M + 1e-4 * torch.eye(3, device=x.device))
        undone = apply_colour(inverse_B33, -torch.bmm(inverse_B33, b.unsqueeze(-1)).squeeze(-1), x)  # M⁻¹(x − b)
        latent = adapter.encode(undone.clamp(0, 1))
        colour = colour_fit(adapter.decode_raw(latent).clamp(0, 1), x)
    return optimise_latent(adapter, x, latent, steps, lr, halve_every=steps + 1, colour=colour)[1]


SLOW_SIGNALS: Dict[str, Callable[[FamilyAdapter, torch.Tensor], torch.Tensor]] = {
    "latent_tracer": latent_tracer, "enc_loss_refined": refined_enc_loss, "enc_loss_refined_colour": colour_refined_enc_loss}


def signal_frame(adapter: FamilyAdapter, images: Sequence[torch.Tensor] | torch.Tensor, ids: Sequence[str], *,
                 batch_size: int = 32, token_search: Optional[TokenSearch] = None, slow: Sequence[str] = (),
                 prefix: str = "", progress: bool = True) -> pd.DataFrame:
    """Signals for many images as a frame indexed by image id (columns prefixed with ``prefix``):
    every closed-form signal, plus the optimisation-based ones named in ``slow`` (keys of
    :data:`SLOW_SIGNALS`)."""
    unknown = sorted(set(slow) - set(SLOW_SIGNALS))
    if unknown:
        raise ValueError(f"unknown slow signals {unknown}; expected some of {sorted(SLOW_SIGNALS)}")
    from tqdm.auto import tqdm

    rows: Dict[str, list] = {}
    starts = range(0, len(ids), batch_size)
    for start in tqdm(starts, desc=f"{adapter.family} signals", disable=not progress, leave=False):
        batch = images[start:start + batch_size]
        batch = batch if isinstance(batch, torch.Tensor) else torch.stack(list(batch))
        values = family_signals(adapter, batch, token_search)
        for name in slow:
            values[name] = SLOW_SIGNALS[name](adapter, batch)
        for name, v in values.items():
            rows.setdefault(prefix + name, []).extend(v.detach().cpu().double().tolist())
    return pd.DataFrame(rows, index=pd.Index(list(ids), name="image_id"))
