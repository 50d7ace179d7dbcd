"""What each group of features is worth: the flat classifier refitted without it.

    python scripts/ablate_features.py [--train-features … --val-features …] [--test-labels Dataset/test_labels.csv]

Every feature costs extraction time, and some groups cost much more than others (the larger
variants of both families take about a third of a batch's time: ``python scripts/bench_features.py
--breakdown``). Before
trading a group for time, see what it buys: for each group below, the flat 9-class classifier of
``submission.py`` (:class:`variant_classifier.FlatClassifier`: LightGBM tuned by cross-validation
on train, outlier rejection tuned on validation) is refitted on the frames a run wrote without
that group's columns, and scored on validation — and on test when ``--test-labels`` is given (for
scoring only; nothing is chosen on it). The first row drops nothing: it reproduces the run's own
flat model. A point or two of difference is within the noise of one LightGBM fit on 900
validation images (95 % interval about ±3 points); a group matters when dropping it costs more.

Defaults read what ``python submission.py --demo`` wrote to ``submission_report/``. Prints a table
and writes it to ``--out`` (CSV).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dataset import REPORT_DIR, add_labelled_split_arguments, read_labelled_features  # noqa: E402
from variant_classifier import FlatClassifier  # noqa: E402

__all__ = ["GROUPS", "ablate"]


def _prefixed(*prefixes: str) -> Callable[[str], bool]:
    return lambda column: column.split("_", 1)[0] in prefixes


def _signals(families, names) -> Callable[[str], bool]:
    return lambda column: column.split("_", 1)[0] in families and column.split("_", 1)[1] in names


ROUND_TRIP = ("enc_loss", "enc_loss_raw", "aedr", "combined")
# group name → which columns it holds (what the extractor would skip without it is in the name)
GROUPS: Dict[str, Callable[[str], bool]] = {
    "nothing": lambda column: False,
    "larger VAR variants (var20, var24, var30)": _prefixed("var20", "var24", "var30"),
    "larger RAR variants (rarl, rarxl, rarxxl)": _prefixed("rarl", "rarxl", "rarxxl"),
    "VAR round trip (EncLoss raw and calibrated, AEDR, Combined)": _signals(("VAR",), ROUND_TRIP),
    "RAR round trip (EncLoss raw and calibrated, AEDR, Combined)": _signals(("RAR",), ROUND_TRIP),
    "Reconstruction (both families)": _signals(("VAR", "RAR"), ("reconstruction",)),
    "VAR searched QuantLoss": _signals(("VAR",), ("quant_loss_searched",)),
    "sampler and evidence likelihoods (every variant)":
        lambda column: column.split("_", 1)[0] not in ("VAR", "RAR") and any(k in column for k in ("sampling", "evidence", "support_miss")),
}


def ablate(train: pd.DataFrame, train_labels: np.ndarray, val: pd.DataFrame, val_labels: np.ndarray,
           test: Optional[pd.DataFrame] = None, test_labels: Optional[np.ndarray] = None, seed: int = 0) -> pd.DataFrame:
    """One row per group of :data:`GROUPS`: the columns left and the flat classifier's accuracy
    without the group (validation, and test when given)."""
    from tqdm.auto import tqdm

    rows = []
    for group, in_group in tqdm(GROUPS.items(), desc="ablations"):
        kept = [c for c in train.columns if not in_group(c)]
        model = FlatClassifier(seed).fit(train[kept], train_labels)
        val_proba = model.predict_proba(val[kept])
        model.tune_rejection(val_proba, val_labels)
        row = {"dropped": group, "features": len(kept),
               "val_accuracy": float(np.mean(model.predict_from_proba(val_proba).to_numpy() == val_labels))}
        if test is not None:
            row["test_accuracy"] = float(np.mean(model.predict_from_proba(model.predict_proba(test[kept])).to_numpy() == test_labels))
        rows.append(row)
    return pd.DataFrame(rows).set_index("dropped")


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_labelled_split_arguments(parser)
    parser.add_argument("--test-features", type=Path, default=REPORT_DIR / "features_test.parquet",
                        help="test feature frame, read only with --test-labels (default: %(default)s)")
    parser.add_argument("--test-labels", type=Path, help="CSV image_name,label of the test images, to score them too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/ablate_features.csv"))
    args = parser.parse_args(argv)
    train, train_labels = read_labelled_features(args.train_features, args.train_labels)
    val, val_labels = read_labelled_features(args.val_features, args.val_labels)
    test, test_labels = read_labelled_features(args.test_features, args.test_labels) if args.test_labels else (None, None)
    table = ablate(train, train_labels, val, val_labels, test, test_labels, args.seed)
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
