"""Training data of the variant nets (:mod:`variant_net`), and the map a net reads from an image.

A variant net learns from fresh generations of every variant of a family: equal shares, class
labels drawn from each batch's seed, the images rounded to 8 bits as PNG files are and mapped back
by the family's plain inverse decoder, ``f = D⁻¹(x)``. The seeds come from a range of their own
(:func:`generation_seed`), which no Dataset, fine-tuning or diagnosis image uses, so nothing the
pipeline scores was seen by a net.

What a net reads of ``f`` is its ``input_map`` (:func:`net_input`): ``f`` itself, or ``f`` after
one re-encoding correction, ``f + f − D⁻¹(D(f))`` (both shipped nets', `docs/attribution.md`, *Variant nets*).

Making the maps is most of a net's cost (a 64-image VAR batch: about 1 s to generate and map back
and 0.5 s more to re-encode, on 2 cores: the demo zoo's 5 120 batches took 44 minutes to re-encode), so :func:`generate_training_maps` keeps each batch's maps on
disk, in a folder named by every weight that made them (:func:`adapter_fingerprint`), the version
of the code that made them (:data:`MAPS_VERSION`), and the convolution layout and device they were
made with, which round differently (:func:`maps_folder_name`): an interrupted run resumes and a
retrained net reuses them, bit for bit.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from atomic import atomic_path
from cli import InputError, decodable_images
from dataset import images_under, load_images
from models.adapter import FamilyAdapter
from models.checkpoints import hash_tensors
from models.variant_net import INPUT_MAPS

__all__ = ["SEED_OFFSET", "SEEDS", "MAPS_VERSION", "INPUT_MAPS", "TrainingMaps", "net_input", "generation_seed", "adapter_fingerprint",
           "maps_folder_name", "generate_training_maps", "labelled_maps"]

SEED_OFFSET = 9_000_000  # make_demo_dataset < 7e6, inv_decoder 7e6 … 8e6, diagnose_zoo 8e6 … 9e6
SEEDS = range(10)  # training seeds: seed s generates with SEED_OFFSET + 100 000·s + …, below 1e7
# part of the map cache's folder name: raise it whenever the code changes what a batch's maps hold
# (1: what the unversioned folders before it held)
MAPS_VERSION = "1"


class TrainingMaps(NamedTuple):
    """Generated training data: each image's map (:func:`net_input` of its ``f``), the variant that made
    it and the class label it was made for."""
    x_NChw: torch.Tensor
    variant_N: torch.Tensor
    class_N: torch.Tensor


@torch.no_grad()
def net_input(adapter: FamilyAdapter, f_BChw: torch.Tensor, input_map: str,
              round_trip_BChw: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The map a net of ``input_map`` reads from ``f = D⁻¹(x)``: ``f`` itself, or (``"reencoded"``)
    ``f + f − D⁻¹(D(f))``, ``f`` with the inverse decoder's bias at ``f`` taken out once
    (:func:`signals.reencode_target` with ``estimate = f``; one decode and one encode, no
    quantization). For a generated image that is nearer the ``f̂`` the generator decoded (squared
    error −18 % on the demo zoo's VAR), and a net learns more from it (`docs/attribution.md`, *Variant nets*).
    ``round_trip_BChw = D⁻¹(D(f))`` when the caller already has it (the feature pass: EncLoss's
    round trip, :class:`signals.FamilyReading`), which saves the decode and the encode."""
    if input_map == "f":
        return f_BChw
    if input_map == "reencoded":
        from signals import reencode_target

        f = f_BChw.to(adapter.device).float()
        round_trip = round_trip_BChw.to(adapter.device).float() if round_trip_BChw is not None else None
        return reencode_target(adapter, f, f, round_trip_BChw=round_trip).to(f_BChw.device)
    raise ValueError(f"input_map must be one of {', '.join(INPUT_MAPS)}, not {input_map!r}")


def generation_seed(seed: int, variant_index: int, batch_index: int) -> int:
    """The generation seed of one training batch: inside ``[SEED_OFFSET, SEED_OFFSET + 1e6)`` for a seed of :data:`SEEDS`."""
    if not 0 <= batch_index < 10_000 or not 0 <= variant_index < 10 or seed not in SEEDS:
        raise ValueError(f"seed {SEEDS.start} … {SEEDS.stop - 1}, at most 10 variants and 10 000 batches per variant")
    return SEED_OFFSET + 100_000 * seed + 10_000 * variant_index + batch_index


def adapter_fingerprint(adapter: FamilyAdapter) -> str:
    """sha256 of every weight ``adapter`` generates and maps back with (tokenizer with its inverse
    decoder, each variant's generator), and of its sampling settings: names the maps they make."""
    hasher = hashlib.sha256(json.dumps(adapter.sampling, sort_keys=True, default=str).encode())
    for variant in adapter.variant_names:
        loaded = variant in adapter.loaded_variants
        hash_tensors(hasher, variant, adapter.generator(variant).state_dict())
        if not loaded:
            adapter.release([variant])
    hash_tensors(hasher, "tokenizer", adapter.tokenizer.state_dict())
    return hasher.hexdigest()


def maps_folder_name(adapter: FamilyAdapter) -> str:
    """The folder of the map cache that holds ``adapter``'s maps: its weights (:func:`adapter_fingerprint`),
    :data:`MAPS_VERSION`, and, when not the defaults, the channels-last layout and the device, whose
    convolutions round differently (so maps made one way are never read back for another)."""
    name = f"{adapter_fingerprint(adapter)[:16]}-v{MAPS_VERSION}"
    if adapter.channels_last:
        name += "-channels_last"
    return name if adapter.device.type == "cpu" else f"{name}-{adapter.device.type}"


@torch.no_grad()
def generate_training_maps(adapter: FamilyAdapter, per_variant: int, seed: int = 0, gen_batch: int = 64,
                           progress: bool = True, cache_dir: Optional[Path | str] = None, input_map: str = "f",
                           first_batch: int = 0) -> TrainingMaps:
    """:class:`TrainingMaps` of fresh generations of every variant of ``adapter``'s family,
    rounded to 8 bits as PNG files are, mapped back by ``adapter``'s encoder (the inverse decoder),
    as the net of ``input_map`` reads them (:func:`net_input`). Each batch's class labels are drawn
    from its seed, so they need no storing. The generation batches are ``first_batch``, ``first_batch + 1``, …
    of :func:`generation_seed`: a net's held-out generations are the batches after its training ones.

    With ``cache_dir`` each batch's maps (``f``, and the net's map when that is not ``f``) are also
    written (atomically) under ``cache_dir/<maps_folder_name>/`` and read from there next time,
    bit for bit what generating them gives: an interrupted run resumes, and a larger or retrained
    net reuses what was generated."""
    from tqdm.auto import tqdm

    from inv_decoder import to_png_levels

    last_batch = first_batch + max(-(-per_variant // gen_batch), 1) - 1
    try:  # before the first generation: a plan past the seed range would otherwise fail after hours of it
        generation_seed(seed, len(adapter.variant_names) - 1, last_batch)
    except ValueError as err:
        raise InputError(f"{per_variant:,} generations per variant in batches of {gen_batch} from batch {first_batch} need "
                         f"batches up to {last_batch:,}: {err}; ask for fewer") from None
    store = Path(cache_dir) / maps_folder_name(adapter) if cache_dir is not None else None
    jobs = [(vi, v, j, start) for vi, v in enumerate(adapter.variant_names) for j, start in enumerate(range(0, per_variant, gen_batch), first_batch)]
    total = per_variant * len(adapter.variant_names)
    maps, filled, labels, classes = None, 0, [], []  # maps: one tensor, filled batch by batch (a list of
    # batches and their concatenation held the maps twice: 43 GB at the peak for the official RAR's default recipe)
    for vi, variant, j, start in tqdm(jobs, desc=f"{adapter.family} variant-net data", disable=not progress):
        job_seed = generation_seed(seed, vi, j)
        n = min(gen_batch, per_variant - start)
        class_n = adapter.random_labels(n, job_seed)
        stem = f"{variant}_{job_seed}_{n}"

        def f_map() -> torch.Tensor:
            return _cached(store, stem, lambda: adapter.encode(to_png_levels(adapter.generate(variant, class_n, job_seed)[0])))

        batch = f_map() if input_map == "f" else _cached(store, f"{stem}_{input_map}", lambda: net_input(adapter, f_map(), input_map))
        if maps is None:  # in the batches' layout, as their concatenation had it (channels-last maps stay so)
            layout = (torch.channels_last if batch.dim() == 4 and not batch.is_contiguous()
                      and batch.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
            maps = torch.empty((total, *batch.shape[1:]), dtype=batch.dtype, memory_format=layout)
        maps[filled:filled + n] = batch
        filled += n
        labels.append(torch.full((n,), vi, dtype=torch.long))
        classes.append(class_n.cpu().long())
    return TrainingMaps(maps if maps is not None else torch.zeros(0), torch.cat(labels), torch.cat(classes))


def _cached(store: Optional[Path], stem: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``store/<stem>.pt`` if it is there, else ``make()`` as float32 on the CPU, written there first (atomically)."""
    path = store / f"{stem}.pt" if store is not None else None
    if path is not None and path.is_file():
        return torch.load(path, weights_only=True)
    made = make().float().cpu()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(made.clone(), tmp)
    return made


def labelled_maps(inverse: FamilyAdapter, folders: Sequence[Path | str], input_map: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The maps a net of ``input_map`` reads and the variant index of the images in ``<folder>/<variant>/``
    (``variant_net.py --eval``: a net scored on a labelled Dataset folder)."""
    maps, labels = [], []
    for folder in folders:
        for vi, variant in enumerate(inverse.variant_names):
            paths = [Path(p) for p in decodable_images(images_under(Path(folder) / variant)).index]
            for s in range(0, len(paths), 64):
                with torch.no_grad():
                    f = inverse.encode(load_images(paths[s:s + 64], size=inverse.image_size)).float()
                maps.append(net_input(inverse, f, input_map))
                labels.append(torch.full((len(paths[s:s + 64]),), vi, dtype=torch.long))
    if not maps:
        raise FileNotFoundError(f"no images in {', '.join(v + '/' for v in inverse.variant_names)} under "
                                f"{', '.join(map(str, folders))}")
    return torch.cat(maps), torch.cat(labels)
