"""VAR's next-scale-prediction transformer (Tian et al., 2024).

The sequence is the concatenation of all token maps, coarse to fine: ``L = Σ pn²`` positions.
The first ``pn₀²`` positions hold the class embedding ("start of sequence"); the positions of
scale ``k + 1`` hold ``word_embed`` of the running ``f̂`` after scale ``k`` downsampled to
``pn_{k+1}``. A block-causal mask lets every position attend to its own and all coarser scales,
so one teacher-forced pass predicts all tokens of all scales. Every block is conditioned on the
class through adaptive LayerNorm (six scale/shift/gate vectors from ``ada_lin``); attention
uses L2-normalised queries/keys with a learned per-head temperature. Class ``num_classes`` is
the unconditional ("dropped") label used for classifier-free guidance.

State-dict keys equal the official ``VAR`` (``var_d16.pth`` …); width = 64·depth, heads = depth
for the official models. Label dropout applies only in training mode (the official code drops
labels even in eval mode, which scoring code must avoid).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["VARTransformer"]


class SelfAttention(nn.Module):
    """Multi-head attention with optional L2-normalised q/k and a key/value cache for sampling."""

    def __init__(self, embed_dim: int, num_heads: int, attn_l2_norm: bool = True) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.cached_k: Optional[torch.Tensor] = None
        self.cached_v: Optional[torch.Tensor] = None
        self.caching = False

    def kv_caching(self, enable: bool) -> None:
        self.caching, self.cached_k, self.cached_v = enable, None, None

    def forward(self, x_BLC: torch.Tensor, attn_bias: Optional[torch.Tensor]) -> torch.Tensor:
        B, L, C = x_BLC.shape
        qkv_bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x_BLC, self.mat_qkv.weight, qkv_bias).view(B, L, 3, self.num_heads, self.head_dim)
        q_BHLc, k_BHLc, v_BHLc = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q_BHLc = F.normalize(q_BHLc, dim=-1).mul(scale_mul)
            k_BHLc = F.normalize(k_BHLc, dim=-1)
        if self.caching:
            if self.cached_k is not None:
                k_BHLc = torch.cat((self.cached_k, k_BHLc), dim=2)
                v_BHLc = torch.cat((self.cached_v, v_BHLc), dim=2)
            self.cached_k, self.cached_v = k_BHLc, v_BHLc
        out = F.scaled_dot_product_attention(q_BHLc, k_BHLc, v_BHLc, attn_mask=attn_bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class FFN(nn.Module):
    """Two-layer MLP with tanh-approximated GELU."""

    def __init__(self, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class AdaLNSelfAttn(nn.Module):
    """Transformer block whose LayerNorm scale/shift and residual gates come from the class."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float, norm_eps: float,
                 shared_aln: bool, attn_l2_norm: bool, drop_path: float = 0.0) -> None:
        super().__init__()
        self.C = embed_dim
        self.attn = SelfAttention(embed_dim, num_heads, attn_l2_norm)
        self.ffn = FFN(embed_dim, round(embed_dim * mlp_ratio))
        self.ln_wo_grad = nn.LayerNorm(embed_dim, eps=norm_eps, elementwise_affine=False)
        self.shared_aln = shared_aln
        self.drop_path = drop_path
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, embed_dim) / embed_dim ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 6 * embed_dim))

    def _drop_path(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path <= 0:
            return x
        keep = 1 - self.drop_path
        return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor, attn_bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self.shared_aln:
            mods = (self.ada_gss + cond_BD).unbind(2)
        else:
            mods = self.ada_lin(cond_BD).view(-1, 1, 6, self.C).unbind(2)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mods
        h = self.attn(self.ln_wo_grad(x_BLC).mul(scale1.add(1)).add_(shift1), attn_bias=attn_bias)
        x_BLC = x_BLC + self._drop_path(h.mul_(gamma1))
        h = self.ffn(self.ln_wo_grad(x_BLC).mul(scale2.add(1)).add_(shift2))
        return x_BLC + self._drop_path(h.mul(gamma2))


class AdaLNBeforeHead(nn.Module):
    """Final class-conditioned LayerNorm before the vocabulary head."""

    def __init__(self, embed_dim: int, norm_eps: float) -> None:
        super().__init__()
        self.C = embed_dim
        self.ln_wo_grad = nn.LayerNorm(embed_dim, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * embed_dim))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x_BLC).mul(scale.add(1)).add_(shift)


class _SharedAdaLin(nn.Linear):
    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(cond_BD).view(-1, 1, 6, self.weight.shape[0] // 6)


class VARTransformer(nn.Module):
    """Class-conditional next-scale predictor over a VQVAE with ``Cvae``-dim codes and ``V`` tokens."""

    def __init__(
        self, *, V: int, Cvae: int, patch_nums: Sequence[int], num_classes: int = 1000,
        depth: int = 16, embed_dim: int = 1024, num_heads: int = 16, mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6, shared_aln: bool = False, attn_l2_norm: bool = True,
        cond_drop_rate: float = 0.1, drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.V, self.Cvae, self.C, self.depth = V, Cvae, embed_dim, depth
        self.num_classes, self.cond_drop_rate = num_classes, cond_drop_rate
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.L = sum(pn * pn for pn in self.patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        self.begin_ends = []
        cur = 0
        for pn in self.patch_nums:
            self.begin_ends.append((cur, cur + pn * pn))
            cur += pn * pn

        self.word_embed = nn.Linear(Cvae, embed_dim)
        self.class_emb = nn.Embedding(num_classes + 1, embed_dim)
        self.pos_start = nn.Parameter(torch.zeros(1, self.first_l, embed_dim))
        self.pos_1LC = nn.Parameter(torch.zeros(1, self.L, embed_dim))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), embed_dim)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), _SharedAdaLin(embed_dim, 6 * embed_dim)) if shared_aln else nn.Identity()
        drop_rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList([
            AdaLNSelfAttn(embed_dim, num_heads, mlp_ratio, norm_eps, shared_aln, attn_l2_norm, drop_rates[i])
            for i in range(depth)
        ])
        level_L = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(self.patch_nums)]).view(1, self.L)
        self.register_buffer("lvl_1L", level_L)
        d_1L1 = level_L.view(1, self.L, 1)
        mask = torch.where(d_1L1 >= d_1L1.transpose(1, 2), 0.0, -torch.inf).reshape(1, 1, self.L, self.L)
        self.register_buffer("attn_bias_for_masking", mask.contiguous())
        self.head_nm = AdaLNBeforeHead(embed_dim, norm_eps)
        self.head = nn.Linear(embed_dim, V)

    # ------------------------------------------------------------------ pieces shared with the sampler
    def class_condition(self, label_B: torch.Tensor) -> torch.Tensor:
        """Class embedding ``B×D``; ``label = num_classes`` is the unconditional row."""
        return self.class_emb(label_B)

    def level_position_embedding(self) -> torch.Tensor:
        """``lvl_embed + pos_1LC`` for every position, ``1×L×C``."""
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC

    def run_blocks(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor, attn_bias: Optional[torch.Tensor]) -> torch.Tensor:
        cond = self.shared_ada_lin(cond_BD)
        for block in self.blocks:
            x_BLC = block(x_BLC, cond, attn_bias)
        return x_BLC

    def logits(self, h_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_nm(h_BLC.float(), cond_BD).float()).float()

    def kv_caching(self, enable: bool) -> None:
        for block in self.blocks:
            block.attn.kv_caching(enable)

    # ------------------------------------------------------------------ teacher forcing
    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """Logits ``B×L×V`` for all scales given the labels and the teacher-forcing input.

        A shorter input (the first ``ℓ − pn₀²`` rows) gives the logits of the first ``ℓ`` positions,
        identical to the full pass's because the mask is block-causal.
        """
        B = x_BLCv_wo_first_l.shape[0]
        ed = self.first_l + x_BLCv_wo_first_l.shape[1]
        if self.training and self.cond_drop_rate > 0:
            drop = torch.rand(B, device=label_B.device) < self.cond_drop_rate
            label_B = torch.where(drop, torch.full_like(label_B, self.num_classes), label_B)
        cond_BD = self.class_condition(label_B)
        sos = cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
        x_BLC = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l.float())), dim=1)
        x_BLC = x_BLC + (self.lvl_embed(self.lvl_1L[:, :ed].expand(B, -1)) + self.pos_1LC[:, :ed])
        h_BLC = self.run_blocks(x_BLC, cond_BD, self.attn_bias_for_masking[:, :, :ed, :ed])
        return self.logits(h_BLC, cond_BD)

    # ------------------------------------------------------------------ initialisation (training from scratch)
    @torch.no_grad()
    def init_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02, init_std: float = -1.0) -> None:
        """The official initialisation scheme (truncated normals, scaled residual projections)."""
        std = (1 / self.C / 3) ** 0.5 if init_std < 0 else init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, std=std)
        self.head.weight.mul_(init_head)
        self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.zero_()
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * self.depth))
            block.ffn.fc2.weight.div_(math.sqrt(2 * self.depth))
            if hasattr(block, "ada_lin"):
                block.ada_lin[-1].weight[2 * self.C:].mul_(init_adaln)
                block.ada_lin[-1].weight[: 2 * self.C].mul_(init_adaln_gamma)
                block.ada_lin[-1].bias.zero_()
