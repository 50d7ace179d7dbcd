"""A look at the demo zoo a person can judge: sample grids per variant, reconstructions per tokenizer.

    python scripts/zoo_gallery.py [--zoo demo_zoo] [--out docs/demo_zoo] [--per-class 6]

Writes to ``--out``:

* ``samples_<variant>.png`` for each of the 8 variants and the outlier IAR: one row per class
  label (the model photo's name on the left), ``--per-class`` samples per row, generated with
  the variant's own sampling settings. Class-dependent content shows up as rows that look alike
  and unlike other rows.
* ``samples_overview.png``: the first sample of every class for every variant, side by side.
* ``reconstructions.png``: held-out natural crops (top row: the model photos' held-out quarter;
  then the reserved photos) and their reconstruction by each tokenizer.
* ``gallery.json``: the tokenizers' reconstruction PSNR (dB) on ``--psnr-crops`` held-out crops
  of each kind.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import demo_photos  # noqa: E402
from augmentation import to_uint8_arrays  # noqa: E402
from cli import at_least  # noqa: E402
from inv_decoder import to_png_levels  # noqa: E402
from models.zoo import DEMO_ZOO_DIR, load_family, read_zoo_manifest  # noqa: E402

FAMILIES = ("VAR", "RAR", "OUTLIER")


def _grid(rows: list, pad: int = 2) -> np.ndarray:
    """List of rows of HxWx3 uint8 images → one uint8 mosaic with white gutters."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            canvas[pad + i * (h + pad):pad + i * (h + pad) + h, pad + j * (w + pad):pad + j * (w + pad) + w] = img
    return canvas


def _save(canvas: np.ndarray, row_names: list, title: str, path: Path, scale: int = 2) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = canvas.shape[:2]
    fig = plt.figure(figsize=(scale * width / 100 + 1.6, scale * height / 100 + 0.6), dpi=100)
    ax = fig.add_axes([1.5 / (scale * width / 100 + 1.6), 0.02, 1 - 1.55 / (scale * width / 100 + 1.6), 0.9])
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([])
    step = height / len(row_names)
    ax.set_yticks([step * (i + 0.5) for i in range(len(row_names))], row_names, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.savefig(path)
    plt.close(fig)


@torch.no_grad()
def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", type=Path, default=DEMO_ZOO_DIR, help="zoo folder (default: the shipped demo zoo)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "demo_zoo",
                        help="folder for the PNGs and gallery.json (default: the repository's docs/demo_zoo)")
    parser.add_argument("--per-class", type=at_least(1), default=6,
                        help="samples per class label in each variant's grid (default %(default)s)")
    parser.add_argument("--psnr-crops", type=at_least(1), default=240,
                        help="held-out crops of each kind the tokenizers' PSNR is measured on (default %(default)s)")
    parser.add_argument("--seed", type=int, default=123,
                        help="seed of the samples (a family's i-th variant: seed + i) and of the held-out crops "
                             "(default %(default)s)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = read_zoo_manifest(args.zoo)
    classes = manifest["class_names"]
    adapters = {f: load_family(f, args.zoo) for f in FAMILIES if f in manifest["families"]}
    overview_rows, overview_names = [], []
    for family, adapter in adapters.items():
        for v_i, variant in enumerate(adapter.variant_names):
            labels = torch.arange(len(classes)).repeat_interleave(args.per_class)
            images = to_uint8_arrays(adapter.generate(variant, labels, args.seed + v_i)[0])
            rows = [list(images[c * args.per_class:(c + 1) * args.per_class]) for c in range(len(classes))]
            _save(_grid(rows), classes, f"{variant} ({family} family): {args.per_class} samples per class label",
                  args.out / f"samples_{variant}.png")
            overview_rows.append([r[0] for r in rows])
            overview_names.append(variant)
        adapter.release()
    _save(_grid(overview_rows), overview_names, "first sample per class label (columns: " + ", ".join(classes) + ")",
          args.out / "samples_overview.png")

    heldout, _ = demo_photos.random_crops(demo_photos.MODEL_PHOTOS, args.psnr_crops, args.seed, "val")
    reserved, _ = demo_photos.random_crops(demo_photos.RESERVED_PHOTOS, args.psnr_crops, args.seed + 1, "all")
    psnr, recon_rows, recon_names = {}, [list(heldout[:8]) + list(reserved[:8])], ["original"]
    for family, adapter in adapters.items():
        psnr[family] = {}
        for kind, crops in (("heldout_model_photos", heldout), ("reserved_photos", reserved)):
            x = demo_photos.crops_tensor(crops)
            rec = torch.cat([adapter.img_to_reconstructed_img(x[s:s + 64])[0] for s in range(0, len(x), 64)])
            rec = to_png_levels(rec)
            mse = (rec - x).square().flatten(1).mean(1).clamp_min(1e-10)
            psnr[family][kind] = round(float((10 * torch.log10(1 / mse)).mean()), 2)
        show = demo_photos.crops_tensor(np.concatenate([heldout[:8], reserved[:8]]))
        recon_rows.append(list(to_uint8_arrays(adapter.img_to_reconstructed_img(show)[0])))
        recon_names.append(f"{family} tokenizer")
    _save(_grid(recon_rows), recon_names, "held-out crops (8 model-photo quarter, 8 reserved photos) and reconstructions",
          args.out / "reconstructions.png")
    (args.out / "gallery.json").write_text(json.dumps({"psnr_db": psnr, "zoo": str(args.zoo), "seed": args.seed}, indent=2))
    print("tokenizer reconstruction PSNR (dB):")
    for family, values in psnr.items():
        print(f"  {family:8s} " + "  ".join(f"{k} {v:.2f}" for k, v in values.items()))
    print(f"gallery → {args.out}")
    return 0


if __name__ == "__main__":
    from cli import run_main

    sys.exit(run_main(main))
