"""What the variant net loses to the inverse decoder: nets trained on the exact ``f̂`` vs on ``f``.

    python scripts/diagnose_variant_net.py [--family VAR] [--weights-dir DIR] [--train-per-variant 8192]
                                           [--heldout-per-variant 1536] [--alphas 0.25 0.5 0.75]
                                           [--inputs exact_fhat inverse_f reencoded] [--members 1]
                                           [--recipes mirrored distilled mirrored_distilled]
                                           [--refine-images 256 --refine-steps 50] [--corrector-epochs 12]
                                           [--image-corrector-epochs 12] [--end-to-end-epochs 3 --end-to-end-lr 1e-4]
                                           [--identifiability-images 16] [--out runs/diagnose_variant_net]

The variant net (:mod:`variant_net`) names a generation's variant from the inverse decoder's
``f = D⁻¹(x)``. That ``f`` is only an estimate of the ``f̂`` the generator decoded (on the demo zoo's
VAR, mean squared error ≈ 2.4e-3 against a variance of 0.03). How much does that error cost, and
does anything cheap at test time win it back? On fresh generations of every variant (equal shares,
random class labels, PNG-rounded; the seeds of :func:`variant_net.generation_seed`, so no Dataset,
fine-tuning or diagnosis image), one net of the family's recipe (:func:`variant_net.default_config`,
class targets; one member, or ``--members`` averaged as the shipped ensemble) is trained per input on the first
``--train-per-variant`` generations of each variant and scored on the next
``--heldout-per-variant``:

* ``exact_fhat`` — the generator's own ``f̂``: a perfect inverse decoder (the net's ceiling at this
  amount of data);
* ``alpha_A`` — ``f̂ + A·(f − f̂)``: an inverse decoder whose error is ``A`` times as large (its
  MSE ``A²`` times), the same in kind: how fast accuracy falls with the error;
* ``inverse_f`` — the inverse decoder's ``f``, what the shipped net sees (``A = 1``);
* ``reencoded`` — ``g = f + f − D⁻¹(D(f))``, one continuous re-encoding correction (the bias
  correction of :func:`signals.reencode_tokens` without its quantization): a function of ``f``
  alone, one decode and one encode per image;
* ``exact_fhat_net_on_inverse_f`` — the ``exact_fhat`` net scored on ``f`` (no retraining): can a
  net trained on sampled ``f̂`` alone, which needs no decoding, stand in?

``--inputs`` picks among ``exact_fhat``, ``inverse_f`` and ``reencoded`` (all by default; ``--alphas``
with no value drops the ``alpha_A`` rows): the ceiling alone at the shipped amount of data, say, is
``--train-per-variant 81920 --alphas --inputs exact_fhat --members 3``, which skips the re-encoding of
every map (1:24 wall on 2 cores for the demo zoo's VAR, 18 minutes of it training, the rest generating
the maps the cache did not hold; 7.2 GB peak).

Each row gives the held-out MSE of its input to ``f̂``, the held-out and training accuracy (chance
``1/variants``) and the training seconds. With ``--refine-steps N`` it also runs N Adam steps of
latent refinement through the frozen decoder (:func:`signals.optimise_latent`, from ``f``, on the
first ``--refine-images`` held-out images) and reports the MSE to ``f̂`` and the image error before
and after: does fitting the image lead back to ``f̂``? (No net is trained on it; it is slow.)

``--recipes`` trains more nets on the re-encoded ``f``, each another way to learn more from the
same generations:

* ``reencoded_mirrored`` — the maps of every training image mirrored left–right (``D⁻¹`` of the
  mirrored PNG image: the tokenizer is not mirror-symmetric, so the mirrored map would not do) join
  the training maps, and an image is scored by the mean posterior of its map and its mirror
  image's. The demo zoo's generators learned from photos mirrored at random, so a mirrored
  generation is about as likely as the original. The base nets are scored that way too
  (``<input>_net_mirror_averaged``).
* ``reencoded_distilled`` — the ``exact_fhat`` net, which sees what only training has, teaches the
  net: its loss blends the labels with that net's posterior on the same image's exact ``f̂``
  (``--distill-weight``, ``--distill-temperature``; :func:`variant_net.train_variant_net`).
* ``reencoded_mirrored_distilled`` — both.

Two more questions, each off by default:

* ``--corrector-epochs N`` — ``learned_corrector``: is more of ``f̂`` in ``f`` than the fixed
  re-encoding rule takes out? A small residual CNN (:class:`map_corrector.Corrector`) is fitted for N
  epochs on the training maps to predict ``f̂`` from ``f`` and its re-encoded ``g``, and a net is
  trained on its output, like every input above.
* ``--image-corrector-epochs N`` — ``image_corrector``: the same with the PNG image beside ``f`` and
  ``g`` (brought to the map's grid by strided convolutions): does a network read from the image
  what the inverse decoder misses? The images are decoded again from the cached ``f̂`` (bit for bit
  the generated ones) and kept as 8-bit levels.
* ``--end-to-end-epochs N`` — ``end_to_end``: does a reader trained for the task keep more of the
  variant than one trained to bring back ``f̂``? The ``inverse_f`` row's net and the inverse decoder's
  encoder are trained on together for N more epochs, from the PNG image (decoded again from the cached
  ``f̂``) to the variant, the encoder at a peak learning rate of ``--end-to-end-lr``
  (:mod:`reader_finetune`); ``inverse_f_net_trained_on`` is the control, the net alone trained on
  the same way on the cached ``f``. Its ``fmse_to_fhat`` is the fine-tuned encoder's.
* ``--identifiability-images N`` — ``image_identifiability``: how much of the inverse decoder's
  error could *any* reader of the PNG image take out? On the first held-out images of each variant
  (N in all), the decoder's Jacobian ``J = ∂D/∂f`` at ``f̂`` (``J = U·diag(S)·Vᵀ``) splits the error
  ``f − f̂`` into directions ``c = Vᵀ(f − f̂)``. Moving ``f̂`` by ``c_i`` along direction ``i``
  changes the image by ``S_i·c_i``; the PNG file rounds every pixel to 1/255, noise of variance
  ``σ² = (1/255)²/12``. Where ``S_i²c_i² < σ²`` the error is below what the image records
  (``hidden_error_share``, its share of the error's energy), and a linear reader that knows each
  direction to its rounding noise, with the error's own size as its prior, keeps
  ``Σ c_i²·v_i/(c_i² + v_i)``, ``v_i = σ²/S_i²`` (``fmse_to_fhat``; ``fmse_to_fhat_before`` is ``f``'s).
  That is a linearised estimate, one Jacobian per image (1 024 forward-mode passes; 146 s for 16
  images on 2 cores for the demo zoo's VAR). ``N`` rounds up to a whole number per variant.

Generated maps are kept per batch (``f`` and ``f̂``, and the mirror image's ``f`` when a recipe
mirrors; written whole or not at all) under
``--cache DIR/<maps folder>-diagnose/`` (:func:`variant_net_maps.maps_folder_name`: the weights'
fingerprint, the maps code's version, and the layout and device when not the defaults; the suffix
keeps its files, which hold more than the training maps' of the same names, apart from those), so a
rerun only trains. Writes ``variant_net_inputs.csv``
to ``--out``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import inv_decoder  # noqa: E402
from augmentation import to_uint8  # noqa: E402
import variant_net  # noqa: E402
import variant_net_maps  # noqa: E402
from atomic import atomic_path  # noqa: E402
from cli import CACHE_DIR, INV_DECODER_DIR  # noqa: E402
from models.adapter import FamilyAdapter  # noqa: E402
from models.registry import family_variants  # noqa: E402
from runtime import keep_freed_memory  # noqa: E402
from map_corrector import Corrector, corrected, fit_corrector  # noqa: E402
from image_readback import PNG_ROUNDING_VARIANCE, identifiability_row, refinement_row  # noqa: E402
from reader_finetune import end_to_end_rows  # noqa: E402

__all__ = ["Maps", "generate_maps", "reencoded", "png_levels", "input_rows", "view_accuracy", "recipe_changes", "refinement_row",
           "Corrector", "fit_corrector", "corrected", "identifiability_row", "PNG_ROUNDING_VARIANCE", "end_to_end_rows"]

BASE_INPUTS = ("exact_fhat", "inverse_f", "reencoded")  # the inputs every run trains a net on unless --inputs says otherwise
RECIPES = ("mirrored", "distilled", "mirrored_distilled")  # other recipes on the re-encoded f (--recipes; recipe_changes)

# f, f̂, variant, class, image (or empty), f of the mirrored image (or empty)
Maps = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


DIAGNOSIS_SUFFIX = "-diagnose"  # after maps_folder_name: a batch here holds f, f̂ (and f_mirror), not one map


@torch.no_grad()
def generate_maps(adapter: FamilyAdapter, batches: range, gen_batch: int, seed: int, cache: Optional[Path],
                  keep_images: int = 0, progress: bool = True, mirror: bool = False) -> Maps:
    """``(f, f̂, variant, class, images, f_mirror)`` of generation batches ``batches`` of every variant;
    the PNG images of the first ``keep_images`` generations of each variant; with ``mirror`` also
    ``D⁻¹`` of each image mirrored left–right (kept in the cache too). A cached batch is not generated
    again: its image, where one is needed, is decoded from its ``f̂`` (:func:`png_levels`, bit for bit
    the generated one)."""
    from tqdm.auto import tqdm

    from inv_decoder import to_png_levels

    fs, fhats, variants, classes, images, mirrors = [], [], [], [], [], []
    jobs = [(vi, v, j) for vi, v in enumerate(adapter.variant_names) for j in batches]
    for vi, variant, j in tqdm(jobs, desc=f"{adapter.family} generations", disable=not progress):
        job_seed = variant_net.generation_seed(seed, vi, j)
        labels = adapter.random_labels(gen_batch, job_seed)
        path = cache / f"{variant}_{job_seed}_{gen_batch}.pt" if cache is not None else None
        wants_images = (j - batches.start) * gen_batch < keep_images
        stored = torch.load(path, weights_only=True) if path is not None and path.is_file() else {}
        changed, x = not stored, None
        if not stored:
            img, _, f_hat = adapter.generate(variant, labels, job_seed)
            x = to_png_levels(img)
            stored = {"f": adapter.encode(x).float().cpu(), "f_hat": f_hat.float().cpu()}
        if x is None and (wants_images or (mirror and "f_mirror" not in stored)):
            x = (png_levels(adapter, stored["f_hat"]).float() / 255).to(adapter.device)
        if mirror and "f_mirror" not in stored:
            stored["f_mirror"], changed = adapter.encode(x.flip(-1)).float().cpu(), True
        if path is not None and changed:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                torch.save({key: value.clone() for key, value in stored.items()}, tmp)
        if wants_images:
            images.append(x.cpu())
        if mirror:
            mirrors.append(stored["f_mirror"])
        fs.append(stored["f"])
        fhats.append(stored["f_hat"])
        variants.append(torch.full((gen_batch,), vi, dtype=torch.long))
        classes.append(labels.cpu().long())
    return (torch.cat(fs), torch.cat(fhats), torch.cat(variants), torch.cat(classes),
            torch.cat(images) if images else torch.zeros(0), torch.cat(mirrors) if mirrors else torch.zeros(0))


@torch.no_grad()
def reencoded(adapter: FamilyAdapter, f_NChw: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``f + f − D⁻¹(D(f))``: one continuous re-encoding correction of the inverse decoder's bias
    (:func:`variant_net.net_input`, what the shipped VAR net reads), ``chunk`` maps at a time."""
    return torch.cat([variant_net.net_input(adapter, part, "reencoded").float().cpu()
                      for part in f_NChw.split(chunk)]) if len(f_NChw) else f_NChw.clone()


@torch.no_grad()
def png_levels(adapter: FamilyAdapter, f_hat_NChw: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The generated images decoded again from their ``f̂`` as the PNG file's 8-bit levels (``uint8``,
    ``N×3×H×W``): the generator's own image is ``D(f̂)``, so these are the images the maps were read from."""
    return torch.cat([to_uint8(adapter.decode(part.to(adapter.device)).float()).cpu()
                      for part in f_hat_NChw.split(chunk)]) if len(f_hat_NChw) else torch.zeros(0, dtype=torch.uint8)


def input_rows(inputs: Dict[str, Tuple[torch.Tensor, torch.Tensor]], f_hat_test: torch.Tensor, train: Maps, test: Maps,
               config: dict, num_classes: int, num_variants: int, cross: Sequence[Tuple[str, str]] = (),
               progress: bool = True, recipes: Optional[Dict[str, Tuple[str, dict]]] = None,
               mirrored: Optional[Dict[str, Tuple[torch.Tensor, torch.Tensor]]] = None) -> Tuple[List[dict], Dict[str, variant_net.AnyVariantNet]]:
    """One row per named ``(train input, held-out input)`` pair: a net (``config["members"]`` of them,
    averaged) trained on the first, scored on the second; per ``(trained on, scored on)`` pair in
    ``cross`` the first's net on the second's input; and per ``name: (input, changes)`` of ``recipes``
    a net trained on that input another way (:func:`recipe_changes`): with ``mirror``, on the maps of
    the images and of their mirror images (``mirrored[input]``, training and held-out), scored by
    the mean posterior of both views; with ``distill_weight``, taught by the ``exact_fhat`` row's net
    from the exact ``f̂`` of its training images (:func:`variant_net.train_variant_net`). With
    ``mirrored``, each base net is also scored by that mean posterior (``<input>_net_mirror_averaged``).
    Returns the rows and the nets by row name."""
    rows, nets = [], {}
    jobs = [(name, name, {}) for name in inputs] + [(name, source, changes) for name, (source, changes) in (recipes or {}).items()]
    for name, source, changes in jobs:
        changes = dict(changes)
        mirror = changes.pop("mirror", False)
        x_train, x_test = inputs[source]
        views = [x_test] + ([mirrored[source][1]] if mirror else [])
        y_train, class_train, teacher_x = train[2], train[3], inputs["exact_fhat"][0] if "exact_fhat" in inputs else None
        if mirror:  # the mirror images' maps join the training maps, with their images' labels and teacher maps
            x_train = torch.cat([x_train, mirrored[source][0]])
            y_train, class_train = y_train.repeat(2), class_train.repeat(2)
            teacher_x = teacher_x.repeat(2, 1, 1, 1) if teacher_x is not None else None
        teacher = (nets["exact_fhat"], teacher_x) if changes.get("distill_weight") else None
        start = time.perf_counter()
        net, _ = variant_net.train_variant_nets(x_train, y_train, num_variants, dict(config, **changes), progress=progress,
                                                class_N=class_train, num_classes=num_classes, teacher=teacher)
        seconds = time.perf_counter() - start
        nets[name] = net
        rows.append(dict(input=name, fmse_to_fhat=float((x_test - f_hat_test).pow(2).mean()),
                         heldout_accuracy=view_accuracy(net, views, test[2]),
                         train_accuracy=variant_net.variant_accuracy(net, x_train[::8], y_train[::8]), train_seconds=round(seconds, 1)))
        print(f"  {name}: held-out {rows[-1]['heldout_accuracy']:.4f}", flush=True)
    for trained_on, scored_on in cross:
        x_test = inputs[scored_on][1]
        rows.append(dict(input=f"{trained_on}_net_on_{scored_on}", fmse_to_fhat=float((x_test - f_hat_test).pow(2).mean()),
                         heldout_accuracy=variant_net.variant_accuracy(nets[trained_on], x_test, test[2])))
    for name in (mirrored or {}):
        if name in inputs:
            both_views = [inputs[name][1], mirrored[name][1]]
            rows.append(dict(input=f"{name}_net_mirror_averaged", heldout_accuracy=view_accuracy(nets[name], both_views, test[2])))
    return rows, nets


def view_accuracy(net: variant_net.AnyVariantNet, views: Sequence[torch.Tensor], y: torch.Tensor) -> float:
    """The share of images whose likeliest variant, by ``net``'s posterior averaged over ``views``
    (maps of the same images, in the same order), is ``y``."""
    log_p_VNK = torch.stack([variant_net.variant_log_probs(net, view) for view in views])
    return float((log_p_VNK.logsumexp(0).argmax(1) == y).float().mean())


def recipe_changes(recipe: str, distill_weight: float, distill_temperature: float) -> dict:
    """What ``recipe`` (one of :data:`RECIPES`) changes: ``mirror`` (the mirror images' maps join the
    training maps and are averaged with the image's in scoring: :func:`input_rows`), and, in the
    family's config, distillation from the exact ``f̂`` (``distill_weight``, ``distill_temperature``)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, not {recipe!r}")
    changes: dict = {}
    if "mirrored" in recipe:
        changes["mirror"] = True
    if "distilled" in recipe:
        changes.update(distill_weight=distill_weight, distill_temperature=distill_temperature)
    return changes


def main(argv: Optional[list] = None) -> int:
    from cli import at_least

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="VAR", choices=list(variant_net.NET_FAMILIES),
                        help="family whose variant net is diagnosed (default %(default)s)")
    parser.add_argument("--weights-dir", type=Path, help="official checkpoints or a zoo folder (default: the demo zoo)")
    parser.add_argument("--train-per-variant", type=at_least(1), default=8192, help="training generations per variant (default 8192)")
    parser.add_argument("--heldout-per-variant", type=at_least(1), default=1536, help="held-out generations per variant (default 1536)")
    parser.add_argument("--gen-batch", type=at_least(1), default=64, help="generations per batch (default 64; both counts round up to it)")
    parser.add_argument("--alphas", type=float, nargs="*", default=[0.25, 0.5, 0.75],
                        help="also train on f̂ + A·(f − f̂) for each A (default 0.25 0.5 0.75)")
    parser.add_argument("--inputs", nargs="+", choices=list(BASE_INPUTS), default=list(BASE_INPUTS),
                        help="which of the base inputs to train a net on (default: all); the re-encoding is "
                             "skipped when neither 'reencoded' nor a corrector needs it")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=[],
                        help="also train nets on the re-encoded f with another recipe: 'mirrored' (the maps of the images "
                             "mirrored left-right join the training maps, and scoring averages the posteriors of an image and "
                             "its mirror image; the base nets are scored so too), 'distilled' (taught by the exact_fhat "
                             "row's net, --distill-weight and --distill-temperature), or both")
    parser.add_argument("--distill-weight", type=float, default=0.5, help="λ of the distilled recipes (default %(default)s)")
    parser.add_argument("--distill-temperature", type=float, default=2.0, help="T of the distilled recipes (default %(default)s)")
    parser.add_argument("--members", type=at_least(1), default=1,
                        help="nets per input, averaged as the shipped ensemble is (default 1; the shipped recipe has 3)")
    parser.add_argument("--epochs", type=at_least(1), help="training epochs (default: the family's recipe)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed range (variant_net.generation_seed) and net seed")
    parser.add_argument("--refine-steps", type=at_least(0), default=0, help="Adam steps of latent refinement to measure (default 0: off)")
    parser.add_argument("--refine-images", type=at_least(1), default=256, help="held-out images refined by --refine-steps, in all (rounded up to whole batches of each variant; default 256)")
    parser.add_argument("--refine-lr", type=float, default=0.01, help="Adam learning rate of --refine-steps (halved at the middle)")
    parser.add_argument("--corrector-epochs", type=at_least(0), default=0,
                        help="also fit a learned corrector f, g → f̂ for N epochs and train a net on it (default 0: off)")
    parser.add_argument("--image-corrector-epochs", type=at_least(0), default=0,
                        help="also fit a corrector that reads the PNG image beside f and g for N epochs and train a net on "
                             "it (default 0: off)")
    parser.add_argument("--end-to-end-epochs", type=at_least(0), default=0,
                        help="also train the inverse_f net and the encoder together from the image for N more epochs, beside "
                             "the net alone trained so on f (default 0: off; needs 'inverse_f' in --inputs and one member)")
    parser.add_argument("--end-to-end-lr", type=float, default=1e-4, help="the encoder's peak learning rate there (default %(default)s)")
    parser.add_argument("--identifiability-images", type=at_least(0), default=0,
                        help="measure how much of f's error the PNG image records on N held-out images, in all (default 0: off)")
    parser.add_argument("--cache", default=str(ROOT / "runs" / "diagnose_variant_net_maps"),
                        help="where generated maps are kept (default runs/diagnose_variant_net_maps; '' for none)")
    parser.add_argument("--out", type=Path, default=Path("runs/diagnose_variant_net"),
                        help="folder for variant_net_inputs.csv (default %(default)s)")
    args = parser.parse_args(argv)
    if args.recipes and "reencoded" not in args.inputs:
        parser.error("--recipes train on the re-encoded f: keep 'reencoded' in --inputs")
    if not 0 <= args.distill_weight <= 1 or args.distill_temperature <= 0:
        parser.error("--distill-weight must lie in [0, 1] and --distill-temperature be positive")
    if any("distilled" in r for r in args.recipes) and "exact_fhat" not in args.inputs:
        parser.error("the distilled recipes are taught by the exact_fhat net: keep 'exact_fhat' in --inputs")
    if args.end_to_end_epochs and ("inverse_f" not in args.inputs or args.members != 1):
        parser.error("--end-to-end-epochs trains on from the inverse_f net: keep 'inverse_f' in --inputs and one member")
    n_train = -(-args.train_per_variant // args.gen_batch)
    n_test = -(-args.heldout_per_variant // args.gen_batch)
    # the whole plan's seeds before any work (inverse_adapter fine-tunes a missing inverse decoder first):
    # the held-out batches come after the training ones; the family's variants as the registry names them
    last_variant = len(family_variants(args.family)) - 1
    try:
        variant_net.generation_seed(args.seed, last_variant, n_train + n_test - 1)
    except ValueError as err:
        parser.error(f"--seed {args.seed} with {n_train + n_test:,} generation batches per variant: {err}")
    keep_freed_memory()
    torch.set_num_threads(2)
    adapter = inv_decoder.inverse_adapter(args.family, args.weights_dir, ROOT / CACHE_DIR / INV_DECODER_DIR)
    cache = Path(args.cache) / (variant_net_maps.maps_folder_name(adapter) + DIAGNOSIS_SUFFIX) if args.cache else None
    # refined images: whole batches, the first of each variant's held-out ones
    refine_per_variant = -(-args.refine_images // (len(adapter.variant_names) * args.gen_batch)) * args.gen_batch if args.refine_steps else 0
    refine_per_variant = min(refine_per_variant, n_test * args.gen_batch)
    mirror = any("mirrored" in r for r in args.recipes)
    train = generate_maps(adapter, range(n_train), args.gen_batch, args.seed, cache, mirror=mirror)
    test = generate_maps(adapter, range(n_train, n_train + n_test), args.gen_batch, args.seed, cache, keep_images=refine_per_variant,
                         mirror=mirror)
    config = dict(variant_net.default_config(args.family), members=args.members, seed=args.seed)
    if args.epochs:
        config["epochs"] = args.epochs
    if "reencoded" in args.inputs or args.corrector_epochs or args.image_corrector_epochs:
        start = time.perf_counter()
        g_train, g_test = reencoded(adapter, train[0]), reencoded(adapter, test[0])
        print(f"re-encoded {len(g_train) + len(g_test)} maps in {time.perf_counter() - start:.0f} s", flush=True)
    mirrored = {"reencoded": (reencoded(adapter, train[5]), reencoded(adapter, test[5]))} if mirror else None
    inputs = {"exact_fhat": (train[1], test[1])} if "exact_fhat" in args.inputs else {}
    for alpha in sorted(args.alphas):
        inputs[f"alpha_{alpha:g}"] = (train[1] + alpha * (train[0] - train[1]), test[1] + alpha * (test[0] - test[1]))
    if "inverse_f" in args.inputs:
        inputs["inverse_f"] = (train[0], test[0])
    if "reencoded" in args.inputs:
        inputs["reencoded"] = (g_train, g_test)
    if args.corrector_epochs:
        start = time.perf_counter()
        corrector = fit_corrector(train[0], g_train, train[1], args.corrector_epochs, seed=args.seed)
        inputs["learned_corrector"] = (corrected(corrector, train[0], g_train), corrected(corrector, test[0], g_test))
        print(f"fitted the corrector in {time.perf_counter() - start:.0f} s", flush=True)
    if args.image_corrector_epochs or args.end_to_end_epochs:
        images_train, images_test = png_levels(adapter, train[1]), png_levels(adapter, test[1])
    if args.image_corrector_epochs:
        start = time.perf_counter()
        corrector = fit_corrector(train[0], g_train, train[1], args.image_corrector_epochs, seed=args.seed, images_N3HW=images_train,
                                  progress=True)
        inputs["image_corrector"] = (corrected(corrector, train[0], g_train, images_N3HW=images_train),
                                     corrected(corrector, test[0], g_test, images_N3HW=images_test))
        print(f"fitted the image corrector in {time.perf_counter() - start:.0f} s", flush=True)
    recipes = {f"reencoded_{r}": ("reencoded", recipe_changes(r, args.distill_weight, args.distill_temperature)) for r in args.recipes}
    rows, nets = input_rows(inputs, test[1], train, test, config, adapter.num_classes, len(adapter.variant_names),
                            cross=[("exact_fhat", "inverse_f")] if {"exact_fhat", "inverse_f"} <= set(inputs) else [], recipes=recipes,
                            mirrored=mirrored)

    if args.end_to_end_epochs:
        rows += end_to_end_rows(adapter, nets["inverse_f"], (images_train, images_test), (train[0], test[0]), (train[2], test[2]),
                                train[3], test[1], adapter.num_classes, args.end_to_end_epochs, args.end_to_end_lr, seed=args.seed)

    def first_heldout(per_variant: int) -> torch.Tensor:
        """Indices of the first ``per_variant`` held-out maps of each variant (they lie variant by variant)."""
        held = n_test * args.gen_batch
        return torch.cat([torch.arange(vi * held, vi * held + min(per_variant, held)) for vi in range(len(adapter.variant_names))])

    if args.refine_steps:
        keep = first_heldout(refine_per_variant)
        rows.append(refinement_row(adapter, test[4], test[0][keep], test[1][keep], args.refine_steps, args.refine_lr))
    if args.identifiability_images:
        keep = first_heldout(-(-args.identifiability_images // len(adapter.variant_names)))
        rows.append(identifiability_row(adapter, test[0][keep], test[1][keep]))
    table = pd.DataFrame(rows).set_index("input")
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "variant_net_inputs.csv") as tmp:
        table.to_csv(tmp)
    print(f"{args.family}: {n_train * args.gen_batch} training and {n_test * args.gen_batch} held-out generations per variant")
    with pd.option_context("display.float_format", lambda v: f"{v:.4g}", "display.width", 200):
        print(table.to_string())
    print(f"→ {args.out / 'variant_net_inputs.csv'}")
    return 0


if __name__ == "__main__":
    from cli import run_main

    sys.exit(run_main(main))
