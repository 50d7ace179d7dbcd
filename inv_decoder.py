"""Fine-tune an inverse decoder ``D⁻¹`` for one IAR family.

The tokenizer's encoder was trained to compress natural images, not to invert the decoder, so
``E(D(f_Z)) ≠ f_Z`` even for the model's own generations. An *inverse decoder* is that encoder
(with VAR's ``quant_conv``) fine-tuned on the family's generations with the decoder and the
codebook frozen, minimising ``‖f_Z − D⁻¹(aug(D(f_Z)))‖²`` against the true generated feature
maps ``f_Z``; afterwards generated images invert onto the codebook and QuantLoss collapses for
them only.

Training data are fresh samples of every variant of the family (equal shares, random labels),
drawn from a seed range used by nothing else and never written to ``Dataset/`` (:mod:`inv_decoder_data`), so no image the
toolkit later scores was seen in fine-tuning; ``--exclude`` additionally checks pixel hashes
against folders of images to be scored. Images are rounded to 8 bits as PNG files are.
Optional augmentation follows the none → weak → medium → strong curriculum of
``augmentation.py``. Runs resume from ``checkpoint.pt`` in the output folder, and a run stopped
while generating its data resumes at the batch it stopped at (``train_tokens.parts/``).

    python inv_decoder.py --family VAR                      # demo zoo
    python inv_decoder.py --family RAR --augment --weights-dir /ckpt --images 20000

The demo zoo ships its inverse decoders (``demo_zoo/inv_decoders/<family>[_aug]/``, made by
``scripts/build_demo_zoo.py``); they are used whenever present.

Outputs in ``--out/<family>[ _aug]/``: ``inv_decoder.safetensors`` (tokenizer-keyed encoder
weights), ``inv_decoder.json`` (config, losses, the digest of the weights it inverts and the sha256 of
``inv_decoder.safetensors``' bytes; written first, so a kill between the two writes leaves a
record that no older file passes for: the next use writes the file it names from the checkpoint, or
refuses the pair), ``loss_curve.png``,
``checkpoint.pt`` and ``train_tokens.pt`` (the fine-tuning data, with the seed, image count and
weights digest they were made for).

A folder is only ever taken for the run that made it: tokens or a checkpoint made with another
seed, image count or other weights (:func:`models.zoo.weights_digest`), and a checkpoint of more
epochs than asked for, are refused with the file named; so is an inverse decoder under a cache
folder (:func:`ensure_inverse_decoder`) fine-tuned on other weights than the ones in use.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from atomic import atomic_path
from augmentation import DEFAULT_SCHEDULE, to_uint8, to_uint8_arrays
from inv_decoder_data import MAX_IMAGES, SEED_OFFSET, SEEDS, generate_training_tokens, training_tokens
from models.adapter import FamilyAdapter
from models.checkpoints import CheckpointError, hash_tensors, read_state_dict
from models.files import file_digest, file_sha256
from models.zoo import weights_digest

__all__ = ["DEFAULT_CONFIG", "encoder_state_prefixes", "encoder_state", "put_encoder_state", "generate_training_tokens", "finetune", "load_inverse_decoder", "inverse_adapter",
           "default_output_dir", "shipped_file", "ensure_inverse_decoder", "augment_flags", "to_png_levels", "inverse_decoder_digest",
           "SHIPPED_SUBDIR", "WEIGHTS_FILE", "RECORD_FILE", "KINDS", "SEEDS", "SEED_OFFSET", "MAX_IMAGES"]

DEFAULT_CONFIG: Dict[str, object] = dict(
    images=1536, epochs=6, batch_size=32, lr=1e-4, seed=0, augment=False, augment_p=0.5,
    schedule=[list(stage) for stage in DEFAULT_SCHEDULE], init=None,
)
# ``init``: an inverse decoder file to start from instead of the tokenizer's encoder (e.g. the plain
# one, to continue its curriculum with augmentation); the run's JSON records its name and sha256.
SHIPPED_SUBDIR = "inv_decoders"  # inverse decoders shipped beside a zoo's weights
WEIGHTS_FILE = "inv_decoder.safetensors"
RECORD_FILE = "inv_decoder.json"  # beside WEIGHTS_FILE: config, losses, weights_digest, inv_decoder_sha256
KINDS = ("plain", "augmented")  # fine-tuned without / with the augmentation curriculum


def default_output_dir(root: Path, family: str, augment: bool) -> Path:
    return Path(root) / (family.upper() + ("_aug" if augment else ""))


def shipped_file(zoo_dir: Path | str, family: str, augment: bool) -> Path:
    """Where a zoo (or an official weights folder) ships the family's inverse decoder."""
    return default_output_dir(Path(zoo_dir) / SHIPPED_SUBDIR, family, augment) / WEIGHTS_FILE


def augment_flags(kinds: Sequence[str]) -> List[bool]:
    """The ``augment`` flags of the named :data:`KINDS`, plain first."""
    return [kind == "augmented" for kind in KINDS if kind in kinds]


def encoder_state_prefixes(adapter: FamilyAdapter) -> List[str]:
    """Tokenizer state-dict prefixes of the modules an inverse decoder replaces."""
    wanted = {id(m) for m in adapter.encoder_modules()}
    return [f"{name}." for name, module in adapter.tokenizer.named_children() if id(module) in wanted]


def encoder_state(adapter: FamilyAdapter) -> Dict[str, torch.Tensor]:
    """A copy of the weights of ``adapter``'s ``D⁻¹`` (tokenizer state-dict keys, on the CPU, contiguous):
    what an inverse decoder file holds, and a snapshot that later training does not change."""
    prefixes = tuple(encoder_state_prefixes(adapter))
    return {k: v.detach().cpu().contiguous().clone() for k, v in adapter.tokenizer.state_dict().items() if k.startswith(prefixes)}


def put_encoder_state(adapter: FamilyAdapter, state: Dict[str, torch.Tensor], source: str = "these weights") -> FamilyAdapter:
    """Put encoder weights (:func:`encoder_state`'s keys, all of them and no others) into ``adapter``'s tokenizer."""
    prefixes = tuple(encoder_state_prefixes(adapter))
    expected = {k for k in adapter.tokenizer.state_dict() if k.startswith(prefixes)}
    if set(state) != expected:
        raise CheckpointError(f"{source} is not an inverse decoder for this {adapter.family} tokenizer: "
                              f"missing {sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")
    adapter.tokenizer.load_state_dict(state, strict=False)
    return adapter


def inverse_decoder_digest(adapter: FamilyAdapter) -> str:
    """sha256 of the weights ``adapter`` has in place of its encoder (:func:`encoder_state`, in key
    order): names its inverse decoder whatever file it came from, and whatever device or layout it runs in."""
    hasher = hashlib.sha256()
    hash_tensors(hasher, "encoder", encoder_state(adapter))
    return hasher.hexdigest()


def load_inverse_decoder(adapter: FamilyAdapter, path: Path | str) -> FamilyAdapter:
    """Put fine-tuned encoder weights into ``adapter``'s tokenizer (strict on those keys)."""
    return put_encoder_state(adapter, read_state_dict(path), str(path))


def to_png_levels(img01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] rounded to the 8-bit levels a PNG file stores."""
    return to_uint8(img01).to(img01.dtype) / 255


def _pixel_hashes(img01_B3HW: torch.Tensor) -> set:
    arr = to_uint8_arrays(img01_B3HW)
    return {hashlib.sha256(a.tobytes()).hexdigest() for a in arr}


def _save_loss_curve(losses: List[float], folder: Path, family: str, augment: bool) -> None:
    """``loss_curve.png`` in ``folder``: the mean loss of each epoch of a fine-tuning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(np.arange(1, len(losses) + 1), losses, marker="o")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean ‖f_Z − D⁻¹(D(f_Z))‖²")
    ax.set_title(f"{family} inverse decoder{' (augmented)' if augment else ''}")
    fig.tight_layout()
    with atomic_path(folder / "loss_curve.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _resume_settings(cfg: dict, weights: str) -> Dict[str, str]:
    """What a checkpoint must have been trained with to be resumed under ``cfg`` on the weights of
    digest ``weights``: those weights and every setting but the number of epochs (a finished run
    may be continued for more)."""
    settings = {k: json.dumps(v, sort_keys=True, default=str) for k, v in cfg.items() if k != "epochs"}
    return dict(settings, weights_digest=weights)


def finetune(adapter: FamilyAdapter, out_dir: Path | str, config: Optional[dict] = None, *,
             exclude_folders: Sequence[Path] = (), progress: bool = True) -> Dict[str, object]:
    """Fine-tune ``adapter``'s encoder in place; resumable; returns the run summary."""
    from tqdm.auto import tqdm

    cfg = {**DEFAULT_CONFIG, **(config or {})}
    weights = adapter.weights_digest  # what the tokens, the checkpoint and the record must have been made from
    if cfg["augment"]:
        from augmentation import augment_batch, curriculum_stage
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    tokens_path = out / "train_tokens.pt"
    torch.manual_seed(int(cfg["seed"]))
    settings = _resume_settings(cfg, weights)
    tokens = training_tokens(adapter, tokens_path, int(cfg["seed"]), int(cfg["images"]), weights, progress)
    if exclude_folders:
        with torch.no_grad():  # f̂ contiguous, as the samplers decode it: VAR's strided tokens_to_fhat decodes a few pixels
            # a level apart, and their hashes missed most copies of its generations
            train_hashes = set().union(*(_pixel_hashes(to_png_levels(adapter.decode(adapter.tokens_to_fhat(tokens[i:i + 64]).contiguous())))
                                         for i in range(0, len(tokens), 64)))
        from dataset import pixel_hashes_under

        overlap = train_hashes & pixel_hashes_under(exclude_folders)
        if overlap:
            from cli import InputError

            raise InputError(f"{len(overlap)} fine-tuning images also appear in {', '.join(map(str, exclude_folders))}: "
                             "they would be scored by an inverse decoder that learned them; fine-tune with another --seed")

    params = [p for m in adapter.encoder_modules() for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=float(cfg["lr"]))
    losses: List[float] = []
    start_epoch = 0
    record = {k: v for k, v in cfg.items() if k != "init" or v}
    if cfg.get("init"):
        init = Path(str(cfg["init"]))
        record["init"] = {"file": f"{init.parent.name}/{init.name}", "sha256": file_sha256(init)}
        settings["init_sha256"] = record["init"]["sha256"]  # the file's bytes, not only its path: a resumed run started from it
        if not ckpt_path.is_file():  # a resumed run takes its encoder from the checkpoint
            load_inverse_decoder(adapter, init)
    if ckpt_path.is_file():
        # on the CPU: a run on a GPU saved Adam's moments there, and it may resume where there is none
        # (opt.load_state_dict moves them to the encoder's device)
        state = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        if state.get("settings", settings) != settings:  # checkpoints before the settings were stored are taken as they are
            changed = sorted(k for k in set(settings) | set(state["settings"]) if settings.get(k) != state["settings"].get(k))
            raise CheckpointError(f"{ckpt_path} was trained with other settings ({', '.join(changed)}): remove {out} "
                                  "or give another output folder (only --epochs may grow when a run is resumed)")
        if int(state["epoch"]) > int(cfg["epochs"]):
            raise CheckpointError(f"{ckpt_path} holds {int(state['epoch'])} epochs of fine-tuning, more than the {cfg['epochs']} asked for: "
                                  f"ask for --epochs {int(state['epoch'])} or more, or remove {out} or give another output folder")
        put_encoder_state(adapter, state["encoder"], str(ckpt_path))
        opt.load_state_dict(state["optimizer"])
        losses, start_epoch = list(state["losses"]), int(state["epoch"])
        torch.set_rng_state(state["rng"])
    gen = torch.Generator()  # seeded per epoch below, so a resumed run draws the same order
    for m in adapter.encoder_modules():
        m.train().requires_grad_(True)
    try:
        for epoch in range(start_epoch, int(cfg["epochs"])):
            gen.manual_seed(int(cfg["seed"]) * 1000 + epoch)
            order = torch.randperm(len(tokens), generator=gen)
            stage = curriculum_stage(epoch, cfg["schedule"]) if cfg["augment"] else None
            total, count = 0.0, 0
            bar = tqdm(range(0, len(order), int(cfg["batch_size"])), desc=f"epoch {epoch + 1}/{cfg['epochs']} ({stage or 'no aug'})",
                       disable=not progress, leave=False)
            for start in bar:
                batch_tokens = tokens[order[start:start + int(cfg["batch_size"])]].to(adapter.device)
                with torch.no_grad():
                    f_z = adapter.tokens_to_fhat(batch_tokens)
                    img = to_png_levels(adapter.decode(f_z))
                    if stage is not None:
                        img = to_png_levels(augment_batch(img, stage, float(cfg["augment_p"]), gen))
                loss = (adapter.encode(img) - f_z).square().mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(batch_tokens)
                count += len(batch_tokens)
                bar.set_postfix(loss=f"{total / count:.3e}")
            losses.append(total / max(count, 1))
            with atomic_path(ckpt_path) as tmp:  # a run killed while saving resumes from the previous epoch
                torch.save({"encoder": encoder_state(adapter), "optimizer": opt.state_dict(), "losses": losses,
                            "epoch": epoch + 1, "rng": torch.get_rng_state(), "settings": settings}, tmp)
            if progress:
                print(f"epoch {epoch + 1}: loss {losses[-1]:.4e}", file=sys.stderr)
    finally:
        for m in adapter.encoder_modules():
            m.eval().requires_grad_(False)
    from safetensors.torch import save

    file_bytes = save(encoder_state(adapter))
    summary = {"family": adapter.family, "config": record, "losses": losses, "train_images": int(len(tokens)), "weights_digest": weights,
               "inv_decoder_sha256": hashlib.sha256(file_bytes).hexdigest()}
    with atomic_path(out / RECORD_FILE) as tmp:  # first, naming the file's bytes: a kill between the two writes leaves
        Path(tmp).write_text(json.dumps(summary, indent=2))  # a pair _check_made_from never takes for one (it finishes the save)
    with atomic_path(out / WEIGHTS_FILE) as tmp:  # last: its bytes are the ones the record names
        Path(tmp).write_bytes(file_bytes)
    _save_loss_curve(losses, out, adapter.family, bool(cfg["augment"]))
    return summary


def ensure_inverse_decoder(family: str, weights_dir: Optional[Path], inv_root: Path | str, augment: bool = False,
                           device: str = "cpu", config: Optional[dict] = None, fine_tune_missing: bool = True) -> Path:
    """Path of the family's inverse decoder: the one shipped beside the weights (``<weights>/inv_decoders/``,
    as the demo zoo has) if there is one, else the one under ``inv_root``, fine-tuned first if missing
    (or, with ``fine_tune_missing=False``, a :class:`FileNotFoundError` — for jobs that run side by
    side and must not each fine-tune the same one)."""
    from models.zoo import DEMO_ZOO_DIR, load_family

    shipped = shipped_file(weights_dir or DEMO_ZOO_DIR, family, augment)
    if shipped.is_file():
        return shipped
    out = default_output_dir(Path(inv_root), family, augment)
    path = out / WEIGHTS_FILE
    if not path.is_file() and (out / RECORD_FILE).is_file():  # a first fine-tuning stopped while saving
        _finish_cut_short_save(path, json.loads((out / RECORD_FILE).read_text()))
    if path.is_file():
        _check_made_from(path, weights_digest(family, weights_dir))
    if not path.is_file() and not fine_tune_missing:
        raise FileNotFoundError(f"no {family} inverse decoder at {path}: fine-tune it first (python submission.py "
                                f"--stage prepare with the same --cache-dir, or python inv_decoder.py --family {family} "
                                f"--weights-dir DIR --out {inv_root}{' --augment' if augment else ''})")
    if not path.is_file():
        print(f"[{family}] no inverse decoder at {path}: fine-tuning one now", file=sys.stderr)
        finetune(load_family(family, weights_dir, device=device), out, dict(config or {}, augment=augment))
    return path


def _check_made_from(path: Path, weights: str) -> None:
    """Refuse the inverse decoder at ``path`` (not a shipped one) unless its record names the weights of
    digest ``weights`` and the file's bytes (:func:`_finish_cut_short_save` first, where it can)."""
    record_path = path.parent / RECORD_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    recorded = record.get("weights_digest")
    if recorded != weights:
        why = (f"was fine-tuned on other weights (digest {recorded[:16]}…, these are {weights[:16]}…)" if recorded is not None
               else f"has no record of the weights it was fine-tuned on ({record_path.name} missing, or older than that record)")
        raise CheckpointError(f"{path} {why}: remove it (with its folder {path.parent}) or give another --cache-dir "
                              "(--inv-root for the commands that take one)")
    recorded_file = record.get("inv_decoder_sha256")  # older records lack it
    # file_digest: read once per process (the feature extractor names its store by the same file's digest)
    if recorded_file is not None and recorded_file != file_digest(path) and not _finish_cut_short_save(path, record):
        raise CheckpointError(f"{record_path} describes another inverse decoder (sha256 {recorded_file[:16]}…) than {path} "
                              f"(sha256 {file_digest(path)[:16]}…), and {path.parent / 'checkpoint.pt'} cannot rebuild it: "
                              f"remove {path.parent} to fine-tune it again, or put back the file the record names")


def _finish_cut_short_save(path: Path, record: dict) -> bool:
    """Write the inverse decoder a fine-tuning stopped between its record and its weights left unwritten
    (the record names its bytes; an older file, or none, lies at ``path``): from the encoder in the
    checkpoint of the record's last epoch, if its bytes are the ones named. True when done."""
    from safetensors.torch import save

    checkpoint = path.parent / "checkpoint.pt"
    if not checkpoint.is_file() or "inv_decoder_sha256" not in record:
        return False
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")
    file_bytes = save(state["encoder"])
    if int(state["epoch"]) != len(record.get("losses", [])) or hashlib.sha256(file_bytes).hexdigest() != record["inv_decoder_sha256"]:
        return False
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(file_bytes)
    print(f"{path}: its fine-tuning stopped while saving it; written from {checkpoint}", file=sys.stderr)
    _save_loss_curve(list(record["losses"]), path.parent, record["family"], bool(record["config"].get("augment")))
    return True


def inverse_adapter(family: str, weights_dir: Optional[Path], inv_root: Path | str, augment: bool = False,
                    device: str = "cpu", config: Optional[dict] = None, fine_tune_missing: bool = True) -> FamilyAdapter:
    """The family's adapter with its inverse decoder in place of the encoder (:func:`ensure_inverse_decoder`)."""
    from models.zoo import load_family

    path = ensure_inverse_decoder(family, weights_dir, inv_root, augment, device, config, fine_tune_missing)
    return load_inverse_decoder(load_family(family, weights_dir, device=device), path)


def main(argv: Optional[list] = None) -> int:
    from cli import (CACHE_DIR, INV_DECODER_DIR, InputError, at_least, check_weight_files, chosen_device, existing_folder,
                     output_folder, positive_float)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", required=True, choices=["VAR", "RAR", "var", "rar"], help="whose tokenizer's encoder to fine-tune")
    parser.add_argument("--weights-dir", type=Path, help="official checkpoints or a zoo folder (default: demo zoo)")
    parser.add_argument("--out", type=output_folder, default=CACHE_DIR / INV_DECODER_DIR,
                        help=f"output root (default {CACHE_DIR / INV_DECODER_DIR}, where submission.py looks)")
    parser.add_argument("--images", type=at_least(1, at_most=MAX_IMAGES), default=DEFAULT_CONFIG["images"],
                        help=f"fresh generations to fine-tune on, at most {MAX_IMAGES:,}: the generation seeds of one --seed "
                             "(default %(default)s)")
    parser.add_argument("--epochs", type=at_least(1), default=DEFAULT_CONFIG["epochs"], help="(default %(default)s)")
    parser.add_argument("--batch-size", type=at_least(1), default=DEFAULT_CONFIG["batch_size"], help="(default %(default)s)")
    parser.add_argument("--lr", type=positive_float, default=DEFAULT_CONFIG["lr"], help="Adam learning rate (default %(default)s)")
    parser.add_argument("--seed", type=int, choices=SEEDS, metavar=f"{{{SEEDS.start}…{SEEDS.stop - 1}}}", default=DEFAULT_CONFIG["seed"],
                        help="picks the generations' seed range (inv_decoder.SEED_OFFSET + 100 000·seed) and the training order (default %(default)s)")
    parser.add_argument("--augment", action="store_true", help="use the augmentation curriculum")
    parser.add_argument("--init", type=Path, help="start from this inverse decoder (.safetensors) instead of the encoder")
    parser.add_argument("--exclude", type=existing_folder("give the folders of the images to be scored"), nargs="*", default=[],
                        help="folders of images to be scored; fail on overlap (each must exist: a typo would turn the check off)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    args = parser.parse_args(argv)
    args.family = args.family.upper()
    device = chosen_device(args.device)
    if args.init is not None and not args.init.is_file():
        raise InputError(f"--init {args.init}: no such file; give an inverse decoder (.safetensors) this command wrote")
    check_weight_files(args.weights_dir, [args.family])  # before hours of generating
    from runtime import keep_freed_memory

    keep_freed_memory()  # same numbers, far less system time on reused buffers
    from models.zoo import load_family

    adapter = load_family(args.family, args.weights_dir, device=device)
    out = default_output_dir(args.out, args.family, args.augment)
    summary = finetune(adapter, out, dict(images=args.images, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                          seed=args.seed, augment=args.augment, init=args.init), exclude_folders=args.exclude)
    print(f"{out / WEIGHTS_FILE}  final loss {summary['losses'][-1]:.4e}")
    return 0


if __name__ == "__main__":
    from cli import run_module

    sys.exit(run_module("inv_decoder"))
