"""Attribute every image of a test folder to one of the 8 IAR variants or ``outlier``.

    python submission.py --test Dataset/test                 # → submission.csv
    python submission.py --demo                              # demo zoo + demo Dataset, scored

Reads the labelled ``train/`` and ``val/`` folders beside the test folder (or ``--train`` /
``--val``), computes per-image features with both families' inverse decoders (cached by image
content in ``--cache-dir``; inverse decoders are fine-tuned there first if missing; a family's
variant likelihoods only for the images a scoring gate, fitted on the full features of 40
training images per class, finds it at all likely for: ``provenance.ScoringGate``), fits what
is missing — the family gate and per-family LightGBM variant classifiers (``two-stage``) and one
9-class LightGBM (``flat``) — on train, tunes thresholds on val, keeps the method of higher
validation accuracy (``--method auto``, the default; or name one), predicts the test folder and
writes ``submission.csv`` (``image_name,label``, one row per test image, sorted, written
atomically and validated). A report folder gets validation accuracy, per-class precision and
recall and a confusion-matrix PNG (and the same on test when labels are known: ``--labels`` or
``--demo``'s hidden ``Dataset/test_labels.csv``), and ``test_probabilities.csv``: per test image its
label and the probability of each class (``attribution.class_probabilities``: the method's posterior,
tempered on validation; with test labels, ``test_confidence.csv`` bins them). Bad input loses no
test row and stops nothing: an undecodable test image gets ``outlier``, an undecodable training or validation
image is left out, an image of another size than the models' is resized (which weakens its
signals), one that is not RGB is converted, and entries of the test folder that are not visible image files directly in it
(subfolders, other files, hidden entries such as ``._x.png``) get no row — each named in a
warning and listed in the report's ``summary.json``. Same inputs → byte-identical
``submission.csv`` on the CPU, and on a GPU from cached features; features computed again on a GPU
may differ (VAR's token search backpropagates through bicubic upsampling, whose CUDA gradient is
summed with atomic adds in no fixed order), and so, rarely, may a label.

The feature pass can be spread over many jobs (``python scripts/slurm_submit.py`` does it on a
Slurm cluster): ``--stage prepare`` checks the inputs, builds the demo Dataset, fine-tunes
missing inverse decoders and trains missing variant nets once; ``--stage features --shard K/N`` caches the features of part K of
N of the images (jobs side by side, one shared ``--cache-dir``); the plain run afterwards finds
them all cached.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Tuple

import pandas as pd

from atomic import atomic_path
from cli import CACHE_DIR, INV_DECODER_DIR, INV_DECODER_MAX_IMAGES, VARIANT_NET_DIR, InputError

if TYPE_CHECKING:  # imported where used: --help and the input checks load no model code
    from feature_extractor import FeatureExtractor
    from provenance import ScoringGate

ROOT = Path(__file__).resolve().parent

__all__ = ["main", "build_parser", "write_submission", "validate_submission", "default_workers", "STAGES"]

STAGES = ("all", "prepare", "features")


def write_submission(labels: pd.Series, path: Path, expected_names: Optional[List[str]] = None) -> None:
    """``image_name,label`` sorted by name, written to a temporary file, validated there (when
    ``expected_names`` is given) and only then renamed into place: a failed check leaves the
    previous file as it was. A name holding a line break (legal on POSIX) is quoted."""
    from dataset import csv_quoting

    frame = pd.DataFrame({"image_name": labels.index.astype(str), "label": labels.to_numpy()}).sort_values("image_name")
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n", quoting=csv_quoting(frame["image_name"]))
        if expected_names is not None:
            validate_submission(tmp, expected_names, shown_as=path)


def validate_submission(path: Path, expected_names: List[str], shown_as: Optional[Path] = None) -> None:
    """Raise ``RuntimeError`` unless ``path`` has the columns ``image_name,label``, one row per
    name of ``expected_names`` and no other row (``shown_as``: the name used in the message)."""
    from dataset import read_label_csv

    shown = shown_as or path
    frame = read_label_csv(path, unique=False)  # its own check below says which file failed
    if list(frame.columns[:2]) != ["image_name", "label"]:
        raise RuntimeError(f"{shown}: columns must be image_name,label")
    if frame["image_name"].duplicated().any():
        raise RuntimeError(f"{shown}: duplicated image names")
    missing, extra = set(expected_names) - set(frame["image_name"]), set(frame["image_name"]) - set(expected_names)
    if missing or extra:
        raise RuntimeError(f"{shown}: {len(missing)} test images without a row, {len(extra)} rows for unknown images")


def _frame_digest(*parts) -> str:
    """sha256 of ``parts``: a frame by its column names, index and values, anything else by its repr."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, pd.DataFrame):
            digest.update(repr(list(part.columns)).encode())
            digest.update(pd.util.hash_pandas_object(part, index=True).to_numpy().tobytes())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()


def default_workers(weights_dir: Optional[Path], device: str) -> int:
    """One single-threaded feature process per usable core for a (small) zoo on the CPU; else 1.

    Official checkpoints are loaded once per process, so they get one process (memory), as does a GPU.
    """
    from runtime import usable_cores
    from models.zoo import DEMO_ZOO_DIR, is_zoo_dir

    if device != "cpu" or not is_zoo_dir(Path(weights_dir) if weights_dir is not None else DEMO_ZOO_DIR):
        return 1
    return max(1, usable_cores())


def _bundle(method: str, args: argparse.Namespace, weights_digest: str, train: pd.DataFrame, train_meta: pd.DataFrame,
            val: pd.DataFrame, val_meta: pd.DataFrame, inputs: Optional[Tuple[pd.DataFrame, pd.DataFrame]] = None,
            stage_sizes: Optional[dict] = None) -> Tuple[dict, Path]:
    """The fitted models of ``method``, loaded from the cache when the same features, labels,
    settings and model code (:func:`attribution.model_version`) made them, else
    fitted on train, tuned on val and saved there. ``inputs``: the method's own train and val
    frames when they are not the feature frames (``prada``'s per-token frames, which the same
    images, weights and extractor version determine as they do the features)."""
    from attribution import bundle_exists, fit_bundle, load_bundle, model_version

    gate_strategy = args.gate_strategy if method == "two-stage" else None  # flat has no gate: one bundle for any strategy
    key = _frame_digest(method, model_version(method), args.seed, gate_strategy, weights_digest, train,
                        list(train_meta["label"]), val, list(val_meta["label"]))[:20]
    model_dir = args.cache_dir / "models" / f"{method}-{key}"
    if bundle_exists(method, model_dir) and not args.retrain:
        return load_bundle(method, model_dir), model_dir
    print(f"training {method} models → {model_dir}", file=sys.stderr)
    fit_train, fit_val = inputs or (train, val)
    return fit_bundle(method, fit_train, train_meta["label"], fit_val, val_meta["label"], model_dir,
                      gate_strategy=args.gate_strategy, seed=args.seed, stage_sizes=stage_sizes), model_dir


def _by_split(frame: pd.DataFrame, train_meta: pd.DataFrame, val_meta: pd.DataFrame,
              test_paths: List[Path]) -> Tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(train, val, test)`` of a frame with one row per input image, in that order, indexed by image id."""
    n_train, n_val = len(train_meta), len(val_meta)
    return (frame.iloc[:n_train].set_axis(pd.Index(train_meta.index, name="image_id")),
            frame.iloc[n_train:n_train + n_val].set_axis(pd.Index(val_meta.index, name="image_id")),
            frame.iloc[n_train + n_val:].set_axis(pd.Index([p.name for p in test_paths], name="image_id")))


def _scoring_gate_sample(extractor: FeatureExtractor, train_meta: pd.DataFrame, inspected: pd.DataFrame) -> Tuple[pd.DataFrame, pd.Series]:
    """The full features of the training images the :class:`provenance.ScoringGate` is fitted on,
    and their labels (computed first; they are part of the training features anyway)."""
    from provenance import scoring_gate_sample

    sample = train_meta.loc[scoring_gate_sample(train_meta["label"])]
    print(f"scoring gate: all features of {len(sample)} training images first", file=sys.stderr)
    paths = list(sample["path"])
    return extractor.features(paths, keys=list(inspected.loc[paths, "sha256"])), sample["label"]


def _percent(value: float) -> str:
    """``' 70.22 %'``; ``'   n/a  '`` where the rate is undefined (e.g. outlier recall without outliers)."""
    return "   n/a  " if math.isnan(value) else f"{100 * value:6.2f} %"


def _features_of_shard(extractor: FeatureExtractor, paths: List[str], keys: List[str], shard: Tuple[int, int],
                       gate: Optional[ScoringGate] = None) -> int:
    """``--stage features``: compute and cache the features of part ``K`` of ``N`` of the images
    (what the scoring ``gate`` needs of them, when given)."""
    from feature_store import shard_keys

    index, count = shard
    mine = set(shard_keys(keys, index, count))
    chosen = [(path, key) for path, key in zip(paths, keys) if key in mine]
    extractor.features([path for path, _ in chosen], keys=[key for _, key in chosen], variant_gate=gate)
    print(f"shard {index}/{count}: the features of {len(mine)} of {len(set(keys))} images are in {extractor.store.folder}")
    return 0


def run(args: argparse.Namespace) -> int:
    from attribution import METHODS, TOKEN_METHODS, class_probabilities, net_blend_weights, pick_method, predict
    from cli import warn
    from feature_extractor import FeatureExtractor
    from models.registry import CLASS_NAMES
    from provenance import ScoringGate
    from run_inputs import converted_images, gather_inputs, input_folders, read_test_labels, resized_images
    from run_record import SUMMARY_GUIDE, run_record, write_summary
    from scoring import (CONFIDENCE_FILE, CONFIDENCE_PNG, PROBABILITIES_FILE, interval_text, report_files,
                         summary as score_summary, write_probabilities, write_report)

    started = time.perf_counter()
    dataset_root = args.dataset
    test_dir, train_dir, val_dir = input_folders(args.test, args.train, args.val, args.dataset)
    if args.demo:
        sys.path.insert(0, str(ROOT / "scripts"))
        from make_demo_dataset import demo_dataset_outdated

        why = demo_dataset_outdated(dataset_root)
        if why and args.stage == "features":
            raise InputError(f"the demo Dataset in {dataset_root} is {why}: build it once first (--stage prepare), "
                             "not in every job of an array")
        if why:
            print(f"building the demo Dataset in {dataset_root} ({why}) …", file=sys.stderr)
            subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_dataset.py"), "--out", str(dataset_root), "--force"],
                           check=True)
    inputs = gather_inputs(test_dir, train_dir, val_dir)
    train_meta, val_meta, good, bad = inputs.train, inputs.val, inputs.test_readable, inputs.test_unreadable
    truth = read_test_labels(args.labels, inputs.test_paths) if args.labels else None
    absent = [c for c in CLASS_NAMES if c not in set(train_meta["label"])]
    if absent:
        warn(f"{len(absent)} of the {len(CLASS_NAMES)} classes have no training image and are never predicted", absent, show=9)
    extractor = FeatureExtractor(weights_dir=args.weights_dir, inv_root=args.cache_dir / INV_DECODER_DIR,
                                 net_root=args.cache_dir / VARIANT_NET_DIR,
                                 cache_dir=args.cache_dir / "features", use_cache=not args.no_cache, rebuild=args.rebuild,
                                 batch_size=args.batch_size, device=args.device,
                                 workers=args.workers or default_workers(args.weights_dir, args.device),
                                 inv_config={"images": args.inv_decoder_images, "epochs": args.inv_decoder_epochs},
                                 refine_steps=args.refine_steps, fine_tune_missing=args.stage != "features")
    notes = dict(inputs.notes, resized_images=resized_images(inputs.inspected, extractor.image_size),
                 converted_images=converted_images(inputs.inspected))
    paths = list(train_meta["path"]) + list(val_meta["path"]) + [str(p) for p in good]
    keys = list(inputs.inspected.loc[paths, "sha256"])
    gated = not (args.score_all_variants or args.method in TOKEN_METHODS)
    sample = _scoring_gate_sample(extractor, train_meta, inputs.inspected) if gated else None
    if args.stage == "prepare":  # the gate's sample is computed once, before the jobs of an array each fit the gate on it
        print(f"prepared: {len(paths)} images checked, inverse decoders and variant nets in place; features go to {extractor.store.folder}")
        return 0
    gate = ScoringGate(args.seed).fit(*sample) if gated else None
    if args.stage == "features":
        return _features_of_shard(extractor, paths, keys, args.shard or (0, 1), gate)
    print(f"features: {len(train_meta)} train, {len(val_meta)} val, {len(good)} test images", file=sys.stderr)
    # one pass over all three splits: one progress bar, one pool of workers
    frame = extractor.features(paths, keys=keys, variant_gate=gate)
    if gate is not None:
        notes["variant_features_computed"] = {family: int(frame[f"{adapter.variant_names[0]}_nll_marginal"].notna().sum())
                                              for family, adapter in extractor.adapters.items()}
        print("scoring gate: variant features of " + ", ".join(f"{family} for {n}" for family, n in
                                                               notes["variant_features_computed"].items())
              + f" of {len(paths)} images", file=sys.stderr)
    train, val, test = _by_split(frame, train_meta, val_meta, good)
    inputs_of = {}  # method → its own (train, val, test) frames where they are not the features
    stage_sizes = None
    if args.method in TOKEN_METHODS:
        from flat_prada import stage_sizes_of

        inputs_of[args.method] = _by_split(extractor.token_log_likelihoods(paths, keys=keys), train_meta, val_meta, good)
        stage_sizes = stage_sizes_of(inputs_of[args.method][0], extractor.adapters["VAR"].patch_nums)

    bundles, model_dirs, val_predictions = {}, {}, {}
    for method in (METHODS if args.method == "auto" else (args.method,)):
        own = inputs_of.get(method)
        bundles[method], model_dirs[method] = _bundle(method, args, extractor.weights_digest, train, train_meta, val, val_meta,
                                                      own[:2] if own else None, stage_sizes)
        val_predictions[method] = predict(bundles[method], own[1] if own else val)
    val_accuracy = {m: score_summary(val_meta["label"], p)["accuracy"] for m, p in val_predictions.items()}
    method = pick_method(val_accuracy) if args.method == "auto" else args.method
    if args.method == "auto":
        print("validation accuracy: " + ", ".join(f"{m} {100 * a:.2f} %" for m, a in val_accuracy.items()) + f" → {method}",
              file=sys.stderr)
    bundle = bundles[method]

    test_inputs = inputs_of[method][2] if method in inputs_of else test
    labels = predict(bundle, test_inputs) if len(test_inputs) else pd.Series(dtype=object, name="label")
    labels = pd.concat([labels, pd.Series("outlier", index=[p.name for p in bad], name="label")])
    write_submission(labels, args.out, [p.name for p in inputs.test_paths])

    report_dir = args.report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    # summary.json goes first and comes back last: a folder without it is a killed run's, half rewritten
    for stale in ["summary.json", *report_files("test"), PROBABILITIES_FILE, CONFIDENCE_FILE, CONFIDENCE_PNG,
                  *(f"tokens_{split}.parquet" for split in ("train", "val", "test"))]:
        (report_dir / stale).unlink(missing_ok=True)  # an earlier run's must not pass for this run's
    frames = {f"features_{split}.parquet": frame for split, frame in (("train", train), ("val", val), ("test", test))}
    frames.update({f"tokens_{split}.parquet": frame  # flat_prada.py's command-line input
                   for split, frame in zip(("train", "val", "test"), inputs_of.get(method, ()))})
    for name, frame in frames.items():
        with atomic_path(report_dir / name) as tmp:
            frame.to_parquet(tmp)
    for split, meta in (("train", train_meta), ("val", val_meta)):
        with atomic_path(report_dir / f"labels_{split}.csv") as tmp:
            pd.DataFrame({"image_name": meta.index, "label": meta["label"].to_numpy()}).to_csv(tmp, index=False)
    val_stats = write_report(report_dir, "val", val_meta["label"], val_predictions[method], f"Validation ({method})")
    summary = {"method": method, "requested_method": args.method, "validation_accuracy_by_method": val_accuracy,
               "produced_by": run_record(args.arguments, method, model_dirs[method], args.weights_dir, extractor.weights_digest,
                                         args.labels if truth is not None else None, args.device),
               "about": SUMMARY_GUIDE, "models": str(model_dirs[method]), "net_blend_weights": net_blend_weights(bundle),
               "probability_temperature": bundle.get("temperature"), "validation": val_stats, **notes}
    if truth is not None and len(truth):
        summary["test"] = write_report(report_dir, "test", truth, labels.reindex(truth.index), f"Test ({method})")
    if method not in TOKEN_METHODS:  # prada's scores are not probabilities
        probabilities = class_probabilities(bundle, test_inputs) if len(test_inputs) else pd.DataFrame(columns=list(CLASS_NAMES), dtype=float)
        summary["test_confidence"] = write_probabilities(report_dir, labels, probabilities, truth)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write_summary(report_dir / "summary.json", summary)
    print(f"wrote {args.out} ({len(labels)} rows); report in {report_dir}")
    for split in ("validation", "test"):
        if split in summary:
            s = summary[split]
            print(f"{split:10s} accuracy {_percent(s['accuracy'])} (95 % interval {interval_text(s['accuracy_ci95'])})   "
                  f"family accuracy {_percent(s['family_accuracy'])}   outlier recall {_percent(s['outlier_recall'])}   (n={s['n']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from attribution import METHOD_CHOICES
    from cli import at_least, output_file, output_folder, shard_spec
    from provenance import STRATEGIES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)  # as spelled: slurm_submit.py must see every --rebuild
    parser.add_argument("--test", type=Path, help="folder of test images")
    parser.add_argument("--train", type=Path, help="labelled train folder (default: beside --test)")
    parser.add_argument("--val", type=Path, help="labelled validation folder (default: beside --test)")
    parser.add_argument("--out", type=output_file, default=Path("submission.csv"), help="the submission CSV (default submission.csv)")
    parser.add_argument("--report-dir", type=output_folder,
                        help="default: <out>_report/. It gets summary.json (the figures, what produced them), val.md, "
                             "val_per_class.csv, val_confusion.csv/.png, test_probabilities.csv, with test labels the same "
                             "test_* files and test_confidence.csv/.png, and features_{train,val,test}.parquet with "
                             "labels_{train,val}.csv (feature_plotter.py's inputs; prada adds tokens_*.parquet); a "
                             "rerun removes an earlier run's test files it does not rewrite")
    parser.add_argument("--labels", type=Path, help="CSV image_name,label of the test images, to score the submission")
    parser.add_argument("--weights-dir", type=Path, help="official checkpoints or a zoo folder (default: the demo zoo)")
    parser.add_argument("--cache-dir", type=output_folder, default=CACHE_DIR,
                        help=f"features, inverse decoders ({INV_DECODER_DIR}/), variant nets ({VARIANT_NET_DIR}/), models "
                             f"(default {CACHE_DIR})")
    parser.add_argument("--method", choices=list(METHOD_CHOICES), default="auto",
                        help="two-stage: family gate, then a variant classifier per family; flat: one 9-class "
                             "LightGBM; auto (default): fit both, keep the one of higher validation accuracy; prada: "
                             "PRADA's calibrated probability-ratio score per variant, one step (flat_prada.py)")
    parser.add_argument("--gate-strategy", choices=list(STRATEGIES), default="learned",
                        help="stage-one gate: learned (LightGBM over all family signals, default) or a threshold on one "
                             "signal per family at a fixed validation FPR (fpr), best balanced accuracy (balanced) or a "
                             "quantile of the family's training scores (train_quantile)")
    store = parser.add_mutually_exclusive_group()  # --rebuild writes the store that --no-cache leaves alone
    store.add_argument("--no-cache", action="store_true", help="do not read or write cached features")
    store.add_argument("--rebuild", action="store_true", help="recompute and overwrite cached features")
    parser.add_argument("--retrain", action="store_true", help="refit the models even if a matching bundle exists")
    parser.add_argument("--demo", action="store_true", help="run on the demo Dataset (built if missing) and score the test split")
    parser.add_argument("--dataset", type=Path, default=Path("Dataset"), help="Dataset root for --demo")
    # at most: else a traceback once the models are loaded (the generation seeds of one fine-tuning seed)
    parser.add_argument("--inv-decoder-images", type=at_least(1, at_most=INV_DECODER_MAX_IMAGES), default=1536,
                        help="fresh generations per family to fine-tune a missing inverse decoder on, at most "
                             f"{INV_DECODER_MAX_IMAGES:,} (default 1536; the demo zoo ships its own)")
    parser.add_argument("--inv-decoder-epochs", type=at_least(1), default=6, help="epochs of that fine-tuning (default 6)")
    parser.add_argument("--batch-size", type=at_least(1), default=32, help="images per feature batch (default 32)")
    parser.add_argument("--workers", type=at_least(0), default=0,
                        help="feature processes, one thread each; 0 (default): one per CPU core for a zoo on the CPU "
                             "(faster than one process with that many threads), 1 for official weights or a GPU "
                             "(every process loads its own models onto --device; to use several GPUs, run shards, one "
                             "GPU each: scripts/slurm_submit.py)")
    parser.add_argument("--score-all-variants", action="store_true",
                        help="compute every variant's likelihood features for every image; by default a scoring gate, "
                             "fitted on the full features of 40 training images per class, leaves out a family's "
                             "when the image is unlikely to be of it (about a fifth less feature time; --method prada "
                             "always scores all)")
    parser.add_argument("--refine-steps", type=at_least(0), default=0,
                        help="latent-refinement steps before RAR's tokens are read for the variant features "
                             "(default 0: off; 25 is a good trade-off, at extra cost per image)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scoring gate and the classifiers' fits (default 0)")
    parser.add_argument("--device", default="cpu",
                        help="torch device of the models (feature pass, fine-tuning of missing inverse decoders and "
                             "variant nets): cpu (default), cuda or cuda:N (checked at start: cuda needs a CUDA build of torch)")
    parser.add_argument("--stage", choices=STAGES, default="all",
                        help="all (default): the whole job; prepare: check the inputs, build the demo Dataset if needed, "
                             "fine-tune missing inverse decoders, train missing variant nets and compute the scoring gate's sample, then stop; features: compute and cache the "
                             "features of one --shard, then stop (jobs of an array, see scripts/slurm_submit.py)")
    parser.add_argument("--shard", type=shard_spec, metavar="K/N",
                        help="with --stage features: part K (from 0) of N of the images, split by content hash")
    return parser


def main(argv: Optional[list] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.arguments = list(sys.argv[1:] if argv is None else argv)  # as given, for the report's produced_by
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; give a file name, e.g. {args.out / 'submission.csv'}")
    if args.shard is not None and args.stage != "features":
        parser.error("--shard goes with --stage features")
    if args.method == "prada" and args.no_cache:
        parser.error("--method prada reads the per-token log-likelihoods from the feature cache: leave out --no-cache")
    if args.stage == "features" and (args.no_cache or args.rebuild):
        parser.error("--stage features fills the feature cache: --no-cache would throw its work away and --rebuild "
                     "would delete what the other shards wrote (rebuild once, with --stage prepare)")
    from run_inputs import check_before_work, check_run_outputs, input_folders
    from runtime import keep_freed_memory, use_usable_cores

    check_before_work(args.test, args.demo, args.device, args.weights_dir)
    args.report_dir, args.labels = check_run_outputs(args.out, args.report_dir, args.labels, args.demo,
                                                     input_folders(args.test, args.train, args.val, args.dataset), args.dataset)
    keep_freed_memory()  # allocator tuning for this process; worker processes apply it themselves
    use_usable_cores()  # inside a Slurm job: its allocation, not the whole node
    return run(args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from cli import run_module

    sys.exit(run_module("submission"))
