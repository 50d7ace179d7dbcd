"""VAR's multi-scale VQVAE: encoder → ``quant_conv`` → multi-scale quantizer → ``post_quant_conv`` → decoder.

``f = quant_conv(encoder(x))`` is the continuous feature map that provenance works on (the
paper's ``D⁻¹(x)``); ``f̂`` its multi-scale quantization; ``decode_fhat(f̂)`` the image. The
official checkpoint is ``vae_ch160v4096z32.pth`` (V=4096, Cvae=32, ch=160, 16× downsampling,
patch_nums 1…16 for 256×256 images). ``ch_mult`` is a parameter only so that the demo zoo can
use 8× downsampling; the official value is the default.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from .var_quantizer import MultiScaleQuantizer
from .var_vae_blocks import VARDecoder, VAREncoder

__all__ = ["VARVQVAE", "OFFICIAL_VAR_CH_MULT"]

OFFICIAL_VAR_CH_MULT = (1, 1, 2, 2, 4)


class VARVQVAE(nn.Module):
    """Images in ``[-1, 1]``; state-dict keys identical to the official ``VQVAE``."""

    def __init__(
        self, vocab_size: int = 4096, z_channels: int = 32, ch: int = 160,
        patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
        share_quant_resi: int = 4, quant_resi: float = 0.5, beta: float = 0.25,
        ch_mult: Sequence[int] = OFFICIAL_VAR_CH_MULT, num_res_blocks: int = 2,
        dropout: float = 0.0, quant_conv_ks: int = 3,
    ) -> None:
        super().__init__()
        self.V, self.Cvae = vocab_size, z_channels
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.downsample = 2 ** (len(ch_mult) - 1)
        body = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, z_channels=z_channels, dropout=dropout)
        self.encoder = VAREncoder(**body)
        self.decoder = VARDecoder(**body)
        self.quantize = MultiScaleQuantizer(vocab_size, z_channels, self.patch_nums, quant_resi, share_quant_resi, beta)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, stride=1, padding=quant_conv_ks // 2)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, stride=1, padding=quant_conv_ks // 2)

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.downsample

    def encode_f(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """``f = quant_conv(encoder(img))``, the pre-quantization feature map ``B×Cvae×h×w``."""
        return self.quant_conv(self.encoder(img_B3HW))

    def decode_fhat_raw(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """``decoder(post_quant_conv(f̂))`` without clamping (differentiable)."""
        return self.decoder(self.post_quant_conv(f_hat_BChw))

    def decode_fhat(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """Image in ``[-1, 1]`` decoded from ``f̂``."""
        return self.decode_fhat_raw(f_hat_BChw).clamp(-1, 1)

    def img_to_idxBl(self, img_B3HW: torch.Tensor) -> List[torch.Tensor]:
        """Greedy multi-scale token indices, one ``B×pn²`` tensor per scale."""
        return self.quantize.quantize_greedy(self.encode_f(img_B3HW))[0]

    def idxBl_to_img(self, idx_per_scale: Sequence[torch.Tensor]) -> torch.Tensor:
        """Tokens of all scales → image in ``[-1, 1]``."""
        return self.decode_fhat(self.quantize.tokens_to_fhat(idx_per_scale))

    def forward(self, img_B3HW: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Training pass: ``(reconstruction (unclamped), vq_loss)`` with a straight-through ``f̂``."""
        f_hat_st, vq_loss, _ = self.quantize.quantize_for_training(self.encode_f(img_B3HW))
        return self.decode_fhat_raw(f_hat_st), vq_loss

    def load_state_dict(self, state_dict: Dict[str, Any], strict: bool = True, assign: bool = False):  # type: ignore[override]
        # The official checkpoint's usage statistics may have been recorded for another number of scales.
        key = "quantize.ema_vocab_hit_SV"
        if key in state_dict and state_dict[key].shape != self.quantize.ema_vocab_hit_SV.shape:
            state_dict = dict(state_dict)
            state_dict[key] = self.quantize.ema_vocab_hit_SV.clone()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
