"""End-to-end readers: the inverse decoder's encoder and the variant net fine-tuned together on the image.

The variant net reads a map that an inverse decoder ``D⁻¹`` made from the PNG image, and
``D⁻¹`` was fitted to bring back the generator's ``f̂`` (mean squared error), not to keep what tells
the variants apart. Its error costs the net most of what separates it from a net on the exact ``f̂``
(`docs/attribution.md`, *What the inverse decoder costs the net*). A reader trained for the task
itself might keep more: here the encoder (from the inverse decoder's weights) and a net that already
learned to read its ``f`` are trained on, together, by the net's own loss (cross-entropy over the
(variant, class) pairs, :func:`variant_net.joint_targets`), from the image to the variant. The same
schedule with the encoder frozen (``train_encoder=False``: only the net goes on learning, on the
cached ``f``) is the control that says how much of any gain is just more training of the net.

The encoder is trained in place and put back afterwards: :func:`finetune_reader` returns the
fine-tuned encoder's weights, and :func:`encoder_weights` applies them for scoring.

Used by ``scripts/diagnose_variant_net.py --end-to-end-epochs``.
"""
from __future__ import annotations

import contextlib
import copy
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import variant_net  # noqa: E402
from inv_decoder import encoder_state, put_encoder_state  # noqa: E402
from map_corrector import unit_images  # noqa: E402
from models.adapter import FamilyAdapter  # noqa: E402

__all__ = ["finetune_reader", "encoder_weights", "read_maps", "end_to_end_rows"]

EncoderState = Dict[str, torch.Tensor]  # inv_decoder.encoder_state's keys


@contextlib.contextmanager
def _encoder_kept(adapter: FamilyAdapter) -> Iterator[None]:
    """The adapter's encoder as it is now (weights and which parameters are trainable), put back after the block."""
    saved = encoder_state(adapter)
    trainable = [(p, p.requires_grad) for module in adapter.encoder_modules() for p in module.parameters()]
    try:
        yield
    finally:
        put_encoder_state(adapter, saved)
        for p, flag in trainable:
            p.requires_grad_(flag)


@contextlib.contextmanager
def encoder_weights(adapter: FamilyAdapter, state: Optional[EncoderState]) -> Iterator[FamilyAdapter]:
    """``adapter`` with its encoder's weights replaced by ``state`` (``None``: unchanged) inside the block, and
    put back after it."""
    if state is None:
        yield adapter
        return
    with _encoder_kept(adapter):
        put_encoder_state(adapter, state)
        yield adapter


@torch.no_grad()
def read_maps(adapter: FamilyAdapter, images_N3HW: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``D⁻¹`` of each image (``uint8`` levels or floats in [0, 1]), ``chunk`` at a time."""
    return torch.cat([adapter.encode(unit_images(part)).float().cpu() for part in images_N3HW.split(chunk)])


def finetune_reader(adapter: FamilyAdapter, head: variant_net.VariantNet, images_N3HW: torch.Tensor, y_N: torch.Tensor,
                    class_N: Optional[torch.Tensor], num_classes: int, epochs: int, encoder_lr: float = 1e-4, head_lr: float = 2e-4,
                    train_encoder: bool = True, f_NChw: Optional[torch.Tensor] = None, batch_size: int = 128, seed: int = 0,
                    weight_decay: float = 0.05, progress: bool = True) -> Tuple[variant_net.VariantNet, Optional[EncoderState]]:
    """Train a copy of ``head`` (a :class:`variant_net.VariantNet` that reads ``D⁻¹`` of the image) and, with
    ``train_encoder``, the adapter's encoder with it, for ``epochs`` on the images (``uint8`` levels) and
    their variants and classes, by AdamW on a one-cycle schedule (peak ``encoder_lr`` and ``head_lr``).
    Without ``train_encoder`` the net reads ``f_NChw`` (the images' ``D⁻¹``, given to save the encoding).
    Returns the net (eval mode) and the fine-tuned encoder's weights (``None`` without ``train_encoder``);
    the adapter's own encoder is left as it was."""
    from tqdm.auto import tqdm

    if not train_encoder and f_NChw is None:
        raise ValueError("a frozen encoder needs the images' maps (f_NChw)")
    torch.manual_seed(seed)
    head = copy.deepcopy(head).train()
    targets_N = variant_net.joint_targets(y_N, class_N, num_classes, head.shape.get("num_classes", 1))
    groups = [dict(params=list(head.parameters()), lr=head_lr / 25, weight_decay=weight_decay)]
    encoder_params = [p for module in adapter.encoder_modules() for p in module.parameters()]
    if train_encoder:
        groups.append(dict(params=encoder_params, lr=encoder_lr / 25, weight_decay=0.0))
    batch = min(batch_size, len(images_N3HW))
    per_epoch = len(images_N3HW) // batch
    optimiser = torch.optim.AdamW(groups)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, [head_lr, encoder_lr][:len(groups)], total_steps=epochs * per_epoch,
                                                   pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    with _encoder_kept(adapter):
        for p in encoder_params:
            p.requires_grad_(train_encoder)
        for _ in tqdm(range(epochs), desc="end-to-end reader" if train_encoder else "net alone, same schedule", disable=not progress):
            order = torch.randperm(len(images_N3HW), generator=gen)
            for step in range(per_epoch):
                pick = order[step * batch:(step + 1) * batch]
                f_BChw = adapter.encode(unit_images(images_N3HW[pick])).float() if train_encoder else f_NChw[pick]
                loss = F.cross_entropy(head(f_BChw), targets_N[pick])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
        tuned = encoder_state(adapter) if train_encoder else None
    return head.eval(), tuned


def end_to_end_rows(adapter: FamilyAdapter, head: variant_net.VariantNet, images: Tuple[torch.Tensor, torch.Tensor],
                    maps: Tuple[torch.Tensor, torch.Tensor], labels: Tuple[torch.Tensor, torch.Tensor], class_N: torch.Tensor,
                    f_hat_test: torch.Tensor, num_classes: int, epochs: int, encoder_lr: float, seed: int = 0,
                    progress: bool = True) -> List[dict]:
    """Two rows of the diagnosis table, both from ``head`` (the net trained on ``f``, its ``inverse_f``
    row) trained on for ``epochs``: ``inverse_f_net_trained_on`` (the net alone, on the cached ``f``:
    the control) and ``end_to_end`` (the encoder too, from the image). ``images``, ``maps`` (``f``) and
    ``labels`` (variants) are (training, held-out) pairs; ``class_N`` the training images' classes."""
    rows = []
    for name, train_encoder in (("inverse_f_net_trained_on", False), ("end_to_end", True)):
        start = time.perf_counter()
        net, tuned = finetune_reader(adapter, head, images[0], labels[0], class_N, num_classes, epochs, encoder_lr=encoder_lr,
                                     train_encoder=train_encoder, f_NChw=maps[0], seed=seed, progress=progress)
        seconds = time.perf_counter() - start
        with encoder_weights(adapter, tuned):
            f_test = read_maps(adapter, images[1]) if train_encoder else maps[1]
            f_train = read_maps(adapter, images[0][::8]) if train_encoder else maps[0][::8]
        rows.append(dict(input=name, fmse_to_fhat=float((f_test - f_hat_test).pow(2).mean()),
                         heldout_accuracy=variant_net.variant_accuracy(net, f_test, labels[1]),
                         train_accuracy=variant_net.variant_accuracy(net, f_train, labels[0][::8]), train_seconds=round(seconds, 1)))
        print(f"  {name}: held-out {rows[-1]['heldout_accuracy']:.4f}", flush=True)
    return rows
