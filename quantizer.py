"""Recovering VAR's multi-scale tokens from a feature map: greedy, the paper's search, and ours.

VAR builds ``f̂ = Σ_k φ_k(up(E[idx_k]))`` over K scales. Greedy quantization (VAR's own, in
``models/var_quantizer.py`` — not repeated here) picks each scale's tokens from the residual
left by coarser scales; it never revisits a choice, so even for a feature map that is *exactly*
a sum of codebook entries (an image VAR generated) it usually lands on other tokens with a
non-zero error. The paper's Algorithm 3 searches the tokens of all scales jointly to find the
generating tokens back, which it reports makes QuantLoss ≈ 0 for VAR's own images. On the demo
zoo no search here does that, not even from the generator's exact ``f̂`` (``scripts/diagnose_zoo.py``,
``token_recovery_exact_fhat``): a multi-scale sum is approached by many token sets.

* :func:`search_tokens_reference` — a faithful Algorithm 3: per-scale logits over the codebook
  initialised at the greedy tokens (+0.5), soft embeddings ``softmax(logits/τ) @ E`` with τ
  annealed 2 → 0.5, Adam (lr 0.1) on ``½‖f̂ − f‖²``; one round over all scales, then rounds that
  freeze the finest scales one more at a time (200 iterations each, 1 200 in all); tokens =
  argmax at the end. It can end worse than greedy.
* :func:`search_tokens` — ours. The same relaxation restricted to each position's ``k`` nearest
  codes (greedy's residual neighbourhood, so the softmax and the mixing are ``V/k`` times
  cheaper), per-image best-so-far tracking of the *hard* tokens (never worse than greedy, never
  worse than anything it has seen), all images of a batch at once with per-image losses. It runs
  its whole anneal: the early stopping it had until 2026-12-07 ended a batch once no image had
  improved for a few checks, which made an image's tokens depend on its batch mates, and stopping
  each image on its own cost fit without saving time (``docs/evaluation.md``, *Token search*).

* :func:`prior_guided_tokens` — greedy's residual walk with a prior (e.g. a variant's sampler)
  traded against the code distance; ``scripts/diagnose_zoo.py --guided-weight`` asks whether
  knowing what the transformer would sample finds the generating tokens back.

The default anneal is 20 iterations. On 50 VAR-made demo test images (``python
scripts/bench_token_search.py``, 2 threads; ``docs/evaluation.md``, *Token search*) it fits them at a
mean QuantLoss of 1.746e-3 in 8.5 ms per image, against 1.727e-3 in 46.7 ms for a 120-iteration
anneal, 1.819e-3 for greedy and 1.53e-2 in 409 ms for the reference; in the feature extractor, 20
and 40 iterations recover the same share of VAR's tokens (``scripts/diagnose_zoo.py``, 44.2 vs 44.1 %).

From the command line — VAR's tokens and QuantLoss for a folder of images, read with the VAR
inverse decoder (or the tokenizer's own encoder):

    python quantizer.py FOLDER [--method search|greedy|reference] [--encoder inverse|original]
                        [--out quant_loss.csv] [--tokens tokens.pt] [--weights-dir DIR]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from models.var_quantizer import MultiScaleQuantizer, code_distances

__all__ = ["SearchResult", "TOKEN_READERS", "greedy_tokens", "search_tokens_reference", "search_tokens", "prior_guided_tokens", "LogPrior",
           "per_image_mse"]


@dataclass
class SearchResult:
    """Tokens per scale, the final ``f̂``, its per-image MSE to ``f`` and the iterations used."""

    idx_per_scale: List[torch.Tensor]
    f_hat: torch.Tensor
    mse: torch.Tensor
    iterations: int

    @property
    def tokens(self) -> torch.Tensor:
        """All scales concatenated, ``B×L``."""
        return torch.cat(self.idx_per_scale, dim=1)


def per_image_mse(a_BChw: torch.Tensor, b_BChw: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image, ``B``."""
    return (a_BChw.float() - b_BChw.float()).square().flatten(1).mean(1)


@torch.no_grad()
def greedy_tokens(quant: MultiScaleQuantizer, f_BChw: torch.Tensor) -> SearchResult:
    idx, f_hats = quant.quantize_greedy(f_BChw)
    return SearchResult(idx, f_hats[-1], per_image_mse(f_hats[-1], f_BChw), 0)


def _annealed_tau(t: int, iters: int, tau_start: float, tau_end: float) -> float:
    return tau_end if iters <= 1 else tau_start * (tau_end / tau_start) ** (t / (iters - 1))


def _init_logits(idx_Bn: torch.Tensor, width: int, bias: float, candidates_Bnk: Optional[torch.Tensor] = None) -> torch.Tensor:
    B, n = idx_Bn.shape
    logits = torch.zeros(B, n, width, device=idx_Bn.device)
    slot = idx_Bn if candidates_Bnk is None else (candidates_Bnk == idx_Bn.unsqueeze(-1)).float().argmax(-1)
    return logits.scatter_(2, slot.unsqueeze(-1), bias)


def _embedding_maps(quant: MultiScaleQuantizer, mixes: Sequence[torch.Tensor], hard_idx: Sequence[Optional[torch.Tensor]],
                    candidates: Optional[Sequence[torch.Tensor]] = None) -> List[torch.Tensor]:
    """Per-scale ``B×C×pn×pn`` maps: hard tokens where given, else the soft mixture of codes."""
    codebook_VC = quant.embedding.weight
    maps = []
    for si, pn in enumerate(quant.patch_nums):
        if hard_idx[si] is not None:
            maps.append(quant.tokens_to_embeddings(hard_idx[si], pn, pn))
            continue
        p = mixes[si]
        if candidates is None:
            z_BnC = p @ codebook_VC
        else:
            z_BnC = torch.einsum("bnk,bnkc->bnc", p, codebook_VC[candidates[si]])
        maps.append(z_BnC.transpose(1, 2).reshape(p.shape[0], quant.Cvae, pn, pn))
    return maps


def _set_grads(params: Sequence[torch.Tensor], loss: torch.Tensor) -> None:
    """``.grad`` of ``params`` only: ``loss.backward()`` would also write gradients into the
    quantizer's codebook and φ convolutions wherever they are trainable (a shared model's state)."""
    for param, grad in zip(params, torch.autograd.grad(loss, list(params))):
        param.grad = grad


def _hard_fhat(quant: MultiScaleQuantizer, idx_per_scale: Sequence[torch.Tensor]) -> torch.Tensor:
    return quant.tokens_to_fhat(idx_per_scale)


def search_tokens_reference(
    quant: MultiScaleQuantizer, f_BChw: torch.Tensor, *, iters_per_round: int = 200, rounds: int = 6,
    lr: float = 0.1, tau_start: float = 2.0, tau_end: float = 0.5, init_bias: float = 0.5,
) -> SearchResult:
    """The paper's Algorithm 3 (1 200 Adam iterations by default), image by image: its loss is each
    image's ``½‖f̂ − f‖²`` (mean over the map), summed over the batch."""
    f_BChw = f_BChw.detach()
    K = quant.num_scales
    idx = greedy_tokens(quant, f_BChw).idx_per_scale
    # round 0 optimises every scale; round r freezes the r finest scales at their current tokens
    for r in range(rounds):
        n_free = max(K - r, 1)
        logits = [_init_logits(i, quant.vocab_size, init_bias).requires_grad_(si < n_free) for si, i in enumerate(idx)]
        opt = torch.optim.Adam(logits[:n_free], lr=lr)
        frozen = [None] * n_free + [i for i in idx[n_free:]]
        for t in range(iters_per_round):
            tau = _annealed_tau(t, iters_per_round, tau_start, tau_end)
            with torch.enable_grad():
                mixes = [F.softmax(l / tau, dim=-1) for l in logits]
                f_hat = quant.embeddings_to_fhat(_embedding_maps(quant, mixes, frozen))
                # per image, summed: a batch mean would shrink each image's gradient by the batch size
                # against Adam's eps, so an image's tokens would depend on its batch mates
                loss = 0.5 * per_image_mse(f_hat, f_BChw).sum()
                _set_grads(logits[:n_free], loss)
            opt.step()
        idx = [l.detach().argmax(-1) for l in logits[:n_free]] + list(idx[n_free:])
    with torch.no_grad():
        f_hat = _hard_fhat(quant, idx)
    return SearchResult(idx, f_hat, per_image_mse(f_hat, f_BChw), rounds * iters_per_round)


@torch.no_grad()
def _nearest_candidates(quant: MultiScaleQuantizer, f_BChw: torch.Tensor, idx_per_scale: Sequence[torch.Tensor], k: int) -> List[torch.Tensor]:
    """Per scale, the ``k`` codes nearest to greedy's residual at each position (``B×n×k``).

    The greedy token is always among them (it is the nearest).
    """
    return [d.topk(min(k, quant.vocab_size), largest=False, dim=-1).indices
            for d in quant.residual_code_distances(f_BChw, idx_per_scale)]


def search_tokens(
    quant: MultiScaleQuantizer, f_BChw: torch.Tensor, *, candidates: int = 16, max_iters: int = 20,
    lr: float = 0.2, tau_start: float = 1.0, tau_end: float = 0.1, init_bias: float = 1.0,
    check_every: int = 5, rel_tol: float = 1e-4,
) -> SearchResult:
    """Our token search: restricted relaxation + best-so-far (see module doc).

    The whole anneal of ``max_iters`` iterations runs; every ``check_every`` iterations (and at the
    end) each image's hard tokens replace its best so far where they lower its error by more than
    ``rel_tol`` (relative). Each image's losses and Adam's element-wise updates make its tokens
    independent of its batch mates, up to the rounding of batched kernels, which a long anneal (over
    ~100 iterations) can amplify into other tokens; ``batch_features`` pads every pass to fixed
    chunks, so its rows are exact on the CPU (on a GPU the gradient of the bicubic upsampling is
    summed with atomic adds, in no fixed order).
    """
    f_BChw = f_BChw.detach()
    start = greedy_tokens(quant, f_BChw)
    best_idx = [i.clone() for i in start.idx_per_scale]
    best_mse = start.mse.clone()
    cand = _nearest_candidates(quant, f_BChw, best_idx, candidates) if candidates < quant.vocab_size else None
    width = cand[0].shape[-1] if cand is not None else quant.vocab_size
    logits = [_init_logits(i, width, init_bias, c).requires_grad_(True)
              for i, c in zip(best_idx, cand if cand is not None else [None] * len(best_idx))]
    opt = torch.optim.Adam(logits, lr=lr)
    free = [None] * quant.num_scales
    for t in range(1, max_iters + 1):
        tau = _annealed_tau(t - 1, max_iters, tau_start, tau_end)
        with torch.enable_grad():
            mixes = [F.softmax(l / tau, dim=-1) for l in logits]
            f_hat = quant.embeddings_to_fhat(_embedding_maps(quant, mixes, free, cand))
            loss = 0.5 * per_image_mse(f_hat, f_BChw).sum()
            _set_grads(logits, loss)
        opt.step()
        if t % check_every and t != max_iters:
            continue
        with torch.no_grad():
            slots = [l.argmax(-1) for l in logits]
            idx = slots if cand is None else [c.gather(-1, s.unsqueeze(-1)).squeeze(-1) for c, s in zip(cand, slots)]
            mse = per_image_mse(_hard_fhat(quant, idx), f_BChw)
            improved = mse < best_mse * (1 - rel_tol)
            for si in range(quant.num_scales):
                best_idx[si][improved] = idx[si][improved]
            best_mse = torch.where(improved, mse, best_mse)
    with torch.no_grad():
        f_hat = _hard_fhat(quant, best_idx)
    return SearchResult(best_idx, f_hat, per_image_mse(f_hat, f_BChw), max_iters)


LogPrior = Callable[[int, List[torch.Tensor]], torch.Tensor]


@torch.no_grad()
def prior_guided_tokens(quant: MultiScaleQuantizer, f_BChw: torch.Tensor, log_prior: LogPrior,
                        weight: float) -> Tuple[SearchResult, torch.Tensor]:
    """Greedy's residual walk with a prior over each scale's tokens: a reader that can prefer
    the tokens a transformer would have sampled over the nearest codes.

    At scale ``si`` every position takes the code maximising ``log p(code) − weight·‖r − e_code‖²``,
    where ``r`` is greedy's residual (area-downsampled) and ``log p = log_prior(si, coarser)``
    (``B×pn²×V``, −inf for codes the sampler can never draw) is the prior given the tokens
    already chosen at coarser scales. ``weight → ∞`` is greedy; ``weight = 0`` is the prior's
    argmax. Returns the tokens, their ``f̂`` and MSE to ``f``, and per image the sum of the
    maximised objective over all positions (comparable between priors: the higher, the better
    one prior explains ``f``).
    """
    codebook_VC = quant.embedding.weight.detach()
    chosen: List[torch.Tensor] = []
    objective_B = f_BChw.new_zeros(f_BChw.shape[0])

    def choose(si: int, rest_NC: torch.Tensor) -> torch.Tensor:
        log_p_BlV = log_prior(si, chosen)
        score_BlV = log_p_BlV - weight * code_distances(rest_NC, codebook_VC).view_as(log_p_BlV)
        best_Bl, idx_Bl = score_BlV.max(-1)
        objective_B.add_(best_Bl.sum(-1))
        chosen.append(idx_Bl)
        return idx_Bl.reshape(-1)

    idx_per_scale, f_hats = quant.residual_walk(f_BChw.detach(), choose)
    return SearchResult(idx_per_scale, f_hats[-1], per_image_mse(f_hats[-1], f_BChw), 0), objective_B


TOKEN_READERS = {"search": search_tokens, "greedy": greedy_tokens, "reference": search_tokens_reference}


def main(argv: Optional[list] = None) -> int:
    import pandas as pd
    from tqdm.auto import tqdm

    import inv_decoder
    from cli import add_weights_arguments, at_least, folder_images, output_file
    from dataset import load_images
    from models.zoo import load_family

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder of images (searched recursively)")
    parser.add_argument("--method", default="search", choices=sorted(TOKEN_READERS), help="token reader (default: %(default)s)")
    parser.add_argument("--encoder", default="inverse", choices=["inverse", "original"],
                        help="the VAR inverse decoder or the tokenizer's own encoder (default: %(default)s)")
    parser.add_argument("--out", type=output_file, default=Path("quant_loss.csv"),
                        help="CSV image_id,quant_loss,iterations (default: quant_loss.csv in the working folder)")
    parser.add_argument("--tokens", type=output_file, help="also save the tokens (torch file: image_ids, tokens N×L, patch_nums)")
    add_weights_arguments(parser)
    parser.add_argument("--batch-size", type=at_least(1), default=32, help="images per batch (default 32)")
    args = parser.parse_args(argv)
    from runtime import keep_freed_memory

    keep_freed_memory()  # same numbers, far less system time on reused buffers
    paths = folder_images(args.folder)
    adapter = load_family("VAR", args.weights_dir)
    if args.encoder == "inverse":
        adapter = inv_decoder.load_inverse_decoder(adapter, inv_decoder.ensure_inverse_decoder("VAR", args.weights_dir, args.inv_root))
    quant, read = adapter.tokenizer.quantize, TOKEN_READERS[args.method]
    losses, iterations, tokens = [], [], []
    for start in tqdm(range(0, len(paths), args.batch_size), desc=f"VAR tokens ({args.method})", unit="batch"):
        with torch.no_grad():
            f = adapter.encode(load_images(paths[start:start + args.batch_size], size=adapter.image_size))
        found = read(quant, f)
        losses.append(found.mse)
        iterations += [found.iterations] * len(f)
        tokens.append(found.tokens)
    ids = [str(p.relative_to(args.folder)) for p in paths]
    frame = pd.DataFrame({"quant_loss": torch.cat(losses).double().numpy(), "iterations": iterations},
                         index=pd.Index(ids, name="image_id"))
    from atomic import atomic_path

    with atomic_path(args.out) as tmp:
        frame.to_csv(tmp)
    print(f"{len(frame)} images, median QuantLoss {frame['quant_loss'].median():.4e} → {args.out}")
    if args.tokens:
        with atomic_path(args.tokens) as tmp:
            torch.save({"image_ids": ids, "tokens": torch.cat(tokens), "patch_nums": list(quant.patch_nums)}, tmp)
        print(f"tokens → {args.tokens}")
    return 0


if __name__ == "__main__":
    from cli import run_module

    sys.exit(run_module("quantizer"))
