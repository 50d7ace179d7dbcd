"""The fine-tuning data of an inverse decoder: the tokens of fresh generations, made resumably.

An inverse decoder (:mod:`inv_decoder`) learns from generations of every variant of its family in
equal shares, with random class labels, drawn from a seed range no other data uses
(:data:`SEED_OFFSET` + 100 000·``seed`` + the batch's index, below 8e6: the Dataset's images have
seeds below 7e6, ``diagnose_zoo.py``'s and the variant nets' 8e6 and more). Only the tokens are
kept: the images and the targets ``f_Z`` are decoded from them at every step.

On the official models, generating 20 000 images takes a GPU a long while, so a run keeps each
batch's tokens as it is made (``train_tokens.parts/<batch>.pt``, written whole or not at all, in
a folder that records the seed, image count, batch size and weights it was made for). A run
stopped part way generates only the batches that are missing; each batch has its own seed, so
the data are the same, bit for bit, as those of a run never stopped. When all are there they
become one file, ``train_tokens.pt`` (with the seed, image count and weights digest), and the
folder is removed. Tokens or parts made for another run are refused, with the file named.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from atomic import atomic_path
from cli import INV_DECODER_MAX_IMAGES
from models.adapter import FamilyAdapter
from models.checkpoints import CheckpointError

__all__ = ["SEED_OFFSET", "SEEDS", "MAX_IMAGES", "GENERATION_BATCH", "generation_jobs", "generate_training_tokens", "training_tokens",
           "parts_folder"]

SEED_OFFSET = 7_000_000  # generation seeds of fine-tuning data; make_demo_dataset uses small seeds
SEEDS = range(10)  # fine-tuning seeds: seed s generates with SEED_OFFSET + 100 000·s + batch, below 8e6
MAX_IMAGES = INV_DECODER_MAX_IMAGES  # generations of one seed: its generation seeds stay below the next seed's
GENERATION_BATCH = 64  # images per generated batch (each batch has its own seed)
MANIFEST = "made_for.json"  # in the parts folder: what its batches were made for


def _check_plan(seed: int, n_images: int) -> None:
    if seed not in SEEDS or n_images > MAX_IMAGES:  # seeds from 8e6 on are diagnose_zoo's and the variant nets'
        raise ValueError(f"fine-tuning seed must be in {SEEDS.start} … {SEEDS.stop - 1} and images ≤ {MAX_IMAGES:,} "
                         f"(got seed {seed}, {n_images} images): "
                         f"its generation seeds stay in [{SEED_OFFSET}, {SEED_OFFSET + 1_000_000})")


def parts_folder(tokens_path: Path | str) -> Path:
    """Where the batches of ``tokens_path`` are kept while they are made."""
    return Path(tokens_path).with_suffix(".parts")


def generation_jobs(variants: Tuple[str, ...], n_images: int, batch_size: int = GENERATION_BATCH) -> List[Tuple[str, int]]:
    """``(variant, images)`` of each batch, in order: ``n_images`` split evenly over ``variants``."""
    jobs = []
    for v_i, variant in enumerate(variants):
        share = n_images // len(variants) + (1 if v_i < n_images % len(variants) else 0)
        jobs += [(variant, min(batch_size, share - start)) for start in range(0, share, batch_size)]
    return jobs


@torch.no_grad()
def generate_training_tokens(adapter: FamilyAdapter, n_images: int, seed: int, batch_size: int = GENERATION_BATCH,
                             progress: bool = True, parts: Optional[Path] = None) -> torch.Tensor:
    """Tokens of ``n_images`` fresh generations, split evenly over the family's variants; with
    ``parts``, a folder (made for this run: :func:`training_tokens` checks it) that keeps each batch
    and is read back instead of generating a batch again."""
    from tqdm.auto import tqdm

    _check_plan(seed, n_images)
    jobs = generation_jobs(adapter.variant_names, n_images, batch_size)
    kept = {job_i for job_i in range(len(jobs)) if parts is not None and (parts / f"{job_i:05d}.pt").is_file()}
    chunks = []
    bar = tqdm(total=len(jobs), initial=len(kept), desc=f"generating {adapter.family} fine-tuning data", disable=not progress)
    for job_i, (variant, count) in enumerate(jobs):
        if job_i in kept:
            try:
                chunks.append(torch.load(parts / f"{job_i:05d}.pt", weights_only=True))
                continue
            except FileNotFoundError:  # removed meanwhile by a run of the same data that finished: made again, alike
                pass
        job_seed = SEED_OFFSET + seed * 100_000 + job_i
        tokens = adapter.generate(variant, adapter.random_labels(count, job_seed), job_seed)[1].cpu()
        if parts is not None:
            with atomic_path(parts / f"{job_i:05d}.pt") as tmp:
                torch.save(tokens, tmp)
        chunks.append(tokens)
        bar.update()
    bar.close()
    return torch.cat(chunks)


def training_tokens(adapter: FamilyAdapter, path: Path, seed: int, n_images: int, weights: str, progress: bool = True) -> torch.Tensor:
    """The run's fine-tuning tokens: read from ``path`` if they were made for its seed, image count
    and weights (all three stored with them), else generated (resuming from the batches kept in
    :func:`parts_folder`) and written there; tokens or batches made for another run are refused,
    naming the file."""
    made_for: Dict[str, object] = {"seed": int(seed), "images": int(n_images), "weights_digest": weights}
    if path.is_file():
        tokens = _stored_tokens(path, made_for)
        shutil.rmtree(parts_folder(path), ignore_errors=True)  # left by a run stopped right after writing ``path``
        return tokens
    _check_plan(int(seed), int(n_images))  # before a parts folder is made for a run that cannot be
    parts = parts_folder(path)
    wanted = dict(made_for, batch_size=GENERATION_BATCH)
    if (parts / MANIFEST).is_file():
        kept = json.loads((parts / MANIFEST).read_text())
        if kept != wanted:
            changed = ", ".join(sorted(k for k in set(kept) | set(wanted) if kept.get(k) != wanted.get(k)))
            raise CheckpointError(f"{parts} holds fine-tuning batches made for another run ({changed} differ): remove it "
                                  f"(and {path.parent / 'checkpoint.pt'}) or choose another --out")
    else:
        with atomic_path(parts / MANIFEST) as tmp:
            tmp.write_text(json.dumps(wanted, indent=2))
    tokens = generate_training_tokens(adapter, int(n_images), int(seed), GENERATION_BATCH, progress, parts)
    with atomic_path(path) as tmp:
        torch.save(dict(made_for, tokens=tokens), tmp)
    shutil.rmtree(parts, ignore_errors=True)  # (another run of the same data may have removed it first)
    return tokens


def _stored_tokens(path: Path, made_for: Dict[str, object]) -> torch.Tensor:
    """The tokens in ``path``, unless they were made for another run than ``made_for`` describes."""
    stored = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(stored, dict):  # a bare tensor: written before the seed and weights were stored with it
        problems = [f"{len(stored)} fine-tuning images that record no seed and no weights (an older run's)"]
    else:
        count, seed, made_by = len(stored["tokens"]), stored.get("seed"), stored.get("weights_digest")
        weights = str(made_for["weights_digest"])
        problems = ([f"{count} fine-tuning images, not the {made_for['images']} asked for"] if count != made_for["images"] else []) \
            + ([f"generations of seed {seed}, not {made_for['seed']}"] if seed != made_for["seed"] else []) \
            + ([f"generations of other weights (digest {str(made_by)[:16]}…, these are {weights[:16]}…)"] if made_by != weights else [])
    if problems:
        raise CheckpointError(f"{path} holds {'; '.join(problems)}: it belongs to another run; remove it "
                              f"(and {path.parent / 'checkpoint.pt'}) or choose another --out")
    return stored["tokens"]
