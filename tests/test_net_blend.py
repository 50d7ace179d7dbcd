"""The blend of a classifier's variant posterior with the variant net's (net_blend), and the classifiers that use it."""
from __future__ import annotations

import copy

import joblib
import numpy as np
import pandas as pd
import pytest

from models.registry import CLASS_NAMES, FAMILY_OF, VARIANT_NAMES
from net_blend import NET_STEM, WEIGHTS, blend_family, choose_weight, net_log_posterior, within_family_log_loss

VAR = [v for v in VARIANT_NAMES if FAMILY_OF[v] == "VAR"]


def _frames(rng: np.random.Generator, n: int = 6) -> tuple[pd.DataFrame, pd.DataFrame]:
    proba = pd.DataFrame(rng.dirichlet(np.ones(len(CLASS_NAMES)), n), columns=CLASS_NAMES, index=[f"i{k}" for k in range(n)])
    net = pd.DataFrame(np.log(rng.dirichlet(np.ones(len(VAR)), n)), columns=VAR, index=proba.index)
    return proba, net


def test_variant_net_feature_stem_matches():
    from variant_net import FEATURE_STEM

    assert NET_STEM == FEATURE_STEM


def test_blend_keeps_the_family_share_and_the_other_columns():
    proba, net = _frames(np.random.default_rng(0))
    assert blend_family(proba, net, 0.0).equals(proba)
    for weight in (0.25, 1.0):
        blended = blend_family(proba, net, weight)
        np.testing.assert_allclose(blended.sum(axis=1), 1.0)
        np.testing.assert_allclose(blended[VAR].sum(axis=1), proba[VAR].sum(axis=1))
        others = [c for c in CLASS_NAMES if c not in VAR]
        assert blended[others].equals(proba[others])
    # weight 1: the family's share split as the net splits it
    full = blend_family(proba, net, 1.0)
    np.testing.assert_allclose(full[VAR].to_numpy(), proba[VAR].sum(axis=1).to_numpy()[:, None] * np.exp(net.to_numpy()))
    # a geometric mean in between: the log-odds of two variants move linearly with the weight
    half = blend_family(proba, net, 0.5)
    odds = np.log(half["var16"] / half["var20"])
    expected = 0.5 * np.log(proba["var16"] / proba["var20"]) + 0.5 * (net["var16"] - net["var20"])
    np.testing.assert_allclose(odds, expected)


def test_blend_leaves_images_without_the_net_alone_and_renormalises_the_net():
    proba, net = _frames(np.random.default_rng(1))
    net.iloc[2] = np.nan
    shifted = net + 3.0  # unnormalised log-probabilities (like the synthetic frames' NLLs): same blend
    blended = blend_family(proba, shifted, 1.0)
    assert blended.iloc[2].equals(proba.iloc[2])
    np.testing.assert_allclose(blended.drop(index="i2").to_numpy(), blend_family(proba, net, 1.0).drop(index="i2").to_numpy())


def test_blend_over_a_classifier_that_knows_some_variants_only():
    proba, net = _frames(np.random.default_rng(2))
    some = proba[["var16", "var30", "outlier"]].div(proba[["var16", "var30", "outlier"]].sum(axis=1), axis=0)
    blended = blend_family(some, net, 1.0)
    np.testing.assert_allclose(blended.sum(axis=1), 1.0)
    ratio = np.log(blended["var16"] / blended["var30"])
    np.testing.assert_allclose(ratio, net["var16"] - net["var30"])


def test_choose_weight_follows_whichever_knows_the_variant():
    rng = np.random.default_rng(3)
    n = 200
    labels = rng.choice(VAR, n)
    truth = np.array([VAR.index(l) for l in labels])
    onehot = np.eye(len(VAR))[truth]
    knowing = 0.7 * onehot + 0.3 / len(VAR)  # right and confident
    blind = np.full((n, len(VAR)), 1 / len(VAR))  # no idea
    index = [f"i{k}" for k in range(n)]
    features = lambda p: pd.DataFrame(-np.log(p), index=index, columns=[f"{v}_{NET_STEM}" for v in VAR])

    proba = pd.DataFrame(blind, index=index, columns=VAR)
    weight, losses = choose_weight(proba, labels, features(knowing), VAR)
    assert weight == 1.0 and set(losses) == {str(w) for w in WEIGHTS}
    assert losses["1.0"] == pytest.approx(within_family_log_loss(pd.DataFrame(knowing, index=index, columns=VAR), labels, VAR))

    proba = pd.DataFrame(knowing, index=index, columns=VAR)
    assert choose_weight(proba, labels, features(blind), VAR)[0] == 0.0
    # no net columns, or only images of another family: the classifier alone
    assert choose_weight(proba, labels, pd.DataFrame(index=index), VAR) == (0.0, {})
    assert choose_weight(proba, np.full(n, "outlier"), features(knowing), VAR) == (0.0, {})
    assert net_log_posterior(pd.DataFrame(index=index), VAR) is None


def test_choose_weight_tie_goes_to_the_smallest_weight():
    """Where every weight gives the same log-loss (a classifier and a net that know nothing), the
    classifier alone: weight 0."""
    index = [f"i{k}" for k in range(20)]
    labels = np.resize(np.array(VAR), 20)
    proba = pd.DataFrame(1 / len(VAR), index=index, columns=VAR)
    net = pd.DataFrame(np.log(len(VAR)), index=index, columns=[f"{v}_{NET_STEM}" for v in VAR])
    weight, losses = choose_weight(proba, labels, net, VAR)
    assert len({round(loss, 12) for loss in losses.values()}) == 1 and weight == 0.0


def test_classifiers_choose_the_weight_on_train_and_use_it(tmp_path):
    """A variant net whose posterior knows the VAR variants better than a classifier can learn from a
    few noisy training images, and a RAR net that is noise: both classifiers lean on the net for VAR
    more than for RAR, record the weights, keep them through saving, and name more VAR variants
    than with the weights set to 0."""
    from test_attribution import synthetic_features
    from variant_classifier import FlatClassifier, VariantClassifier

    def frames(n, seed):
        features, labels = synthetic_features(n, seed)
        rng = np.random.default_rng(seed + 100)
        for variant in VAR:  # the VAR likelihoods say nothing
            for column in [c for c in features.columns if c.startswith(f"{variant}_")]:
                features[column] = 3.3 + rng.normal(0, 0.15, len(labels))
        logits = 1.5 * (labels[:, None] == np.array(VAR)[None]) + rng.normal(0, 1.0, (len(labels), len(VAR)))
        log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)  # a posterior that knows some
        for k, variant in enumerate(VAR):
            features[f"{variant}_{NET_STEM}"] = -log_p[:, k]
        for variant in [v for v in VARIANT_NAMES if v not in VAR]:  # the RAR net is noise
            features[f"{variant}_{NET_STEM}"] = 1.4 + rng.normal(0, 0.3, len(labels))
        return features, labels

    (train, ytr), (test, yte) = frames(30, 5), frames(150, 6)
    var_rows = np.isin(yte, VAR)
    for model in (VariantClassifier("VAR").fit(train, ytr), FlatClassifier().fit(train, ytr)):
        blend = model.config["net_blend"]
        assert blend["VAR"]["weight"] > 0, blend
        if "RAR" in blend:
            assert blend["RAR"]["weight"] < blend["VAR"]["weight"], blend
        path = tmp_path / f"{type(model).__name__}.joblib"
        model.save(path)
        again = type(model).load(path)
        proba = again.predict_proba(test.loc[var_rows])
        assert proba.equals(model.predict_proba(test.loc[var_rows]))
        blended = np.mean(proba[VAR].idxmax(axis=1).to_numpy() == yte[var_rows])
        again.net_weights = {family: 0.0 for family in again.net_weights}
        alone = np.mean(again.predict_proba(test.loc[var_rows])[VAR].idxmax(axis=1).to_numpy() == yte[var_rows])
        assert blended > alone, (blended, alone)
        if isinstance(model, VariantClassifier):
            # saved before its weight moved into net_weights (the same classifier version): loads alike
            legacy = copy.copy(model)
            del legacy.net_weights
            legacy.net_weight = model.net_weights["VAR"]
            joblib.dump(legacy, path)
            restored = VariantClassifier.load(path)
            assert restored.net_weights == model.net_weights and not hasattr(restored, "net_weight")
            assert restored.predict_proba(test.loc[var_rows]).equals(proba)


def test_weight_is_chosen_on_calibrated_out_of_fold_probabilities():
    """The blend weight is applied to calibrated probabilities, so it is chosen on calibrated ones:
    nested cross-validation, each fold's LightGBM fitted and sigmoid-calibrated on the other folds
    alone (sklearn's own ``cross_val_predict`` of the same recipe), not the raw LightGBM's
    out-of-fold probabilities nor the in-sample calibrated model's."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from test_attribution import synthetic_features
    from variant_classifier import VariantClassifier, _lgbm, family_feature_frame

    features, labels = synthetic_features(12, 3)
    rng = np.random.default_rng(4)
    for variant in VAR:
        features[f"{variant}_{NET_STEM}"] = 1.4 + rng.normal(0, 0.3, len(labels))
    model = VariantClassifier("VAR", seed=2).fit(features, labels)
    mine = np.isin(labels, VAR)
    X, y = family_feature_frame(features.loc[mine], "VAR"), labels[mine]

    oof = model.calibrated_out_of_fold(X, y)
    recipe = CalibratedClassifierCV(_lgbm(model.config["tuning"]["params"], 2), method="sigmoid", cv=3)
    expected = cross_val_predict(recipe, X, y, cv=StratifiedKFold(3, shuffle=True, random_state=2), method="predict_proba")
    np.testing.assert_allclose(oof[sorted(VAR)].to_numpy(), expected, atol=1e-12)
    assert not np.allclose(oof[sorted(VAR)].to_numpy(), model.proba(X)[sorted(VAR)].to_numpy(), atol=1e-3)
    losses = model.config["net_blend"]["VAR"]["oof_log_loss"]
    assert losses["0.0"] == pytest.approx(within_family_log_loss(oof, y, VAR), abs=1e-12)
