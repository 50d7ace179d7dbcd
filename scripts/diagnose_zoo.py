"""Where a zoo's attribution accuracy is lost: token recovery vs the transformers themselves.

    python scripts/diagnose_zoo.py [--weights-dir DIR] [--per-variant 96] [--refine-steps 0] [--reencode-iters 0]
                                   [--guided-weight W] [--out runs/diagnose_zoo]

For each family (VAR, RAR), fresh PNG-rounded generations of every variant (seeds from a range
no Dataset image and no fine-tuning image uses) are mapped back to tokens with the tokenizer's
original encoder and with the shipped/fine-tuned inverse decoder (VAR: our token search with its
defaults; the feature extractor anneals over ``batch_features.SEARCH_ITERS`` iterations). It
reports

* **token recovery** — the fraction of generated tokens found again, per encoder (and per scale
  for VAR), and the image error of decoding the recovered tokens vs the true ones (the true
  tokens reproduce the PNG to rounding error, so a gap means recovery is the loss);
  ``token_recovery_exact_fhat`` reads the tokens from the generator's own ``f̂`` — a perfect
  inverse decoder — so it separates what the encoder loses from what the token reader loses (for
  VAR a multi-scale ``f̂`` is a sum over scales that other token sets can approach, too);
  ``token_recovery_exact_fhat_natural`` does the same for tokens no transformer chose: the
  tokenizer's own greedy tokens of held-out natural crops (as many crops as generations), read
  back from their ``f̂`` — whether the reader's losses are a property of the tokenizer or of the
  generated tokens; ``token_recovery_{exact_fhat,inverse}_variant{i}`` split both by variant,
  smallest (``variant1``) to largest — whether a better-trained transformer's tokens read back
  better;
* **f-space fit** — median per-image MSE of the read tokens' ``f̂`` to the map they were read
  from: ``fmse_exact_fhat_read`` from the generator's ``f̂`` (the true tokens fit it exactly, at
  0, so anything above 0 is the reader stopping short of them; ``…_natural`` for the crops), and
  ``fmse_inverse_{true,recovered}_tokens`` against the inverse decoder's ``f``, for the true
  tokens and for the ones the reader finds (when the true tokens fit ``f`` worse than the found
  ones, no reader that minimises the ``f``-error can return them);
* **variant accuracy with oracle tokens vs recovered tokens** — 3-fold cross-validated
  LightGBM over the likelihood features of :mod:`variant_features` computed on the generating
  tokens (an upper bound: what the transformers can tell apart at all), on the tokens read from
  the generator's exact ``f̂`` (``…_exact_fhat_tokens``: the most a better inverse decoder could give
  this reader) and on the tokens the inverse decoder recovers (what the pipeline gets);
* **the likelihood-ratio rule** — ``argmin_{stem}_{kind}_tokens``: the accuracy of naming the
  variant whose transformer gives the tokens the lowest NLL (``nll_marginal``: plain conditional;
  ``nll_sampling``: under the variant's own sampler; ``nll_evidence``: mixed with the image's code
  posterior), with nothing trained;
* ``variant_net_accuracy_inverse`` (each family with a variant net, ``variant_net.NET_FAMILIES``:
  VAR and RAR): how often the feature extractor's variant net (:mod:`variant_net`) names the
  generating variant from the inverse decoder's ``f``, reading no tokens;
* with ``--refine-steps N``, the same for tokens recovered after refining the inverse decoder's
  features by latent optimisation through the frozen decoder (``token_recovery_inverse_refined``,
  ``variant_accuracy_refined_tokens``): does the image error lead back to the true tokens?
* with ``--reencode-iters N``, the same for tokens recovered after N re-encoding corrections of
  the inverse decoder's bias (``…_reencoded…``; :func:`signals.reencode_tokens`);
* with ``--guided-weight W`` (VAR), **prior-guided reading**: the tokens read from the exact
  ``f̂`` and from the inverse decoder's ``f`` with each variant's own sampler (true label given)
  as the prior of :func:`quantizer.prior_guided_tokens` — ``token_recovery_guided_{exact_fhat,inverse}``
  for the generating variant's prior, and ``argmax_guided_objective_{…}``, the accuracy of naming
  the variant whose prior explains ``f`` best. Does knowing what the transformer would sample
  resolve the multi-scale ambiguity?

A low oracle accuracy means the variants' transformers are too alike (a zoo property); a high
oracle accuracy with a low recovered one means the tokenizer cannot be inverted well enough.
Writes ``diagnosis.csv`` to ``--out``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import inv_decoder  # noqa: E402
import variant_net  # noqa: E402
from cli import CACHE_DIR, INV_DECODER_DIR, VARIANT_NET_DIR, InputError, at_least  # noqa: E402
from models.adapter import FamilyAdapter  # noqa: E402
from models.zoo import load_family  # noqa: E402
from quantizer import LogPrior, per_image_mse, prior_guided_tokens, search_tokens  # noqa: E402
from runtime import keep_freed_memory  # noqa: E402
from signals import reencode_tokens, refine_tokens  # noqa: E402
from variant_features import NOT_FEATURES, token_evidence, variant_features  # noqa: E402

DIAGNOSIS_SEED = 8_000_000  # disjoint from make_demo_dataset (< 7e6) and inv_decoder.SEED_OFFSET (7e6 … 8e6)
# generation seed of a batch: DIAGNOSIS_SEED + 10 000·seed + 100·variant + batch (:func:`job_seed`), so
# these bounds keep every one in [8e6, 9e6), below the variant nets' (variant_net_maps.SEED_OFFSET)
SEEDS = range(100)
BATCHES_PER_VARIANT = 100


def check_generation_plan(seed: int, per_variant: int, batch: int) -> None:
    """An :class:`InputError` unless every generation seed of ``seed``, ``per_variant`` images per
    variant in batches of ``batch`` (:func:`job_seed`) is this command's own: ``seed`` in
    :data:`SEEDS` and at most :data:`BATCHES_PER_VARIANT` batches per variant."""
    if seed not in SEEDS:
        raise InputError(f"--seed {seed}: must be in {SEEDS.start} … {SEEDS.stop - 1}; other seeds would generate with "
                         "the seeds of other variants' or the variant nets' training images")
    batches = -(-per_variant // batch)
    if batches > BATCHES_PER_VARIANT:
        raise InputError(f"--per-variant {per_variant} in batches of {batch} needs {batches} batches per variant; at most "
                         f"{BATCHES_PER_VARIANT} have seeds of their own: raise --batch-size or lower --per-variant")


def job_seed(seed: int, variant_index: int, batch_index: int) -> int:
    """The generation seed of one batch, inside ``[DIAGNOSIS_SEED, DIAGNOSIS_SEED + 1e6)`` for a plan
    :func:`check_generation_plan` accepts."""
    return DIAGNOSIS_SEED + seed * 10_000 + BATCHES_PER_VARIANT * variant_index + batch_index


def recover_tokens(adapter: FamilyAdapter, img01_B3HW: torch.Tensor, refine_steps: int = 0, refine_lr: float = 0.01,
                   reencode_iters: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tokens recovered from images: nearest codes (RAR) or our multi-scale search (VAR).

    ``refine_steps > 0`` first moves the encoder's feature map by Adam on the image error through
    the frozen decoder (:func:`signals.optimise_latent`, the LatentTracer optimisation, started
    from ``f`` instead of ``f̂``) and quantizes the result; ``reencode_iters > 0`` instead cancels
    the encoder's bias by re-encoding the decoded estimate (:func:`signals.reencode_tokens`).
    Returns the tokens and the image's evidence about them (:func:`variant_features.token_evidence`).
    """
    with torch.no_grad():
        f = adapter.encode(img01_B3HW)
    if reencode_iters > 0:
        tokens, f = reencode_tokens(adapter, f, reencode_iters, search_tokens)
    else:
        tokens, f = refine_tokens(adapter, img01_B3HW, f, refine_steps, refine_lr, search_tokens)  # 0 steps: f as it is
    with torch.no_grad():
        return tokens, token_evidence(adapter.token_distances(f, tokens))


@torch.no_grad()
def quantize_exact(adapter: FamilyAdapter, f_hat_BChw: torch.Tensor) -> torch.Tensor:
    """Tokens read back from the generator's own ``f̂`` — what a perfect inverse decoder would give
    the token reader (nearest codes for RAR, our multi-scale search for VAR): the pipeline's
    reader with no re-encoding step."""
    return reencode_tokens(adapter, f_hat_BChw, 0, search_tokens)[0]


def sampler_log_prior(adapter: FamilyAdapter, variant: str, labels_B: torch.Tensor) -> LogPrior:
    """The log-probabilities ``variant``'s sampler gives each scale's tokens, for
    :func:`quantizer.prior_guided_tokens`: classifier-free guidance for ``labels_B`` and the
    top-k / top-p filter of the variant's sampling settings (−inf outside it), given the
    coarser scales' tokens chosen so far (one teacher-forced pass of the prefix per scale)."""
    from models.var_sampler import filter_top_k_top_p

    sizes = adapter.scale_sizes()
    settings = adapter.sampling[variant]

    def log_prior(si: int, coarser: list) -> torch.Tensor:
        B, start = labels_B.shape[0], sum(sizes[:si])
        tokens_BL = torch.zeros(B, sum(sizes), dtype=torch.long, device=adapter.device)
        if coarser:
            tokens_BL[:, :start] = torch.cat(coarser, dim=1)
        end = start + sizes[si]
        cond = adapter.token_logits(variant, tokens_BL, labels_B, positions=end)
        uncond = adapter.token_logits(variant, tokens_BL, None, positions=end)
        sampling_BlV = adapter.sampling_logits(variant, cond, uncond)[:, start:end]
        # filtered as the sampler filters (models/var_sampler.sample_var_tokens)
        top_k = min(settings["top_k"], sampling_BlV.shape[-1])
        return filter_top_k_top_p(sampling_BlV, top_k=top_k, top_p=settings["top_p"]).log_softmax(-1)

    return log_prior


@torch.no_grad()
def natural_round_trip(adapter: FamilyAdapter, n: int, batch: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Read back the tokenizer's own greedy tokens of ``n`` held-out natural crops from their
    ``f̂`` with :func:`quantize_exact`: per-token hits ``n×L`` and the per-image f-MSE of the read
    tokens' ``f̂`` to the exact one (0 when every token is found, or another token set fits as well)."""
    from demo_photos import MODEL_PHOTOS, crops_tensor, random_crops

    crops, _ = random_crops(MODEL_PHOTOS, n, DIAGNOSIS_SEED + seed, "val", size=adapter.image_size)
    hits, fmse = [], []
    for start in range(0, n, batch):
        tokens, f_hat = adapter.quantize(adapter.encode(crops_tensor(crops[start:start + batch]).to(adapter.device)))
        read = quantize_exact(adapter, f_hat)
        hits.append((read == tokens).float())
        fmse.append(per_image_mse(adapter.tokens_to_fhat(read), f_hat))
    return torch.cat(hits), torch.cat(fmse)


def _feature_frame(adapter: FamilyAdapter, tokens_BL: torch.Tensor, evidence_BLV: Optional[torch.Tensor] = None) -> pd.DataFrame:
    sizes = adapter.scale_sizes() if adapter.family == "VAR" else None
    columns: Dict[str, np.ndarray] = {}
    for variant in adapter.variant_names:
        feats = variant_features(adapter, variant, tokens_BL, scale_sizes=sizes, evidence_BLV=evidence_BLV)
        for name in NOT_FEATURES + ("best_label",):
            feats.pop(name)
        columns.update({f"{variant}_{name}": values for name, values in feats.items()})
    return pd.DataFrame(columns)


def _argmin_accuracy(features: pd.DataFrame, labels: np.ndarray, variants: Sequence[str], stem: str) -> float:
    """Accuracy of naming the variant of lowest ``{variant}_{stem}`` — a likelihood-ratio rule, nothing trained."""
    nll = np.stack([features[f"{v}_{stem}"].to_numpy() for v in variants], 1)
    return float(np.mean(np.asarray(variants)[nll.argmin(1)] == labels))


def _cv_accuracy(features: pd.DataFrame, labels: np.ndarray, seed: int) -> float:
    from lightgbm import LGBMClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    model = LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=7, random_state=seed, n_jobs=2, verbose=-1)
    return float(cross_val_score(model, features, labels, cv=StratifiedKFold(3, shuffle=True, random_state=seed)).mean())


def _guided_reading(adapter: FamilyAdapter, variant: str, f_BChw: torch.Tensor, tokens_BL: torch.Tensor,
                    labels_B: torch.Tensor, weight: float, out: Dict[str, list]) -> None:
    """Read ``f`` once with each variant's sampler as the prior (:func:`quantizer.prior_guided_tokens`,
    given the true labels); append to ``out`` the per-token hits of the generating ``variant``'s
    reading and, per image, whether the highest objective names ``variant``."""
    objectives = []
    for candidate in adapter.variant_names:
        read, objective_B = prior_guided_tokens(adapter.tokenizer.quantize, f_BChw,
                                                sampler_log_prior(adapter, candidate, labels_B), weight)
        objectives.append(objective_B)
        if candidate == variant:
            out["hits"].append((read.tokens == tokens_BL).float())
    out["named"].append((torch.stack(objectives, 1).argmax(1) == adapter.variant_names.index(variant)).float())


def diagnose_family(family: str, weights_dir, per_variant: int, batch: int, seed: int, refine_steps: int = 0,
                    refine_lr: float = 0.01, reencode_iters: int = 0, guided_weight: Optional[float] = None) -> Dict[str, float]:
    from tqdm.auto import tqdm

    check_generation_plan(seed, per_variant, batch)
    original = load_family(family, weights_dir)
    path = inv_decoder.ensure_inverse_decoder(family, weights_dir, ROOT / CACHE_DIR / INV_DECODER_DIR)
    inverse = inv_decoder.load_inverse_decoder(load_family(family, weights_dir), path)
    net = None
    if family in variant_net.NET_FAMILIES:  # the feature extractor's variant net, on the same inverse decoder's f
        net = variant_net.load_variant_net(variant_net.ensure_variant_net(family, weights_dir, ROOT / CACHE_DIR / VARIANT_NET_DIR, inverse),
                                           inverse.variant_names)[0]
    net_hits: list = []
    frames = {"oracle": [], "exact_fhat": [], "recovered": []}
    labels, hits, err_true, err_found = [], {"original": [], "inverse": [], "exact_fhat": []}, [], []
    fit: Dict[str, list] = {"exact_fhat_read": [], "inverse_true_tokens": [], "inverse_recovered_tokens": []}
    guided: Dict[str, Dict[str, list]] = {source: {"hits": [], "named": []} for source in ("exact_fhat", "inverse")}
    if refine_steps > 0:
        frames["refined"], hits["inverse_refined"] = [], []
    if reencode_iters > 0:
        frames["reencoded"], hits["inverse_reencoded"] = [], []
    jobs = [(v_i, v, start) for v_i, v in enumerate(original.variant_names) for start in range(0, per_variant, batch)]
    for v_i, variant, start in tqdm(jobs, desc=f"{family} diagnosis"):
        seed_B = job_seed(seed, v_i, start // batch)
        n = min(batch, per_variant - start)
        labels_B = original.random_labels(n, seed_B)
        img, tokens, f_hat = original.generate(variant, labels_B, seed_B)
        x = inv_decoder.to_png_levels(img)
        read_exact = quantize_exact(original, f_hat)
        hits["exact_fhat"].append((read_exact == tokens).float())
        found, evidence = recover_tokens(inverse, x)
        hits["inverse"].append((found == tokens).float())
        hits["original"].append((recover_tokens(original, x)[0] == tokens).float())
        with torch.no_grad():
            f_inverse = inverse.encode(x)
            f_hat_true, f_hat_found = original.tokens_to_fhat(tokens), original.tokens_to_fhat(found)
            fit["exact_fhat_read"].append(per_image_mse(original.tokens_to_fhat(read_exact), f_hat))
            fit["inverse_true_tokens"].append(per_image_mse(f_hat_true, f_inverse))
            fit["inverse_recovered_tokens"].append(per_image_mse(f_hat_found, f_inverse))
            err_true.append(per_image_mse(original.decode(f_hat_true), x))
            err_found.append(per_image_mse(original.decode(f_hat_found), x))
        if net is not None:
            net_map = variant_net.net_input(inverse, f_inverse, variant_net.input_map_of(net))
            net_hits.append((variant_net.variant_log_probs(net, net_map).argmax(1) == v_i).float())
        if family == "VAR" and guided_weight is not None:
            for source, f_source in (("exact_fhat", f_hat), ("inverse", f_inverse)):
                _guided_reading(original, variant, f_source, tokens, labels_B, guided_weight, guided[source])
        frames["oracle"].append(_feature_frame(original, tokens))
        frames["exact_fhat"].append(_feature_frame(original, read_exact))
        frames["recovered"].append(_feature_frame(original, found, evidence))
        if refine_steps > 0:
            refined, refined_evidence = recover_tokens(inverse, x, refine_steps, refine_lr)
            hits["inverse_refined"].append((refined == tokens).float())
            frames["refined"].append(_feature_frame(original, refined, refined_evidence))
        if reencode_iters > 0:
            reencoded, reencoded_evidence = recover_tokens(inverse, x, reencode_iters=reencode_iters)
            hits["inverse_reencoded"].append((reencoded == tokens).float())
            frames["reencoded"].append(_feature_frame(original, reencoded, reencoded_evidence))
        labels += [variant] * n
    labels_arr = np.array(labels)
    row: Dict[str, float] = {"family": family, "images": len(labels)}
    for encoder, values in hits.items():
        row[f"token_recovery_{encoder}"] = float(torch.cat(values).mean())
    natural_hits, natural_fmse = natural_round_trip(original, len(labels), batch, seed)
    row["token_recovery_exact_fhat_natural"] = float(natural_hits.mean())
    for v_i, variant in enumerate(original.variant_names):  # smallest first: does a better transformer's output read back better?
        mine = torch.from_numpy(labels_arr == variant)
        for encoder in ("exact_fhat", "inverse"):
            row[f"token_recovery_{encoder}_variant{v_i + 1}"] = float(torch.cat(hits[encoder])[mine].mean())
    if family == "VAR":
        sizes = original.scale_sizes()
        for encoder in ("inverse", "exact_fhat"):
            for k, chunk in enumerate(torch.split(torch.cat(hits[encoder]).mean(0), sizes)):
                row[f"token_recovery_{encoder}_scale{k}"] = float(chunk.mean())
        for source, parts in guided.items():
            if parts["hits"]:
                row[f"token_recovery_guided_{source}"] = float(torch.cat(parts["hits"]).mean())
                row[f"argmax_guided_objective_{source}"] = float(torch.cat(parts["named"]).mean())
    if net_hits:
        row["variant_net_accuracy_inverse"] = float(torch.cat(net_hits).mean())
    for name, values in fit.items():
        row[f"fmse_{name}"] = float(torch.cat(values).median())
    row["fmse_exact_fhat_read_natural"] = float(natural_fmse.median())
    row["image_mse_true_tokens"] = float(torch.cat(err_true).median())
    row["image_mse_recovered_tokens"] = float(torch.cat(err_found).median())
    for kind, parts in frames.items():
        table = pd.concat(parts, ignore_index=True)
        row[f"variant_accuracy_{kind}_tokens"] = _cv_accuracy(table, labels_arr, seed)
        for stem in ("nll_marginal", "nll_sampling") + (("nll_evidence",) if kind not in ("oracle", "exact_fhat") else ()):
            row[f"argmin_{stem}_{kind}_tokens"] = _argmin_accuracy(table, labels_arr, original.variant_names, stem)
    row["chance"] = 1.0 / len(original.variant_names)
    return row


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, help="official checkpoints or a zoo folder (default: the demo zoo)")
    parser.add_argument("--per-variant", type=at_least(1), default=96,
                        help=f"generations per variant, in at most {BATCHES_PER_VARIANT} batches (default 96)")
    parser.add_argument("--batch-size", type=at_least(1), default=32,
                        help="generations per batch (default 32); each batch is seeded, so this changes the images")
    parser.add_argument("--families", nargs="+", default=["VAR", "RAR"], choices=["VAR", "RAR"],
                        help="families to diagnose (default: both)")
    parser.add_argument("--seed", type=int, default=0,
                        help=f"offsets the seeds of the generations and natural crops, and seeds the cross-validated "
                             f"LightGBM; {SEEDS.start} … {SEEDS.stop - 1} (default 0)")
    parser.add_argument("--refine-steps", type=int, default=0,
                        help="also recover tokens after this many Adam steps on the image error through the decoder "
                             "(from the inverse decoder's features; 0: off)")
    parser.add_argument("--refine-lr", type=float, default=0.01, help="Adam learning rate of --refine-steps (halved at the middle)")
    parser.add_argument("--reencode-iters", type=int, default=0,
                        help="also recover tokens after this many re-encoding bias corrections (signals.reencode_tokens; 0: off)")
    parser.add_argument("--guided-weight", type=float, default=None,
                        help="also read VAR's tokens with each variant's sampler as the prior (quantizer.prior_guided_tokens, "
                             "true labels given) at this weight on the code distance, e.g. 30 (default: off)")
    parser.add_argument("--out", type=Path, default=Path("runs/diagnose_zoo"),
                        help="folder for diagnosis.csv (default runs/diagnose_zoo)")
    args = parser.parse_args(argv)
    check_generation_plan(args.seed, args.per_variant, args.batch_size)
    keep_freed_memory()
    torch.set_num_threads(2)
    rows = [diagnose_family(f, args.weights_dir, args.per_variant, args.batch_size, args.seed, args.refine_steps, args.refine_lr,
                            args.reencode_iters, args.guided_weight) for f in args.families]
    table = pd.DataFrame(rows).set_index("family").T
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "diagnosis.csv")
    with pd.option_context("display.float_format", lambda v: f"{v:.4g}"):
        print(table.to_string())
    print(f"→ {args.out / 'diagnosis.csv'}")
    return 0


if __name__ == "__main__":
    from cli import run_main

    sys.exit(run_main(main))
