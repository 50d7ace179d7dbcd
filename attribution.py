"""Training and applying the attribution models (two-stage or flat) on feature frames.

Two-stage: the stage-one gate of :mod:`provenance` (learned, or thresholds) sends each image to
VAR, RAR or ``outlier``; the
gated family's :class:`variant_classifier.VariantClassifier` names the variant or rejects the
image as ``outlier`` when its calibrated top probability is too low. Flat: one 9-class
:class:`variant_classifier.FlatClassifier`. Models are fitted on train features; thresholds
(gate, rejection) are tuned on validation features. A fitted bundle is saved to and loaded from
one folder: ``learned_gate.joblib`` or ``gate.json``, ``VAR.joblib``/``RAR.joblib`` or
``flat.joblib``, each with a JSON, and ``bundle.json`` naming what it holds. The folder appears
whole or not at all: the models are saved into a staging folder beside it, which is renamed into
place last, so a run killed while fitting or saving leaves no half-written bundle for the next
run to load (it fits again). Classes absent from the training data are never predicted: a
family without training images gets no variant classifier, and a family with one variant always
names it. ``auto`` (:func:`pick_method`) fits both methods and keeps the one of higher
validation accuracy: which wins depends on the models, so it is measured, not assumed.
Both also fit one temperature on validation for the class probabilities they report
(:func:`class_probabilities`, :mod:`calibration`), kept in ``bundle.json``; it changes no answer.
A third method, ``prada`` (:mod:`flat_prada`), is fitted only when asked for by name: it reads the
per-token log-likelihood frames instead of the feature frames, and tunes nothing on validation.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from calibration import fit_temperature, temper
from models.registry import CLASS_NAMES
from provenance import AnyGate, family_of_labels, load_gate, make_gate, save_gate
from variant_classifier import FlatClassifier, VariantClassifier

__all__ = ["METHODS", "ALL_METHODS", "METHOD_CHOICES", "TOKEN_METHODS", "fit_bundle", "load_bundle", "predict", "class_probabilities",
           "bundle_exists", "pick_method", "model_version", "net_blend_weights"]

METHODS = ("two-stage", "flat")  # what auto chooses between
ALL_METHODS = METHODS + ("prada",)
TOKEN_METHODS = ("prada",)  # methods that read per-token log-likelihood frames, not feature frames
METHOD_CHOICES = ("auto",) + ALL_METHODS  # auto: fit both METHODS, keep the one of higher validation accuracy
MANIFEST = "bundle.json"  # what a bundle folder holds; written last


def _two_stage_predict(gate: AnyGate, classifiers: Dict[str, VariantClassifier], features: pd.DataFrame) -> pd.Series:
    families = gate.predict(features)
    out = pd.Series("outlier", index=features.index, dtype=object)
    for family, clf in classifiers.items():
        rows = families.index[families == family]
        if len(rows):
            out.loc[rows] = clf.predict_from_proba(clf.predict_proba(features.loc[rows])).to_numpy()
    return out


def fit_bundle(method: str, train: pd.DataFrame, train_labels: Sequence[str], val: pd.DataFrame, val_labels: Sequence[str],
               folder: Path | str, *, gate_strategy: str = "learned", seed: int = 0,
               stage_sizes: Optional[Dict[str, Sequence[int]]] = None) -> dict:
    """Fit, tune on validation and save the models of ``method`` in ``folder`` (which appears only
    once every file is written); returns the bundle. ``prada`` takes per-token frames and the
    scales of each variant's tokens (``stage_sizes``)."""
    if method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(ALL_METHODS)}")
    if method == "prada" and not stage_sizes:
        raise ValueError("prada needs the scales of each variant's tokens (stage_sizes)")
    folder = Path(folder)
    _remove_abandoned_staging(folder)
    staging = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    staging.mkdir(parents=True)
    train_labels, val_labels = np.asarray(train_labels), np.asarray(val_labels)
    if method == "flat":
        bundle = _fit_flat(train, train_labels, val, val_labels, staging, seed)
    elif method == "prada":
        from flat_prada import PradaClassifier  # torch: imported only for this method

        prada = PradaClassifier(stage_sizes, seed).fit(train, train_labels)
        prada.save(staging / "prada.joblib")
        bundle = {"method": "prada", "prada": prada}
    else:
        bundle = _fit_two_stage(train, train_labels, val, val_labels, staging, gate_strategy, seed)
    if method != "prada":  # its scores are not probabilities
        parts = _posterior_parts(bundle, val)
        bundle["temperature"] = fit_temperature(lambda t: _combined(parts, t), val_labels)
    contents = {"method": method, "variant_classifiers": sorted(bundle.get("classifiers", {})),
                "temperature": bundle.get("temperature")}
    (staging / MANIFEST).write_text(json.dumps(contents, indent=2))
    _publish(staging, folder)
    return bundle


def _remove_abandoned_staging(folder: Path) -> None:
    """Delete the staging folders of ``folder`` whose process is gone (killed mid-fit), and this
    process's own; another live process's staging folder is left alone."""
    for staging in folder.parent.glob(f"{folder.name}.partial-*"):
        pid = staging.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not _process_alive(int(pid))):
            shutil.rmtree(staging, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _publish(staging: Path, folder: Path) -> None:
    """Move a fully written bundle folder into place. An older one of the same key is first renamed
    aside (a staging name of this process, which :func:`_remove_abandoned_staging` clears if a kill
    leaves it) and deleted once the new one is in place, so ``folder`` is never a half-deleted bundle."""
    old = folder.with_name(f"{folder.name}.partial-old-{os.getpid()}")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(folder, old)
        except FileNotFoundError:  # another process replacing the same bundle moved it meanwhile
            pass
    try:
        os.rename(staging, folder)
    except OSError:  # another process published the same bundle (same key: same inputs) meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def _fit_flat(train: pd.DataFrame, train_labels: np.ndarray, val: pd.DataFrame, val_labels: np.ndarray, folder: Path,
              seed: int) -> dict:
    flat = FlatClassifier(seed).fit(train, train_labels)
    flat.tune_rejection(flat.predict_proba(val), val_labels)
    flat.save(folder / "flat.joblib")
    return {"method": "flat", "flat": flat}


def _fit_two_stage(train: pd.DataFrame, train_labels: np.ndarray, val: pd.DataFrame, val_labels: np.ndarray, folder: Path,
                   gate_strategy: str, seed: int) -> dict:
    gate = make_gate(gate_strategy, seed).fit(train, train_labels, val, val_labels)
    save_gate(gate, folder)
    classifiers = {}
    val_families = family_of_labels(val_labels)
    train_families = family_of_labels(train_labels)
    for family in ("VAR", "RAR"):
        if not (train_families == family).any():
            continue  # no training image of this family: the gate never routes to it
        clf = VariantClassifier(family, seed).fit(train, train_labels)
        # the rejection threshold is tuned on what the gate actually sends to this family
        routed = (gate.predict(val) == family).to_numpy()
        if routed.any():
            clf.tune_rejection(clf.predict_proba(val.loc[routed]), val_labels[routed])
        clf.config["val_routed"] = int(routed.sum())
        clf.config["val_routed_from_family"] = int((routed & (val_families == family)).sum())
        clf.save(folder / f"{family}.joblib")
        classifiers[family] = clf
    return {"method": "two-stage", "gate": gate, "classifiers": classifiers}


def bundle_exists(method: str, folder: Path | str) -> bool:
    """Whether ``folder`` holds a finished bundle of ``method`` (its manifest is written last)."""
    manifest = Path(folder) / MANIFEST
    return manifest.is_file() and json.loads(manifest.read_text()).get("method") == method


def load_bundle(method: str, folder: Path | str) -> dict:
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    if method == "flat":
        return {"method": method, "flat": FlatClassifier.load(folder / "flat.joblib"), "temperature": manifest.get("temperature", 1.0)}
    if method == "prada":
        from flat_prada import PradaClassifier

        return {"method": method, "prada": PradaClassifier.load(folder / "prada.joblib")}
    return {"method": method, "gate": load_gate(folder), "temperature": manifest.get("temperature", 1.0),
            "classifiers": {f: VariantClassifier.load(folder / f"{f}.joblib") for f in manifest["variant_classifiers"]}}


# The modules whose code fits each kind of method's models (and the libraries behind them): any
# edit to one of them, or another library version, refits instead of loading a stale bundle.
# signals (its SIGNALS are the gates' columns) and models.registry (the classes) are read, not imported.
_FITTING_MODULES = {"frame": ("attribution", "variant_classifier", "provenance", "net_blend", "metrics", "calibration", "runtime",
                              "signals", "models.registry"),
                    "prada": ("attribution", "flat_prada", "models.registry")}
_FITTING_LIBRARIES = {"frame": ("lightgbm", "sklearn", "numpy", "pandas"), "prada": ("torch", "numpy", "pandas")}


def _code_digest(kind: str) -> str:
    import hashlib
    import importlib
    import importlib.util

    digest = hashlib.sha256()
    for name in _FITTING_LIBRARIES[kind]:
        digest.update(f"{name}=={importlib.import_module(name).__version__};".encode())
    for name in _FITTING_MODULES[kind]:
        digest.update(Path(importlib.util.find_spec(name).origin).read_bytes())
    return digest.hexdigest()[:16]


def model_version(method: str) -> str:
    """The version of the code that fits ``method``'s models, part of a cached bundle's key: the
    classifiers' (:data:`variant_classifier.CLASSIFIER_VERSION`) for the feature-frame methods,
    PRADA's own (:data:`flat_prada.PRADA_VERSION`) for ``prada``, so a change to one refits only
    the methods it touches; with a digest of the fitting modules' source and the libraries'
    versions, so an edit nobody marked with a new version refits as well."""
    if method == "prada":
        from flat_prada import PRADA_VERSION

        return f"prada-{PRADA_VERSION}-{_code_digest('prada')}"
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {ALL_METHODS}")
    from variant_classifier import CLASSIFIER_VERSION

    return f"{CLASSIFIER_VERSION}-{_code_digest('frame')}"


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


def net_blend_weights(bundle: dict) -> Dict[str, float]:
    """Per family, the weight of its variant net in the bundle's variant posterior (:mod:`net_blend`;
    chosen on train when the classifiers were fitted); empty for ``prada``, which blends nothing."""
    if bundle["method"] == "flat":
        return dict(bundle["flat"].net_weights)
    if bundle["method"] == "two-stage":
        return {family: weight for clf in bundle["classifiers"].values() for family, weight in clf.net_weights.items()}
    return {}


def class_probabilities(bundle: dict, features: pd.DataFrame) -> Optional[pd.DataFrame]:
    """Per image, the probability of each class of :data:`CLASS_NAMES` (rows sum to 1): the posterior
    the method's answer is read from, each of its factors sharpened or flattened by the bundle's
    temperature, fitted on validation (:mod:`calibration`). ``None`` for ``prada``, whose scores are
    not probabilities.

    Flat: the classifier's calibrated posterior, blended with the variant nets, tempered as one (its
    order kept); its answer is the likeliest class, or ``outlier`` when that class's probability
    before the temperature is below the rejection threshold. Two-stage: the gate's probability of
    each family (1 or 0 for a threshold gate) times the family classifier's probability of each of
    its variants, each tempered (the order of the families and of each family's variants kept), and
    the gate's of ``outlier`` (with that of a family without a classifier, which is answered
    ``outlier``); its answer is taken in two steps (the gate's likeliest family, then that family's
    likeliest variant or a rejection), so it is not always the row's likeliest class."""
    if bundle["method"] == "prada":
        return None
    return _combined(_posterior_parts(bundle, features), bundle["temperature"])


def _posterior_parts(bundle: dict, features: pd.DataFrame) -> Tuple[pd.DataFrame, Dict[str, pd.DataFrame]]:
    """Flat: ``(its 9-class posterior, {})``. Two-stage: ``(the gate's family probabilities,
    {family: its classifier's variant probabilities})``."""
    if bundle["method"] == "flat":
        return bundle["flat"].predict_proba(features), {}
    return (bundle["gate"].family_proba(features),
            {family: clf.predict_proba(features) for family, clf in bundle["classifiers"].items()})


def _combined(parts: Tuple[pd.DataFrame, Dict[str, pd.DataFrame]], temperature: float) -> pd.DataFrame:
    """:func:`class_probabilities` from :func:`_posterior_parts` at ``temperature``."""
    head, variants = parts
    head = temper(head, temperature)
    if variants:  # two-stage: head holds the families
        unclassified = [f for f in head.columns if f != "outlier" and f not in variants]  # answered outlier
        proba = pd.DataFrame({"outlier": head[["outlier", *unclassified]].sum(axis=1)}, index=head.index)
        for family, within in variants.items():
            proba = proba.join(temper(within, temperature).mul(head[family], axis=0))
        head = proba
    return head.reindex(columns=list(CLASS_NAMES), fill_value=0.0)


def predict(bundle: dict, features: pd.DataFrame) -> pd.Series:
    """One class name of :data:`CLASS_NAMES` per image (``prada``: from a per-token frame)."""
    if bundle["method"] == "prada":
        labels = bundle["prada"].predict(features)
    elif bundle["method"] == "flat":
        flat = bundle["flat"]
        labels = flat.predict_from_proba(flat.predict_proba(features))
    else:
        labels = _two_stage_predict(bundle["gate"], bundle["classifiers"], features)
    bad = sorted(set(labels) - set(CLASS_NAMES))
    if bad:
        raise RuntimeError(f"model produced unknown labels {bad}")
    return labels.rename("label")
