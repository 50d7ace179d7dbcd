"""The RAR family (MaskGIT-VQGAN tokenizer + RAR generators) behind the adapter interface.

Native range ``[0, 1]``; ``f = encoder(x)`` (no quant conv); tokens in raster order; the
generator's position ``i`` predicts token ``i`` given the condition and tokens ``< i``; the
unconditional condition is the 'none' id. Also used for the demo zoo's outlier IAR, which has
the same architecture with a tokenizer and codebook of its own.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from .adapter import FamilyAdapter
from .maskgit_vqgan import MaskGITVQGAN
from .rar_sampler import guidance_weight, guided_logits, sample_rar_tokens

__all__ = ["RARAdapter"]


class RARAdapter(FamilyAdapter):
    family = "RAR"
    value_range = "01"
    tokenizer: MaskGITVQGAN

    def encoder_modules(self) -> List[nn.Module]:
        return [self.tokenizer.encoder]

    def _encode_native(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.encode_f(img_B3HW)

    def quantize(self, f_BChw: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.tokenizer.quantize_f(f_BChw)

    def token_distances(self, f_BChw: torch.Tensor, tokens_BL: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.code_distances_f(f_BChw)

    def tokens_to_fhat(self, tokens_BL: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.codes_to_fhat(tokens_BL.to(self.device))

    def decoder_modules(self) -> List[nn.Module]:
        return [self.tokenizer.decoder]

    def _decode_native(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode_fhat_raw(f_hat_BChw)

    def token_logits(self, variant: str, tokens_BL: torch.Tensor, labels_B: Optional[torch.Tensor],
                     positions: Optional[int] = None) -> torch.Tensor:
        rar = self.generator(variant)
        tokens_BL = tokens_BL.to(self.device)
        if labels_B is None:
            cond = torch.full((tokens_BL.shape[0],), rar.none_condition_id, dtype=torch.long, device=self.device)
        else:
            cond = rar.condition_ids(labels_B.to(self.device))
        n = tokens_BL.shape[1] if positions is None else positions
        # position i predicts token i from the tokens before it, so the last input token is not needed
        return rar(tokens_BL[:, : max(n - 1, 0)], cond)[:, :n]

    def sampling_logits(self, variant: str, cond_logits_BLV: torch.Tensor, uncond_logits_BLV: torch.Tensor) -> torch.Tensor:
        settings = self.sampling[variant]
        scale, temperature = settings["guidance_scale"], settings["temperature"]
        if scale == 0:
            return cond_logits_BLV / temperature
        N = self.generator(variant).image_seq_len
        w_L = torch.cat([guidance_weight(step, N, scale, settings["guidance_scale_pow"]) for step in range(cond_logits_BLV.shape[-2])])
        return guided_logits(cond_logits_BLV, uncond_logits_BLV, w_L.to(cond_logits_BLV)[:, None], temperature)

    @torch.no_grad()
    def generate(self, variant: str, labels_B: torch.Tensor, seed: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        settings = self.sampling[variant]
        gen = torch.Generator(self.device).manual_seed(seed)
        codes = sample_rar_tokens(
            self.generator(variant), labels_B.to(self.device), guidance_scale=settings["guidance_scale"],
            guidance_scale_pow=settings["guidance_scale_pow"], temperature=settings["temperature"], generator=gen,
        )
        f_hat = self.tokens_to_fhat(codes)
        return self.decode(f_hat), codes, f_hat
