"""Family attribution on the demo zoo: the analogues of the paper's Tables 1, 3, 4 and 5.

    python scripts/eval_family.py [--dataset Dataset] [--split test] [--out runs/eval_family]

For VAR and RAR it computes, on every image of ``--split`` (test images are never used to
fine-tune), every signal with the tokenizer's original encoder (``orig``) and with the inverse
decoder (``inv``; fine-tuned first with ``inv_decoder.py`` settings if ``--inv-root`` has none):
QuantLoss (VAR: greedy and searched), EncLoss raw and calibrated, Combined, Reconstruction,
AEDR, and LatentTracer (original encoder, on at most ``--latent-tracer-limit`` images per
source group). Belonging = the family's variants' images; non-belonging = held-out natural
photos, the other family, the outlier IAR. Prints and saves ``signals.csv``, ``results.csv``
(long format), one CSV per table and ``score_distributions.png``.
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
from dataset import list_split, load_images  # noqa: E402
from models.zoo import load_family  # noqa: E402
from quantizer import search_tokens  # noqa: E402
from signals import latent_tracer, signal_frame  # noqa: E402


def compute_signals(meta: pd.DataFrame, weights_dir, inv_root: Path, device: str, batch_size: int,
                    latent_tracer_limit: int, seed: int) -> pd.DataFrame:
    images = load_images(meta["path"])
    frames = []
    for family in ("VAR", "RAR"):
        original = load_family(family, weights_dir, device=device)
        inverse = inv_decoder.load_inverse_decoder(load_family(family, weights_dir, device=device),
                                                   inv_decoder.ensure_inverse_decoder(family, weights_dir, inv_root, False, device))
        search = search_tokens if family == "VAR" else None
        frames.append(signal_frame(original, images, list(meta.index), batch_size=batch_size, token_search=search, prefix=f"{family}_orig_"))
        frames.append(signal_frame(inverse, images, list(meta.index), batch_size=batch_size, token_search=search, prefix=f"{family}_inv_"))
        # LatentTracer is slow (100 optimisation steps): a fixed random subset per source group
        subset = (meta.groupby("source", group_keys=False)
                  .apply(lambda g: g.sample(min(len(g), latent_tracer_limit), random_state=seed)).index)
        positions = [meta.index.get_loc(i) for i in subset]
        traced = torch.cat([latent_tracer(original, images[positions[s:s + batch_size]]) for s in range(0, len(positions), batch_size)])
        frames.append(pd.DataFrame({f"{family}_orig_latent_tracer": traced.double().numpy()}, index=subset))
    return pd.concat(frames, axis=1).reindex(meta.index)


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=ROOT / "Dataset")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--weights-dir", type=Path, help="official checkpoints or a zoo folder (default: demo zoo)")
    parser.add_argument("--inv-root", type=Path, default=ROOT / "runs" / "inv_decoder", help="inverse decoders (made if missing)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "eval_family")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--latent-tracer-limit", type=int, default=60, help="images per source group for LatentTracer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = list_split(args.dataset, args.split)
    if meta["label"].isna().any():
        raise SystemExit(f"{args.dataset}/{args.split} has unlabeled images; the test labels file is needed for evaluation")
    signals_path = args.out / "signals.csv"
    if signals_path.is_file():
        signals = pd.read_csv(signals_path, index_col=0).reindex(meta.index)
        print(f"reusing {signals_path} (delete it to recompute)", file=sys.stderr)
    else:
        signals = compute_signals(meta, args.weights_dir, args.inv_root, device, args.batch_size, args.latent_tracer_limit, args.seed)
        signals.to_csv(signals_path)
    table = family_eval.evaluation_table(signals, meta)
    table.to_csv(args.out / "results.csv", index=False)
    pd.set_option("display.width", 200)
    for name, frame in family_eval.paper_tables(table).items():
        frame.to_csv(args.out / f"{name}.csv")
        print(f"\n== {name} (TPR@1%FPR, %; n per group in results.csv)\n{frame.round(1).to_string()}")
    best = {fam: family_eval.best_signal(table, fam) for fam in ("VAR", "RAR")}
    print(f"\nbest signal with the inverse decoder (highest worst-case TPR): {best}")
    family_eval.score_distribution_png(signals, meta, [c for c in signals.columns if "_inv_" in c or c.endswith("aedr")],
                                       str(args.out / "score_distributions.png"))
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
