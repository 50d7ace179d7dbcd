"""Generate the demo Dataset from the demo zoo: 9 classes, train / val / test, hidden test labels.

    python scripts/make_demo_dataset.py [--out Dataset] [--seed 0] [--small] [--force]

Layout written (PNG at the zoo's native 64×64):

* ``train/<class>/`` and ``val/<class>/`` for the classes ``var16 … rarxxl outlier``, with
  ``train_meta.csv`` / ``val_meta.csv`` (``image_name,label,source``);
* ``test/*.png`` — unlabeled, shuffled, named by a salted hash so a name reveals nothing;
* ``test_labels.csv`` (``image_name,label,source``): the hidden answers, read only for scoring;
* ``dataset.json``: counts, seed and the sha256 of the zoo weights that made it.

Images of the 8 variant classes are fresh samples of that variant with its sampling settings
and a uniformly random class label. The ``outlier`` class is one third natural crops of the
three *reserved* photos no model ever saw, one third natural crops of the model photos' held-out
right quarter (content like the models' training data, pixels never trained on, though the zoo's
build picked the RAR generators' checkpoints by their NLL on crops of that quarter), and one third
samples of the zoo's outlier IAR (another tokenizer and codebook). Each split crops the photos
within a strip of rows of its own (the first third of every photo's rows for train, the second
for val, the last for test), so no natural pixel is in two splits. Sources are recorded as the
variant name, ``natural_reserved``, ``natural_heldout`` or ``outlier_iar``.

Generation seeds are ``seed·100000 + batch`` (< 7 000 000): disjoint from the seed range
``inv_decoder.py`` fine-tunes on, so no scored image was ever used for fine-tuning. Each
(split, class) job has a fixed seed range and is generated with one thread, in ``--workers``
processes: the same seed and zoo give byte-identical files whatever the number of workers. The
folder is written under a temporary name and renamed when complete, so an interrupted run leaves
nothing half-made.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import demo_photos  # noqa: E402
from augmentation import to_uint8_arrays  # noqa: E402
from cli import InputError, at_least, existing_folder, output_folder  # noqa: E402
from inv_decoder import SEED_OFFSET, SHIPPED_SUBDIR  # noqa: E402
from variant_net import SHIPPED_SUBDIR as NET_SUBDIR  # noqa: E402
from models.registry import CLASS_NAMES, FAMILY_OF, VARIANT_NAMES  # noqa: E402
from models.zoo import DEMO_ZOO_DIR, load_family  # noqa: E402
from runtime import exit_with_parent, keep_freed_memory, usable_cores  # noqa: E402

SPLITS = ("train", "val", "test")
FULL_COUNTS = {"train": 300, "val": 100, "test": 100}
SMALL_COUNTS = {"train": 8, "val": 6, "test": 6}
GEN_BATCH = 50
SEEDS_PER_RUN = 100_000  # generation seeds of one --seed: seed·100 000 + batch
SEEDS = range(SEED_OFFSET // SEEDS_PER_RUN)  # the --seed values whose generation seeds stay below inv_decoder's
# What ``dataset.json`` records as ``recipe``: 2 since each split's natural outliers are cut from a
# strip of rows of each photo of its own (recipe 1 cut every split's from the whole of the same
# photos, so test crops could overlap training ones). ``submission.py --demo`` rebuilds a Dataset
# of another recipe.
DATASET_RECIPE = 2


def _first_seed(seed: int) -> int:
    """The first generation seed of ``--seed``: ``seed·100000``, below the fine-tuning range; an
    :class:`InputError` for a seed outside :data:`SEEDS`."""
    if seed not in SEEDS:
        raise InputError(f"--seed {seed}: must be in {SEEDS.start} … {SEEDS.stop - 1} (generation seeds from "
                         f"{SEED_OFFSET} on are the inverse decoders' fine-tuning data)")
    return seed * SEEDS_PER_RUN


def _batches(n: int) -> int:
    return -(-n // GEN_BATCH)


def _generate(adapter, variant: str, n: int, first_seed: int) -> np.ndarray:
    """``n`` samples in batches of ``GEN_BATCH``; batch ``j`` uses seed ``first_seed + j``."""
    chunks = []
    for j, start in enumerate(range(0, n, GEN_BATCH)):
        labels = adapter.random_labels(min(GEN_BATCH, n - start), first_seed + j)
        chunks.append(to_uint8_arrays(adapter.generate(variant, labels, first_seed + j)[0]))
    return np.concatenate(chunks) if chunks else np.zeros((0, 64, 64, 3), np.uint8)


def _thirds(n: int) -> List[int]:
    return [n // 3 + (1 if i < n % 3 else 0) for i in range(3)]


def _outliers(n: int, split_i: int, seed: int, outlier_adapter, first_seed: int) -> List[Tuple[np.ndarray, str]]:
    thirds = _thirds(n)
    strip = (split_i, len(SPLITS))  # each split crops its own rows of every photo: no pixel in two splits
    reserved, _ = demo_photos.random_crops(demo_photos.RESERVED_PHOTOS, thirds[0], seed * 10 + split_i, "all", strip=strip)
    heldout, _ = demo_photos.random_crops(demo_photos.MODEL_PHOTOS, thirds[1], seed * 10 + 5 + split_i, "val", strip=strip)
    generated = _generate(outlier_adapter, next(iter(outlier_adapter.variant_names)), thirds[2], first_seed)
    return ([(a, "natural_reserved") for a in reserved] + [(a, "natural_heldout") for a in heldout]
            + [(a, "outlier_iar") for a in generated])


def plan_jobs(seed: int, counts: Dict[str, int]) -> List[Tuple[int, str, str, int]]:
    """``(split index, split, class, first generation seed)`` per (split, class): consecutive seed
    ranges in a fixed order, so a job's images do not depend on which process makes them."""
    jobs, next_seed = [], _first_seed(seed)
    for split_i, split in enumerate(SPLITS):
        for cls in CLASS_NAMES:
            jobs.append((split_i, split, cls, next_seed))
            next_seed += _batches(counts[split] if cls in VARIANT_NAMES else _thirds(counts[split])[2])
    if next_seed - _first_seed(seed) > SEEDS_PER_RUN:  # past its range: the next --seed's images, or the fine-tuning data
        raise InputError(f"{counts} images per class need {next_seed - _first_seed(seed):,} generation batches, more than "
                         f"the {SEEDS_PER_RUN:,} seeds of one --seed (seed·{SEEDS_PER_RUN:,} + batch): ask for fewer images")
    return jobs


_ADAPTERS: Dict[str, object] = {}
_ZOO: List[Path] = []


def _init_worker(zoo: str) -> None:
    """One generation thread per process: the bytes are the same whatever the number of processes.
    The zoo is loaded by the first job (:func:`_adapter`), not here: an error in a pool's initializer
    makes the pool start new workers forever, an error in a job reaches the parent as itself."""
    exit_with_parent()
    torch.set_num_threads(1)
    keep_freed_memory()
    _ADAPTERS.clear()
    _ZOO[:] = [Path(zoo)]


def _adapter(family: str):
    """The worker's adapter of ``family`` (``VAR``, ``RAR`` or ``OUTLIER``), the zoo loaded on first use."""
    if not _ADAPTERS:
        _ADAPTERS.update({name: load_family(name, _ZOO[0]) for name in ("VAR", "RAR", "OUTLIER")})
    return _ADAPTERS[family]


def _run_job(job: Tuple[int, str, str, int, int, int]) -> List[Tuple[np.ndarray, str, str]]:
    split_i, split, cls, first_seed, n, seed = job
    if cls in VARIANT_NAMES:
        return [(a, cls, cls) for a in _generate(_adapter(FAMILY_OF[cls]), cls, n, first_seed)]
    return [(a, cls, source) for a, source in _outliers(n, split_i, seed, _adapter("OUTLIER"), first_seed)]


def zoo_digest(zoo_dir: Path) -> str:
    """sha256 of the zoo's ``SHA256SUMS`` lines of the tokenizers and generators: names the exact
    weights a demo Dataset was made with. The inverse decoders (``inv_decoders/``) and variant nets
    (``variant_nets/``) make no image, so retraining them does not outdate a Dataset."""
    sums = zoo_dir / "SHA256SUMS"
    if not sums.is_file():
        return "unknown"
    readers = (f"{SHIPPED_SUBDIR}/", f"{NET_SUBDIR}/")
    lines = [line for line in sums.read_text().splitlines() if not line.split(maxsplit=1)[-1].startswith(readers)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def demo_dataset_outdated(root: Path) -> Optional[str]:
    """Why the demo Dataset at ``root`` must be (re)built — missing, or made by other weights of the
    shipped demo zoo (an earlier build of it) — or ``None`` when it is current. Refuses to replace a
    folder that is not a demo Dataset (no ``dataset.json`` naming a zoo), a Dataset made from
    another zoo (``make_demo_dataset.py --zoo``), and a file: :class:`cli.InputError`."""
    info_path = root / "dataset.json"
    if not root.exists():
        return "missing"
    if not root.is_dir():
        raise InputError(f"{root} is a file, not a Dataset folder; pass --dataset FOLDER for the demo")
    if not info_path.is_file():
        if any(root.iterdir()):
            raise InputError(f"{root} exists but is not a demo Dataset (no dataset.json); pass --dataset NEW_FOLDER for the demo")
        return "empty"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{info_path} cannot be read ({err}); {root} is not replaced. "
                         "Pass --dataset NEW_FOLDER for the demo") from None
    if not isinstance(info, dict) or "zoo_sha256sums_digest" not in info:
        raise InputError(f"{root} is not a demo Dataset ({info_path} names no demo zoo) and is not replaced; "
                         "pass --dataset NEW_FOLDER for the demo")
    if info.get("made_from_demo_zoo") is False:  # a user's Dataset of another zoo is never replaced
        raise InputError(f"{root} is a Dataset of another zoo ({info.get('zoo')}), not the demo's, and is not replaced; "
                         "pass --dataset NEW_FOLDER for the demo")
    if info["zoo_sha256sums_digest"] != zoo_digest(DEMO_ZOO_DIR):
        return f"{info_path} names other zoo weights than {DEMO_ZOO_DIR}/SHA256SUMS"
    if info.get("recipe") != DATASET_RECIPE:
        return f"{info_path} was made by an earlier recipe ({info.get('recipe', 1)}, now {DATASET_RECIPE})"
    if not (root / "test").is_dir():
        return "no test split"
    return None


def build(out: Path, seed: int, counts: Dict[str, int], zoo_dir: Path | None = None, progress: bool = True,
          workers: int = 1) -> dict:
    """Write the Dataset to ``out`` (a link to a folder: into the folder it names, the link kept);
    ``workers`` processes generate (same bytes for any number)."""
    from tqdm.auto import tqdm

    if out.is_symlink():  # replacing the link itself would fail after the work, or drop the link
        out = out.resolve()
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; give a folder for the Dataset")
    zoo = zoo_dir or DEMO_ZOO_DIR
    jobs = [(split_i, split, cls, first_seed, counts[split], seed) for split_i, split, cls, first_seed in plan_jobs(seed, counts)]
    bar = dict(desc="generating", disable=not progress, total=len(jobs))
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (str(zoo),)) as pool:
            made = list(tqdm(pool.imap(_run_job, jobs), **bar))
    else:
        threads = torch.get_num_threads()
        _init_worker(str(zoo))
        try:
            made = [_run_job(job) for job in tqdm(jobs, **bar)]
        finally:
            torch.set_num_threads(threads)
            _ADAPTERS.clear()
    rows: Dict[str, List[Tuple[np.ndarray, str, str]]] = {s: [] for s in SPLITS}
    for job, images in zip(jobs, made):
        rows[job[1]] += images

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    seen: Dict[str, str] = {}
    salt = hashlib.sha256(f"demo-dataset-{seed}".encode()).hexdigest()
    rng = np.random.default_rng(seed)
    for split in SPLITS:
        records = []
        order = rng.permutation(len(rows[split])) if split == "test" else np.arange(len(rows[split]))
        per_class: Dict[str, int] = {}
        for rank, i in enumerate(order):
            arr, label, source = rows[split][i]
            digest = hashlib.sha256(arr.tobytes()).hexdigest()
            if digest in seen:
                raise RuntimeError(f"duplicate image in {split} ({label}) and {seen[digest]}: splits would not be disjoint")
            seen[digest] = f"{split}/{label}"
            if split == "test":
                name = hashlib.sha256(f"{salt}:{rank}".encode()).hexdigest()[:16] + ".png"
                path = tmp / "test" / name
            else:
                per_class[label] = per_class.get(label, 0) + 1
                name = f"{label}_{per_class[label] - 1:05d}.png"
                path = tmp / split / label / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path, format="PNG")
            records.append((name, label, source))
        frame = pd.DataFrame(records, columns=["image_name", "label", "source"])
        if split == "test":
            frame.sort_values("image_name").to_csv(tmp / "test_labels.csv", index=False)
        else:
            frame.to_csv(tmp / f"{split}_meta.csv", index=False)
    info = {"recipe": DATASET_RECIPE, "seed": seed, "counts_per_class": counts, "classes": list(CLASS_NAMES), "zoo": str(zoo),
            "made_from_demo_zoo": Path(zoo).resolve() == DEMO_ZOO_DIR.resolve(),
            "zoo_sha256sums_digest": zoo_digest(Path(zoo)), "images": {s: len(rows[s]) for s in SPLITS}}
    (tmp / "dataset.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return info


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=output_folder, default=ROOT / "Dataset",
                        help="Dataset folder written (default: the repository's Dataset; a link to a folder is written through)")
    parser.add_argument("--seed", type=int, default=0,
                        help="picks the generation seeds (seed·100000 + batch), the natural crops and the test order "
                             f"and names; {SEEDS.start} … {SEEDS.stop - 1} (default 0)")
    parser.add_argument("--zoo", type=existing_folder("give a zoo folder (scripts/build_demo_zoo.py writes one), or leave "
                                                      "--zoo out for the shipped demo zoo"),
                        help="zoo folder (default: the shipped demo zoo)")
    parser.add_argument("--small", action="store_true", help=f"{SMALL_COUNTS} images per class (for tests)")
    parser.add_argument("--train", type=at_least(0), help=f"images per class (default {FULL_COUNTS['train']})")
    parser.add_argument("--val", type=at_least(0), help=f"default {FULL_COUNTS['val']}")
    parser.add_argument("--test", type=at_least(0), help=f"default {FULL_COUNTS['test']}")
    parser.add_argument("--force", action="store_true", help="replace an existing folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--workers", type=at_least(0), default=0,
                        help="generating processes, one thread each (default 0: one per CPU core); any number gives the same bytes")
    args = parser.parse_args(argv)
    _first_seed(args.seed)  # a seed out of range is refused before any work
    if args.out.exists() and not args.force:
        print(f"{args.out} exists; pass --force to replace it", file=sys.stderr)
        return 1
    counts = dict(SMALL_COUNTS if args.small else FULL_COUNTS)
    for split in SPLITS:
        if getattr(args, split) is not None:
            counts[split] = getattr(args, split)
    plan_jobs(args.seed, counts)  # counts whose generation seeds would leave the seed's range are refused before any work
    start = time.perf_counter()
    info = build(args.out, args.seed, counts, args.zoo, progress=not args.no_progress, workers=args.workers or usable_cores())
    print(f"{args.out}: {info['images']} images in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    from cli import run_main

    sys.exit(run_main(main))
