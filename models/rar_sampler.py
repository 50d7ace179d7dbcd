"""Classifier-free-guided, KV-cached raster-order sampling from a RAR generator.

At step ``s`` of ``N`` the guidance weight follows RAR's cosine schedule
``w_s = 1 + (g − 1)·(1 − cos(π·(s/N)^p))/2`` (``g`` = guidance_scale, ``p`` = guidance_scale_pow),
logits are ``uncond + w_s·(cond − uncond)``, divided by the temperature, and one token is drawn
with ``torch.multinomial``. Random numbers are consumed exactly as the official ``generate``
consumes them — including the ``rand_like`` draw of its label-dropout step, which happens even
with dropout probability 0 — so ``generator=torch.Generator().manual_seed(s)`` reproduces the
official output after ``torch.manual_seed(s)``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .rar_generator import RARGenerator

__all__ = ["guidance_weight", "guided_logits", "sample_rar_tokens"]


def guidance_weight(step: int, num_steps: int, guidance_scale: float, guidance_scale_pow: float) -> torch.Tensor:
    """RAR's cosine guidance schedule, in float32 as the official code computes it."""
    scale_pow = torch.ones(1) * guidance_scale_pow
    scale_step = (1 - torch.cos(((step / num_steps) ** scale_pow) * torch.pi)) * 1 / 2
    return (guidance_scale - 1) * scale_step + 1


def guided_logits(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, weight, temperature: float) -> torch.Tensor:
    """``(uncond + w·(cond − uncond)) / temperature``: the logits RAR samples from."""
    return (uncond_logits + (cond_logits - uncond_logits) * weight) / temperature


@torch.no_grad()
def sample_rar_tokens(
    generator_model: RARGenerator, labels_B: torch.Tensor, *, guidance_scale: float = 16.0,
    guidance_scale_pow: float = 2.75, temperature: float = 1.0, generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Sample ``B×N`` token ids (raster order) for class labels ``labels_B``."""
    rar = generator_model
    device = labels_B.device
    B, N = labels_B.shape[0], rar.image_seq_len
    torch.rand(labels_B.shape, generator=generator, device=device)  # the official label-dropout draw
    cond = rar.condition_ids(labels_B)
    guided = guidance_scale != 0
    conds = torch.cat([cond, rar.none_condition(cond)]) if guided else cond
    ids = torch.zeros((conds.shape[0], 0), dtype=torch.long, device=device)
    rar.enable_kv_cache(True)
    try:
        for step in range(N):
            x, c = rar.embed_sequence(ids, conds)
            if step == 0:
                L = x.shape[1]
                h, c_step = x, c
                mask = rar.attn_mask[:L, :L]
            else:
                h, c_step, mask = x[:, -1:], c[:, -1:], None
            for blk in rar.blocks:
                h = blk(h, mask, c_step)
            logits = rar.head(h, c_step)[:, -1]
            if guided:
                cond_logits, uncond_logits = logits[:B], logits[B:]
                w = guidance_weight(step, N, guidance_scale, guidance_scale_pow).to(device)
                logits = guided_logits(cond_logits, uncond_logits, w, temperature)
            else:
                logits = logits / temperature
            probs = F.softmax(logits, dim=-1)
            sampled = torch.multinomial(probs, num_samples=1, generator=generator)
            ids = torch.cat([ids, sampled.repeat(2, 1) if guided else sampled], dim=1)
    finally:
        rar.enable_kv_cache(False)
    return ids[:B]
