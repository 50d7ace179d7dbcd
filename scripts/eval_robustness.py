"""Robustness of family attribution to post-processing: the analogue of the paper's Table 2.

    python scripts/eval_robustness.py [--dataset Dataset] [--split test] [--signals quant_loss combined]
    python scripts/eval_robustness.py --signals enc_loss enc_loss_refined --inverse-decoders augmented --per-source 60

Every image of the split (belonging and non-belonging alike) is post-processed by each of the
seven attacks of ``augmentation.py`` at the paper's strengths (Gaussian noise 0.05, blur kernel
9, JPEG 60, brightness 1.6, contrast 2.0, saturation 2.0, resize 0.5; plus ``none``), then scored
with the inverse decoder fine-tuned without and with the augmentation curriculum (both are
fine-tuned first if missing). Reports TPR@1%FPR against all non-belonging images pooled, per
family, attack, inverse decoder and signal; saves ``robustness.csv``.

``enc_loss_refined`` (refined EncLoss: 10 Adam steps of latent optimisation per image, see
``signals.py``) and ``enc_loss_refined_colour`` (the same with a per-image affine colour map
optimised alongside, which undoes brightness, contrast and saturation up to clipping) each cost
about ten decoder passes with gradients per image; ``--per-source N`` scores
a fixed random subset of N images per source instead of the whole split (the subset
``scripts/eval_family.py`` uses for LatentTracer, with the same seed), and ``--inverse-decoders``
restricts the run to one kind.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import family_eval  # noqa: E402
import inv_decoder  # noqa: E402
from augmentation import ATTACK_DEFAULTS, apply_attack  # noqa: E402
from cli import add_scored_split_arguments, at_least, chosen_device, output_folder, scored_split  # noqa: E402
from dataset import load_images  # noqa: E402
from metrics import tpr_at_fpr  # noqa: E402
from models.zoo import family_image_size  # noqa: E402
from quantizer import search_tokens  # noqa: E402
from runtime import keep_freed_memory  # noqa: E402
from signals import SIGNALS, SLOW_SIGNALS, signal_frame  # noqa: E402


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scored_split_arguments(parser, ROOT)
    parser.add_argument("--out", type=output_folder, default=ROOT / "runs" / "eval_robustness",
                        help="folder for robustness.csv (default: the repository's runs/eval_robustness)")
    default_signals = ["quant_loss", "quant_loss_searched", "combined"]
    parser.add_argument("--signals", nargs="+", default=default_signals, choices=[*SIGNALS, *SLOW_SIGNALS], metavar="SIGNAL",
                        help=f"columns of signals.signal_frame: {', '.join(SIGNALS)} (quant_loss_searched: VAR only); "
                             f"slow: {', '.join(SLOW_SIGNALS)} (default: {' '.join(default_signals)})")
    parser.add_argument("--inverse-decoders", nargs="+", choices=inv_decoder.KINDS, default=list(inv_decoder.KINDS),
                        help="which inverse decoders to score with (default: both)")
    parser.add_argument("--per-source", type=at_least(0), default=0, help="score N images per source (default 0: all)")
    parser.add_argument("--attacks", nargs="+", default=["none"] + list(ATTACK_DEFAULTS), choices=["none", *ATTACK_DEFAULTS],
                        metavar="ATTACK",
                        help="post-processings applied, each at its augmentation.ATTACK_DEFAULTS strength "
                             f"(default: none {' '.join(ATTACK_DEFAULTS)})")
    parser.add_argument("--batch-size", type=at_least(1), default=32, help="images per batch (default 32)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the attacks' randomness (reset before each attack) and of the --per-source subset "
                             "(default 0)")
    parser.add_argument("--device", default="auto",
                        help="torch device: cpu, cuda or auto (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)
    keep_freed_memory()
    device = chosen_device(args.device)
    meta = scored_split(args.dataset, args.split)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.per_source > 0:
        meta = meta.loc[family_eval.per_source_subset(meta, args.per_source, args.seed)]
    rows = []
    for family in ("VAR", "RAR"):
        clean = load_images(meta["path"], size=family_image_size(family, args.weights_dir))
        groups = pd.Series([family_eval.source_group(s, l, family) for s, l in zip(meta["source"], meta["label"])], index=meta.index)
        for augmented in inv_decoder.augment_flags(args.inverse_decoders):
            adapter = inv_decoder.inverse_adapter(family, args.weights_dir, args.inv_root, augmented, device)
            for attack in args.attacks:
                gen = torch.Generator().manual_seed(args.seed)
                images = clean if attack == "none" else apply_attack(clean, attack, ATTACK_DEFAULTS[attack], generator=gen)
                images = inv_decoder.to_png_levels(images)
                frame = signal_frame(adapter, images, list(meta.index), batch_size=args.batch_size,
                                     token_search=search_tokens if family == "VAR" else None,
                                     slow=[name for name in SLOW_SIGNALS if name in args.signals])
                for signal in [s for s in args.signals if s in frame.columns]:
                    values = frame[signal]
                    tpr = tpr_at_fpr(values[groups == "belonging"].to_numpy(), values[groups != "belonging"].to_numpy())
                    rows.append(dict(family=family, inverse_decoder="augmented" if augmented else "plain", attack=attack,
                                     strength=ATTACK_DEFAULTS.get(attack, ""), signal=signal, tpr_at_1fpr=tpr))
                    print(f"{family} {'aug ' if augmented else 'plain'} {attack:10s} {signal:20s} TPR@1%FPR {100 * tpr:6.1f}%", flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "robustness.csv", index=False)
    pivot = table.pivot_table(index=["family", "signal", "inverse_decoder"], columns="attack", values="tpr_at_1fpr") * 100
    print("\n" + pivot[[a for a in args.attacks if a in pivot.columns]].round(1).to_string())
    return 0


if __name__ == "__main__":
    from cli import run_main

    sys.exit(run_main(main))
