"""Stage two: which variant of the gated family made the image — LightGBM over likelihood features.

Within a family the variants share the tokenizer, so the features are the transformers'
likelihoods of the recovered tokens (:mod:`variant_features`) plus, per feature, each variant's
value relative to the family mean and its margin over the likeliest other variant (what separates
d16 from d20 is *which* model finds the tokens likelier). A LightGBM multiclass model is tuned by
stratified cross-validation on the training split only, its probabilities calibrated (sigmoid,
cross-validated), blended with the family's variant net's posterior by a weight chosen on train
(on calibrated out-of-fold probabilities, by nested cross-validation; :mod:`net_blend`: the demo
zoo's VAR defers to its net, RAR keeps the classifier's), and an image whose top
probability is below a threshold tuned on validation is rejected as ``outlier``.
The flat alternative (:class:`FlatClassifier`) is one 9-class LightGBM over every feature, each
family's share blended the same way.

Models persist with joblib next to a JSON of their training configuration.

From the command line, on the feature frames ``submission.py`` writes — stage two alone, on the
images the family made (``flat``: every image, 9 classes):

    python variant_classifier.py [--family VAR|RAR|flat] [--out runs/variant_VAR]

It fits on train (hyper-parameters by cross-validation on train), tunes the rejection threshold
on validation (for a family: its own images and every outlier, as if no gate stood before it; the
pipeline tunes on what its gate routes to the family) and prints the chosen parameters and the
validation accuracy.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import joblib
import numpy as np
import pandas as pd

from models.registry import CLASS_NAMES, FAMILY_OF, family_variants
from net_blend import blend_family, choose_weight, net_log_posterior
from runtime import usable_cores

if TYPE_CHECKING:
    from lightgbm import LGBMClassifier

__all__ = ["require_columns", "require_variant_features", "FEATURE_STEMS", "CLASSIFIER_VERSION", "family_feature_frame", "margins_over_others", "tune_lightgbm",
           "CalibratedLGBM", "OneClass", "VariantClassifier", "FlatClassifier"]

# Part of a cached model bundle's key (submission.py): a change to what the classifiers are fitted
# on or how, with the same feature frames, must not load models fitted the old way.
# 2: the per-variant margins over the other variants (``_margin``). 3: the variant nets' ``fnet_nll`` among the stems.
# 4: each family's variant posterior blended with its variant net's (net_blend), the weight chosen on train.
# 5: the weight chosen on calibrated out-of-fold probabilities (nested CV), the kind it is applied to.
CLASSIFIER_VERSION = "5"
FEATURE_STEMS = ("nll_marginal", "nll_topk", "nll_best", "nll_uncond", "cfg_gap", "mink", "minkpp", "hinge", "zlib",
                 "nll_sampling", "nll_sampling_best", "support_miss", "nll_evidence", "nll_evidence_best", "fnet_nll")
# Small trees: on the demo zoo 7 leaves beat 15 in every model's CV (gate, VAR, RAR), then 4
# leaves beat 7 in every one (the CV log-loss of every grid point is in each model's JSON config).
# 100 trees instead of 150 were chosen by the same 3-fold CV on extractor version 8's train
# features, run outside the pipeline: lower log-loss for 3 and 4 leaves in every model, and faster fits.
PARAM_GRID = [dict(num_leaves=nl, learning_rate=0.1, n_estimators=100, min_child_samples=mcs)
              for nl in (3, 4) for mcs in (10, 25)]
# 63 histogram bins instead of LightGBM's 255 halve every fit (the flat model's 3-fold CV: 8.0 →
# 3.8 s) at the same 3-fold CV log-loss on the demo train features (flat 0.729 / 0.732, VAR 1.297 /
# 1.302, RAR 0.216 / 0.207 with 255 / 63 bins).
MAX_BIN = 63


def require_columns(features: pd.DataFrame, columns: Sequence[str]) -> None:
    """A :class:`cli.InputError` naming the ``columns`` (those a model was fitted on) that
    ``features`` lacks: features of another extractor version, or of another kind, than the training ones."""
    missing = [c for c in columns if c not in features.columns]
    if missing:
        from cli import InputError

        listed = ", ".join(missing[:3]) + (f", … ({len(missing) - 3} more)" if len(missing) > 3 else "")
        raise InputError(f"the features lack {len(missing)} of the {len(columns)} columns the model was fitted on ({listed}); "
                         "give features made by the same feature_extractor version as the training features")


def require_variant_features(features: pd.DataFrame, families: Sequence[str], source: object) -> None:
    """A :class:`cli.InputError` unless ``features`` (read from ``source``) hold variant features
    (``{variant}_…`` columns) of each of ``families``: without them a variant classifier would be
    fitted on the family signals alone, which cannot tell a family's variants apart."""
    from cli import InputError

    lacking = [family for family in families
               if not any(c.startswith(f"{v}_") for c in features.columns for v in family_variants(family))]
    if lacking:
        raise InputError(f"{source} holds no variant features of {' or '.join(lacking)} ({features.shape[1]} columns, "
                         f"none named <variant>_…); give the feature frame submission.py leaves in its report folder "
                         f"or feature_extractor.py writes")


def family_feature_frame(features: pd.DataFrame, family: str) -> pd.DataFrame:
    """The family's variant features, each variant's deviation from the family mean (``_rel``) and
    its margin over the other variants (``_margin``, :func:`margins_over_others`), and the family's
    signals (log)."""
    variants = family_variants(family)
    cols = [c for c in features.columns if any(c.startswith(f"{v}_") for v in variants) and not c.endswith("best_label")]
    out = [features[cols]]
    for stem in FEATURE_STEMS:
        names = [f"{v}_{stem}" for v in variants if f"{v}_{stem}" in features.columns]
        if len(names) > 1:
            block = features[names]
            centred = block.sub(block.mean(axis=1), axis=0)
            centred.columns = [f"{n}_rel" for n in names]
            out += [centred, margins_over_others(block)]
    signal_cols = [c for c in features.columns if c.startswith(f"{family}_")]
    return pd.concat(out + [np.log(features[signal_cols].clip(lower=1e-30))], axis=1)


def margins_over_others(block: pd.DataFrame) -> pd.DataFrame:
    """Each column minus the lowest of the *other* columns, row by row (``{column}_margin``; NaN
    where the others are all missing). For one statistic across a family's variants, mostly NLLs
    (lower = likelier), a margin below 0 says this variant finds the tokens likelier than every
    other one: the likelihood-ratio rule as a feature, which a tree cannot build from per-variant
    values or deviations from the mean without splitting on every variant in turn."""
    values = block.to_numpy(dtype=np.float64)
    margins = np.full_like(values, np.nan)
    for j in range(values.shape[1]):
        others = np.delete(values, j, axis=1)
        present = ~np.isnan(others).all(axis=1)
        margins[present, j] = values[present, j] - np.nanmin(others[present], axis=1)
    return pd.DataFrame(margins, index=block.index, columns=[f"{c}_margin" for c in block.columns])


def _lgbm(params: dict, seed: int) -> LGBMClassifier:
    """A LightGBM classifier of ``params`` on every usable core (:func:`runtime.usable_cores`: one in
    a one-CPU Slurm job). ``deterministic`` with row-wise histograms makes its fits the same for any
    number of threads (``tests/test_attribution.py`` checks 1 against 2), so the thread count
    never changes a ``submission.csv``."""
    from lightgbm import LGBMClassifier

    # the objective follows the number of classes: multiclass, or binary for two
    return LGBMClassifier(subsample=0.9, subsample_freq=1, colsample_bytree=0.8,
                          reg_lambda=1.0, random_state=seed, n_jobs=usable_cores(), deterministic=True, force_row_wise=True,
                          max_bin=MAX_BIN, verbose=-1, **params)


def _folds(X: pd.DataFrame, y: np.ndarray, folds: int, seed: int):
    """The stratified folds of the tuning, and of the calibrated out-of-fold probabilities."""
    from sklearn.model_selection import StratifiedKFold

    return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(X, y)


def tune_lightgbm(X: pd.DataFrame, y: np.ndarray, seed: int = 0, folds: int = 3) -> Dict[str, object]:
    """Pick hyper-parameters from :data:`PARAM_GRID` by stratified CV log-loss on (X, y) only."""
    from sklearn.metrics import log_loss

    labels = np.unique(y)
    results = []
    for params in PARAM_GRID:
        losses = []
        for train_idx, test_idx in _folds(X, y, folds, seed):
            model = _lgbm(params, seed).fit(X.iloc[train_idx], y[train_idx])
            losses.append(log_loss(y[test_idx], model.predict_proba(X.iloc[test_idx]), labels=labels))
        results.append((float(np.mean(losses)), params))
    best_loss, best = min(results, key=lambda r: r[0])
    return {"params": best, "cv_log_loss": best_loss, "grid": [{"params": p, "cv_log_loss": l} for l, p in results]}


def _calibrated(params: dict, seed: int, X: pd.DataFrame, y: np.ndarray, folds: int):
    """LightGBM of ``params`` with its probabilities calibrated by ``folds``-fold sigmoid calibration
    (the fitted model; plain LightGBM where a class has too few images for 2 folds)."""
    from sklearn.calibration import CalibratedClassifierCV

    folds = min(folds, int(pd.Series(y).value_counts().min()))
    if folds < 2:
        return _lgbm(params, seed).fit(X, y)
    return CalibratedClassifierCV(_lgbm(params, seed), method="sigmoid", cv=folds).fit(X, y)


class OneClass:
    """The model of training data with a single class: that class, with probability 1."""

    def __init__(self, label: str) -> None:
        self.classes_ = np.array([label])

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return np.ones((len(X), 1))


class CalibratedLGBM:
    """Tuned LightGBM + cross-validated sigmoid calibration + a rejection threshold (3 folds, fewer
    where a class has fewer than 3 training images)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.model = None
        self.columns: List[str] = []
        self.reject_below = 0.0
        self.config: Dict[str, object] = {}
        self.net_weights: Dict[str, float] = {}  # per family, its variant net's weight in the blend (net_blend)

    def fit_frame(self, X: pd.DataFrame, y: np.ndarray) -> None:
        """Tune (CV on ``X`` only), fit and calibrate on a ready feature frame."""
        self.columns = list(X.columns)
        if len(np.unique(y)) == 1:  # e.g. a family with one variant in the training data
            self.model = OneClass(str(y[0]))
            self.config = {"seed": self.seed, "n_train": int(len(y)), "classes": [str(y[0])], "tuning": None,
                           "features": self.columns, "note": "one class in the training data: always predicted"}
            return
        # 3-fold tuning and calibration need 3 images of every class; fewer get fewer folds, and
        # a class with a single image leaves the first grid point, uncalibrated
        folds = min(3, int(pd.Series(y).value_counts().min()))
        if folds >= 2:
            tuned = tune_lightgbm(X, y, self.seed, folds=folds)
        else:
            tuned = {"params": PARAM_GRID[0], "cv_log_loss": None, "grid": [], "note": "a class with one image: not tuned or calibrated"}
        self.model = _calibrated(tuned["params"], self.seed, X, y, folds)  # plain LightGBM below 2 folds
        self.config = {"seed": self.seed, "n_train": int(len(y)), "classes": [str(c) for c in self.model.classes_],
                       "tuning": tuned, "folds": folds, "features": self.columns}

    def calibrated_out_of_fold(self, X: pd.DataFrame, y: np.ndarray) -> Optional[pd.DataFrame]:
        """Out-of-fold probabilities of ``X`` (the frame :meth:`fit_frame` was fitted on) of the same
        kind as :meth:`proba`'s: on each of the tuning's folds, the tuned LightGBM fitted and
        calibrated (nested folds) on the other folds alone. None where nothing was tuned. Costs
        ``folds²`` LightGBM fits (``CalibratedClassifierCV`` fits one per nested fold, none on all of it)."""
        folds = self.config.get("folds", 0)  # absent for one class
        if folds < 2:
            return None
        params, classes = self.config["tuning"]["params"], np.unique(y)
        oof = np.zeros((len(y), len(classes)))
        for train_idx, test_idx in _folds(X, y, folds, self.seed):
            model = _calibrated(params, self.seed, X.iloc[train_idx], y[train_idx], folds)
            oof[test_idx] = model.predict_proba(X.iloc[test_idx])
        return pd.DataFrame(oof, index=X.index, columns=classes)

    def _oof_for_blend(self, X: pd.DataFrame, y: np.ndarray, features: pd.DataFrame,
                       families: Sequence[str]) -> Optional[pd.DataFrame]:
        """:meth:`calibrated_out_of_fold`, where some of ``families`` has a variant net to blend with."""
        if all(net_log_posterior(features, family_variants(f)) is None for f in families):
            return None
        return self.calibrated_out_of_fold(X, y)

    def proba(self, X: pd.DataFrame) -> pd.DataFrame:
        require_columns(X, self.columns)
        return pd.DataFrame(self.model.predict_proba(X[self.columns]), index=X.index, columns=self.model.classes_)

    def tune_rejection(self, proba: pd.DataFrame, y_true: Sequence[str], thresholds: np.ndarray = np.linspace(0, 0.95, 39)) -> float:
        """Top-probability threshold maximising accuracy when rejected images become ``outlier``."""
        y_true = np.asarray(y_true)
        top, arg = proba.max(axis=1).to_numpy(), proba.idxmax(axis=1).to_numpy()
        scores = [(np.mean(np.where(top >= t, arg, "outlier") == y_true), -t) for t in thresholds]
        best_acc, neg_t = max(scores)
        self.reject_below = float(-neg_t)
        self.config["reject_below"] = self.reject_below
        self.config["val_accuracy_at_threshold"] = float(best_acc)
        return self.reject_below

    def predict_from_proba(self, proba: pd.DataFrame) -> pd.Series:
        top, arg = proba.max(axis=1), proba.idxmax(axis=1)
        return arg.where(top >= self.reject_below, "outlier")

    def save(self, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(self, path)
        path.with_suffix(".json").write_text(json.dumps(self.config, indent=2, default=str))

    @staticmethod
    def load(path: Path | str) -> "CalibratedLGBM":
        return joblib.load(path)


class VariantClassifier(CalibratedLGBM):
    """One family's variant classifier (trained on that family's images only), its posterior blended
    with the family's variant net's by the weight chosen on train (:mod:`net_blend`)."""

    def __init__(self, family: str, seed: int = 0) -> None:
        super().__init__(seed)
        self.family = family

    def fit(self, features: pd.DataFrame, labels: Sequence[str]) -> "VariantClassifier":
        labels = np.asarray(labels)
        mine = np.array([FAMILY_OF.get(l) == self.family for l in labels])
        X = family_feature_frame(features.loc[mine], self.family)
        self.fit_frame(X, labels[mine])
        self.config["family"] = self.family
        oof_proba = self._oof_for_blend(X, labels[mine], features, [self.family])
        self.net_weights = {self.family: _choose_net_weight(self.config, oof_proba, labels[mine], features.loc[mine], self.family)}
        return self

    def predict_proba(self, features: pd.DataFrame) -> pd.DataFrame:
        return _blend_nets(self.proba(family_feature_frame(features, self.family)), features, self.net_weights)

    def __setstate__(self, state: dict) -> None:
        # models saved before the weight moved into net_weights (same CLASSIFIER_VERSION) load unchanged
        if "net_weight" in state:
            state["net_weights"] = {state["family"]: state.pop("net_weight")}
        self.__dict__.update(state)


class FlatClassifier(CalibratedLGBM):
    """A single 9-class LightGBM over all features (the comparison for the two-stage path), each
    family's share of its posterior split among the variants as blended with the family's variant
    net by the weight chosen on train (:mod:`net_blend`)."""

    def fit(self, features: pd.DataFrame, labels: Sequence[str]) -> "FlatClassifier":
        labels = np.asarray(labels)
        X = self.frame(features)
        self.fit_frame(X, labels)
        oof_proba = self._oof_for_blend(X, labels, features, ["VAR", "RAR"])
        self.net_weights = {family: _choose_net_weight(self.config, oof_proba, labels, features, family) for family in ("VAR", "RAR")}
        return self

    @staticmethod
    def frame(features: pd.DataFrame) -> pd.DataFrame:
        return pd.concat([family_feature_frame(features, "VAR"), family_feature_frame(features, "RAR")], axis=1)

    def predict_proba(self, features: pd.DataFrame) -> pd.DataFrame:
        proba = _blend_nets(self.proba(self.frame(features)), features, self.net_weights)
        return proba.reindex(columns=[c for c in CLASS_NAMES if c in proba.columns])


def _choose_net_weight(config: dict, oof_proba: Optional[pd.DataFrame], labels: np.ndarray, features: pd.DataFrame, family: str) -> float:
    """:func:`net_blend.choose_weight` for ``family`` on the classifier's calibrated out-of-fold
    probabilities (:meth:`CalibratedLGBM.calibrated_out_of_fold`; 0 when there are none), recorded in ``config["net_blend"]``."""
    weight, losses = (0.0, {}) if oof_proba is None else choose_weight(oof_proba, labels, features, family_variants(family))
    config.setdefault("net_blend", {})[family] = {"weight": weight, "oof_log_loss": losses}
    return weight


def _blend_nets(proba: pd.DataFrame, features: pd.DataFrame, weights: Dict[str, float]) -> pd.DataFrame:
    for family, weight in weights.items():
        net = net_log_posterior(features, family_variants(family)) if weight else None
        if net is not None:
            proba = blend_family(proba, net, weight)
    return proba


def main(argv: Optional[list] = None) -> int:
    from cli import output_folder
    from dataset import add_labelled_split_arguments, read_labelled_features

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_labelled_split_arguments(parser)
    parser.add_argument("--family", default="VAR", choices=["VAR", "RAR", "flat"], help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cross-validation and LightGBM fits (default 0)")
    parser.add_argument("--out", type=output_folder, help="folder to save the model in (<family>.joblib + .json)")
    args = parser.parse_args(argv)
    train, train_labels = read_labelled_features(args.train_features, args.train_labels)
    val, val_labels = read_labelled_features(args.val_features, args.val_labels)
    require_variant_features(train, ["VAR", "RAR"] if args.family == "flat" else [args.family], args.train_features)
    if args.family == "flat":
        model = FlatClassifier(args.seed).fit(train, train_labels)
    else:
        model = VariantClassifier(args.family, args.seed).fit(train, train_labels)
        # the family's images and the outliers: without a gate (the pipeline tunes on what its gate
        # routes here), rejection is tuned against every outlier, as if all passed the gate
        mine = np.array([FAMILY_OF.get(label) == args.family or label == "outlier" for label in val_labels])
        val, val_labels = val.loc[mine], val_labels[mine]
    proba = model.predict_proba(val)
    model.tune_rejection(proba, val_labels)
    predicted = model.predict_from_proba(proba).to_numpy()
    tuned = model.config.get("tuning") or {}
    cv_loss = tuned.get("cv_log_loss")
    print(f"{args.family}: {len(model.columns)} features, {model.config['n_train']} training images; "
          + (f"parameters {tuned['params']} (CV log-loss " + (f"{cv_loss:.3f})" if cv_loss is not None else "not measured)")
             if tuned else "one class: nothing tuned"))
    for family, blend in model.config.get("net_blend", {}).items():
        print(f"{family} variant net's weight in the blend: {blend['weight']} (out-of-fold log-loss per weight: "
              + (", ".join(f"{w} {loss:.3f}" for w, loss in blend["oof_log_loss"].items()) or "no net") + ")")
    print(f"validation accuracy {100 * np.mean(predicted == val_labels):.2f} % (n={len(val_labels)}), "
          f"rejecting below a top probability of {model.reject_below:.3f}")
    if args.out:
        model.save(args.out / f"{args.family}.joblib")
        print(f"model → {args.out / (args.family + '.joblib')}")
    return 0


if __name__ == "__main__":
    from cli import run_module

    sys.exit(run_module("variant_classifier"))
