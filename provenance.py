"""Stage one: the family gate — VAR, RAR, or neither — from the family signals.

For each family the gate thresholds one signal (lower = belongs; compared in log space). The
signal is the family's most separating one on validation (highest TPR@1%FPR, ties by AUC) among
``CANDIDATE_SIGNALS``, unless given. The threshold comes from one of three strategies:

* ``fpr`` — accept at most ``target_fpr`` of the validation images that the family did *not* make
  (natural photos, outlier IARs and the other family);
* ``balanced`` — the threshold with the best balanced accuracy (belonging vs not) on validation;
* ``train_quantile`` — the ``quantile`` of the family's own *training* scores (the threshold needs
  no negatives; validation, which every strategy needs with images of both kinds, still picks the
  signal and reports its TPR and FPR).

An image accepted by both families goes to the one whose score is lowest relative to its
threshold (``log score − log threshold``); an image accepted by neither is ``outlier``.

**Scoring gate.** Stage two's likelihoods are the expensive part of the features, and an image
needs only those of the families it might come from. :class:`ScoringGate` is the learned gate fitted
on a small sample of the training images (:func:`scoring_gate_sample`, whose features are computed
in full first): the feature extractor computes a family's variant likelihoods for an image only when
the gate gives that family a probability of at least ``min_probability``
(:data:`SCORING_MIN_PROBABILITY`), and leaves them missing (NaN) otherwise; LightGBM routes missing
values as it learned to. Both were chosen on validation only: ``scripts/simulate_scoring_gate.py``
fits the gate on the frames of a run that scored everything, blanks what it would skip and refits
(`docs/history.md` gives its table for the demo zoo).

Thresholds on one signal per family are what the paper does, and they need signals that
separate cleanly. Where they don't (the demo zoo's small tokenizers cannot be inverted exactly,
so QuantLoss does not collapse for their own images), :class:`LearnedGate` — strategy
``learned``, the default — is a LightGBM over every signal of both families (logs), trained on
the training split to answer VAR / RAR / ``outlier`` directly, with calibrated probabilities.
:func:`make_gate`, :func:`save_gate` and :func:`load_gate` treat both kinds alike.

From the command line, on the feature frames ``submission.py`` writes (fit on train, tune on val):

    python provenance.py [--strategy learned|fpr|balanced|train_quantile] [--out runs/gate]
                         [--predict submission_report/features_test.parquet --predictions families.csv]

It prints each family's validation TPR / FPR and the gate's family accuracy on validation.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import pandas as pd

from metrics import best_balanced_threshold, roc_auc, threshold_at_fpr, tpr_at_fpr
from models.registry import FAMILIES, FAMILY_OF
from variant_classifier import CalibratedLGBM, require_columns

__all__ = ["CANDIDATE_SIGNALS", "STRATEGIES", "GATE_ANSWERS", "FamilyGate", "LearnedGate", "ScoringGate", "family_of_labels",
           "family_signal_frame", "leave_out_unneeded", "make_gate", "save_gate", "load_gate", "saved_gate_path",
           "scoring_gate_sample"]

CANDIDATE_SIGNALS = ("combined", "quant_loss_searched", "quant_loss", "enc_loss")
STRATEGIES = ("learned", "fpr", "balanced", "train_quantile")
GATE_ANSWERS = FAMILIES + ("outlier",)  # what a family gate answers per image
THRESHOLD_STRATEGIES = STRATEGIES[1:]
SCORING_GATE_PER_CLASS = 40  # training images per class whose features are all computed, to fit the scoring gate on
SCORING_MIN_PROBABILITY = 0.03  # a family's variant likelihoods are computed when the gate gives it at least this


def family_of_labels(labels: Sequence[str]) -> np.ndarray:
    """``VAR`` / ``RAR`` / ``outlier`` for class labels."""
    return np.array([FAMILY_OF.get(label, "outlier") for label in labels])


def _log(values: pd.Series | np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(values, dtype=np.float64), 1e-30, None))


def _threshold(strategy: str, own_val: np.ndarray, other_val: np.ndarray, own_train: np.ndarray,
               target_fpr: float, quantile: float) -> float:
    """The log-threshold of ``strategy`` (accept: log score <= threshold)."""
    if strategy == "fpr":
        return threshold_at_fpr(other_val, target_fpr)
    if strategy == "balanced":
        return best_balanced_threshold(own_val, other_val)
    if strategy == "train_quantile":
        return float(np.quantile(own_train, quantile))
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(THRESHOLD_STRATEGIES)}")


@dataclass
class FamilyGate:
    """Per-family signal and log-threshold; JSON-serialisable."""

    strategy: str = "fpr"
    target_fpr: float = 0.01
    quantile: float = 0.99
    signals: Dict[str, str] = field(default_factory=dict)
    thresholds: Dict[str, float] = field(default_factory=dict)
    validation: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def fit(self, train: pd.DataFrame, train_labels: Sequence[str], val: pd.DataFrame, val_labels: Sequence[str],
            signals: Optional[Dict[str, str]] = None) -> "FamilyGate":
        train_fam, val_fam = family_of_labels(train_labels), family_of_labels(val_labels)
        for family in FAMILIES:
            own, other = val_fam == family, val_fam != family
            if not own.any() or not other.any():
                raise ValueError(f"a {self.strategy} threshold for {family} needs validation images of {family} and of "
                                 f"other sources (validation holds {int(own.sum())} and {int(other.sum())}); "
                                 "add them, or use the learned gate")
            if signals and family in signals:
                chosen = signals[family]
            else:
                scored = []
                for name in CANDIDATE_SIGNALS:
                    column = f"{family}_{name}"
                    # every value finite on both splits: a NaN or inf would make a threshold or a quantile so
                    if (column in val.columns and column in train.columns
                            and np.isfinite(val[column].to_numpy(dtype=np.float64)).all()
                            and np.isfinite(train[column].to_numpy(dtype=np.float64)).all()):
                        v = val[column].to_numpy()
                        scored.append((tpr_at_fpr(v[own], v[other]), roc_auc(v[own], v[other]), name))
                if not scored:
                    raise ValueError(f"no {family} signal column among {CANDIDATE_SIGNALS} in the features")
                chosen = max(scored)[2]
            column = f"{family}_{chosen}"
            own_val, other_val = _log(val.loc[own, column]), _log(val.loc[other, column])
            own_train = _log(train.loc[train_fam == family, column])
            self.signals[family] = chosen
            self.thresholds[family] = _threshold(self.strategy, own_val, other_val, own_train, self.target_fpr, self.quantile)
            t = self.thresholds[family]
            self.validation[family] = {"tpr": float(np.mean(own_val <= t)), "fpr": float(np.mean(other_val <= t))}
        return self

    def margins(self, features: pd.DataFrame) -> pd.DataFrame:
        """``log score − log threshold`` per family (negative = accepted)."""
        require_columns(features, [f"{family}_{self.signals[family]}" for family in FAMILIES])
        return pd.DataFrame({family: _log(features[f"{family}_{self.signals[family]}"]) - self.thresholds[family]
                             for family in FAMILIES}, index=features.index)

    def predict(self, features: pd.DataFrame) -> pd.Series:
        """``VAR`` / ``RAR`` / ``outlier`` per image."""
        margins = self.margins(features).fillna(np.inf)  # no signal for either family: an outlier
        best = margins.idxmin(axis=1)
        accepted = margins.min(axis=1) <= 0
        return best.where(accepted, "outlier").rename("family")

    def family_proba(self, features: pd.DataFrame) -> pd.DataFrame:
        """A threshold has no probabilities: 1 for the family :meth:`predict` answers, 0 for the others
        (columns ``VAR``, ``RAR``, ``outlier``)."""
        return _one_hot(self.predict(features))

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path | str) -> "FamilyGate":
        return cls(**json.loads(Path(path).read_text()))


def _one_hot(families: pd.Series) -> pd.DataFrame:
    return pd.DataFrame({answer: (families == answer).astype(float) for answer in GATE_ANSWERS}, index=families.index)


def family_signal_frame(features: pd.DataFrame) -> pd.DataFrame:
    """Log of every stage-one signal column of both families (``VAR_*``, ``RAR_*``)."""
    from signals import SIGNALS

    columns = [f"{family}_{name}" for family in FAMILIES for name in SIGNALS if f"{family}_{name}" in features.columns]
    if not columns:
        from cli import InputError  # a ValueError: a frame of other columns is a bad input, said in one line by the commands

        raise InputError("no family signal columns (VAR_quant_loss, RAR_enc_loss, …) in the features")
    return pd.DataFrame(_log(features[columns]), index=features.index, columns=columns)


class LearnedGate(CalibratedLGBM):
    """VAR / RAR / ``outlier`` from all family signals: tuned, calibrated LightGBM (see module doc)."""

    strategy = "learned"

    def fit(self, train: pd.DataFrame, train_labels: Sequence[str], val: pd.DataFrame, val_labels: Sequence[str]) -> "LearnedGate":
        self.fit_frame(family_signal_frame(train), family_of_labels(train_labels))
        predicted, truth = self.predict(val).to_numpy(), family_of_labels(val_labels)
        self.validation = {family: {"tpr": float(np.mean(predicted[truth == family] == family)),
                                    "fpr": float(np.mean(predicted[truth != family] == family))} for family in FAMILIES}
        self.config["validation"] = self.validation
        return self

    def predict(self, features: pd.DataFrame) -> pd.Series:
        """The likeliest answer of :meth:`family_proba` (an exact tie goes to the first of
        :data:`GATE_ANSWERS`, as the two-stage posterior's argmax breaks it)."""
        return self.family_proba(features).idxmax(axis=1).rename("family")

    def family_proba(self, features: pd.DataFrame) -> pd.DataFrame:
        """The calibrated probability of ``VAR``, ``RAR`` and ``outlier`` per image (0 for an answer
        absent from training), whose largest :meth:`predict` answers."""
        return self.proba(family_signal_frame(features)).reindex(columns=GATE_ANSWERS, fill_value=0.0)


class ScoringGate:
    """Which families' variant likelihoods an image needs (see the module doc): a calibrated
    LightGBM over every family signal, answering VAR / RAR / ``outlier`` with probabilities."""

    def __init__(self, seed: int = 0, min_probability: float = SCORING_MIN_PROBABILITY) -> None:
        self.model = CalibratedLGBM(seed)
        self.min_probability = float(min_probability)

    def fit(self, signals: pd.DataFrame, labels: Sequence[str]) -> "ScoringGate":
        """Fit on the family signals (``VAR_*``, ``RAR_*`` columns) of images with class ``labels``."""
        self.model.fit_frame(family_signal_frame(signals), family_of_labels(labels))
        return self

    def needs(self, signals: pd.DataFrame) -> pd.DataFrame:
        """Boolean frame (index of ``signals``, one column per family): compute that family's
        variant likelihoods. A family the gate never saw in training is never needed."""
        proba = self.model.proba(family_signal_frame(signals))
        return pd.DataFrame({family: (proba[family] >= self.min_probability) if family in proba.columns else False
                             for family in FAMILIES}, index=signals.index).astype(bool)


def leave_out_unneeded(features: pd.DataFrame, needs: pd.DataFrame) -> pd.DataFrame:
    """``features`` with each family's variant columns (``{variant}_*``) set to NaN for the images
    ``needs`` (from :meth:`ScoringGate.needs`) leaves that family out of."""
    features = features.copy()
    for family in needs.columns:
        columns = [c for c in features.columns if FAMILY_OF.get(c.split("_", 1)[0]) == family]
        left_out = ~needs[family].to_numpy(dtype=bool)
        if left_out.any() and columns:
            features[columns] = features[columns].astype(np.float64)
            features.loc[left_out, columns] = np.nan
    return features


def scoring_gate_sample(labels: pd.Series, per_class: int = SCORING_GATE_PER_CLASS) -> list:
    """The ids of ``per_class`` images of every class (``labels``: class label indexed by image id),
    sorted: the sample the :class:`ScoringGate` is fitted on. Within a class the images are taken in
    the order of the sha256 of their id, a fixed shuffle: the first ids by name would be the first
    source of a class whose files are named in the order of their sources (the demo Dataset's
    ``outlier_00000`` … are all natural photos of one kind, its other generator's images come last)."""
    import hashlib

    order = [hashlib.sha256(str(image_id).encode()).hexdigest() for image_id in labels.index]
    shuffled = labels.iloc[np.lexsort((np.asarray(labels.index.astype(str)), np.asarray(order)))]
    return sorted(shuffled.groupby(shuffled.to_numpy(), sort=True).head(per_class).index)


def make_gate(strategy: str, seed: int = 0) -> AnyGate:
    """A gate of ``strategy`` (one of :data:`STRATEGIES`), unfitted."""
    if strategy == "learned":
        return LearnedGate(seed)
    if strategy not in THRESHOLD_STRATEGIES:
        raise ValueError(f"unknown gate strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return FamilyGate(strategy=strategy)


AnyGate = Union[FamilyGate, LearnedGate]  # a family gate of any strategy (stage one)
_GATE_FILES = {LearnedGate: "learned_gate.joblib", FamilyGate: "gate.json"}


def saved_gate_path(folder: Path | str) -> Optional[Path]:
    """The gate file :func:`save_gate` wrote in ``folder``, or ``None``."""
    found = [Path(folder) / name for name in _GATE_FILES.values() if (Path(folder) / name).is_file()]
    return found[0] if found else None


def save_gate(gate: AnyGate, folder: Path | str) -> None:
    """``learned_gate.joblib`` (+ its JSON config) or ``gate.json`` (threshold gate) in ``folder``;
    a gate of the other kind saved there before is removed, so :func:`load_gate` finds this one."""
    folder = Path(folder)
    for kind, name in _GATE_FILES.items():
        if kind is not type(gate):
            for stale in {folder / name, (folder / name).with_suffix(".json")}:
                stale.unlink(missing_ok=True)
    gate.save(folder / _GATE_FILES[type(gate)])


def load_gate(folder: Path | str) -> Optional[AnyGate]:
    """The gate saved in ``folder`` by :func:`save_gate`; ``None`` if there is none."""
    path = saved_gate_path(folder)
    if path is None:
        return None
    return LearnedGate.load(path) if path.suffix == ".joblib" else FamilyGate.load(path)


def main(argv: Optional[list] = None) -> int:
    from cli import output_file, output_folder
    from dataset import add_labelled_split_arguments, read_feature_frame, read_labelled_features

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_labelled_split_arguments(parser)
    parser.add_argument("--strategy", default="learned", choices=STRATEGIES, help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the learned gate's fit (default 0)")
    parser.add_argument("--out", type=output_folder, help="folder to save the fitted gate in")
    parser.add_argument("--predict", type=Path, help="a feature frame to gate (e.g. the test split's)")
    parser.add_argument("--predictions", type=output_file, default=Path("families.csv"), help="CSV image_name,family (default: %(default)s)")
    args = parser.parse_args(argv)
    to_gate = read_feature_frame(args.predict) if args.predict else None  # a wrong path fails before the fit
    train, train_labels = read_labelled_features(args.train_features, args.train_labels)
    val, val_labels = read_labelled_features(args.val_features, args.val_labels)
    gate = make_gate(args.strategy, args.seed).fit(train, train_labels, val, val_labels)
    if isinstance(gate, FamilyGate):
        for family in FAMILIES:
            print(f"{family}: signal {gate.signals[family]}, log threshold {gate.thresholds[family]:.3f}")
    for family, rates in gate.validation.items():
        print(f"{family}: validation TPR {100 * rates['tpr']:.2f} %, FPR {100 * rates['fpr']:.2f} %")
    accuracy = float(np.mean(gate.predict(val).to_numpy() == family_of_labels(val_labels)))
    print(f"validation family accuracy ({args.strategy}): {100 * accuracy:.2f} % (n={len(val)})")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        save_gate(gate, args.out)
        print(f"gate → {saved_gate_path(args.out)}")
    if to_gate is not None:
        families = gate.predict(to_gate)
        from atomic import atomic_path

        with atomic_path(args.predictions) as tmp:
            families.rename_axis("image_name").reset_index().to_csv(tmp, index=False)
        print(f"{len(families)} images gated → {args.predictions}")
    return 0


if __name__ == "__main__":
    from cli import run_module

    sys.exit(run_module("provenance"))
