"""The variant net's architecture: a small CNN from a feature map read from an image to the variant.

:mod:`variant_net` (top level) generates its training data, trains, saves and loads it, and turns
its output into features. Here: one :class:`VariantNet`, and :class:`VariantNetEnsemble`, the
average of several trained alike from different seeds. Both map ``x_BChw`` to log-scores over
(variant, class label) pairs, variant-major, ``B×(V·K)``; ``K = 1`` when the net learned the
variant alone. ``shape`` is what their file stores to build them again, with the map the net reads
(``input_map``: the inverse decoder's ``f``, or ``f`` after one re-encoding correction;
``variant_net.net_input`` makes it).
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["INPUT_MAPS", "VariantNet", "VariantNetEnsemble", "AnyVariantNet"]

INPUT_MAPS = ("f", "reencoded")  # what a net reads: f = D⁻¹(x), or f + f − D⁻¹(D(f))


class VariantNet(nn.Module):
    """A map (``B×C×h×w``: ``f`` or its re-encoded form, normalised per channel by the training maps' statistics) → logits
    ``B×(V·K)`` over (variant, class label) pairs, variant-major (``K = num_classes``; ``K = 1``: the
    variant alone): three 3×3 convolutions (the last with stride 2), then a two-layer MLP over the
    flattened map (positions matter: VAR's scales are laid out on a fixed grid).
    ``variant_net.variant_log_probs`` sums the classes out: the class label is never known when scoring."""

    def __init__(self, channels: int, size: int, num_variants: int, width: int = 64, hidden: int = 256, dropout: float = 0.3,
                 num_classes: int = 1, input_map: str = "f") -> None:
        super().__init__()
        if input_map not in INPUT_MAPS:
            raise ValueError(f"input_map must be one of {', '.join(INPUT_MAPS)}, not {input_map!r}")
        self.shape = dict(channels=channels, size=size, num_variants=num_variants, width=width, hidden=hidden, dropout=dropout)
        if num_classes != 1:  # absent from the files of nets without class targets, which keep their bytes
            self.shape["num_classes"] = num_classes
        if input_map != "f":  # absent from the files of nets that read f, which keep their bytes
            self.shape["input_map"] = input_map
        self.register_buffer("mean_C", torch.zeros(channels))
        self.register_buffer("std_C", torch.ones(channels))
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU(), nn.Flatten(),
            nn.Linear(width * ((size + 1) // 2) ** 2, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_variants * num_classes))

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return self.body((x_BChw - self.mean_C.view(1, -1, 1, 1)) / self.std_C.view(1, -1, 1, 1))


class VariantNetEnsemble(nn.Module):
    """Several :class:`VariantNet` of one shape, trained alike from different seeds; its output is
    the log of their mean probability of each (variant, class) pair. Averaging the members'
    posteriors evens out what each one overfitted to its training maps."""

    def __init__(self, members: Sequence[VariantNet]) -> None:
        super().__init__()
        if len(members) < 2 or any(m.shape != members[0].shape for m in members):
            raise ValueError("an ensemble needs at least two variant nets of one shape")
        self.members = nn.ModuleList(members)
        self.shape = dict(members[0].shape, members=len(members))

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        log_p_MBK = torch.stack([F.log_softmax(member(x_BChw), dim=1) for member in self.members])
        return log_p_MBK.logsumexp(0) - math.log(len(self.members))


AnyVariantNet = Union[VariantNet, VariantNetEnsemble]
