"""RAR: randomized autoregressive generator over MaskGIT-VQGAN tokens (Yu et al., 2024).

A decoder-only transformer reads ``[cls, condition, t₀, t₁, …]`` and predicts token ``tᵢ`` at the
position before it. Token-id space of the shared embedding table:
``[0, V)`` image tokens, ``V`` mask token, ``V + 1 + c`` class ``c``, ``V + 1 + num_classes`` the
"none" (unconditional) condition. Every block is conditioned by adaptive LayerNorm on the
condition embedding plus a per-position timestep embedding. During training the token order is
a random permutation with probability ``random_ratio`` (annealed to 0, "randomness annealing");
``target_aware_pos_embed`` tells each position *which* token it must predict next. At inference
the order is raster.

State-dict keys equal the official ``rar_{b,l,xl,xxl}.bin``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["RARGenerator"]


class RARAttention(nn.Module):
    """Multi-head causal attention with per-head LayerNorm on q and k and an optional KV cache."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.kv_cache = False
        self.k_cache: Optional[torch.Tensor] = None
        self.v_cache: Optional[torch.Tensor] = None

    def reset_kv_cache(self) -> None:
        self.k_cache = self.v_cache = None

    def forward(self, x_BNC: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        B, N, C = x_BNC.shape
        q, k, v = self.qkv(x_BNC).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.kv_cache:
            if self.k_cache is not None:
                k = torch.cat([self.k_cache, k], dim=-2)
                v = torch.cat([self.v_cache, v], dim=-2)
            self.k_cache, self.v_cache = k, v
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


class Mlp(nn.Module):
    """fc1 → exact GELU → dropout → fc2 → dropout (timm's ``Mlp`` layout)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class RARBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int, drop: float = 0.0, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RARAttention(dim, num_heads, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden, drop)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x_BNC: torch.Tensor, attn_mask: Optional[torch.Tensor], c_BNC: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c_BNC).chunk(6, dim=-1)
        x_BNC = x_BNC + gate_msa * self.attn(_modulate(self.norm1(x_BNC), shift_msa, scale_msa), attn_mask)
        return x_BNC + gate_mlp * self.mlp(_modulate(self.norm2(x_BNC), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.adaLN_modulation(c).chunk(2, dim=-1)
        return _modulate(self.norm_final(x), shift, scale)


class RARGenerator(nn.Module):
    """Class-conditional raster/random-order token generator."""

    PREFIX = 2  # cls token + condition token

    def __init__(
        self, hidden_size: int = 768, num_hidden_layers: int = 24, num_attention_heads: int = 16,
        intermediate_size: int = 3072, image_seq_len: int = 256, condition_num_classes: int = 1000,
        codebook_size: int = 1024, dropout: float = 0.0, attn_drop: float = 0.0, **_ignored: object,
    ) -> None:
        super().__init__()
        D = hidden_size
        self.image_seq_len, self.codebook_size = image_seq_len, codebook_size
        self.condition_num_classes = condition_num_classes
        self.none_condition_id = codebook_size + 1 + condition_num_classes
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.blocks = nn.ModuleList(
            [RARBlock(D, num_attention_heads, intermediate_size, dropout, attn_drop) for _ in range(num_hidden_layers)]
        )
        self.embeddings = nn.Embedding(codebook_size + 1 + condition_num_classes + 1, D)
        self.pos_embed = nn.Parameter(torch.zeros(1, image_seq_len + 1024, D))
        self.target_aware_pos_embed = nn.Parameter(torch.zeros(1, image_seq_len + 1024, D))
        self.timesteps_embeddings = nn.Parameter(torch.zeros(1, image_seq_len + 100, D))
        self.adaln_before_head = FinalLayer(D)
        self.lm_head = nn.Linear(D, codebook_size)
        causal = torch.full((image_seq_len + 1024, image_seq_len + 1024), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", causal, persistent=False)
        self.random_ratio = 0.0

    # ------------------------------------------------------------------ conditions
    def condition_ids(self, labels_B: torch.Tensor) -> torch.Tensor:
        """Class labels → condition token ids (``label + V + 1``)."""
        return labels_B + self.codebook_size + 1

    def none_condition(self, like_B: torch.Tensor) -> torch.Tensor:
        return torch.full_like(like_B, self.none_condition_id)

    # ------------------------------------------------------------------ embeddings
    def embed_sequence(self, input_ids_BN: torch.Tensor, condition_B: torch.Tensor, orders_BN: Optional[torch.Tensor] = None):
        """Input embeddings ``x`` (cls, condition, tokens) and per-position conditioning ``c``.

        ``orders_BN[b, j]`` is the raster index of the j-th generated token (None: raster order);
        ``input_ids_BN`` are given in raster order and are permuted here.
        """
        B, n = input_ids_BN.shape
        N = self.image_seq_len
        if orders_BN is None:
            orders_BN = torch.arange(N, device=input_ids_BN.device).expand(B, N)
        tokens = torch.gather(input_ids_BN, 1, orders_BN[:, :n]) if n else input_ids_BN
        emb = self.embeddings(torch.cat([condition_B.view(B, 1), tokens], dim=1))
        x = torch.cat([self.cls_token.expand(B, -1, -1), emb], dim=1)  # B × (n + 2) × D
        L = x.shape[1]
        pos_tokens = self.pos_embed[0, self.PREFIX:][orders_BN]  # B × N × D
        pos = torch.cat([self.pos_embed[:, : self.PREFIX].expand(B, -1, -1), pos_tokens], dim=1)[:, :L]
        target = self.target_aware_pos_embed[0, self.PREFIX:][orders_BN]
        zeros = x.new_zeros(B, 1, x.shape[2])
        target = torch.cat([zeros, target, zeros], dim=1)[:, :L]
        c = emb[:, :1] + self.timesteps_embeddings[:, :L]
        return x + pos + target, c

    def head(self, h_BNC: torch.Tensor, c_BNC: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.adaln_before_head(h_BNC, c_BNC))

    # ------------------------------------------------------------------ teacher forcing
    def forward(self, input_ids_BN: torch.Tensor, condition_B: torch.Tensor, orders_BN: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits ``B×(n+1)×V``: position ``j`` predicts the j-th token of the order.

        ``condition_B`` are condition token ids (see :meth:`condition_ids`).
        """
        x, c = self.embed_sequence(input_ids_BN, condition_B, orders_BN)
        L = x.shape[1]
        mask = self.attn_mask[:L, :L]
        for blk in self.blocks:
            x = blk(x, mask, c)
        return self.head(x[:, self.PREFIX - 1:], c[:, self.PREFIX - 1:])

    def enable_kv_cache(self, enable: bool = True) -> None:
        for blk in self.blocks:
            blk.attn.kv_cache = enable
            blk.attn.reset_kv_cache()

    # ------------------------------------------------------------------ initialisation (training from scratch)
    @torch.no_grad()
    def init_weights(self) -> None:
        """The official scheme: truncated normal(0.02), zero biases, adaLN-zero modulations."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                m.weight.fill_(1.0)
                m.bias.zero_()
        for p in (self.pos_embed, self.target_aware_pos_embed, self.timesteps_embeddings):
            nn.init.trunc_normal_(p, std=0.02)
        for mod in [self.adaln_before_head.adaLN_modulation[-1]] + [b.adaLN_modulation[-1] for b in self.blocks]:
            mod.weight.zero_()
            mod.bias.zero_()
