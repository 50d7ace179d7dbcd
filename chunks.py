"""Batch independence: every pass over images runs a fixed number of them at a time.

Matrix products and convolutions of other sizes round differently in the last digits, enough to
move a LightGBM split. So every pass of the feature extractor — the inverse decoder, round trips
and token reading, the variant nets, the teacher-forced passes — and of the variant nets' own
scoring runs :data:`CHUNK` images at a time, always, the last chunk padded with copies of its first
image. An image's numbers then do not depend on its batch mates or the batch size: a Slurm array
batches images by content hash, a local run by order, and with the scoring gate the images a
family's variant features are computed for vary per batch. The cold run did not get slower with it
(``docs/speed.md``).
"""
from __future__ import annotations

from typing import List, Tuple

import torch

__all__ = ["CHUNK", "padded_chunks"]

CHUNK = 8


def padded_chunks(n: int, chunk_size: int = CHUNK) -> List[Tuple[torch.Tensor, int]]:
    """Indices ``0 … n−1`` in chunks of exactly ``chunk_size`` (the last padded with its first
    index), each with how many of its indices are real (the rest are padding)."""
    chunks = []
    for start in range(0, n, chunk_size):
        index = torch.arange(start, min(start + chunk_size, n))
        chunks.append((torch.cat([index, index[:1].expand(chunk_size - len(index))]), len(index)))
    return chunks
