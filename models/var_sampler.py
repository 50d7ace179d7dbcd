"""Classifier-free-guided, KV-cached sampling from a VAR transformer.

Scale by scale, the transformer sees the class token (scale 0) or the upsampled running
``f̂`` (later scales), predicts logits for every position of the scale at once, mixes
conditional and unconditional logits with a guidance weight that grows linearly with the
scale index (``t = cfg · k / (K − 1)``; ``(1 + t)·cond − t·uncond``), filters them with top-k /
top-p and samples one token per position. Random numbers are drawn exactly as the official
``autoregressive_infer_cfg`` draws them (a seeded ``torch.Generator``, ``torch.multinomial``),
so a seed reproduces the official images.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .var_transformer import VARTransformer
from .var_vqvae import VARVQVAE

__all__ = ["filter_top_k_top_p", "survives_top_k_top_p", "guidance_per_scale", "guided_logits", "sample_var_tokens", "sample_var_images"]


def filter_top_k_top_p(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Set to −inf every logit outside the top-k and outside the nucleus of mass ``top_p``."""
    logits_BlV = logits_BlV.clone()
    if top_k > 0:
        kth_best = logits_BlV.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth_best, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        remove_sorted = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove_sorted[..., -1:] = False
        logits_BlV.masked_fill_(remove_sorted.scatter(sorted_idx.ndim - 1, sorted_idx, remove_sorted), -torch.inf)
    return logits_BlV


def survives_top_k_top_p(logits_BlV: torch.Tensor, idx_Bl: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Whether each token ``idx_Bl`` survives :func:`filter_top_k_top_p` (``B×l`` bool), without sorting.

    Top-k keeps a token when fewer than ``k`` logits are larger; top-p removes it when the mass
    of the tokens at or below its logit is at most ``1 − top_p`` (the argmax always survives).
    """
    token_logit = logits_BlV.gather(-1, idx_Bl.unsqueeze(-1))
    keep = torch.ones_like(idx_Bl, dtype=torch.bool)
    if top_k > 0:
        keep &= (logits_BlV > token_logit).sum(-1) < top_k
        logits_BlV = filter_top_k_top_p(logits_BlV, top_k=top_k) if top_p > 0 else logits_BlV
    if top_p > 0:
        probs = logits_BlV.softmax(dim=-1)
        mass_at_or_below = (probs * (logits_BlV <= token_logit)).sum(-1)
        is_max = token_logit.squeeze(-1) >= logits_BlV.amax(-1)
        keep &= (mass_at_or_below > 1 - top_p) | is_max
    return keep


def guidance_per_scale(cfg: float, num_scales: int) -> list:
    """VAR's guidance weight of each scale: ``t_k = cfg · k / (K − 1)`` (0 at the class token's scale)."""
    return [cfg * si / (num_scales - 1) for si in range(num_scales)]


def guided_logits(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, t) -> torch.Tensor:
    """``(1 + t)·cond − t·uncond``: the logits VAR samples from (``t`` a number or broadcastable tensor)."""
    return (1 + t) * cond_logits - t * uncond_logits


@torch.no_grad()
def sample_var_tokens(
    var: VARTransformer, vae: VARVQVAE, label_B: torch.Tensor, *, cfg: float = 1.5, top_k: int = 900,
    top_p: float = 0.96, generator: Optional[torch.Generator] = None,
) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Sample token maps for ``label_B``; returns ``(idx_Bl per scale, final f̂)``.

    ``generator`` plays the role of the official ``g_seed``: pass
    ``torch.Generator(device).manual_seed(seed)``.
    """
    B = label_B.shape[0]
    quant = vae.quantize
    K = len(var.patch_nums)
    guidance = guidance_per_scale(cfg, K)
    cond_BD = var.class_condition(torch.cat((label_B, torch.full_like(label_B, var.num_classes)), dim=0))
    lvl_pos = var.level_position_embedding()
    next_in = (cond_BD.unsqueeze(1).expand(2 * B, var.first_l, -1)
               + var.pos_start.expand(2 * B, var.first_l, -1) + lvl_pos[:, : var.first_l])
    f_hat = cond_BD.new_zeros(B, var.Cvae, var.patch_nums[-1], var.patch_nums[-1])
    tokens: List[torch.Tensor] = []
    cur_L = 0
    var.kv_caching(True)
    try:
        for si, pn in enumerate(var.patch_nums):
            cur_L += pn * pn
            h = var.run_blocks(next_in, cond_BD, attn_bias=None)
            logits = var.logits(h, cond_BD)
            logits_BlV = guided_logits(logits[:B], logits[B:], guidance[si])
            probs = filter_top_k_top_p(logits_BlV, top_k=min(top_k, var.V), top_p=top_p).softmax(dim=-1)
            idx_Bl = torch.multinomial(probs.view(-1, var.V), num_samples=1, replacement=True, generator=generator).view(B, pn * pn)
            tokens.append(idx_Bl)
            f_hat, next_map = quant.next_autoregressive_input(si, f_hat, quant.tokens_to_embeddings(idx_Bl, pn, pn))
            if si != K - 1:
                next_in = var.word_embed(next_map.view(B, var.Cvae, -1).transpose(1, 2))
                next_in = (next_in + lvl_pos[:, cur_L: cur_L + var.patch_nums[si + 1] ** 2]).repeat(2, 1, 1)
    finally:
        var.kv_caching(False)
    return tokens, f_hat


@torch.no_grad()
def sample_var_images(
    var: VARTransformer, vae: VARVQVAE, label_B: torch.Tensor, *, cfg: float = 1.5, top_k: int = 900,
    top_p: float = 0.96, generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, List[torch.Tensor], torch.Tensor]:
    """Sample images in ``[0, 1]``; returns ``(images, idx_Bl per scale, f̂)``."""
    tokens, f_hat = sample_var_tokens(var, vae, label_B, cfg=cfg, top_k=top_k, top_p=top_p, generator=generator)
    return vae.decode_fhat(f_hat).add(1).mul(0.5), tokens, f_hat
