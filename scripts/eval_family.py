"""Family attribution on the demo zoo: the analogues of the paper's Tables 1, 3, 4 and 5.

    python scripts/eval_family.py [--dataset Dataset] [--split test] [--out runs/eval_family]

For VAR and RAR it computes, on every image of ``--split`` (test images are never used to
fine-tune), every signal with the tokenizer's original encoder (``orig``) and with the inverse
decoder (``inv``; fine-tuned first with ``inv_decoder.py`` settings if ``--inv-root`` has none):
QuantLoss (VAR: greedy and searched), EncLoss raw and calibrated, Combined, Reconstruction,
AEDR, the refined EncLoss (inverse decoder only: ``signals.refined_enc_loss``, 10 Adam steps
from ``D⁻¹(x)``) and LatentTracer (100 Adam steps from the quantized ``f̂`` of either encoder, on at
most ``--latent-tracer-limit`` images per source group). Belonging = the family's variants' images; non-belonging = held-out natural
photos, the other family, the outlier IAR. Prints and saves ``signals.csv``, ``results.csv``
(long format), one CSV per table and ``score_distributions.png``. ``signals.csv`` (and
``latent_tracer_inv.csv``, the inverse decoder's LatentTracer) is reused by a rerun only while
its ``.json`` records the same images, weights, inverse decoders and settings; anything else
recomputes it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import family_eval  # noqa: E402
import inv_decoder  # noqa: E402
from cli import add_scored_split_arguments, at_least, chosen_device, output_folder, scored_split  # noqa: E402
from dataset import load_images  # noqa: E402
from feature_extractor import weight_files  # noqa: E402
from feature_store import file_sha256  # noqa: E402
from models.zoo import load_family  # noqa: E402
from quantizer import search_tokens  # noqa: E402
from runtime import keep_freed_memory  # noqa: E402
from signals import latent_tracer, signal_frame  # noqa: E402


SIGNALS_VERSION = 3  # 2: the inverse decoder's refined EncLoss (signals.refined_enc_loss); 3: AEDR through the
# quantizer, and the refined EncLoss / LatentTracer error of the latent returned (after the last step, not before it)


def signals_key(meta: pd.DataFrame, weights_dir, inv_root: Path, device: str, latent_tracer_limit: int, seed: int) -> str:
    """sha256 naming what ``signals.csv`` was computed from (images, weights, inverse decoders, settings,
    and the device type when not the CPU: a GPU's convolutions round otherwise, as the feature store's name says)."""
    files = weight_files(weights_dir) + [inv_decoder.ensure_inverse_decoder(f, weights_dir, inv_root, False, device) for f in ("VAR", "RAR")]
    parts = [f"{i}:{file_sha256(p)}" for i, p in zip(meta.index, meta["path"])] + [file_sha256(p) for p in files]
    parts += [f"latent_tracer_limit={latent_tracer_limit}", f"seed={seed}", f"signals={SIGNALS_VERSION}"]
    device_type = torch.device(device).type
    parts += [f"device={device_type}"] if device_type != "cpu" else []  # the CPU's keys as before
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class ImagesAtSize:
    """The split's images as ``B×3×H×W`` at a model's size, decoded once per size however many
    blocks ask for them (both families share one size on the demo zoo and the official models)."""

    def __init__(self, paths: pd.Series) -> None:
        self.paths, self.loaded = list(paths), {}

    def __call__(self, size: int) -> torch.Tensor:
        if size not in self.loaded:
            self.loaded[size] = load_images(self.paths, size=size)
        return self.loaded[size]


def compute_signals(meta: pd.DataFrame, weights_dir, inv_root: Path, device: str, batch_size: int,
                    latent_tracer_limit: int, seed: int, images_at: ImagesAtSize) -> pd.DataFrame:
    frames = []
    for family in ("VAR", "RAR"):
        original = load_family(family, weights_dir, device=device)
        images = images_at(original.image_size)
        inverse = inv_decoder.inverse_adapter(family, weights_dir, inv_root, False, device)
        search = search_tokens if family == "VAR" else None
        frames.append(signal_frame(original, images, list(meta.index), batch_size=batch_size, token_search=search, prefix=f"{family}_orig_"))
        frames.append(signal_frame(inverse, images, list(meta.index), batch_size=batch_size, token_search=search,
                                   slow=["enc_loss_refined"], prefix=f"{family}_inv_"))
        frames.append(latent_tracer_frame(original, images, meta, batch_size, latent_tracer_limit, seed, f"{family}_orig_"))
    return pd.concat(frames, axis=1).reindex(meta.index)


def latent_tracer_frame(adapter, images: torch.Tensor, meta: pd.DataFrame, batch_size: int, limit: int, seed: int,
                        prefix: str) -> pd.DataFrame:
    """``{prefix}latent_tracer`` on :func:`family_eval.per_source_subset` (LatentTracer is slow: 100
    optimisation steps; the other images get no value)."""
    from tqdm.auto import tqdm

    subset = family_eval.per_source_subset(meta, limit, seed)
    if not len(subset):  # --latent-tracer-limit 0
        return pd.DataFrame({f"{prefix}latent_tracer": pd.Series(dtype=float)}, index=subset)
    positions = [meta.index.get_loc(i) for i in subset]
    starts = tqdm(range(0, len(positions), batch_size), desc=f"{prefix}latent_tracer", leave=False)
    traced = torch.cat([latent_tracer(adapter, images[positions[s:s + batch_size]]) for s in starts])
    return pd.DataFrame({f"{prefix}latent_tracer": traced.double().numpy()}, index=subset)


def compute_inverse_latent_tracer(meta: pd.DataFrame, weights_dir, inv_root: Path, device: str, batch_size: int,
                                  latent_tracer_limit: int, seed: int, images_at: ImagesAtSize) -> pd.DataFrame:
    """LatentTracer started from the inverse decoder's ``f̂`` instead of the original encoder's."""
    frames = []
    for family in ("VAR", "RAR"):
        inverse = inv_decoder.inverse_adapter(family, weights_dir, inv_root, False, device)
        images = images_at(inverse.image_size)
        frames.append(latent_tracer_frame(inverse, images, meta, batch_size, latent_tracer_limit, seed, f"{family}_inv_"))
    return pd.concat(frames, axis=1).reindex(meta.index)


def cached_block(out: Path, name: str, key: str, compute) -> pd.DataFrame:
    """``out/{name}.csv`` if ``out/{name}.json`` records ``key``, else ``compute()``, saved."""
    path, key_path = out / f"{name}.csv", out / f"{name}.json"
    if path.is_file() and key_path.is_file() and json.loads(key_path.read_text()).get("key") == key:
        print(f"reusing {path} (same images, weights and settings)", file=sys.stderr)
        return pd.read_csv(path, index_col=0)
    frame = compute()
    key_path.unlink(missing_ok=True)
    frame.to_csv(path)
    key_path.write_text(json.dumps({"key": key}))
    return frame


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scored_split_arguments(parser, ROOT)
    parser.add_argument("--out", type=output_folder, default=ROOT / "runs" / "eval_family",
                        help="folder for the signals, tables and plot (default: the repository's runs/eval_family)")
    parser.add_argument("--batch-size", type=at_least(1), default=32, help="images per batch (default %(default)s)")
    parser.add_argument("--latent-tracer-limit", type=at_least(0), default=60,
                        help="images per source group for LatentTracer (default %(default)s; 0: none)")
    parser.add_argument("--seed", type=int, default=0,
                        help="torch's global seed and the seed of the LatentTracer subset (default %(default)s)")
    parser.add_argument("--device", default="auto",
                        help="torch device: cpu, cuda or auto (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)
    keep_freed_memory()
    device = chosen_device(args.device)
    torch.manual_seed(args.seed)
    meta = scored_split(args.dataset, args.split)
    args.out.mkdir(parents=True, exist_ok=True)
    if meta["label"].isna().any():
        raise SystemExit(f"{args.dataset}/{args.split} has unlabeled images; the test labels file is needed for evaluation")
    key = signals_key(meta, args.weights_dir, args.inv_root, device, args.latent_tracer_limit, args.seed)
    settings = (meta, args.weights_dir, args.inv_root, device, args.batch_size, args.latent_tracer_limit, args.seed,
                ImagesAtSize(meta["path"]))
    signals = cached_block(args.out, "signals", key, lambda: compute_signals(*settings)).reindex(meta.index)
    # its own file, so that adding it did not recompute the signals above
    traced = cached_block(args.out, "latent_tracer_inv", hashlib.sha256(f"{key}:latent_tracer_inv".encode()).hexdigest(),
                          lambda: compute_inverse_latent_tracer(*settings))
    signals = pd.concat([signals, traced.reindex(meta.index)], axis=1)
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
    from cli import run_main

    sys.exit(run_main(main))
