"""One interface per IAR family, so that provenance signals never know which model they run on.

An adapter wraps a family's tokenizer (shared by all its variants) and its variants' generators,
and speaks images in ``[0, 1]`` (``B×3×H×W``) whatever the model's native range. Tokens are one
flat ``B×L`` tensor: VAR's scales are concatenated coarse to fine (``L = Σ pn²``), RAR's
``h·w`` tokens are in raster order.

The core primitive, after the data-provenance paper's code::

    rec_img, tokens, f, f_hat = adapter.img_to_reconstructed_img(img)

with ``f = D⁻¹(img)`` (the encoder, or a fine-tuned *inverse decoder*), ``f_hat`` its quantization
(greedy; VAR's optimised token search lives in ``quantizer.py``) and ``rec_img = D(f_hat)``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["FamilyAdapter", "at_tokens"]


def at_tokens(values_NLV: torch.Tensor, tokens_NL: torch.Tensor) -> torch.Tensor:
    """Each position's value at its token (``N×L``): log-probabilities → the tokens' log-likelihoods,
    logits → their logits. ``N`` may be several leading dimensions."""
    return values_NLV.gather(-1, tokens_NL.unsqueeze(-1)).squeeze(-1)


class FamilyAdapter(ABC):
    """Tokenizer + lazily loaded variant generators of one family."""

    family: str = ""
    value_range: str = "01"  # native pixel range of the tokenizer: "01" or "pm1"
    _channels_last: bool = False  # see use_channels_last
    # what names the weights this adapter was loaded from (models.zoo.load_family sets it): see weights_digest
    weights_digest_source: Optional[Callable[[], str]] = None
    _weights_digest: Optional[str] = None

    def __init__(self, tokenizer: nn.Module, generator_loaders: Dict[str, Callable[[], nn.Module]],
                 sampling: Dict[str, dict], image_size: int, num_classes: int, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.tokenizer = tokenizer.to(self.device).eval().requires_grad_(False)
        self._loaders = dict(generator_loaders)
        self._generators: Dict[str, nn.Module] = {}
        self.sampling = {k: dict(v) for k, v in sampling.items()}
        self.image_size = image_size
        self.num_classes = num_classes

    @property
    def weights_digest(self) -> str:
        """sha256 naming the weights this adapter was loaded from (:func:`models.zoo.weights_digest`),
        computed on first use; what the inverse decoders and variant nets made from them record."""
        if self._weights_digest is None:
            if self.weights_digest_source is None:
                raise ValueError(f"this {self.family} adapter does not know which weights it was loaded from: "
                                 "load it with models.zoo.load_family")
            self._weights_digest = self.weights_digest_source()
        return self._weights_digest

    # ------------------------------------------------------------------ variants
    @property
    def variant_names(self) -> Tuple[str, ...]:
        return tuple(self._loaders)

    def generator(self, variant: str) -> nn.Module:
        """The generator of ``variant``, loaded on first use and cached."""
        if variant not in self._loaders:
            raise KeyError(f"{self.family} has no variant {variant!r}; it has {', '.join(self._loaders)}")
        if variant not in self._generators:
            self._generators[variant] = self._loaders[variant]().to(self.device).eval().requires_grad_(False)
        return self._generators[variant]

    @property
    def loaded_variants(self) -> Tuple[str, ...]:
        """The variants whose generators are loaded now."""
        return tuple(self._generators)

    def release(self, variants: Optional[Iterable[str]] = None) -> None:
        """Drop cached generators (all, or the named ones) to free memory."""
        for name in list(self._generators if variants is None else variants):
            self._generators.pop(name, None)

    # ------------------------------------------------------------------ value range
    def to_model_range(self, img01: torch.Tensor) -> torch.Tensor:
        return img01 * 2 - 1 if self.value_range == "pm1" else img01

    def to_unit_range(self, img: torch.Tensor) -> torch.Tensor:
        return (img + 1) / 2 if self.value_range == "pm1" else img

    # ------------------------------------------------------------------ tokenizer
    @abstractmethod
    def encoder_modules(self) -> List[nn.Module]:
        """Modules forming ``D⁻¹`` (what an inverse decoder fine-tunes)."""

    @abstractmethod
    def decoder_modules(self) -> List[nn.Module]:
        """Modules forming ``D`` (``f̂`` → image)."""

    def use_channels_last(self, enabled: bool = True) -> "FamilyAdapter":
        """Run ``D⁻¹`` and ``D`` in channels-last memory layout, for inference speed
        (``enabled=False`` goes back to the default layout).

        oneDNN's CPU convolutions are faster on NHWC tensors: on the demo zoo, one decode plus one
        encode of a 32-image batch takes 9–13 % less time (``scripts/bench_speedups.py``), and the
        values agree with the default layout to ~1e-5. ``encode``/``decode``
        still return contiguous tensors. Adapters start in the default layout, in which the zoo is
        trained and the demo Dataset generated (so both stay bit-reproducible); the feature extractor
        opts in. An adapter in channels-last layout decodes RAR's generations in it too (VAR's sampler
        decodes through its own VQVAE call, in the default layout), so maps made from generations
        name the layout (``variant_net_maps.maps_folder_name``).
        """
        layout = torch.channels_last if enabled else torch.contiguous_format
        for module in self.encoder_modules() + self.decoder_modules():
            module.to(memory_format=layout)
        self._channels_last = enabled
        return self

    @property
    def channels_last(self) -> bool:
        """Whether ``D⁻¹`` and ``D`` run in channels-last layout (:meth:`use_channels_last`)."""
        return self._channels_last

    def _conv_layout(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return x_BCHW.contiguous(memory_format=torch.channels_last) if self._channels_last else x_BCHW

    def encode(self, img01_B3HW: torch.Tensor) -> torch.Tensor:
        """``f = D⁻¹(img)``: the continuous feature map (differentiable w.r.t. the encoder)."""
        f = self._encode_native(self._conv_layout(self.to_model_range(img01_B3HW.to(self.device))))
        return f.contiguous() if self._channels_last else f

    @abstractmethod
    def _encode_native(self, img_B3HW: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def quantize(self, f_BChw: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Greedy quantization ``f → (tokens B×L, f̂)``."""

    @abstractmethod
    def token_distances(self, f_BChw: torch.Tensor, tokens_BL: torch.Tensor) -> torch.Tensor:
        """Squared distance ``B×L×V`` from what the quantizer sees at each token position to every
        code (VAR: the residual left by the coarser scales of ``tokens_BL``; RAR: ``f``'s cell)."""

    @abstractmethod
    def tokens_to_fhat(self, tokens_BL: torch.Tensor) -> torch.Tensor:
        """Tokens ``B×L`` → quantized feature map ``f̂``."""

    def decode_raw(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """``D(f̂)`` in ``[0, 1]`` units, unclamped and differentiable (for latent optimisation)."""
        img = self.to_unit_range(self._decode_native(self._conv_layout(f_hat_BChw)))
        return img.contiguous() if self._channels_last else img

    @abstractmethod
    def _decode_native(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """``D(f̂)`` in the tokenizer's native pixel range, unclamped."""

    def decode(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """``D(f̂)`` as an image in ``[0, 1]``."""
        return self.decode_raw(f_hat_BChw).clamp(0, 1)

    @torch.no_grad()
    def img_to_reconstructed_img(self, img01_B3HW: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rec_img in [0,1], tokens B×L, f, f̂)`` — the primitive every signal is built on."""
        f = self.encode(img01_B3HW)
        tokens, f_hat = self.quantize(f)
        return self.decode(f_hat), tokens, f, f_hat

    # ------------------------------------------------------------------ generators
    @abstractmethod
    def token_logits(self, variant: str, tokens_BL: torch.Tensor, labels_B: Optional[torch.Tensor],
                     positions: Optional[int] = None) -> torch.Tensor:
        """Teacher-forced logits ``B×ℓ×V`` for the given tokens; ``labels_B=None`` is unconditional.

        ``positions=ℓ`` computes only the first ℓ positions (a cheaper pass; same values).
        """

    def token_log_probs(self, variant: str, tokens_BL: torch.Tensor, labels_B: Optional[torch.Tensor],
                        positions: Optional[int] = None) -> torch.Tensor:
        """``log p(tokenᵢ | tokens<ᵢ, label)`` for every position, ``B×ℓ`` (one teacher-forced pass)."""
        tokens_BL = tokens_BL.to(self.device)
        logits = self.token_logits(variant, tokens_BL, labels_B, positions)
        return at_tokens(torch.log_softmax(logits.float(), dim=-1), tokens_BL[:, : logits.shape[1]])

    @abstractmethod
    def sampling_logits(self, variant: str, cond_logits_BLV: torch.Tensor, uncond_logits_BLV: torch.Tensor) -> torch.Tensor:
        """The logits the variant's sampler draws each position from: its guidance schedule and
        temperature applied to teacher-forced conditional/unconditional logits (first ``ℓ`` positions)."""

    def in_sampling_support(self, variant: str, sampling_logits_BLV: torch.Tensor, tokens_BL: torch.Tensor) -> Optional[torch.Tensor]:
        """Whether the sampler's filter (top-k/top-p) lets it draw each of ``tokens_BL`` (``B×ℓ``
        bool); ``None``: the sampler draws from every token."""
        return None

    @abstractmethod
    def generate(self, variant: str, labels_B: torch.Tensor, seed: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample with the variant's sampling settings: ``(images in [0,1], tokens B×L, f̂)``."""

    def random_labels(self, n: int, seed: int) -> torch.Tensor:
        """``n`` class labels drawn uniformly with a seeded generator."""
        return torch.randint(0, self.num_classes, (n,), generator=torch.Generator().manual_seed(seed)).to(self.device)
