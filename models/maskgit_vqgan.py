"""MaskGIT-VQGAN: the single-scale image tokenizer used by RAR.

A convolutional encoder (GroupNorm/SiLU residual blocks, 2×2 average pooling between levels,
no attention) maps an image in ``[0, 1]`` to a ``z_channels`` feature map at 1/16 resolution;
every cell is replaced by its nearest codebook vector (plain L2, no projection) and the decoder
maps the quantized map back to an image. The official checkpoint is
``maskgit-vqgan-imagenet-f16-256.bin`` (hidden 128, z 256, codebook 1024, 16×16 tokens).

Quirk kept on purpose: when a residual block changes width, its 1×1 ``nin_shortcut`` is applied
to the block *output* (not its input) and added to it — the published weights depend on it.
All convolutions are stride 1 with odd kernels, so TF-style "same" padding equals ``k // 2``.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .var_quantizer import code_distances, nearest_code_indices
from .var_vae_blocks import group_norm

__all__ = ["MaskGITVQGAN"]


def _conv(cin: int, cout: int, k: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=k, padding=k // 2, bias=bias)


class MaskGITResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.changes_width = in_channels != out_channels
        self.norm1 = group_norm(in_channels)
        self.conv1 = _conv(in_channels, out_channels, 3, bias=False)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(out_channels, out_channels, 3, bias=False)
        if self.changes_width:
            self.nin_shortcut = _conv(out_channels, out_channels, 1, bias=False)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_BChw)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + (self.nin_shortcut(h) if self.changes_width else x_BChw)


def _res_blocks(cin: int, cout: int, n: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList([MaskGITResnetBlock(cin if i == 0 else cout, cout, dropout) for i in range(n)])


class _DownStage(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, dropout: float, downsample: bool) -> None:
        super().__init__()
        self.block = _res_blocks(cin, cout, n, dropout)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x)
        return F.avg_pool2d(x, kernel_size=2, stride=2) if self.downsample else x


class _UpStage(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, dropout: float, upsample: bool) -> None:
        super().__init__()
        self.block = _res_blocks(cin, cout, n, dropout)
        self.add_upsample = upsample
        if upsample:
            self.upsample_conv = _conv(cout, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x)
        if self.add_upsample:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class MaskGITEncoder(nn.Module):
    def __init__(self, hidden_channels: int, channel_mult: Sequence[int], num_res_blocks: int,
                 z_channels: int, num_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        mult_in = (1,) + tuple(channel_mult)
        n_levels = len(channel_mult)
        self.conv_in = _conv(num_channels, hidden_channels, 3, bias=False)
        self.down = nn.ModuleList([
            _DownStage(hidden_channels * mult_in[i], hidden_channels * channel_mult[i], num_res_blocks, dropout, i != n_levels - 1)
            for i in range(n_levels)
        ])
        mid = hidden_channels * channel_mult[-1]
        self.mid = _res_blocks(mid, mid, num_res_blocks, dropout)
        self.norm_out = group_norm(mid)
        self.conv_out = _conv(mid, z_channels, 1)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(img_B3HW)
        for stage in self.down:
            h = stage(h)
        for blk in self.mid:
            h = blk(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class MaskGITDecoder(nn.Module):
    def __init__(self, hidden_channels: int, channel_mult: Sequence[int], num_res_blocks: int,
                 z_channels: int, num_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        n_levels = len(channel_mult)
        top = hidden_channels * channel_mult[-1]
        self.conv_in = _conv(z_channels, top, 3)
        self.mid = _res_blocks(top, top, num_res_blocks, dropout)
        stages = []
        for i in range(n_levels):
            cin = hidden_channels * (channel_mult[-1] if i == n_levels - 1 else channel_mult[i + 1])
            stages.append(_UpStage(cin, hidden_channels * channel_mult[i], num_res_blocks, dropout, i != 0))
        self.up = nn.ModuleList(stages)  # index = level; run from the deepest level up
        self.norm_out = group_norm(hidden_channels * channel_mult[0])
        self.conv_out = _conv(hidden_channels * channel_mult[0], num_channels, 3)

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z_BChw)
        for blk in self.mid:
            h = blk(h)
        for stage in reversed(self.up):
            h = stage(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class _Codebook(nn.Module):
    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)


class MaskGITVQGAN(nn.Module):
    """Images in ``[0, 1]``; state-dict keys identical to the official tokenizer checkpoint."""

    def __init__(
        self, hidden_channels: int = 128, channel_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2, z_channels: int = 256, codebook_size: int = 1024,
        num_channels: int = 3, dropout: float = 0.0, resolution: int = 256, commitment_cost: float = 0.25,
        **_ignored: object,
    ) -> None:
        super().__init__()
        body = dict(hidden_channels=hidden_channels, channel_mult=tuple(channel_mult), num_res_blocks=num_res_blocks,
                    z_channels=z_channels, num_channels=num_channels, dropout=dropout)
        self.encoder = MaskGITEncoder(**body)
        self.decoder = MaskGITDecoder(**body)
        self.quantize = _Codebook(codebook_size, z_channels)
        self.codebook_size, self.z_channels = codebook_size, z_channels
        self.commitment_cost = commitment_cost
        self.downsample = 2 ** (len(channel_mult) - 1)
        self.image_size = resolution

    def encode_f(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Continuous encoder output ``B×z×h×w`` (the paper's ``D⁻¹(x)``)."""
        return self.encoder(img_B3HW)

    def quantize_f(self, f_BChw: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Nearest-codebook quantization: ``(codes B×(h·w) in raster order, f̂ B×z×h×w)``."""
        B, C, h, w = f_BChw.shape
        z_NC = f_BChw.permute(0, 2, 3, 1).reshape(-1, C)
        codes = nearest_code_indices(z_NC, self.quantize.embedding.weight.detach()).reshape(B, h * w)
        return codes, self.codes_to_fhat(codes, h, w)

    def code_distances_f(self, f_BChw: torch.Tensor) -> torch.Tensor:
        """Squared distance ``B×(h·w)×V`` of each cell of ``f`` (raster order) to every code."""
        B, C, h, w = f_BChw.shape
        z_NC = f_BChw.permute(0, 2, 3, 1).reshape(-1, C)
        return code_distances(z_NC, self.quantize.embedding.weight.detach()).view(B, h * w, -1)

    def codes_to_fhat(self, codes_Bl: torch.Tensor, h: int = 0, w: int = 0) -> torch.Tensor:
        """Codes ``B×(h·w)`` → codebook feature map ``B×z×h×w`` (square if ``h, w`` omitted)."""
        B, n = codes_Bl.shape
        if not h:
            h = w = int(round(n ** 0.5))
        return self.quantize.embedding(codes_Bl).reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous()

    def decode_fhat_raw(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        return self.decoder(f_hat_BChw)

    def decode_fhat(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """Image in ``[0, 1]``."""
        return self.decode_fhat_raw(f_hat_BChw).clamp(0.0, 1.0)

    def encode(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Image → token ids ``B×(h·w)``."""
        return self.quantize_f(self.encode_f(img_B3HW))[0]

    def decode(self, codes_Bl: torch.Tensor) -> torch.Tensor:
        """Token ids → image in ``[0, 1]``."""
        return self.decode_fhat(self.codes_to_fhat(codes_Bl))

    def forward(self, img_B3HW: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Training pass: ``(reconstruction (unclamped), vq_loss)`` with a straight-through ``f̂``."""
        f = self.encode_f(img_B3HW)
        _, f_hat = self.quantize_f(f)
        vq_loss = F.mse_loss(f_hat.detach(), f) + self.commitment_cost * F.mse_loss(f_hat, f.detach())
        return self.decode_fhat_raw(f + (f_hat - f).detach()), vq_loss
