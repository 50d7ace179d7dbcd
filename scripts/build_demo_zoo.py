"""Train the demo zoo from scratch on CPU: small, honest stand-ins for the 8 official IARs.

    python scripts/build_demo_zoo.py [--out demo_zoo] [--seed 0] [--quick]

What it trains (configs in ``ZOO_CONFIG`` of ``scripts/zoo_recipe.py``; 64×64 images, 8× downsampling → 8×8 = 64
tokens at the finest scale):

* VAR family — one multi-scale VQVAE (V=256, Cvae=16, patch_nums 1,2,3,4,5,6,8 → 155 tokens)
  and four next-scale transformers of increasing depth, width and training steps for var16 <
  var20 < var24 < var30, all on the same token data, class-conditional with label dropout 0.1;
* RAR family — one MaskGIT-VQGAN (codebook 256, z 16) and four RAR generators of increasing
  size and training steps for rarb < rarl < rarxl < rarxxl, trained with randomness annealing;
  they train on ``gen_pool`` crops (the tokenizer's pool plus more crops of the same training
  regions, tokenized by the trained tokenizer) and each ends on its checkpoint (every 50 steps) of
  lowest NLL on *selection* crops (on the tokenizer's 6 000 crops alone the larger generators
  overfit) — other random crops of the same validation regions (each photo's right quarter) than
  those the reported NLL uses, so the two overlap in pixels and the RAR generators' validation NLL
  is not independent of the selection;
* an outlier IAR — a MaskGIT-VQGAN of another configuration with a codebook of its own and a
  raster-order generator, used only to make outlier images.

Then the inverse decoders of both families (``--stage inv-decoders``) and both families' variant
nets (``--stage variant-nets``, :mod:`variant_net`: CNNs naming the variant from the plain inverse
decoder's ``f`` after one re-encoding correction: per family an ensemble of three trained on the (variant, class label) pairs of
fresh generations — 81 920 per VAR variant, 20 480 per RAR variant — kept in ``--map-cache`` so a
rerun or a retrained net reuses them).

Data: crops of the 8 *model photos* of ``demo_photos.py`` (class = photo; left 75 % of each
photo); the right 25 % gives validation crops for tokenizer PSNR and token NLL; the 3 reserved
photos are never seen. Writes safetensors weights, ``zoo.json`` (configs, sampling settings,
metrics, timings), the inverse decoders of both families fine-tuned with ``inv_decoder.py`` on
fresh generations (``inv_decoders/<family>[_aug]/``, plain and with the augmentation
curriculum) and ``SHA256SUMS`` (all weight files) to ``--out``; prints the NLL and PSNR
tables. Same seed, same machine and thread count → same weights (CPU kernels are deterministic
for a fixed thread count; the build pins 2 threads).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import demo_photos  # noqa: E402
import zoo_training as zt  # noqa: E402
from cli import InputError, run_main  # noqa: E402
from models.checkpoints import load_strict, read_state_dict  # noqa: E402
from models.registry import build_maskgit_vqgan, build_rar_generator, build_var_transformer, build_var_vae  # noqa: E402
from runtime import keep_freed_memory  # noqa: E402
from zoo_recipe import (FULL, INV_DECODER_FULL, INV_DECODER_OVERRIDES, INV_DECODER_QUICK, NUM_CLASSES, QUICK,  # noqa: E402
                        VARIANT_NET_QUICK, ZOO_CONFIG)


def _model_photo_crops(n: int, seed: int, part: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n`` crops of the model photos' ``part`` region as uint8 ``n×3×64×64`` and their class labels."""
    crops, labels = demo_photos.random_crops(demo_photos.MODEL_PHOTOS, n, seed, part)
    return torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).long()


def _save(module: torch.nn.Module, path: Path) -> None:
    """Store ``module``'s weights with floating-point tensors as float16 (half the size; they load
    back into float32 models). Training and the metrics in ``zoo.json`` run in float32."""
    save_file({k: (v.half() if v.is_floating_point() else v).detach().contiguous() for k, v in module.state_dict().items()}, str(path))


@torch.no_grad()
def _as_shipped(module: torch.nn.Module) -> torch.nn.Module:
    """Round ``module``'s floating-point weights to float16 and back, in place: the tokenizer as shipped,
    so a full build and an ``--only`` rebuild (which loads the shipped file) tokenize identically."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            tensor.copy_(tensor.half().float())
    return module


@torch.no_grad()
def _tokenizer_metrics(encode, decode, val_u8: torch.Tensor) -> Dict[str, float]:
    """On held-out crops: reconstruction PSNR (dB) of ``decode(encode(x))``, and the fraction of those tokens the
    tokenizer's own encoder finds again in the decoded image (greedy; what QuantLoss can see before any
    fine-tuning). ``encode``: images in [0, 1] → tokens ``B×L``; ``decode``: tokens → images in [0, 1]."""
    x = val_u8.float().div(255)
    psnr, hits = [], []
    for s in range(0, len(x), 128):
        tokens = encode(x[s:s + 128])
        rec = decode(tokens).clamp(0, 1)
        mse = (rec - x[s:s + 128]).square().flatten(1).mean(1).clamp_min(1e-10)
        psnr.append(10 * torch.log10(1 / mse))
        hits.append((encode(rec) == tokens).float().flatten())
    return {"psnr_val": float(torch.cat(psnr).mean()), "round_trip_tokens_val": float(torch.cat(hits).mean())}


def _steps(plan_value, name: str) -> int:
    return int(plan_value[name]) if isinstance(plan_value, dict) else int(plan_value)


def merge_manifest(old: dict, new: dict) -> dict:
    """``old`` zoo.json updated with the families, variants, metrics and timings of a partial build ``new``."""
    merged = copy.deepcopy(old)
    for family, fam in new["families"].items():
        target = merged["families"].setdefault(family, {"tokenizer": fam["tokenizer"], "variants": {}})
        target["variants"].update(fam["variants"])
    for key, values in new["metrics"].items():
        merged["metrics"].setdefault(key, {}).update(values)
    merged["timings_s"].update(new["timings_s"])
    merged["plan"] = new["plan"]
    return merged


def build(out: Path, seed: int, quick: bool, progress: bool = True, only: Optional[Sequence[str]] = None) -> dict:
    """Train the zoo into ``out``; ``only`` = variant names retrains just those (tokenizers are loaded
    from ``out``, every other variant is kept) and merges the result into ``out/zoo.json``."""
    plan = QUICK if quick else FULL
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True, warn_only=True)
    out.mkdir(parents=True, exist_ok=True)
    timings: Dict[str, float] = {}
    metrics: Dict[str, dict] = {"nll_val": {}, "psnr_val": {}, "train_loss": {}}
    clock = time.perf_counter()
    pool, pool_y = _model_photo_crops(plan["pool"], seed, "train")
    val, val_y = _model_photo_crops(plan["val"], seed + 1, "val")
    # checkpoint selection for the RAR generators: other random crops of the same validation regions
    # (each photo's right quarter), so they overlap the reported validation NLL's crops in pixels
    select, select_y = _model_photo_crops(plan["val"], seed + 2, "val")
    timings["crops"] = time.perf_counter() - clock
    manifest_families = {}
    for f_i, (family, fam_cfg) in enumerate(ZOO_CONFIG.items()):
        if only is not None and not set(only) & set(fam_cfg["variants"]):
            continue
        clock = time.perf_counter()
        torch.manual_seed(seed * 1000 + 10 * f_i)
        tok_cfg = fam_cfg["tokenizer"]
        tok_file = f"{family.lower()}_tokenizer.safetensors"
        if family == "VAR":
            tokenizer = build_var_vae(tok_cfg)
            if only is not None:
                losses = [float("nan")]
                load_strict(tokenizer, read_state_dict(out / tok_file), str(out / tok_file), ignore={"quantize.ema_vocab_hit_SV"})
            else:
                losses = zt.train_var_tokenizer(tokenizer, pool, steps=plan["tok_steps"][family], seed=seed + f_i, progress=progress)
                _as_shipped(tokenizer)
            tokens, val_tokens = zt.var_tokens(tokenizer, pool), zt.var_tokens(tokenizer, val)
            scale_sizes = [pn * pn for pn in tokenizer.patch_nums]
            tok_metrics = _tokenizer_metrics(lambda x: torch.cat(tokenizer.img_to_idxBl(x * 2 - 1), 1),
                                             lambda t: (tokenizer.idxBl_to_img(list(torch.split(t, scale_sizes, 1))) + 1) / 2, val)
            vocab = tok_cfg["V"]
        else:
            tokenizer = build_maskgit_vqgan(tok_cfg)
            if only is not None:
                losses = [float("nan")]
                load_strict(tokenizer, read_state_dict(out / tok_file), str(out / tok_file))
            else:
                losses = zt.train_maskgit_tokenizer(tokenizer, pool, steps=plan["tok_steps"][family], seed=seed + f_i,
                                                    progress=progress)
                _as_shipped(tokenizer)
            tokens, val_tokens = zt.maskgit_tokens(tokenizer, pool), zt.maskgit_tokens(tokenizer, val)
            select_tokens = zt.maskgit_tokens(tokenizer, select)
            tok_metrics = _tokenizer_metrics(tokenizer.encode, tokenizer.decode, val)
            vocab = tok_cfg["codebook_size"]
        gen_tokens, gen_y = tokens, pool_y
        extra = plan["gen_pool"].get(family, 0) - len(pool)
        if extra > 0:  # more crops of the same training regions for the generators only (the tokenizer never saw them)
            extra_u8, extra_y = _model_photo_crops(extra, seed + 3 + f_i, "train")
            extra_tokens = zt.var_tokens(tokenizer, extra_u8) if family == "VAR" else zt.maskgit_tokens(tokenizer, extra_u8)
            gen_tokens, gen_y = torch.cat([tokens, extra_tokens]), torch.cat([pool_y, extra_y])
        for key, value in tok_metrics.items():
            metrics.setdefault(key, {})[family] = value
        tokenizer.eval()
        if only is None:
            metrics["train_loss"][f"{family}_tokenizer"] = zt.summarize(losses)
        metrics["nll_val"][f"{family}_unigram"] = zt.unigram_nll(gen_tokens, val_tokens, vocab)
        metrics.setdefault("codebook_usage", {})[family] = float(torch.unique(tokens).numel() / vocab)
        if only is None:
            _save(tokenizer, out / tok_file)
        if only is None:
            timings[f"{family}_tokenizer"] = time.perf_counter() - clock
        variants = {}
        for v_i, (name, v) in enumerate(fam_cfg["variants"].items()):
            if only is not None and name not in only:
                continue
            clock = time.perf_counter()
            torch.manual_seed(seed * 1000 + 10 * f_i + v_i + 1)
            if family == "VAR":
                model = build_var_transformer(v["config"], tok_cfg)
                model.init_weights()
                losses = zt.train_var_transformer(model, tokenizer, gen_tokens, gen_y, steps=_steps(plan["var_steps"], name), seed=seed + 100 + v_i,
                                                  progress=progress)
                x_fn = lambda t, y, m=model: m(y, tokenizer.quantize.teacher_forcing_input(list(torch.split(t, scale_sizes, 1))))  # noqa: E731
            else:
                model = build_rar_generator(v["config"], tok_cfg)
                model.init_weights()
                steps = _steps(plan["rar_steps"], name) if family == "RAR" else plan["outlier_gen_steps"]
                anneal = (0.2, 0.6) if family == "RAR" else (0.0, 0.0)  # the outlier IAR is a plain raster-order model
                x_fn = lambda t, y, m=model: m(t[:, :-1], m.condition_ids(y))  # noqa: E731
                select_nll = (lambda f=x_fn: zt.evaluate_nll(f, select_tokens, select_y)) if family == "RAR" else None
                selection: Dict[str, object] = {}
                losses = zt.train_rar_generator(model, gen_tokens, gen_y, steps=steps, seed=seed + 200 + v_i, anneal_start=anneal[0],
                                                anneal_end=anneal[1], progress=progress, select_nll=select_nll,
                                                select_every=plan["rar_select_every"], selection=selection)
                if selection:
                    metrics.setdefault("selection", {})[name] = selection
            model.eval()
            metrics["nll_val"][name] = zt.evaluate_nll(x_fn, val_tokens, val_y)
            metrics["train_loss"][name] = zt.summarize(losses)
            _save(model, out / f"{name}.safetensors")
            variants[name] = {"file": f"{name}.safetensors", "config": v["config"], "sampling": v["sampling"]}
            timings[name] = time.perf_counter() - clock
            chosen = metrics.get("selection", {}).get(name)
            print(f"{name:12s} val NLL {metrics['nll_val'][name]:.4f} nats/token (unigram {metrics['nll_val'][f'{family}_unigram']:.4f})"
                  + (f"  checkpoint of step {chosen['best_step']}/{steps}" if chosen else "") + f"  {timings[name]:.0f}s", flush=True)
        manifest_families[family] = {"tokenizer": {"file": tok_file, "config": tok_cfg}, "variants": variants}
        print(f"{family} tokenizer: val PSNR {metrics['psnr_val'][family]:.2f} dB, round-trip tokens "
              f"{100 * metrics['round_trip_tokens_val'][family]:.1f} %, codebook usage "
              f"{100 * metrics['codebook_usage'][family]:.0f} %, {timings.get(f'{family}_tokenizer', 0):.0f}s", flush=True)
    manifest = {"image_size": 64, "num_classes": NUM_CLASSES, "class_names": list(demo_photos.MODEL_PHOTOS),
                "reserved_photos": list(demo_photos.RESERVED_PHOTOS), "seed": seed, "quick": quick, "plan": plan,
                "families": manifest_families, "metrics": metrics, "timings_s": {k: round(v, 1) for k, v in timings.items()},
                "torch": torch.__version__, "threads": torch.get_num_threads()}
    if only is not None and (out / "zoo.json").is_file():
        manifest = merge_manifest(json.loads((out / "zoo.json").read_text()), manifest)
    (out / "zoo.json").write_text(json.dumps(manifest, indent=2))
    write_sha256sums(out)
    return manifest


def write_sha256sums(out: Path) -> None:
    """``SHA256SUMS`` of every weight file under ``out`` (paths relative to it)."""
    files = sorted(out.rglob("*.safetensors"))
    (out / "SHA256SUMS").write_text("".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(out).as_posix()}\n"
                                            for p in files))


def build_inverse_decoders(out: Path, seed: int, quick: bool, progress: bool = True,
                           families: Sequence[str] = ("VAR", "RAR"), kinds: Optional[Sequence[str]] = None) -> Dict[str, dict]:
    """Fine-tune and ship the inverse decoders of ``families``, plain and/or (``kinds``, default
    both: ``inv_decoder.KINDS``) with the augmentation curriculum; an augmented one that continues the plain one starts from the plain
    file in ``out`` (trained first when both kinds are built)."""
    import inv_decoder
    from models.zoo import load_family

    torch.set_num_threads(2)
    summaries = {}
    for family in families:
        for augment in inv_decoder.augment_flags(kinds or inv_decoder.KINDS):
            clock = time.perf_counter()
            target = inv_decoder.default_output_dir(out / inv_decoder.SHIPPED_SUBDIR, family, augment)
            config = dict(INV_DECODER_QUICK if quick else {**INV_DECODER_FULL, **INV_DECODER_OVERRIDES.get((family, augment), {})},
                          seed=seed, augment=augment)
            if config.pop("init_from_plain", False):
                config["init"] = inv_decoder.shipped_file(out, family, False)
            summary = inv_decoder.finetune(load_family(family, out), target, config, progress=progress)
            for scratch in ("checkpoint.pt", "train_tokens.pt"):
                (target / scratch).unlink(missing_ok=True)
            summaries[target.name] = {"losses": summary["losses"], "seconds": round(time.perf_counter() - clock, 1)}
            print(f"inverse decoder {target.name:8s} loss {summary['losses'][0]:.3e} → {summary['losses'][-1]:.3e}"
                  f"  {time.perf_counter() - clock:.0f}s", flush=True)
    write_sha256sums(out)
    return summaries


def build_variant_nets(out: Path, seed: int, quick: bool, progress: bool = True, families: Sequence[str] = ("VAR", "RAR"),
                       map_cache: Optional[Path] = None) -> Dict[str, dict]:
    """Train and ship the variant nets of ``families`` (:mod:`variant_net`) on fresh generations mapped
    back by the family's plain inverse decoder in ``out`` (so that stage comes first); with
    ``map_cache`` the generated maps are kept there and reused (:func:`variant_net.generate_training_maps`)."""
    import inv_decoder
    import variant_net
    from models.zoo import load_family

    torch.set_num_threads(2)
    summaries = {}
    for family in (f for f in families if f in variant_net.NET_FAMILIES):
        clock = time.perf_counter()
        # never fine-tune one here (the inv-decoders stage sets the recipe): a missing one is an error
        shipped = inv_decoder.ensure_inverse_decoder(family, out, out / inv_decoder.SHIPPED_SUBDIR, fine_tune_missing=False)
        inverse = inv_decoder.load_inverse_decoder(load_family(family, out), shipped)
        config = dict(VARIANT_NET_QUICK if quick else {}, seed=seed)
        path = variant_net.train_and_save(inverse, variant_net.shipped_file(out, family), config, progress=progress, cache_dir=map_cache)
        record = json.loads(path.with_suffix(".json").read_text())
        summaries[family] = {"epoch_losses": record["epoch_losses"], "seconds": round(time.perf_counter() - clock, 1)}
        print(f"variant net {family}: loss {record['epoch_losses'][0]:.3f} → {record['epoch_losses'][-1]:.3f}, "
              f"{100 * record['train_accuracy']:.1f} % on its training maps  {time.perf_counter() - clock:.0f}s", flush=True)
    write_sha256sums(out)
    return summaries


def stage_seeds() -> range:
    """The ``--seed`` values every stage accepts: those that both the inverse decoders' fine-tuning
    data (:data:`inv_decoder.SEEDS`) and the variant nets' training maps (:data:`variant_net_maps.SEEDS`)
    allow, so their generation seeds stay in ranges of their own."""
    import inv_decoder
    import variant_net_maps

    fine_tuning, nets = inv_decoder.SEEDS, variant_net_maps.SEEDS
    return range(max(fine_tuning.start, nets.start), min(fine_tuning.stop, nets.stop))


def check_arguments(seed: int, only: Optional[Sequence[str]]) -> None:
    """An :class:`InputError` for a ``--seed`` outside :func:`stage_seeds` or an ``--only`` naming no
    variant of ``ZOO_CONFIG``: checked before any stage, not after the models have trained."""
    seeds = stage_seeds()
    if seed not in seeds:
        raise InputError(f"--seed {seed}: must be in {seeds.start} … {seeds.stop - 1}, the seeds the inverse decoders' "
                         "fine-tuning data and the variant nets' training maps are generated from")
    known = [name for fam_cfg in ZOO_CONFIG.values() for name in fam_cfg["variants"]]
    unknown = [name for name in only or () if name not in known]
    if unknown:
        raise InputError(f"--only {' '.join(unknown)}: no such variant; the zoo's are {', '.join(known)}")


def main(argv: list | None = None) -> int:
    import inv_decoder

    seeds = stage_seeds()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "demo_zoo",
                        help="zoo folder written, and read by --only and the later stages "
                             "(default: the repository's demo_zoo)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of every stage: training crops, model initialisation and training, and the "
                             f"generations the inverse decoders and variant nets train on; {seeds.start} … {seeds.stop - 1}, "
                             "the range those generations' seeds allow (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a tiny build (seconds) to check the pipeline")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--only", nargs="+", metavar="VARIANT",
                        help="retrain just these variants on the tokenizers already in --out and merge them into its "
                             "zoo.json (and, with --stage all or inv-decoders, the inverse decoders of their families only)")
    parser.add_argument("--stage", choices=["all", "models", "inv-decoders", "variant-nets"], default="all",
                        help="models: tokenizers and generators; inv-decoders: fine-tune the shipped inverse decoders "
                             "of an existing zoo in --out; variant-nets: train its variant nets (variant_net.py) on "
                             "the shipped plain inverse decoders; all (default): all three, in that order")
    parser.add_argument("--inv-kinds", nargs="+", choices=inv_decoder.KINDS, default=list(inv_decoder.KINDS),
                        help="which inverse decoders to fine-tune (default: both)")
    parser.add_argument("--map-cache", type=Path, default=ROOT / "runs" / "variant_net_maps",
                        help="where the variant nets' generated training maps are kept, in a folder named by the "
                             "weights that made them, so a rerun resumes or reuses them (default runs/variant_net_maps; a --quick "
                             "build keeps none)")
    parser.add_argument("--no-map-cache", action="store_true", help="keep no variant-net maps on disk")
    args = parser.parse_args(argv)
    check_arguments(args.seed, args.only)
    map_cache = None if args.no_map_cache or args.quick else args.map_cache
    keep_freed_memory()  # same numbers, fewer page faults
    start = time.perf_counter()
    # with --only, the inverse decoders of the families whose generators changed (they are
    # fine-tuned on the family's generations)
    families = [f for f in ("VAR", "RAR") if args.only is None or set(args.only) & set(ZOO_CONFIG[f]["variants"])]
    if args.stage == "inv-decoders":
        build_inverse_decoders(args.out, args.seed, args.quick, progress=not args.no_progress, families=families,
                               kinds=args.inv_kinds)
        print(f"total {time.perf_counter() - start:.0f}s → {args.out}")
        return 0
    if args.stage == "variant-nets":
        build_variant_nets(args.out, args.seed, args.quick, progress=not args.no_progress, families=families,
                           map_cache=map_cache)
        print(f"total {time.perf_counter() - start:.0f}s → {args.out}")
        return 0
    manifest = build(args.out, args.seed, args.quick, progress=not args.no_progress, only=args.only)
    if args.stage == "all":
        build_inverse_decoders(args.out, args.seed, args.quick, progress=not args.no_progress, families=families,
                               kinds=args.inv_kinds)
        build_variant_nets(args.out, args.seed, args.quick, progress=not args.no_progress, families=families,
                           map_cache=map_cache)
    nll = manifest["metrics"]["nll_val"]
    print("\nvalidation token NLL (nats/token):")
    for family, fam in manifest["families"].items():
        print(f"  {family}: unigram {nll[family + '_unigram']:.4f} | " + " | ".join(f"{v} {nll[v]:.4f}" for v in fam["variants"]))
    print(f"tokenizer PSNR (dB): {manifest['metrics']['psnr_val']}")
    print(f"total {time.perf_counter() - start:.0f}s → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
