"""Convolutional encoder and decoder of VAR's multi-scale VQVAE.

The VQVAE of VAR (Tian et al., 2024) reuses the VQ-f16 autoencoder of latent diffusion:
a stack of GroupNorm/SiLU residual blocks that halves the resolution ``len(ch_mult) - 1``
times, with single-head self-attention blocks at the lowest resolution and in the middle.
The decoder mirrors it with one extra residual block per level and nearest-neighbour
upsampling. Everything here reproduces the official module layout, so the state-dict keys
(``down.{level}.block.{i}.norm1.weight`` ...) match the published ``vae_ch160v4096z32.pth``.

Images enter the encoder in ``[-1, 1]``; the decoder returns unclamped values.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["VAREncoder", "VARDecoder", "group_norm"]


def group_norm(channels: int) -> nn.GroupNorm:
    """The 32-group normalisation used by every block (``eps=1e-6``)."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class Upsample2x(nn.Module):
    """Nearest-neighbour ×2 upsampling followed by a 3×3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BChw, scale_factor=2, mode="nearest"))


class Downsample2x(nn.Module):
    """Stride-2 3×3 convolution after padding one zero row/column at the bottom/right."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_BChw, pad=(0, 1, 0, 1), mode="constant", value=0))


class ResnetBlock(nn.Module):
    """Pre-activation residual block; a 1×1 ``nin_shortcut`` maps the input when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_BChw)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x_BChw) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a fused 1×1 ``qkv`` convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x_BChw.shape
        q_BChw, k_BChw, v_BChw = self.qkv(self.norm(x_BChw)).reshape(B, 3, C, H, W).unbind(1)
        q_BLC = q_BChw.reshape(B, C, H * W).permute(0, 2, 1)
        k_BCL = k_BChw.reshape(B, C, H * W)
        attn_BLL = torch.softmax(torch.bmm(q_BLC, k_BCL) * C ** -0.5, dim=2)
        h_BCL = torch.bmm(v_BChw.reshape(B, C, H * W), attn_BLL.permute(0, 2, 1))
        return x_BChw + self.proj_out(h_BCL.reshape(B, C, H, W))


class VAREncoder(nn.Module):
    """Image ``B×3×H×W`` in ``[-1, 1]`` → features ``B×z_channels×(H/2^(n-1))×(W/2^(n-1))``."""

    def __init__(
        self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
        dropout: float = 0.0, in_channels: int = 3, using_sa: bool = True, using_mid_sa: bool = True,
    ) -> None:
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        in_ch_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        for level in range(self.num_resolutions):
            block_in, block_out = ch * in_ch_mult[level], ch * ch_mult[level]
            last = level == self.num_resolutions - 1
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if last and using_sa:
                    stage.attn.append(AttnBlock(block_in))
            if not last:
                stage.downsample = Downsample2x(block_in)
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout)
        self.mid.attn_1 = AttnBlock(block_in) if using_mid_sa else nn.Identity()
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(img_B3HW)
        for level, stage in enumerate(self.down):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[i](h)
            if level != self.num_resolutions - 1:
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class VARDecoder(nn.Module):
    """Features ``B×z_channels×h×w`` → image ``B×3×H×W`` (unclamped, nominally ``[-1, 1]``)."""

    def __init__(
        self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
        dropout: float = 0.0, in_channels: int = 3, using_sa: bool = True, using_mid_sa: bool = True,
    ) -> None:
        super().__init__()
        self.num_resolutions = len(ch_mult)
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout)
        self.mid.attn_1 = AttnBlock(block_in) if using_mid_sa else nn.Identity()
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout)
        stages = []
        for level in reversed(range(self.num_resolutions)):
            block_out = ch * ch_mult[level]
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if level == self.num_resolutions - 1 and using_sa:
                    stage.attn.append(AttnBlock(block_in))
            if level != 0:
                stage.upsample = Upsample2x(block_in)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z_BChw))))
        for level in reversed(range(self.num_resolutions)):
            stage = self.up[level]
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[i](h)
            if level != 0:
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
