"""Training loops of the demo zoo: VQ tokenizers, VAR transformers, RAR generators.

* Tokenizers (VAR's multi-scale VQVAE, MaskGIT-VQGAN): L1 + L2 reconstruction plus the VQ loss
  with a straight-through estimator; codes unused for ``restart_every`` steps are re-seeded
  from random encoder outputs of the batch (dead-code restart, the usual cure for codebook
  collapse in short trainings).
* VAR transformers: teacher forcing over all scales at once, cross-entropy on every token,
  class-label dropout 0.1 (in ``VARTransformer.forward`` during training).
* RAR generators: next-token prediction along a per-sample order that is a random permutation
  with probability ``random_ratio``, annealed linearly from 1 to 0 between ``anneal_start`` and
  ``anneal_end`` (fractions of training) — RAR's randomness annealing; raster order after.
  Class-label dropout 0.1 to the 'none' condition. With ``select_nll`` (a callable giving the NLL of
  held-out *selection* tokens), the loop evaluates it every ``select_every`` steps and ends on the
  best checkpoint seen (early stopping): the larger demo generators overfit the small crop pool
  long before their step budget ends.

All loops use AdamW with linear warm-up and cosine decay, gradient clipping, a seeded
``torch.Generator`` for batches, and return the per-step losses.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

__all__ = ["lr_at", "train_var_tokenizer", "train_maskgit_tokenizer", "train_var_transformer", "train_rar_generator",
           "var_tokens", "maskgit_tokens"]


def lr_at(step: int, steps: int, peak: float, warmup_frac: float = 0.05, floor: float = 0.05) -> float:
    warm = max(1, int(steps * warmup_frac))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n and "pos" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n and "pos" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def _step(opt: torch.optim.Optimizer, model: torch.nn.Module, loss: torch.Tensor, lr: float, clip: float = 2.0) -> None:
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


@torch.no_grad()
def _restart_dead_codes(codebook: torch.nn.Embedding, usage_V: torch.Tensor, f_NC: torch.Tensor, gen: torch.Generator) -> int:
    dead = (usage_V == 0).nonzero().flatten()
    if len(dead) == 0 or len(f_NC) == 0:
        return 0
    pick = torch.randint(0, len(f_NC), (len(dead),), generator=gen)
    codebook.weight[dead] = f_NC[pick] + 0.01 * f_NC.std() * torch.randn(len(dead), f_NC.shape[1], generator=gen)
    return len(dead)


def _train_tokenizer(model, encode_quantize_decode, pool_u8: torch.Tensor, codebook: torch.nn.Embedding, *, steps: int,
                     batch: int, lr: float, seed: int, restart_every: int, progress: bool) -> List[float]:
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = _optimizer(model, lr, 0.0)
    usage = torch.zeros(codebook.num_embeddings)
    losses = []
    model.train()
    for step in tqdm(range(steps), desc="tokenizer", disable=not progress, leave=False):
        x01 = pool_u8[torch.randint(0, len(pool_u8), (batch,), generator=gen)].float().div(255)
        rec01, vq_loss, idx, f_NC = encode_quantize_decode(x01)
        loss = F.l1_loss(rec01, x01) + F.mse_loss(rec01, x01) + vq_loss
        _step(opt, model, loss, lr_at(step, steps, lr))
        usage += torch.bincount(idx.flatten(), minlength=codebook.num_embeddings).float()
        if restart_every and (step + 1) % restart_every == 0 and step < 0.8 * steps:
            _restart_dead_codes(codebook, usage, f_NC.detach(), gen)
            usage.zero_()
        losses.append(loss.item())
    model.eval()
    return losses


def train_var_tokenizer(vae, pool_u8: torch.Tensor, *, steps: int, batch: int = 24, lr: float = 2e-3, seed: int = 0,
                        restart_every: int = 40, progress: bool = True) -> List[float]:
    def run(x01):
        f = vae.encode_f(x01 * 2 - 1)
        f_hat_st, vq_loss, idx = vae.quantize.quantize_for_training(f)
        rec = (vae.decode_fhat_raw(f_hat_st) + 1) / 2
        return rec, vq_loss, torch.cat(idx, 1), f.detach().permute(0, 2, 3, 1).reshape(-1, f.shape[1])

    return _train_tokenizer(vae, run, pool_u8, vae.quantize.embedding, steps=steps, batch=batch, lr=lr, seed=seed,
                            restart_every=restart_every, progress=progress)


def train_maskgit_tokenizer(tok, pool_u8: torch.Tensor, *, steps: int, batch: int = 24, lr: float = 2e-3, seed: int = 0,
                            restart_every: int = 40, progress: bool = True) -> List[float]:
    def run(x01):
        rec, vq_loss = tok(x01)
        with torch.no_grad():
            f = tok.encode_f(x01)
            codes, _ = tok.quantize_f(f)
        return rec, vq_loss, codes, f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])

    return _train_tokenizer(tok, run, pool_u8, tok.quantize.embedding, steps=steps, batch=batch, lr=lr, seed=seed,
                            restart_every=restart_every, progress=progress)


@torch.no_grad()
def var_tokens(vae, images_u8: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Greedy multi-scale tokens (all scales concatenated) of uint8 images."""
    out = []
    for s in range(0, len(images_u8), batch):
        out.append(torch.cat(vae.img_to_idxBl(images_u8[s:s + batch].float().div(255) * 2 - 1), 1))
    return torch.cat(out)


@torch.no_grad()
def maskgit_tokens(tok, images_u8: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([tok.encode(images_u8[s:s + batch].float().div(255)) for s in range(0, len(images_u8), batch)])


def train_var_transformer(var, vae, tokens_BL: torch.Tensor, labels_B: torch.Tensor, *, steps: int, batch: int = 48,
                          lr: float = 2e-3, seed: int = 0, progress: bool = True) -> List[float]:
    from tqdm.auto import tqdm

    sizes = [pn * pn for pn in vae.patch_nums]
    with torch.no_grad():
        x_all = torch.cat([vae.quantize.teacher_forcing_input(list(torch.split(tokens_BL[s:s + 512], sizes, 1)))
                           for s in range(0, len(tokens_BL), 512)])
    gen = torch.Generator().manual_seed(seed)
    opt = _optimizer(var, lr, 0.05)
    losses = []
    var.train()
    for step in tqdm(range(steps), desc=f"VAR d{var.depth}", disable=not progress, leave=False):
        pick = torch.randint(0, len(tokens_BL), (batch,), generator=gen)
        logits = var(labels_B[pick], x_all[pick])
        loss = F.cross_entropy(logits.reshape(-1, var.V), tokens_BL[pick].reshape(-1))
        _step(opt, var, loss, lr_at(step, steps, lr))
        losses.append(loss.item())
    var.eval()
    return losses


def train_rar_generator(rar, tokens_BN: torch.Tensor, labels_B: torch.Tensor, *, steps: int, batch: int = 64, lr: float = 2e-3,
                        seed: int = 0, anneal_start: float = 0.2, anneal_end: float = 0.6, label_dropout: float = 0.1,
                        progress: bool = True, select_nll: Optional[Callable[[], float]] = None, select_every: int = 50,
                        selection: Optional[Dict[str, object]] = None) -> List[float]:
    """Train ``rar`` in place; returns per-step losses. With ``select_nll``, ``selection`` (if given)
    receives ``best_step`` and the ``curve`` ``[(step, nll), …]`` of the checkpoint selection."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = _optimizer(rar, lr, 0.03)
    N = rar.image_seq_len
    losses: List[float] = []
    curve: List[tuple] = []
    best: Optional[tuple] = None
    rar.train()
    for step in tqdm(range(steps), desc=f"RAR {len(rar.blocks)}L", disable=not progress, leave=False):
        frac = step / max(1, steps)
        ratio = 1.0 if frac < anneal_start else max(0.0, 1 - (frac - anneal_start) / max(1e-9, anneal_end - anneal_start))
        pick = torch.randint(0, len(tokens_BN), (batch,), generator=gen)
        ids = tokens_BN[pick]
        random_rows = torch.rand(batch, generator=gen) < ratio
        orders = torch.arange(N).expand(batch, N).clone()
        for row in random_rows.nonzero().flatten().tolist():
            orders[row] = torch.randperm(N, generator=gen)
        cond = rar.condition_ids(labels_B[pick])
        cond = torch.where(torch.rand(batch, generator=gen) < label_dropout, torch.full_like(cond, rar.none_condition_id), cond)
        logits = rar(ids, cond, orders)[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, rar.codebook_size), torch.gather(ids, 1, orders).reshape(-1))
        _step(opt, rar, loss, lr_at(step, steps, lr))
        losses.append(loss.item())
        if select_nll is not None and ((step + 1) % select_every == 0 or step + 1 == steps):
            best = _track_best(rar, select_nll, step + 1, curve, best)
    rar.eval()
    if select_nll is not None:
        rar.load_state_dict(best[2])
        if selection is not None:
            selection.update(best_step=best[0], best_nll=best[1], curve=curve)
    return losses


def _track_best(model: torch.nn.Module, select_nll: Callable[[], float], step: int, curve: list, best: Optional[tuple]) -> tuple:
    """Evaluate the selection NLL in eval mode; keep ``(step, nll, state_dict copy)`` of the best."""
    model.eval()
    nll = float(select_nll())
    model.train()
    curve.append((step, nll))
    if best is None or nll < best[1]:
        best = (step, nll, {k: v.detach().clone() for k, v in model.state_dict().items()})
    return best


def evaluate_nll(logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tokens: torch.Tensor, labels: torch.Tensor,
                 batch: int = 128) -> float:
    """Mean token NLL (nats) of ``tokens`` under ``logits_fn(tokens, labels) → B×L×V``."""
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(tokens), batch):
            logits = logits_fn(tokens[s:s + batch], labels[s:s + batch])
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[s:s + batch].reshape(-1), reduction="sum").item()
            count += tokens[s:s + batch].numel()
    return total / count


def unigram_nll(train_tokens: torch.Tensor, val_tokens: torch.Tensor, vocab: int) -> float:
    """NLL of ``val_tokens`` under add-one-smoothed token frequencies of ``train_tokens``."""
    counts = torch.bincount(train_tokens.flatten(), minlength=vocab).double() + 1
    logp = (counts / counts.sum()).log()
    return float(-logp[val_tokens.flatten()].mean())


def summarize(losses: List[float]) -> Dict[str, float]:
    tail = losses[-max(1, len(losses) // 10):]
    return {"first": float(losses[0]), "last10pct": float(sum(tail) / len(tail))}
