"""Variant nets: a small CNN that names a family's variant straight from the inverse decoder's ``f``.

The variant features of :mod:`variant_features` score the *tokens read back* from an image under
each variant's transformer. For RAR that works (the reader of its single-scale tokens is exact
given ``f̂``). For VAR it cannot: a multi-scale ``f̂`` is a sum of 155 upsampled code maps
(2 480 numbers on the demo zoo) squeezed into 1 024, so many token sets come close to it, and the
reader finds about half of the generating tokens (`docs/diagnosis.md`).

A variant net sidesteps the reading. It is trained, like an inverse decoder, on fresh generations
of every variant of the family (equal shares, random labels, PNG-rounded, from a seed range no
Dataset, fine-tuning or diagnosis image uses) to predict which variant made ``f = D⁻¹(x)``, the
plain inverse decoder's feature map: a direct estimate of ``p(variant | f)`` that no token
reading limits. For RAR, whose tokens are read well, the same net adds a second, independent
opinion beside the likelihoods (on the demo zoo it names fewer RAR variants than they do, but the
classifiers gain from both: `docs/attribution.md`, *Variant nets*).

Two things make it learn more from the same generations: it is trained on the (variant, class
label) pair each generation was made for, a finer target that costs nothing (the label is drawn
from the batch's seed), and the class is summed out when it scores (the label is never known
then); and each shipped net is an ensemble of three trained alike from consecutive seeds, whose
posteriors are averaged.

Its training maps come from :mod:`variant_net_maps` (generation, seeds, the on-disk cache); its files
and the checks that a cached net fits the weights and inverse decoder in use are :mod:`variant_net_files`. What a
net reads is its ``input_map`` (:func:`variant_net_maps.net_input`, recorded in its file). Both
families' nets read ``f`` after one re-encoding correction, ``f + f − D⁻¹(D(f))``: the inverse
decoder's error at ``f`` estimated by mapping ``D(f)`` back, and taken out once. That is one decode
and one encode per image, no tokens, and brings ``f`` nearer the ``f̂`` the generator decoded, whose
exactness the net's accuracy hangs on (`docs/attribution.md`, *What the inverse decoder costs the net*). VAR's
has read it since feature-extractor version 16, RAR's since the demo zoo's RAR net was retrained
on it (held-out generations 84.50 → 86.38 %, `docs/attribution.md`, *The RAR variant net*).

The feature extractor adds ``{variant}_fnet_nll = −log p(variant | f)`` to every image's row
(lower = likelier, like the likelihood features), and the classifiers use it beside them. It is
a learned fingerprint of each transformer's sampling distribution as it shows in ``f``; it says
nothing about images of other models, which the family signals and the outlier class handle.

The demo zoo ships one per family (``demo_zoo/variant_nets/<FAMILY>/``, made by
``scripts/build_demo_zoo.py --stage variant-nets``). With official weights they are trained on first
use (``--weights-dir``; slow on a CPU: 81 920 generations per VAR variant and 20 480 per RAR variant
by default, :func:`default_config`, kept on disk as they are made, so an interrupted training
resumes: ``--map-cache``; ``--images-per-variant`` for fewer).

    python variant_net.py --family VAR                          # train under cache/variant_net/VAR/
    python variant_net.py --family VAR --eval Dataset/val       # and report its accuracy on labelled folders
    python variant_net.py --family VAR --existing --eval Dataset/train Dataset/val   # score the net in use, train nothing
    python variant_net.py --family VAR --existing --eval-generations 2048 --map-cache runs/variant_net_maps
                                                                # ... on fresh generations it was not trained on
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from chunks import padded_chunks
from models.adapter import FamilyAdapter
from models.variant_net import INPUT_MAPS, AnyVariantNet, VariantNet, VariantNetEnsemble
from variant_net_files import (METADATA_KEY, WEIGHTS_FILE, check_made_from, load_variant_net, provenance_record, read_record,
                               save_variant_net)
from variant_net_maps import (MAPS_VERSION, SEED_OFFSET, TrainingMaps, adapter_fingerprint, generate_training_maps, generation_seed,
                              labelled_maps, maps_folder_name, net_input)

__all__ = ["DEFAULT_CONFIG", "FAMILY_CONFIG", "default_config", "SEED_OFFSET", "NET_FAMILIES", "FEATURE_STEM", "INPUT_MAPS",
           "input_map_of", "net_input", "VariantNet", "VariantNetEnsemble", "AnyVariantNet", "TrainingMaps", "generation_seed", "adapter_fingerprint",
           "generate_training_maps", "MAPS_VERSION", "maps_folder_name", "joint_targets", "train_variant_net", "train_variant_nets",
           "save_variant_net", "load_variant_net", "read_record", "check_made_from", "METADATA_KEY", "WEIGHTS_FILE",
           "shipped_file", "default_output_dir", "default_map_cache", "ensure_variant_net", "train_and_save",
           "variant_log_probs", "variant_nll", "variant_accuracy", "heldout_maps"]

DEFAULT_CONFIG: Dict[str, object] = dict(images_per_variant=81920, gen_batch=64, epochs=6, batch_size=128, lr=2e-3,
                                         weight_decay=0.05, width=64, hidden=256, dropout=0.3, class_targets=True, members=3, seed=0,
                                         input_map="f")
# per family, what differs from DEFAULT_CONFIG: both nets read f after one re-encoding correction
# (net_input), nearer the f̂ the generator decoded; RAR's likelihoods already name ~95 % of its variants,
# so its net is a second opinion trained on a quarter of VAR's generations (more were not tried;
# `docs/attribution.md`, *Variant nets*)
FAMILY_CONFIG: Dict[str, Dict[str, object]] = {"VAR": dict(input_map="reencoded"), "RAR": dict(images_per_variant=20480, input_map="reencoded")}
NET_FAMILIES = tuple(FAMILY_CONFIG)
FEATURE_STEM = "fnet_nll"
SHIPPED_SUBDIR = "variant_nets"


def default_config(family: str) -> Dict[str, object]:
    """The training recipe of ``family``'s net: :data:`DEFAULT_CONFIG` with its :data:`FAMILY_CONFIG`."""
    if family not in FAMILY_CONFIG:
        raise KeyError(f"no variant net for family {family!r}; there are nets for {', '.join(NET_FAMILIES)}")
    return dict(DEFAULT_CONFIG, **FAMILY_CONFIG[family])


def input_map_of(net: AnyVariantNet) -> str:
    """Which map ``net`` reads (one of :data:`INPUT_MAPS`)."""
    return net.shape.get("input_map", "f")


def joint_targets(y_N: torch.Tensor, class_N: Optional[torch.Tensor], num_classes: int, net_classes: int) -> torch.Tensor:
    """The index of each image's target among a net's outputs (variant-major): ``variant · K + class`` for a
    net of ``net_classes = K > 1`` (variant, class) pairs, the variant itself for ``K = 1``."""
    if net_classes == 1:
        return y_N
    if class_N is None or net_classes != num_classes:
        raise ValueError(f"a net of {net_classes} classes per variant needs each image's class label among {net_classes}")
    if int(class_N.min()) < 0 or int(class_N.max()) >= num_classes:
        raise ValueError(f"class labels must lie in [0, {num_classes})")
    return y_N * num_classes + class_N


def train_variant_net(x_NChw: torch.Tensor, y_N: torch.Tensor, num_variants: int, config: Optional[dict] = None,
                      progress: bool = True, class_N: Optional[torch.Tensor] = None, num_classes: int = 1,
                      teacher: Optional[Tuple[AnyVariantNet, torch.Tensor]] = None,
                      device: str | torch.device = "cpu") -> Tuple[VariantNet, List[float]]:
    """Fit a :class:`VariantNet` by AdamW with a one-cycle schedule (cross-entropy) on the maps ``x_NChw``
    (made by :func:`net_input` for ``config["input_map"]``, which the net records); returns it in eval
    mode, on the CPU, and the mean loss of each epoch. It trains on ``device`` (the maps stay where
    they are and go there a batch at a time; the batch order is drawn on the CPU, so it is the same).

    With ``class_N`` (each image's class label, ``< num_classes``) and ``config["class_targets"]`` the
    net learns the (variant, class) pair, a finer target than the variant alone that the generations
    carry for free (on the demo zoo it names more variants after the classes are summed out:
    `docs/attribution.md`, *Variant nets*); otherwise the variant alone.

    ``teacher = (net, x_teacher_NChw)``: a net of the same targets that reads another map of the same
    images (the generator's exact ``f̂``: privileged information that only training has); with
    ``config["distill_weight"] = λ > 0`` the loss is ``(1 − λ)·CE + λ·T²·KL(teacher_T ‖ net_T)`` at
    temperature ``T = config["distill_temperature"]`` (default 2). It did not help on the demo zoo
    (`docs/attribution.md`, *Variant nets*), so no shipped recipe uses it."""
    from tqdm.auto import tqdm

    cfg = dict(DEFAULT_CONFIG, **(config or {}))
    torch.manual_seed(int(cfg["seed"]))
    joint = bool(cfg["class_targets"]) and class_N is not None and num_classes > 1
    y_N = joint_targets(y_N, class_N, num_classes, num_classes if joint else 1)
    net = VariantNet(x_NChw.shape[1], x_NChw.shape[-1], num_variants, int(cfg["width"]), int(cfg["hidden"]), float(cfg["dropout"]),
                     num_classes if joint else 1, str(cfg["input_map"]))
    net.mean_C.copy_(x_NChw.mean((0, 2, 3)))
    net.std_C.copy_(x_NChw.std((0, 2, 3)).clamp_min(1e-6))
    net.to(device)
    batch = min(int(cfg["batch_size"]), len(x_NChw))
    per_epoch = len(x_NChw) // batch
    opt = torch.optim.AdamW(net.parameters(), lr=float(cfg["lr"]) / 2, weight_decay=float(cfg["weight_decay"]))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, float(cfg["lr"]), total_steps=int(cfg["epochs"]) * per_epoch)
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    # distillation is off in every shipped recipe (it needs the exact f̂, which only a diagnosis keeps)
    distill, temperature = float(cfg.get("distill_weight", 0.0)), float(cfg.get("distill_temperature", 2.0))
    if not 0 <= distill <= 1 or temperature <= 0:
        raise ValueError(f"distill_weight must lie in [0, 1] and distill_temperature be positive, not {distill} and {temperature}")
    if distill > 0 and teacher is None:
        raise ValueError("distill_weight > 0 needs a teacher (a net and the maps it reads)")
    teacher_net, teacher_x = teacher if distill > 0 else (None, None)
    if teacher_net is not None:  # moved to the device for the training, and back after it
        teacher_device = next(teacher_net.parameters()).device
        teacher_net.to(device).eval()
        if len(teacher_x) != len(x_NChw):
            raise ValueError(f"the teacher reads {len(teacher_x)} maps, the net {len(x_NChw)}: one per image each")
    epoch_losses: List[float] = []
    net.train()
    for _ in tqdm(range(int(cfg["epochs"])), desc="variant net", disable=not progress):
        order, losses = torch.randperm(len(x_NChw), generator=gen), []
        for s in range(per_epoch):
            pick = order[s * batch:(s + 1) * batch]
            logits_BK = net(x_NChw[pick].to(device))
            loss = F.cross_entropy(logits_BK, y_N[pick].to(device))
            if distill > 0:
                with torch.no_grad():
                    soft_BK = F.log_softmax(teacher_net(teacher_x[pick].to(device)) / temperature, dim=1)
                kl = F.kl_div(F.log_softmax(logits_BK / temperature, dim=1), soft_BK, reduction="batchmean", log_target=True)
                loss = (1 - distill) * loss + distill * temperature ** 2 * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        epoch_losses.append(float(np.mean(losses)))
    if teacher_net is not None:
        teacher_net.to(teacher_device)
    return net.cpu().eval(), epoch_losses


def train_variant_nets(x_NChw: torch.Tensor, y_N: torch.Tensor, num_variants: int, config: Optional[dict] = None,
                       progress: bool = True, class_N: Optional[torch.Tensor] = None, num_classes: int = 1,
                       teacher: Optional[Tuple[AnyVariantNet, torch.Tensor]] = None,
                       device: str | torch.device = "cpu") -> Tuple[AnyVariantNet, List[List[float]]]:
    """``config["members"]`` nets trained by :func:`train_variant_net` (on ``device``) on the same maps
    from the seeds ``seed``, ``seed + 1``, …: the one net, or their :class:`VariantNetEnsemble`; and
    each member's epoch losses."""
    cfg = dict(DEFAULT_CONFIG, **(config or {}))
    if int(cfg["members"]) < 1:
        raise ValueError("members must be at least 1")
    trained = [train_variant_net(x_NChw, y_N, num_variants, dict(cfg, seed=int(cfg["seed"]) + i), progress, class_N, num_classes, teacher,
                                 device) for i in range(int(cfg["members"]))]
    nets = [net for net, _ in trained]
    return (nets[0] if len(nets) == 1 else VariantNetEnsemble(nets).eval()), [losses for _, losses in trained]


def default_output_dir(root: Path | str, family: str) -> Path:
    return Path(root) / family.upper()


def shipped_file(zoo_dir: Path | str, family: str) -> Path:
    """Where a zoo (or an official weights folder) ships the family's variant net."""
    return default_output_dir(Path(zoo_dir) / SHIPPED_SUBDIR, family) / WEIGHTS_FILE


def ensure_variant_net(family: str, weights_dir: Optional[Path], root: Path | str, inverse: FamilyAdapter,
                       config: Optional[dict] = None, train_missing: bool = True, progress: bool = True) -> Path:
    """Path of the family's variant net: the one shipped beside the weights if there is one, else
    the one under ``root``, trained first on generations mapped back by ``inverse`` (the family's
    adapter with its plain inverse decoder) if missing; their maps are kept under
    ``root/<FAMILY>/maps/``, so an interrupted training resumes where its generation stopped.
    A net found under ``root`` must have been trained on ``inverse``'s weights and inverse decoder
    (:func:`variant_net_files.check_made_from`), else a :class:`models.checkpoints.CheckpointError` names it."""
    from models.zoo import DEMO_ZOO_DIR

    shipped = shipped_file(weights_dir or DEMO_ZOO_DIR, family)
    if shipped.is_file():
        return shipped
    path = default_output_dir(root, family) / WEIGHTS_FILE
    if path.is_file():
        check_made_from(path, inverse)
    if not path.is_file() and not train_missing:
        raise FileNotFoundError(f"no {family} variant net at {path}: train it first (python submission.py --stage prepare with "
                                f"the same --cache-dir, or python variant_net.py --family {family} --weights-dir DIR --out {root})")
    if not path.is_file():
        print(f"[{family}] no variant net at {path}: training one now", file=sys.stderr)
        train_and_save(inverse, path, config, progress, cache_dir=default_map_cache(root, family))
    return path


def default_map_cache(root: Path | str, family: str) -> Path:
    return default_output_dir(root, family) / "maps"


def train_and_save(inverse: FamilyAdapter, path: Path, config: Optional[dict] = None, progress: bool = True,
                   cache_dir: Optional[Path | str] = None) -> Path:
    """Generate the training maps with ``inverse`` (kept in, or read from, ``cache_dir``: see
    :func:`generate_training_maps`), train a net on them and save it at ``path``
    (its JSON record: config, per-epoch losses, accuracy on its training maps, seconds, and the digests of
    the weights and inverse decoder that made the maps, :func:`variant_net_files.provenance_record`)."""
    cfg = dict(default_config(inverse.family), **(config or {}))
    clock = time.perf_counter()
    x, y, classes = generate_training_maps(inverse, int(cfg["images_per_variant"]), int(cfg["seed"]), int(cfg["gen_batch"]), progress,
                                           cache_dir, str(cfg["input_map"]))
    net, member_losses = train_variant_nets(x, y, len(inverse.variant_names), cfg, progress, classes, inverse.num_classes,
                                            device=inverse.device)  # where the maps were made: a GPU run trains there too
    record = {**provenance_record(inverse), "config": cfg, "epoch_losses": [float(np.mean(epoch)) for epoch in zip(*member_losses)],
              "member_epoch_losses": member_losses,
              "train_accuracy": variant_accuracy(net, x, y), "seconds": round(time.perf_counter() - clock, 1),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(inverse.device)}
    return save_variant_net(net, inverse.variant_names, path, record)


@torch.no_grad()
def variant_log_probs(net: AnyVariantNet, x_BChw: torch.Tensor) -> torch.Tensor:
    """``log p(variant | x)`` (``B×V``; the class labels summed out) of the maps ``x`` the net reads
    (:func:`net_input`), :data:`chunks.CHUNK` images per pass (the last padded): an image's
    output does not depend on its batch mates. The net runs where its weights are (the maps are
    moved there: a GPU feature pass makes them on the GPU), and the answer is on the CPU."""
    out = []
    num_variants = net.shape["num_variants"]
    device = next(net.parameters()).device
    for index, n in padded_chunks(len(x_BChw)):
        joint = F.log_softmax(net(x_BChw[index].to(device).float().contiguous()), dim=1)[:n]
        out.append(joint.view(n, num_variants, -1).logsumexp(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, net.shape["num_variants"])


def variant_nll(net: AnyVariantNet, variants: Sequence[str], x_BChw: torch.Tensor) -> Dict[str, np.ndarray]:
    """``{variant}_fnet_nll`` columns: ``−log p(variant | x)`` per image (``x``: :func:`net_input`)."""
    log_p = variant_log_probs(net, x_BChw).double().numpy()
    return {f"{v}_{FEATURE_STEM}": -log_p[:, i] for i, v in enumerate(variants)}


def variant_accuracy(net: AnyVariantNet, x: torch.Tensor, y: torch.Tensor) -> float:
    """The share of maps ``x`` (:func:`net_input`) whose likeliest variant under ``net`` is ``y``."""
    return float((variant_log_probs(net, x).argmax(1) == y).float().mean())


def heldout_maps(inverse: FamilyAdapter, net_path: Path | str, per_variant: int, cache_dir: Optional[Path | str] = None,
                 progress: bool = True) -> TrainingMaps:
    """``per_variant`` fresh generations per variant that the net at ``net_path`` was not trained on,
    as it reads them: the generation batches right after its training ones (its JSON record names
    their seed, count and batch size), so their seeds lie in the range no Dataset image uses."""
    record = read_record(net_path)  # refused when it does not describe this net's file
    net, _ = load_variant_net(net_path, inverse.variant_names)
    cfg = dict(default_config(inverse.family), **record["config"])
    trained_batches = -(-int(cfg["images_per_variant"]) // int(cfg["gen_batch"]))
    return generate_training_maps(inverse, per_variant, int(cfg["seed"]), int(cfg["gen_batch"]), progress, cache_dir,
                                  input_map_of(net), first_batch=trained_batches)


def main(argv: Optional[list] = None) -> int:
    from cli import (CACHE_DIR, VARIANT_NET_DIR, add_weights_arguments, at_least, check_weight_files, existing_folder,
                     output_folder)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", required=True, choices=[f for f in NET_FAMILIES] + [f.lower() for f in NET_FAMILIES],
                        help="whose variants the net names")
    add_weights_arguments(parser)
    parser.add_argument("--out", type=output_folder, default=CACHE_DIR / VARIANT_NET_DIR,
                        help=f"output root (default {CACHE_DIR / VARIANT_NET_DIR}, where submission.py looks)")
    # recipe options default to None: what is not given comes from the family's recipe (default_config)
    def recipe(key: str) -> str:
        return ", ".join(f"{f} {default_config(f)[key]}" for f in NET_FAMILIES)

    parser.add_argument("--images-per-variant", type=at_least(1),
                        help=f"generations per variant (default: the family's, {recipe('images_per_variant')})")
    parser.add_argument("--epochs", type=at_least(1), help=f"default: the family's, {recipe('epochs')}")
    parser.add_argument("--seed", type=int, choices=range(10), metavar="0-9",
                        help=f"seed of the generations, and of the first member's training (default: the family's, {recipe('seed')})")
    parser.add_argument("--members", type=at_least(1),
                        help=f"nets trained from consecutive seeds whose posteriors are averaged (default: the family's, {recipe('members')})")
    parser.add_argument("--width", type=at_least(1), help=f"convolution channels (default: the family's, {recipe('width')})")
    parser.add_argument("--hidden", type=at_least(1), help=f"MLP width (default: the family's, {recipe('hidden')})")
    parser.add_argument("--input-map", choices=INPUT_MAPS,
                        help=f"the map the net reads: f, or f after one re-encoding correction (default: the family's, {recipe('input_map')})")
    parser.add_argument("--variant-only", action="store_true",
                        help="learn the variant alone, not the (variant, class label) pair the generations carry")
    maps = parser.add_mutually_exclusive_group()
    maps.add_argument("--map-cache", type=Path,
                      help="where the generated training maps are kept, so a rerun resumes or reuses them (default <out>/<FAMILY>/maps)")
    maps.add_argument("--no-map-cache", action="store_true", help="keep no generated maps on disk")
    parser.add_argument("--eval", type=existing_folder("give Dataset split folders holding <variant>/ subfolders"), nargs="*", default=[],
                        help="labelled folders (<dir>/<variant>/*.png) to score the net on")
    parser.add_argument("--eval-generations", type=at_least(1), metavar="N",
                        help="also score the net on N fresh generations per variant that it was not trained on (the "
                             "generation batches after its training ones; kept in the map cache)")
    parser.add_argument("--existing", action="store_true",
                        help="train nothing: score the net the pipeline would use (shipped with the weights, else under --out) "
                             "on --eval and --eval-generations")
    args = parser.parse_args(argv)
    training = [f"--{name.replace('_', '-')}" for name in ("images_per_variant", "epochs", "seed", "members", "width", "hidden",
                                                         "input_map") if getattr(args, name) is not None]
    if args.existing and (training or args.variant_only):
        parser.error(f"{' '.join(training + ['--variant-only'] * args.variant_only)}: how to train a net, but --existing "
                     "trains none; leave them out")
    family = args.family.upper()
    if not args.existing:  # the whole plan's seeds before any work: the held-out batches follow the training ones
        from models.registry import family_variants

        cfg = dict(default_config(family), **{k: v for k, v in (("images_per_variant", args.images_per_variant),
                                                                  ("seed", args.seed)) if v is not None})
        batches = sum(-(-int(n) // int(cfg["gen_batch"])) for n in (cfg["images_per_variant"], args.eval_generations or 0))
        try:
            generation_seed(int(cfg["seed"]), len(family_variants(family)) - 1, batches - 1)
        except ValueError as err:
            parser.error(f"{batches:,} generation batches per variant (--images-per-variant, --eval-generations): {err}")
    check_weight_files(args.weights_dir, [family])  # before an inverse decoder under --inv-root is looked for
    from runtime import keep_freed_memory

    keep_freed_memory()  # same numbers, far less system time on reused buffers
    import inv_decoder

    # --existing trains nothing, an inverse decoder included
    inverse = inv_decoder.inverse_adapter(family, args.weights_dir, args.inv_root, fine_tune_missing=not args.existing)
    cache = None if args.no_map_cache else (args.map_cache or default_map_cache(args.out, family))
    if args.existing:
        path = ensure_variant_net(family, args.weights_dir, args.out, inverse, train_missing=False)
        print(f"variant net {path}")
    else:
        path = default_output_dir(args.out, family) / WEIGHTS_FILE
        given = dict(images_per_variant=args.images_per_variant, epochs=args.epochs, seed=args.seed, members=args.members,
                     width=args.width, hidden=args.hidden, class_targets=False if args.variant_only else None, input_map=args.input_map)
        config = {key: value for key, value in given.items() if value is not None}  # train_and_save adds the family's recipe
        train_and_save(inverse, path, config, cache_dir=cache)
        print(f"variant net → {path}: {json.loads(path.with_suffix('.json').read_text())['train_accuracy']:.4f} on its training maps")
    net, variants = load_variant_net(path, inverse.variant_names) if args.eval or args.eval_generations else (None, [])
    if args.eval_generations:
        x, y, _ = heldout_maps(inverse, path, args.eval_generations, cache)
        print(f"accuracy on {len(y)} fresh {family} generations it was not trained on: {variant_accuracy(net, x, y):.4f} "
              f"(chance {1 / len(variants):.4f})")
    for folder in args.eval:
        x, y = labelled_maps(inverse, [folder], input_map_of(net))
        print(f"accuracy on the {len(y)} {family} images of {folder}: {variant_accuracy(net, x, y):.4f} (chance {1 / len(variants):.4f})")
    return 0


if __name__ == "__main__":
    from cli import run_module

    sys.exit(run_module("variant_net"))
