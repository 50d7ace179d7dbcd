"""VAR's multi-scale residual vector quantizer (the "VectorQuantizer2" of the official code).

A feature map ``f`` (``B×Cvae×H×W``) is explained coarse-to-fine by K token maps of sizes
``patch_nums = (1, 2, …, H)``. At scale ``k`` the residual ``f − f̂`` is area-downsampled to
``pn_k × pn_k``, every cell is snapped to its nearest codebook vector, the token map is
bicubically upsampled back to ``H×W``, refined by a convolution φ_k
(``φ(h) = (1 − r)·h + r·conv(h)``, ``r = quant_resi``) and added to ``f̂``. The K φ convolutions
are *partially shared*: ``share_quant_resi`` convolutions are placed at evenly spaced "ticks"
in [0, 1] and scale ``k`` uses the one nearest to ``k / (K − 1)``.

This module is the single home of that arithmetic in the project: greedy quantization
(:meth:`MultiScaleQuantizer.quantize_greedy`), tokens → ``f̂``, the differentiable
embeddings → ``f̂`` used by token search, the teacher-forcing input of the transformer, and the
per-step update of the autoregressive sampler all live here.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Phi", "MultiScaleQuantizer", "code_distances", "nearest_code_indices"]


def code_distances(z_NC: torch.Tensor, codebook_VC: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance ``N×V`` of each row of ``z_NC`` to every codebook row.

    Uses ``‖z‖² + ‖e‖² − 2 z·e`` evaluated exactly as the official quantizers do, so ties and
    near-ties resolve identically.
    """
    dist_NV = torch.sum(z_NC.square(), dim=1, keepdim=True) + torch.sum(codebook_VC.square(), dim=1)
    return dist_NV.addmm_(z_NC, codebook_VC.T, alpha=-2, beta=1)


def nearest_code_indices(z_NC: torch.Tensor, codebook_VC: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row (squared L2) for each row of ``z_NC``."""
    return torch.argmin(code_distances(z_NC, codebook_VC), dim=1)


class Phi(nn.Conv2d):
    """Residual refinement ``φ(h) = (1 − r)·h + r·conv3×3(h)`` applied to each upsampled token map."""

    def __init__(self, channels: int, resi_ratio: float) -> None:
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(resi_ratio)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw.mul(1 - self.resi_ratio) + super().forward(h_BChw).mul_(self.resi_ratio)


def _phi_ticks(count: int) -> np.ndarray:
    margin = 1 / 3 / count if count == 4 else 1 / 2 / count
    return np.linspace(margin, 1 - margin, count)


class _PhiShared(nn.Module):
    """One φ for all scales (``share_quant_resi == 1``); state-dict key ``qresi``."""

    def __init__(self, phi: nn.Module) -> None:
        super().__init__()
        self.qresi = phi

    def __getitem__(self, at_0_to_1: float) -> nn.Module:
        return self.qresi


class _PhiPartiallyShared(nn.Module):
    """``n`` φ's at evenly spaced ticks (``share_quant_resi >= 2``); keys ``qresi_ls.{i}``."""

    def __init__(self, phis: Sequence[nn.Module]) -> None:
        super().__init__()
        self.qresi_ls = nn.ModuleList(phis)
        self.ticks = _phi_ticks(len(phis))

    def __getitem__(self, at_0_to_1: float) -> nn.Module:
        return self.qresi_ls[int(np.argmin(np.abs(self.ticks - at_0_to_1)))]


class _PhiNonShared(nn.ModuleList):
    """One φ per scale (``share_quant_resi == 0``); keys ``{i}``."""

    def __init__(self, phis: Sequence[nn.Module]) -> None:
        super().__init__(phis)
        self.ticks = _phi_ticks(len(phis))

    def __getitem__(self, at_0_to_1: float) -> nn.Module:  # type: ignore[override]
        return super().__getitem__(int(np.argmin(np.abs(self.ticks - at_0_to_1))))


class MultiScaleQuantizer(nn.Module):
    """Codebook + partially shared φ's; state-dict layout of the official ``VectorQuantizer2``."""

    def __init__(
        self, vocab_size: int, Cvae: int, patch_nums: Sequence[int],
        quant_resi: float = 0.5, share_quant_resi: int = 4, beta: float = 0.25,
    ) -> None:
        super().__init__()
        self.vocab_size, self.Cvae = vocab_size, Cvae
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.beta = beta

        def make_phi() -> nn.Module:
            return Phi(Cvae, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()

        if share_quant_resi == 0:
            self.quant_resi = _PhiNonShared([make_phi() for _ in self.patch_nums])
        elif share_quant_resi == 1:
            self.quant_resi = _PhiShared(make_phi())
        else:
            self.quant_resi = _PhiPartiallyShared([make_phi() for _ in range(share_quant_resi)])
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))
        self.embedding = nn.Embedding(vocab_size, Cvae)

    # ------------------------------------------------------------------ helpers
    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def phi(self, si: int, num_scales: Optional[int] = None) -> nn.Module:
        """The φ convolution used at scale index ``si``."""
        K = num_scales or self.num_scales
        return self.quant_resi[si / (K - 1)]

    def upsample_and_refine(self, si: int, h_BChw: torch.Tensor, H: int, W: int, num_scales: Optional[int] = None) -> torch.Tensor:
        """Bicubic upsampling of a scale's embedding map to ``H×W`` (unless it is the last) then φ."""
        K = num_scales or self.num_scales
        if si != K - 1:
            h_BChw = F.interpolate(h_BChw, size=(H, W), mode="bicubic")
        return self.phi(si, K)(h_BChw)

    def tokens_to_embeddings(self, idx_Bl: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
        """Token indices ``B×(ph·pw)`` → codebook embedding map ``B×Cvae×ph×pw``."""
        B = idx_Bl.shape[0]
        return self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.Cvae, ph, pw)

    # ------------------------------------------------------------------ greedy quantization
    def residual_walk(
        self, f_BChw: torch.Tensor, choose: Callable[[int, torch.Tensor], torch.Tensor], patch_nums: Optional[Sequence[int]] = None,
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """The coarse-to-fine residual walk: at scale ``si`` the residual ``f − f̂`` is
        area-downsampled to ``pn × pn`` (not at the last scale), ``choose(si, rest_NC)`` names the
        scale's tokens from it (``N = B·pn²`` rows), and their upsampled, φ-refined embedding map
        is added to ``f̂``. Returns ``(idx_Bl per scale, f̂ after each scale)``."""
        B, C, H, W = f_BChw.shape
        pns = tuple(patch_nums or self.patch_nums)
        K = len(pns)
        f_rest = f_BChw.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        idx_per_scale: List[torch.Tensor] = []
        f_hat_per_scale: List[torch.Tensor] = []
        for si, pn in enumerate(pns):
            rest_BChw = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != K - 1 else f_rest
            idx_Bl = choose(si, rest_BChw.permute(0, 2, 3, 1).reshape(-1, C)).reshape(B, pn * pn)
            h_BChw = self.upsample_and_refine(si, self.tokens_to_embeddings(idx_Bl, pn, pn), H, W, K)
            f_hat = f_hat + h_BChw
            f_rest = f_rest - h_BChw.detach()
            idx_per_scale.append(idx_Bl)
            f_hat_per_scale.append(f_hat)
        return idx_per_scale, f_hat_per_scale

    def quantize_greedy(
        self, f_BChw: torch.Tensor, patch_nums: Optional[Sequence[int]] = None,
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Greedy coarse-to-fine quantization of ``f``: each scale takes the code nearest to its residual.

        Returns ``(idx_Bl per scale, f̂ after each scale)``; ``f̂`` of the last scale is the
        quantized feature map the decoder sees.
        """
        H, W = f_BChw.shape[-2:]
        pns = tuple(patch_nums or self.patch_nums)
        if pns[-1] != H or H != W:
            raise ValueError(f"feature map is {H}×{W} but the last patch number is {pns[-1]}")
        codebook_VC = self.embedding.weight.detach()
        return self.residual_walk(f_BChw, lambda si, rest_NC: nearest_code_indices(rest_NC, codebook_VC), pns)

    @torch.no_grad()
    def residual_code_distances(self, f_BChw: torch.Tensor, idx_per_scale: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Per scale, the squared distance ``B×pn²×V`` of the residual that the given coarser
        scales' tokens leave (area-downsampled to the scale) to every code — greedy's view of
        each scale, along any token path."""
        B = f_BChw.shape[0]
        codebook_VC = self.embedding.weight.detach()
        out: List[torch.Tensor] = []

        def given_tokens(si: int, rest_NC: torch.Tensor) -> torch.Tensor:
            out.append(code_distances(rest_NC, codebook_VC).view(B, -1, codebook_VC.shape[0]))
            return idx_per_scale[si]

        self.residual_walk(f_BChw, given_tokens)
        return out

    def quantize_for_training(self, f_BChw: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """VQ-VAE training step: straight-through ``f̂``, the VQ loss and the tokens.

        Loss = mean over scales of ``β‖sg(f̂_k) − f‖² + ‖f̂_k − sg(f)‖²`` (commitment + codebook/φ).
        """
        idx_per_scale, f_hat_per_scale = self.quantize_greedy(f_BChw)
        f_target = f_BChw.detach()
        vq_loss = sum(
            self.beta * F.mse_loss(f_hat.detach(), f_BChw) + F.mse_loss(f_hat, f_target) for f_hat in f_hat_per_scale
        ) / self.num_scales
        f_hat_st = (f_hat_per_scale[-1].detach() - f_target) + f_BChw
        return f_hat_st, vq_loss, idx_per_scale

    # ------------------------------------------------------------------ inverse direction
    def embeddings_to_fhat(self, ms_h_BChw: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-scale embedding maps (hard or soft) → final ``f̂``; differentiable."""
        H = W = self.patch_nums[-1]
        f_hat = None
        for si, h_BChw in enumerate(ms_h_BChw):
            h = self.upsample_and_refine(si, h_BChw, H, W)
            f_hat = h if f_hat is None else f_hat + h
        return f_hat

    def tokens_to_fhat(self, idx_per_scale: Sequence[torch.Tensor]) -> torch.Tensor:
        """Token indices per scale → final ``f̂`` (``B×Cvae×H×W``)."""
        return self.embeddings_to_fhat(
            [self.tokens_to_embeddings(idx_Bl, pn, pn) for idx_Bl, pn in zip(idx_per_scale, self.patch_nums)]
        )

    def teacher_forcing_input(self, idx_per_scale: Sequence[torch.Tensor]) -> torch.Tensor:
        """Transformer input for teacher forcing: ``B×(L − pn₀²)×Cvae``.

        Entry for scale ``k + 1`` is the running ``f̂`` after scales ``0..k``, area-downsampled to
        ``pn_{k+1}``.
        """
        B = idx_per_scale[0].shape[0]
        H = W = self.patch_nums[-1]
        K = self.num_scales
        f_hat = torch.zeros(B, self.Cvae, H, W, device=idx_per_scale[0].device)
        next_scales = []
        for si in range(K - 1):
            pn = self.patch_nums[si]
            f_hat = f_hat + self.upsample_and_refine(si, self.tokens_to_embeddings(idx_per_scale[si], pn, pn), H, W)
            pn_next = self.patch_nums[si + 1]
            next_scales.append(F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").reshape(B, self.Cvae, -1).transpose(1, 2))
        return torch.cat(next_scales, dim=1)

    def next_autoregressive_input(self, si: int, f_hat_BChw: torch.Tensor, h_BChw: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sampler update: add scale ``si``'s embedding map to ``f̂``; return ``(f̂, next input map)``."""
        H = W = self.patch_nums[-1]
        f_hat_BChw = f_hat_BChw + self.upsample_and_refine(si, h_BChw, H, W)
        if si == self.num_scales - 1:
            return f_hat_BChw, f_hat_BChw
        pn_next = self.patch_nums[si + 1]
        return f_hat_BChw, F.interpolate(f_hat_BChw, size=(pn_next, pn_next), mode="area")
