"""What a scoring gate would save and cost, simulated on the frames of a run that scored everything.

    python submission.py --demo --score-all-variants --cache-dir runs/cache_all --out runs/all.csv
    python scripts/simulate_scoring_gate.py --train-features runs/all_report/features_train.parquet \\
        --train-labels runs/all_report/labels_train.csv --val-features runs/all_report/features_val.parquet \\
        --val-labels runs/all_report/labels_val.csv [--per-class 20 40 80] [--min-probability 0.01 0.03 0.05]

The feature pass may skip a family's variant likelihoods for images the scoring gate
(:class:`provenance.ScoringGate`) finds unlikely to be of that family. Choosing its sample size
and threshold needs no new extraction: for every (``--per-class``, ``--min-probability``) pair this
fits the gate on the sample ``submission.py`` would use (:func:`provenance.scoring_gate_sample`),
blanks what it would leave out of the train and validation frames
(:func:`provenance.leave_out_unneeded`, as the extractor does), refits both methods on train, tunes
them on validation, and prints per pair:

* ``work``: the share of the variant likelihoods still computed over train and validation, the
  sample's counted in full (the family signals are always computed; on the demo zoo the variant
  likelihoods are about 55 % of a batch, ``python scripts/bench_features.py --breakdown``);
* ``val_lost``: validation images of a family left without that family's likelihoods;
* ``val_flat`` / ``val_two_stage`` and ``val_family_flat``: validation accuracy and family accuracy.

Test is never read: this is for choosing. Writes the table to ``--out`` (CSV).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from attribution import fit_bundle, predict  # noqa: E402
from cli import InputError, at_least  # noqa: E402
from dataset import add_labelled_split_arguments, read_labelled_features  # noqa: E402
from models.registry import FAMILIES, FAMILY_OF  # noqa: E402
from provenance import ScoringGate, family_of_labels, leave_out_unneeded, scoring_gate_sample  # noqa: E402

__all__ = ["simulate"]


def simulate(train: pd.DataFrame, train_labels: np.ndarray, val: pd.DataFrame, val_labels: np.ndarray,
             per_class: int, min_probability: float, seed: int = 0) -> dict:
    """One row of the table (see the module doc) for one sample size and threshold."""
    if any(train[[c for c in train.columns if c.split("_", 1)[0] in FAMILY_OF]].isna().any()):
        raise InputError("the training frame already misses variant features (a gated run's frames): simulate on the "
                         "frames of a run with --score-all-variants (e.g. python submission.py --demo --score-all-variants "
                         "--cache-dir runs/cache_all --report-dir runs/all_report)")
    sample = scoring_gate_sample(pd.Series(train_labels, index=train.index), per_class)
    gate = ScoringGate(seed, min_probability).fit(train.loc[sample], pd.Series(train_labels, index=train.index)[sample])
    train_needs, val_needs = gate.needs(train), gate.needs(val)
    # the sample is computed in full first, the rest as the gate says
    kept = train_needs.drop(index=sample).to_numpy().sum() + val_needs.to_numpy().sum() + len(sample) * len(FAMILIES)
    val_family = family_of_labels(val_labels)
    row = {"per_class": per_class, "min_probability": min_probability,
           "work": kept / ((len(train) + len(val)) * len(FAMILIES)),
           "val_lost": int(sum(((val_family == family) & ~val_needs[family].to_numpy()).sum() for family in FAMILIES))}
    gated_train, gated_val = leave_out_unneeded(train, train_needs), leave_out_unneeded(val, val_needs)
    with tempfile.TemporaryDirectory() as folder:
        for method in ("flat", "two-stage"):
            bundle = fit_bundle(method, gated_train, train_labels, gated_val, val_labels, Path(folder) / method, seed=seed)
            predicted = predict(bundle, gated_val).to_numpy()
            row[f"val_{method.replace('-', '_')}"] = float(np.mean(predicted == val_labels))
            if method == "flat":
                row["val_family_flat"] = float(np.mean(family_of_labels(predicted) == val_family))
    return row


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_labelled_split_arguments(parser)
    parser.add_argument("--per-class", type=at_least(1), nargs="+", default=[40], help="sample sizes (default: %(default)s)")
    parser.add_argument("--min-probability", type=float, nargs="+", default=[0.01, 0.03, 0.05],
                        help="thresholds (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the scoring gate's and the classifiers' fits (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("runs/simulate_scoring_gate.csv"),
                        help="where the table is written, as CSV (default: %(default)s)")
    args = parser.parse_args(argv)
    train, train_labels = read_labelled_features(args.train_features, args.train_labels)
    val, val_labels = read_labelled_features(args.val_features, args.val_labels)
    rows = [simulate(train, train_labels, val, val_labels, n, p, args.seed) for n in args.per_class for p in args.min_probability]
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    shown = table.copy()
    for column in [c for c in shown.columns if c.startswith("val_") and c != "val_lost"] + ["work"]:
        shown[column] = (100 * shown[column]).map("{:.2f} %".format)
    print(shown.to_string(index=False))
    print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    from cli import run_main

    sys.exit(run_main(main))
