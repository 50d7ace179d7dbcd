"""Training and applying the attribution models (two-stage or flat) on feature frames.

Two-stage: the stage-one gate of :mod:`provenance` (learned, or thresholds) sends each image to
VAR, RAR or ``outlier``; the
gated family's :class:`variant_classifier.VariantClassifier` names the variant or rejects the
image as ``outlier`` when its calibrated top probability is too low. Flat: one 9-class
:class:`variant_classifier.FlatClassifier`. Models are fitted on train features; thresholds
(gate, rejection) are tuned on validation features. A fitted bundle is saved to and loaded from
one folder (``learned_gate.joblib`` or ``gate.json``, ``VAR.joblib``/``RAR.joblib`` or ``flat.joblib``, each
with a JSON). ``auto`` (:func:`pick_method`) fits both and keeps the one of higher validation
accuracy: which wins depends on the models, so it is measured, not assumed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import pandas as pd

from models.registry import CLASS_NAMES
from provenance import family_of_labels, load_gate, make_gate, save_gate, saved_gate_path
from variant_classifier import FlatClassifier, VariantClassifier

__all__ = ["METHODS", "METHOD_CHOICES", "fit_bundle", "load_bundle", "predict", "bundle_exists", "pick_method"]

METHODS = ("two-stage", "flat")
METHOD_CHOICES = ("auto",) + METHODS  # auto: fit both, keep the one of higher validation accuracy


def _two_stage_predict(gate, classifiers: dict, features: pd.DataFrame) -> pd.Series:
    families = gate.predict(features)
    out = pd.Series("outlier", index=features.index, dtype=object)
    for family, clf in classifiers.items():
        rows = families.index[families == family]
        if len(rows):
            out.loc[rows] = clf.predict_from_proba(clf.predict_proba(features.loc[rows])).to_numpy()
    return out


def fit_bundle(method: str, train: pd.DataFrame, train_labels: Sequence[str], val: pd.DataFrame, val_labels: Sequence[str],
               folder: Path | str, *, gate_strategy: str = "learned", seed: int = 0) -> dict:
    """Fit, tune on validation and save the models of ``method``; returns the loaded bundle."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train_labels, val_labels = np.asarray(train_labels), np.asarray(val_labels)
    if method == "flat":
        flat = FlatClassifier(seed).fit(train, train_labels)
        flat.tune_rejection(flat.predict_proba(val), val_labels)
        flat.save(folder / "flat.joblib")
        return {"method": method, "flat": flat}
    if method != "two-stage":
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    gate = make_gate(gate_strategy, seed).fit(train, train_labels, val, val_labels)
    save_gate(gate, folder)
    classifiers = {}
    val_families = family_of_labels(val_labels)
    for family in ("VAR", "RAR"):
        clf = VariantClassifier(family, seed).fit(train, train_labels)
        # the rejection threshold is tuned on what the gate actually sends to this family
        routed = (gate.predict(val) == family).to_numpy()
        if routed.any():
            clf.tune_rejection(clf.predict_proba(val.loc[routed]), val_labels[routed])
        clf.config["val_routed"] = int(routed.sum())
        clf.config["val_routed_from_family"] = int((routed & (val_families == family)).sum())
        clf.save(folder / f"{family}.joblib")
        classifiers[family] = clf
    return {"method": method, "gate": gate, "classifiers": classifiers}


def bundle_exists(method: str, folder: Path | str) -> bool:
    folder = Path(folder)
    if method == "flat":
        return (folder / "flat.joblib").is_file()
    return saved_gate_path(folder) is not None and all((folder / f"{family}.joblib").is_file() for family in ("VAR", "RAR"))


def load_bundle(method: str, folder: Path | str) -> dict:
    folder = Path(folder)
    if method == "flat":
        return {"method": method, "flat": FlatClassifier.load(folder / "flat.joblib")}
    return {"method": method, "gate": load_gate(folder),
            "classifiers": {f: VariantClassifier.load(folder / f"{f}.joblib") for f in ("VAR", "RAR")}}


def pick_method(val_accuracy: Dict[str, float]) -> str:
    """The method of highest validation accuracy; a tie goes to the one listed first in :data:`METHODS`.

    Validation also tuned both methods' thresholds, so both accuracies are optimistic; the
    comparison is still fair in kind (each method saw validation the same way), and train was
    never used to choose.
    """
    unknown = set(val_accuracy) - set(METHODS)
    if unknown or not val_accuracy:
        raise ValueError(f"expected accuracies for some of {METHODS}, got {sorted(val_accuracy)}")
    return max((m for m in METHODS if m in val_accuracy), key=lambda m: (val_accuracy[m], -METHODS.index(m)))


def predict(bundle: dict, features: pd.DataFrame) -> pd.Series:
    """One class name of :data:`CLASS_NAMES` per image."""
    if bundle["method"] == "flat":
        flat = bundle["flat"]
        labels = flat.predict_from_proba(flat.predict_proba(features))
    else:
        labels = _two_stage_predict(bundle["gate"], bundle["classifiers"], features)
    bad = sorted(set(labels) - set(CLASS_NAMES))
    if bad:
        raise RuntimeError(f"model produced unknown labels {bad}")
    return labels.rename("label")
