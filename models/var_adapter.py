"""The VAR family behind the :class:`~models.adapter.FamilyAdapter` interface.

Native range ``[-1, 1]``; ``f = quant_conv(encoder(x))``; tokens are all scales concatenated
(``L = Σ pn²``); likelihoods come from one teacher-forced pass of the transformer over the
tokens' teacher-forcing input. The unconditional label is ``num_classes``.
"""
from __future__ import annotations

import itertools
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from .adapter import FamilyAdapter
from .var_sampler import guidance_per_scale, guided_logits, sample_var_images, survives_top_k_top_p
from .var_vqvae import VARVQVAE

__all__ = ["VARAdapter"]


class VARAdapter(FamilyAdapter):
    family = "VAR"
    value_range = "pm1"
    tokenizer: VARVQVAE

    @property
    def patch_nums(self) -> Tuple[int, ...]:
        return self.tokenizer.patch_nums

    def split_scales(self, tokens_BL: torch.Tensor) -> List[torch.Tensor]:
        """Flat ``B×L`` tokens → one ``B×pn²`` tensor per scale."""
        return list(torch.split(tokens_BL, self.scale_sizes(), dim=1))

    def encoder_modules(self) -> List[nn.Module]:
        return [self.tokenizer.encoder, self.tokenizer.quant_conv]

    def _encode_native(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.encode_f(img_B3HW)

    def quantize(self, f_BChw: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        idx_per_scale, f_hats = self.tokenizer.quantize.quantize_greedy(f_BChw)
        return torch.cat(idx_per_scale, dim=1), f_hats[-1]

    def token_distances(self, f_BChw: torch.Tensor, tokens_BL: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.tokenizer.quantize.residual_code_distances(f_BChw, self.split_scales(tokens_BL.to(self.device))), dim=1)

    def tokens_to_fhat(self, tokens_BL: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.quantize.tokens_to_fhat(self.split_scales(tokens_BL.to(self.device)))

    def decoder_modules(self) -> List[nn.Module]:
        return [self.tokenizer.post_quant_conv, self.tokenizer.decoder]

    def _decode_native(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode_fhat_raw(f_hat_BChw)

    def token_logits(self, variant: str, tokens_BL: torch.Tensor, labels_B: Optional[torch.Tensor],
                     positions: Optional[int] = None) -> torch.Tensor:
        var = self.generator(variant)
        tokens_BL = tokens_BL.to(self.device)
        B = tokens_BL.shape[0]
        if labels_B is None:
            labels_B = torch.full((B,), var.num_classes, dtype=torch.long, device=self.device)
        x_BLCv = self.tokenizer.quantize.teacher_forcing_input(self.split_scales(tokens_BL))
        if positions is None:
            return var(labels_B.to(self.device), x_BLCv)
        # the positions of one scale attend to each other, so a prefix pass runs to the end of the
        # scale it stops in: cut inside a scale, its first positions would see fewer inputs
        through = next((end for end in self.scale_ends() if end >= positions), self.scale_ends()[-1])
        return var(labels_B.to(self.device), x_BLCv[:, : max(through - var.first_l, 0)])[:, :positions]

    def scale_ends(self) -> List[int]:
        """Where each scale's tokens end in the flat sequence (cumulative ``pn²``)."""
        return list(itertools.accumulate(self.scale_sizes()))

    def scale_sizes(self) -> List[int]:
        """Tokens per scale, ``pn²`` each, coarsest first."""
        return [pn * pn for pn in self.patch_nums]

    def sampling_logits(self, variant: str, cond_logits_BLV: torch.Tensor, uncond_logits_BLV: torch.Tensor) -> torch.Tensor:
        per_scale = guidance_per_scale(self.sampling[variant]["cfg"], len(self.patch_nums))
        t_L = torch.cat([torch.full((size,), t) for size, t in zip(self.scale_sizes(), per_scale)]).to(cond_logits_BLV)
        return guided_logits(cond_logits_BLV, uncond_logits_BLV, t_L[: cond_logits_BLV.shape[-2], None])

    def in_sampling_support(self, variant: str, sampling_logits_BLV: torch.Tensor, tokens_BL: torch.Tensor) -> Optional[torch.Tensor]:
        settings = self.sampling[variant]
        V = sampling_logits_BLV.shape[-1]
        top_k = settings["top_k"] if settings["top_k"] < V else 0  # a top-k of the whole vocabulary keeps everything
        return survives_top_k_top_p(sampling_logits_BLV, tokens_BL[..., : sampling_logits_BLV.shape[-2]], top_k, settings["top_p"])

    @torch.no_grad()
    def generate(self, variant: str, labels_B: torch.Tensor, seed: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        settings = self.sampling[variant]
        gen = torch.Generator(self.device).manual_seed(seed)
        images, tokens, f_hat = sample_var_images(
            self.generator(variant), self.tokenizer, labels_B.to(self.device), cfg=settings["cfg"],
            top_k=settings["top_k"], top_p=settings["top_p"], generator=gen,
        )
        return images, torch.cat(tokens, dim=1), f_hat
