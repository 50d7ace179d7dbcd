"""What each group of features is worth: the flat classifier refitted without it.

    python scripts/ablate_features.py [--train-features … --val-features …] [--test-labels Dataset/test_labels.csv]

Every feature costs extraction time, and some groups cost much more than others (the larger
variants of both families take about a third of a batch's time: ``python scripts/bench_features.py
--breakdown``). Before trading a group for time, see what it buys: for each group below, the flat
9-class classifier of ``submission.py`` (:class:`variant_classifier.FlatClassifier`: LightGBM
tuned by cross-validation on train, outlier rejection tuned on validation) is refitted on the
frames a run wrote without that group's columns, and scored on validation — and on test when
``--test-labels`` is given (for scoring only; nothing is chosen on it) — and, with ``--train-cv
N``, over 3 folds of train alone in N different splits, which neither threshold tuning nor model
choice has seen. The *derived* groups (:data:`DERIVED`) cost no extraction time: they are columns
the classifier computes from the features, and a refit without them shows what they add; so does
the last row (:data:`NET_BLEND`), the classifier without the blend of its variant posteriors with the
variant nets' (:mod:`net_blend`). The first
row drops nothing: it reproduces the run's own flat model. A point or two of difference is within
the noise of one LightGBM fit on 900 validation images (on 900 images a 95 % interval is about ±2
points); a group matters when dropping it costs more.

Defaults read what ``python submission.py --demo`` wrote to ``submission_report/``. Prints a table
and writes it to ``--out`` (CSV).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Type

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dataset import REPORT_DIR, add_labelled_split_arguments, read_labelled_features  # noqa: E402
from variant_classifier import FlatClassifier  # noqa: E402
from variant_net import FEATURE_STEM as NET_STEM  # noqa: E402

__all__ = ["GROUPS", "DERIVED", "NET_BLEND", "ablate"]


def _prefixed(*prefixes: str) -> Callable[[str], bool]:
    """The likelihood columns of these variants; a variant net's column is not among them (one pass
    of the net gives every variant's, so skipping a variant's likelihoods would not drop it)."""
    return lambda column: column.split("_", 1)[0] in prefixes and not column.endswith(f"_{NET_STEM}")


def _net_of(variant_prefix: str) -> Callable[[str], bool]:
    """The variant-net columns of the variants whose names start with ``variant_prefix``."""
    return lambda column: column.startswith(variant_prefix) and column.endswith(f"_{NET_STEM}")


def _signals(families, names) -> Callable[[str], bool]:
    return lambda column: column.split("_", 1)[0] in families and column.split("_", 1)[1] in names


ROUND_TRIP = ("enc_loss", "enc_loss_raw", "combined")
# group name → which columns it holds (what the extractor would skip without it is in the name)
GROUPS: Dict[str, Callable[[str], bool]] = {
    "nothing": lambda column: False,
    "larger VAR variants (var20, var24, var30)": _prefixed("var20", "var24", "var30"),
    "larger RAR variants (rarl, rarxl, rarxxl)": _prefixed("rarl", "rarxl", "rarxxl"),
    "VAR round trip (EncLoss raw and calibrated, Combined)": _signals(("VAR",), ROUND_TRIP),
    "RAR round trip (EncLoss raw and calibrated, Combined)": _signals(("RAR",), ROUND_TRIP),
    "Reconstruction (both families)": _signals(("VAR", "RAR"), ("reconstruction",)),
    # up to extractor version 16 aedr repeated enc_loss and belonged to the round trip
    "AEDR's second reconstruction (both families)": _signals(("VAR", "RAR"), ("aedr",)),
    "VAR searched QuantLoss": _signals(("VAR",), ("quant_loss_searched",)),
    "sampler and evidence likelihoods (every variant)":
        lambda column: column.split("_", 1)[0] not in ("VAR", "RAR") and any(k in column for k in ("sampling", "evidence", "support_miss")),
    "VAR variant net (fnet_nll, with its _rel and _margin)": _net_of("var"),
    "RAR variant net (fnet_nll, with its _rel and _margin)": _net_of("rar"),
}


# group name → the suffix of the columns the classifier derives from the features
# (variant_classifier.family_feature_frame) that it is refitted without; the extractor's work is the same
DERIVED: Dict[str, str] = {
    "margins over the other variants (derived: _margin)": "_margin",
    "deviations from the family mean (derived: _rel)": "_rel",
}
# not a group of columns: the classifier refitted without blending its variant posteriors with the
# variant nets' (net_blend; every weight 0, as before classifier version 4)
NET_BLEND = "blend with the variant nets (derived: net_blend weights)"


def _flat_without(suffix: Optional[str]) -> Type[FlatClassifier]:
    """:class:`FlatClassifier`, or one that leaves out the derived columns ending in ``suffix``."""
    if suffix is None:
        return FlatClassifier

    class Reduced(FlatClassifier):
        @staticmethod
        def frame(features: pd.DataFrame) -> pd.DataFrame:
            full = FlatClassifier.frame(features)
            return full[[c for c in full.columns if not c.endswith(suffix)]]

    return Reduced


class _Unblended(FlatClassifier):
    """:class:`FlatClassifier` with every :mod:`net_blend` weight 0: the classifier's posterior alone."""

    def fit(self, features: pd.DataFrame, labels) -> "_Unblended":
        super().fit(features, labels)
        self.net_weights = {family: 0.0 for family in self.net_weights}
        return self


def _train_cv_accuracy(model_class: Type[FlatClassifier], train: pd.DataFrame, labels: np.ndarray, seed: int,
                       folds: int = 3) -> float:
    """Accuracy of ``model_class`` over stratified folds of train alone, split by ``seed`` (top
    class, no rejection)."""
    from sklearn.model_selection import StratifiedKFold

    hits = 0
    for fit_rows, held_out in StratifiedKFold(folds, shuffle=True, random_state=seed).split(train, labels):
        model = model_class(seed).fit(train.iloc[fit_rows], labels[fit_rows])
        hits += int(np.sum(model.predict_proba(train.iloc[held_out]).idxmax(axis=1).to_numpy() == labels[held_out]))
    return hits / len(labels)


def ablate(train: pd.DataFrame, train_labels: np.ndarray, val: pd.DataFrame, val_labels: np.ndarray,
           test: Optional[pd.DataFrame] = None, test_labels: Optional[np.ndarray] = None, seed: int = 0,
           only: Sequence[str] = (), train_cv_repeats: int = 0) -> pd.DataFrame:
    """One row per group of :data:`GROUPS` and :data:`DERIVED` (those whose name contains one of
    ``only``, when given): the feature columns left, the classifier's columns, and the flat
    classifier's accuracy without the group on validation, on test when given, and over 3 folds of
    train alone, split ``train_cv_repeats`` ways (seeds ``seed`` …; the mean, and each split's)."""
    from tqdm.auto import tqdm

    plan = [(group, in_group, FlatClassifier) for group, in_group in GROUPS.items()]
    plan += [(group, (lambda column: False), _flat_without(suffix)) for group, suffix in DERIVED.items()]
    plan += [(NET_BLEND, (lambda column: False), _Unblended)]
    names = [step[0] for step in plan]
    plan = [step for step in plan if not only or any(part in step[0] for part in only)]
    if not plan:
        from cli import InputError

        raise InputError(f"--only {' '.join(only)}: no group's name contains it; the groups: {', '.join(names)}")
    rows = []
    for group, in_group, model_class in tqdm(plan, desc="ablations"):
        kept = [c for c in train.columns if not in_group(c)]
        model = model_class(seed).fit(train[kept], train_labels)
        val_proba = model.predict_proba(val[kept])
        model.tune_rejection(val_proba, val_labels)
        row = {"dropped": group, "features": len(kept), "classifier_columns": len(model.columns),
               "val_accuracy": float(np.mean(model.predict_from_proba(val_proba).to_numpy() == val_labels))}
        if test is not None:
            row["test_accuracy"] = float(np.mean(model.predict_from_proba(model.predict_proba(test[kept])).to_numpy() == test_labels))
        if train_cv_repeats:
            splits = [_train_cv_accuracy(model_class, train[kept], train_labels, seed + r) for r in range(train_cv_repeats)]
            row["train_cv_accuracy"] = float(np.mean(splits))
            row["train_cv_splits"] = " ".join(f"{100 * a:.2f}" for a in splits)
        rows.append(row)
    return pd.DataFrame(rows).set_index("dropped")


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_labelled_split_arguments(parser)
    parser.add_argument("--test-features", type=Path, default=REPORT_DIR / "features_test.parquet",
                        help="test feature frame, read only with --test-labels (default: %(default)s)")
    parser.add_argument("--test-labels", type=Path, help="CSV image_name,label of the test images, to score them too")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the cross-validation and LightGBM fits; --train-cv splits use seed, seed+1, … "
                             "(default: %(default)s)")
    parser.add_argument("--only", nargs="+", default=[], metavar="TEXT",
                        help="refit only the groups whose name contains one of these (e.g. nothing margins)")
    parser.add_argument("--train-cv", type=int, default=0, metavar="REPEATS",
                        help="also score each refit by 3-fold cross-validation on train alone, over this many "
                             "different splits (three more fits per group and split; a single split moves by a point or two)")
    parser.add_argument("--out", type=Path, default=Path("runs/ablate_features.csv"),
                        help="where the table is written, as CSV (default: %(default)s)")
    args = parser.parse_args(argv)
    train, train_labels = read_labelled_features(args.train_features, args.train_labels)
    val, val_labels = read_labelled_features(args.val_features, args.val_labels)
    test, test_labels = read_labelled_features(args.test_features, args.test_labels) if args.test_labels else (None, None)
    table = ablate(train, train_labels, val, val_labels, test, test_labels, args.seed, args.only, args.train_cv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out)
    shown = table.copy()
    for column in [c for c in shown.columns if c.endswith("accuracy")]:
        shown[column] = (100 * shown[column]).map("{:.2f} %".format)
    print(shown.to_string())
    print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    from cli import run_main

    sys.exit(run_main(main))
