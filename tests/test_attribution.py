"""Gate, variant classifiers and scoring on synthetic feature frames with a known answer."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attribution import bundle_exists, class_probabilities, fit_bundle, load_bundle, pick_method, predict
from models.registry import CLASS_NAMES, FAMILY_OF, VARIANT_NAMES
from provenance import FamilyGate
from scoring import summary, write_report
from variant_classifier import FEATURE_STEMS, family_feature_frame, margins_over_others


def synthetic_features(n_per_class: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Signals low for the true family; the true variant's NLL features lowest, with noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.array(CLASS_NAMES), n_per_class)
    cols = {}
    for family in ("VAR", "RAR"):
        own = np.array([FAMILY_OF.get(l) == family for l in labels])
        for signal in ("combined", "quant_loss", "enc_loss"):
            cols[f"{family}_{signal}"] = np.exp(np.where(own, -6.0, -2.0) + rng.normal(0, 0.6, len(labels)))
    for variant in VARIANT_NAMES:
        mine = labels == variant
        for stem in FEATURE_STEMS:
            cols[f"{variant}_{stem}"] = np.where(mine, 3.0, 3.6) + rng.normal(0, 0.15, len(labels))
    ids = [f"img{seed}_{i}" for i in range(len(labels))]
    return pd.DataFrame(cols, index=ids), labels


@pytest.fixture(scope="module")
def data():
    return synthetic_features(40, 0), synthetic_features(20, 1), synthetic_features(20, 2)


@pytest.mark.parametrize("method, gate_strategy", [("flat", "learned"), ("two-stage", "learned"), ("two-stage", "balanced")])
def test_class_probabilities_are_what_the_answer_is_read_from(data, tmp_path, method, gate_strategy):
    """Each image's probabilities of the 9 classes sum to 1. Flat: its answer is the likeliest class,
    or outlier below the rejection threshold. Two-stage: the answer's family holds the largest mass
    among the families and outlier (1 for a threshold gate), and a variant answer is the likeliest
    variant of its family."""
    from provenance import GATE_ANSWERS

    (train, ytr), (val, yva), (test, _) = data
    bundle = fit_bundle(method, train, ytr, val, yva, tmp_path / "bundle", gate_strategy=gate_strategy)
    labels, proba = predict(bundle, test), class_probabilities(bundle, test)
    assert list(proba.columns) == list(CLASS_NAMES) and list(proba.index) == list(test.index)
    assert np.allclose(proba.sum(axis=1), 1.0) and (proba >= 0).all(axis=None)
    # one temperature, fitted on validation, kept in the bundle; it keeps each row's order
    assert bundle["temperature"] == load_bundle(method, tmp_path / "bundle")["temperature"] > 0
    stated = class_probabilities(dict(bundle, temperature=1.0), test)
    if method == "flat":
        assert (stated.idxmax(axis=1) == proba.idxmax(axis=1)).all(), "tempered as one: each row's order kept"
    if method == "flat":
        rejected = stated.max(axis=1) < bundle["flat"].reject_below  # rejection reads the probabilities as stated
        assert (labels == proba.idxmax(axis=1).where(~rejected, "outlier")).all()
        return
    for family, clf in bundle["classifiers"].items():  # each threshold tuned on the validation images the gate sends there
        routed = (bundle["gate"].predict(val) == family).to_numpy()
        assert clf.reject_below == copy.deepcopy(clf).tune_rejection(clf.predict_proba(val.loc[routed]), yva[routed])
        assert clf.config["val_routed"] == routed.sum()
    families = pd.DataFrame({f: proba[[c for c in CLASS_NAMES if FAMILY_OF.get(c, "outlier") == f]].sum(axis=1)
                             for f in GATE_ANSWERS})  # each factor tempered: the families' order is the gate's
    named = labels != "outlier"
    assert (families.idxmax(axis=1)[named] == labels[named].map(FAMILY_OF)).all()
    for image in labels.index[named]:
        family = FAMILY_OF[labels[image]]
        assert labels[image] == proba.loc[image, [c for c in CLASS_NAMES if FAMILY_OF.get(c) == family]].idxmax()
    if gate_strategy != "learned":
        assert set(np.round(families.to_numpy().ravel(), 12)) <= {0.0, 1.0}, "a threshold has no probabilities"
    assert class_probabilities({"method": "prada"}, test) is None


def test_a_threshold_gate_calls_an_image_without_signals_an_outlier(data):
    """NaN in the chosen signal of both families: no margin, so no family accepts the image."""
    (train, ytr), (val, yva), _ = data
    gate = FamilyGate(strategy="balanced").fit(train, ytr, val, yva)
    blank = val.iloc[:2].copy()
    blank.loc[blank.index[0], [f"{f}_{gate.signals[f]}" for f in ("VAR", "RAR")]] = np.nan
    predicted = gate.predict(blank)
    assert predicted.iloc[0] == "outlier" and predicted.iloc[1] == gate.predict(val.iloc[1:2]).iloc[0]


def test_gate_strategies_separate_families(data):
    (train, ytr), (val, yva), (test, yte) = data
    truth = np.array([FAMILY_OF.get(l, "outlier") for l in yte])
    for strategy in ("fpr", "balanced", "train_quantile"):
        gate = FamilyGate(strategy=strategy).fit(train, ytr, val, yva)
        assert set(gate.signals.values()) <= {"combined", "quant_loss", "enc_loss"}
        assert np.mean(gate.predict(test).to_numpy() == truth) > 0.9, strategy
    gate = FamilyGate(strategy="fpr", target_fpr=0.01).fit(train, ytr, val, yva)
    assert all(v["fpr"] <= 0.01 for v in gate.validation.values())


def test_gate_skips_signals_missing_or_infinite_on_train_and_names_a_family_without_validation_images(data):
    (train, ytr), (val, yva), _ = data
    holed = train.copy()
    holed.iloc[0, holed.columns.get_loc("VAR_combined")] = np.nan
    holed.iloc[0, holed.columns.get_loc("RAR_combined")] = np.nan
    val = val.copy()
    val.iloc[0, val.columns.get_loc("RAR_enc_loss")] = np.inf  # not finite either: skipped, not a crash
    gate = FamilyGate(strategy="train_quantile").fit(holed, ytr, val, yva)
    assert gate.signals["RAR"] not in ("combined", "enc_loss")
    assert "combined" not in gate.signals.values() and all(np.isfinite(t) for t in gate.thresholds.values())
    no_rar = np.array([FAMILY_OF.get(label) != "RAR" for label in yva])
    with pytest.raises(ValueError, match="threshold for RAR needs validation images of RAR and of other sources"):
        FamilyGate().fit(train, ytr, val[no_rar], yva[no_rar])


def test_gate_prefers_the_relatively_lower_family():
    gate = FamilyGate(signals={"VAR": "combined", "RAR": "combined"}, thresholds={"VAR": np.log(1e-3), "RAR": np.log(1e-1)})
    frame = pd.DataFrame({"VAR_combined": [1e-6, 1e-3 * 0.9, 1.0], "RAR_combined": [1e-3, 1e-3, 1.0]}, index=list("abc"))
    assert gate.predict(frame).tolist() == ["VAR", "RAR", "outlier"]


@pytest.mark.parametrize("method", ["two-stage", "flat"])
def test_bundle_fits_saves_loads_and_predicts(data, tmp_path, method):
    (train, ytr), (val, yva), (test, yte) = data
    bundle = fit_bundle(method, train, ytr, val, yva, tmp_path / method)
    assert bundle_exists(method, tmp_path / method)
    first = predict(bundle, test)
    again = predict(load_bundle(method, tmp_path / method), test)
    assert first.equals(again)
    from attribution import net_blend_weights
    from net_blend import WEIGHTS

    weights = net_blend_weights(bundle)
    assert set(weights) == {"VAR", "RAR"} and set(weights.values()) <= set(WEIGHTS)
    assert net_blend_weights(load_bundle(method, tmp_path / method)) == weights
    stats = summary(yte, first)
    assert stats["accuracy"] > 0.85 and stats["family_accuracy"] > 0.95, stats
    assert set(first) <= set(CLASS_NAMES)
    report = write_report(tmp_path / "report", "test", yte, first, "synthetic")
    assert (tmp_path / "report" / "test_confusion.png").stat().st_size > 0
    assert report == stats


def test_learned_gate_separates_families_and_round_trips(data, tmp_path):
    from provenance import LearnedGate, load_gate, make_gate, save_gate

    (train, ytr), (val, yva), (test, yte) = data
    gate = make_gate("learned").fit(train, ytr, val, yva)
    assert isinstance(gate, LearnedGate)
    truth = np.array([FAMILY_OF.get(l, "outlier") for l in yte])
    predicted = gate.predict(test)
    assert np.mean(predicted.to_numpy() == truth) > 0.9
    assert set(gate.validation) == {"VAR", "RAR"} and all(0 <= v["fpr"] <= 1 for v in gate.validation.values())
    save_gate(gate, tmp_path)
    assert load_gate(tmp_path).predict(test).equals(predicted)
    with pytest.raises(ValueError, match="unknown gate strategy"):
        make_gate("nonsense")


def test_a_gate_saved_over_one_of_the_other_kind_is_the_one_loaded(data, tmp_path):
    """``save_gate`` of a threshold gate into a folder holding a learned one left both, and
    ``load_gate`` (and ``provenance.py --out``'s printout) found the learned one first."""
    from provenance import FamilyGate, LearnedGate, load_gate, make_gate, save_gate, saved_gate_path

    (train, ytr), (val, yva), _ = data
    save_gate(make_gate("learned").fit(train, ytr, val, yva), tmp_path)
    save_gate(make_gate("fpr").fit(train, ytr, val, yva), tmp_path)
    assert isinstance(load_gate(tmp_path), FamilyGate) and saved_gate_path(tmp_path).name == "gate.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate.json"]
    save_gate(make_gate("learned").fit(train, ytr, val, yva), tmp_path)
    assert isinstance(load_gate(tmp_path), LearnedGate)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learned_gate.joblib", "learned_gate.json"]


def test_models_saved_by_the_commands_load_in_another_program(data, tmp_path):
    """Run as ``python provenance.py`` / ``python variant_classifier.py``, a module is ``__main__``,
    and the gate and classifier it saved were pickled as ``__main__.LearnedGate`` /
    ``__main__.VariantClassifier``: no other program (``load_gate``, ``feature_plotter.py
    --models``) could load them. The commands now run their module as imported by name."""
    import subprocess
    import sys

    from provenance import LearnedGate, load_gate
    from variant_classifier import CalibratedLGBM, VariantClassifier

    root = Path(__file__).resolve().parent.parent
    (train, ytr), (val, yva), (test, _) = data
    splits = _write_split(tmp_path, "train", train, ytr) + _write_split(tmp_path, "val", val, yva)
    for command in (["provenance.py", "--strategy", "learned", "--out", str(tmp_path / "gate")],
                    ["variant_classifier.py", "--family", "RAR", "--out", str(tmp_path / "models")]):
        done = subprocess.run([sys.executable, str(root / command[0]), *splits, *command[1:]], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert isinstance(load_gate(tmp_path / "gate"), LearnedGate)
    classifier = CalibratedLGBM.load(tmp_path / "models" / "RAR.joblib")
    assert isinstance(classifier, VariantClassifier)
    assert classifier.predict_proba(test).shape[0] == len(test)


def test_learned_gate_breaks_an_exact_tie_as_its_probabilities_argmax_does(monkeypatch):
    """``predict`` took the first of LightGBM's class order (RAR before VAR), the two-stage
    posterior the first of the gate's answers (VAR before RAR)."""
    import provenance

    gate = provenance.LearnedGate()
    tied = pd.DataFrame({"RAR": [0.4], "VAR": [0.4], "outlier": [0.2]}, index=["a.png"])  # LightGBM's (sorted) order
    monkeypatch.setattr(provenance, "family_signal_frame", lambda features: features)
    monkeypatch.setattr(gate, "proba", lambda frame: tied)
    assert gate.predict(tied).tolist() == gate.family_proba(tied).idxmax(axis=1).tolist() == ["VAR"]


def test_scoring_gate_needs_the_likely_families_only(data):
    from provenance import ScoringGate

    (train, ytr), _, (test, yte) = data
    needs = ScoringGate().fit(train, ytr).needs(test)
    assert list(needs.columns) == ["VAR", "RAR"] and needs.index.equals(test.index) and needs.dtypes.eq(bool).all()
    truth = np.array([FAMILY_OF.get(l, "outlier") for l in yte])
    for family in ("VAR", "RAR"):
        assert needs[family].to_numpy()[truth == family].mean() > 0.95, f"{family} images would lose their own family"
        assert needs[family].to_numpy()[truth != family].mean() < 0.2, f"{family} features would be computed for most others"
    assert ScoringGate(min_probability=0.0).fit(train, ytr).needs(test).all(axis=None), "probability ≥ 0 needs everything"
    no_rar = np.array([FAMILY_OF.get(l, "outlier") != "RAR" for l in ytr])
    assert not ScoringGate().fit(train[no_rar], ytr[no_rar]).needs(test)["RAR"].any(), "a family never trained on is never needed"


def test_scoring_gate_sample_is_a_fixed_shuffle_of_every_class():
    import hashlib

    from provenance import scoring_gate_sample

    labels = pd.Series(["var16", "rarb", "var16", "var16", "rarb", "outlier"], index=["e", "a", "c", "b", "d", "f"])
    first_by_hash = sorted("ecb", key=lambda i: hashlib.sha256(i.encode()).hexdigest())[:2]
    assert scoring_gate_sample(labels, 2) == sorted(first_by_hash + ["a", "d", "f"])
    assert scoring_gate_sample(labels, 10) == sorted(labels.index)
    assert scoring_gate_sample(labels.iloc[::-1], 2) == scoring_gate_sample(labels, 2), "the order of the rows does not matter"
    # a class whose files are named in the order of their sources: the sample holds every source
    ids = [f"outlier_{k:05d}.png" for k in range(300)]  # 0-99 one source, 100-199 another, 200-299 a third
    sample = scoring_gate_sample(pd.Series("outlier", index=ids[::-1]), 40)
    assert len(sample) == 40 and all(any(100 * s <= int(i[8:13]) < 100 * (s + 1) for i in sample) for s in range(3))


def test_margins_over_others_mark_the_likeliest_variant():
    block = pd.DataFrame({"a_nll": [1.0, 2.0, np.nan], "b_nll": [1.5, 1.0, 2.0], "c_nll": [3.0, 1.2, np.nan]}, index=["x", "y", "z"])
    margins = margins_over_others(block)
    assert list(margins.columns) == ["a_nll_margin", "b_nll_margin", "c_nll_margin"]
    expected = np.array([[-0.5, 0.5, 2.0], [1.0, -0.2, 0.2], [np.nan, np.nan, np.nan]])  # z: b has no other value
    np.testing.assert_allclose(margins.to_numpy(), expected)
    # below 0 exactly where the likelihood-ratio rule names the variant
    complete = block.iloc[:2]
    assert ((margins.iloc[:2] < 0).to_numpy() == (complete.to_numpy() == complete.min(axis=1).to_numpy()[:, None])).all()


def test_family_frame_has_every_variants_margin_and_none_of_the_other_family():
    features, _ = synthetic_features(3, 5)
    frame = family_feature_frame(features, "RAR")
    for stem in FEATURE_STEMS:
        for variant in ("rarb", "rarl", "rarxl", "rarxxl"):
            assert f"{variant}_{stem}_margin" in frame.columns and f"{variant}_{stem}_rel" in frame.columns
    assert not any(c.startswith("var") for c in frame.columns)


def test_pick_method_takes_the_higher_validation_accuracy():
    assert pick_method({"two-stage": 0.60, "flat": 0.61}) == "flat"
    assert pick_method({"two-stage": 0.62, "flat": 0.61}) == "two-stage"
    assert pick_method({"two-stage": 0.61, "flat": 0.61}) == "two-stage"  # a tie keeps the order of METHODS
    assert pick_method({"flat": 0.1}) == "flat"
    with pytest.raises(ValueError):
        pick_method({"auto": 0.9})


def _write_split(tmp_path, name, features, labels):
    features.to_parquet(tmp_path / f"features_{name}.parquet")
    pd.DataFrame({"image_name": features.index, "label": labels}).to_csv(tmp_path / f"labels_{name}.csv", index=False)
    return ["--" + name + "-features", str(tmp_path / f"features_{name}.parquet"), "--" + name + "-labels", str(tmp_path / f"labels_{name}.csv")]


def test_stage_command_lines_fit_save_and_predict(data, tmp_path, capsys):
    """``provenance.py`` and ``variant_classifier.py`` run stage one / two alone from feature files."""
    import provenance
    import variant_classifier

    (train, ytr), (val, yva), (test, yte) = data
    splits = _write_split(tmp_path, "train", train, ytr) + _write_split(tmp_path, "val", val, yva)
    test.to_parquet(tmp_path / "test.parquet")
    out_csv = tmp_path / "families.csv"
    assert provenance.main(splits + ["--strategy", "fpr", "--out", str(tmp_path / "gate"), "--predict",
                                     str(tmp_path / "test.parquet"), "--predictions", str(out_csv)]) == 0
    families = pd.read_csv(out_csv)
    assert list(families["image_name"]) == list(test.index)
    truth = np.array([FAMILY_OF.get(l, "outlier") for l in yte])
    assert np.mean(families["family"].to_numpy() == truth) > 0.9
    assert FamilyGate.load(tmp_path / "gate" / "gate.json").predict(test).tolist() == families["family"].tolist()
    assert variant_classifier.main(splits + ["--family", "RAR", "--out", str(tmp_path / "models")]) == 0
    printed = capsys.readouterr().out
    accuracy = float(printed.split("validation accuracy ")[-1].split(" %")[0])
    assert accuracy > 85, printed
    assert (tmp_path / "models" / "RAR.joblib").is_file() and (tmp_path / "models" / "RAR.json").is_file()


def test_a_frame_to_gate_without_family_signals_is_one_error_line(data, tmp_path, capsys):
    """``provenance.py --predict`` of a frame without the signal columns: a ValueError traceback after
    the learned gate's fit (the threshold gates said it in one line)."""
    import provenance
    from cli import USER_ERROR_STATUS, run_main

    (train, ytr), (val, yva), (test, _) = data
    splits = _write_split(tmp_path, "train", train, ytr) + _write_split(tmp_path, "val", val, yva)
    test[[c for c in test.columns if not c.startswith(("VAR_", "RAR_"))]].to_parquet(tmp_path / "variants.parquet")
    assert run_main(provenance.main, splits + ["--predict", str(tmp_path / "variants.parquet"),
                                               "--predictions", str(tmp_path / "f.csv")]) == USER_ERROR_STATUS
    assert "error: no family signal columns" in capsys.readouterr().err and not (tmp_path / "f.csv").exists()


def test_a_frame_without_variant_features_is_refused_not_fitted_on_the_signals(data, tmp_path, capsys):
    """A family-signal frame (``provenance.py``'s input) given to ``variant_classifier.py`` used to
    be fitted on as it was, with nothing to tell the variants apart."""
    import variant_classifier
    from cli import USER_ERROR_STATUS, run_main

    (train, ytr), (val, yva), _ = data
    signals_only = [c for c in train.columns if c.startswith(("VAR_", "RAR_"))]
    splits = _write_split(tmp_path, "train", train[signals_only], ytr) + _write_split(tmp_path, "val", val[signals_only], yva)
    assert run_main(variant_classifier.main, splits + ["--family", "flat", "--out", str(tmp_path / "models")]) == USER_ERROR_STATUS
    err = capsys.readouterr().err
    assert f"{tmp_path / 'features_train.parquet'} holds no variant features of VAR or RAR" in err, err
    assert not (tmp_path / "models").exists()


def test_features_and_labels_must_name_the_same_images(data, tmp_path):
    from dataset import read_labelled_features

    (train, ytr), _, _ = data
    _write_split(tmp_path, "train", train, ytr)
    pd.DataFrame({"image_name": train.index[:-1], "label": ytr[:-1]}).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(ValueError, match="1 image\\(s\\) without a label"):
        read_labelled_features(tmp_path / "features_train.parquet", tmp_path / "short.csv")
    with pytest.raises(FileNotFoundError, match="submission.py --demo"):
        read_labelled_features(tmp_path / "missing.parquet", tmp_path / "short.csv")
    frame, labels = read_labelled_features(tmp_path / "features_train.parquet", tmp_path / "labels_train.csv")
    assert frame.equals(train) and list(labels) == list(ytr)


def test_a_fit_killed_while_saving_leaves_no_bundle_to_load(data, tmp_path, monkeypatch):
    """The bundle folder appears only once complete: a crash mid-save means the next run fits again."""
    from variant_classifier import VariantClassifier

    (train, ytr), (val, yva), _ = data
    real_save, saved = VariantClassifier.save, []

    def crash_on_second(self, path):
        if saved:
            raise KeyboardInterrupt("killed while saving")
        saved.append(path)
        real_save(self, path)

    monkeypatch.setattr(VariantClassifier, "save", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        fit_bundle("two-stage", train, ytr, val, yva, tmp_path / "bundle")
    assert saved and not bundle_exists("two-stage", tmp_path / "bundle") and not (tmp_path / "bundle").exists()
    monkeypatch.undo()
    abandoned = tmp_path / "bundle.partial-999999999"  # left by a process that no longer exists
    abandoned.mkdir()
    fit_bundle("two-stage", train, ytr, val, yva, tmp_path / "bundle")
    assert bundle_exists("two-stage", tmp_path / "bundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"], "staging folders were not cleaned up"


def test_a_retrain_killed_while_replacing_a_bundle_leaves_none_half_deleted(data, tmp_path, monkeypatch, one_small_lightgbm):
    """Replacing a bundle (``--retrain``) must not leave a folder whose manifest says finished while
    a model file is gone: a kill while the old folder is being deleted means the next run fits again."""
    import attribution

    (train, ytr), (val, yva), _ = data
    fit_bundle("flat", train, ytr, val, yva, tmp_path / "bundle")
    real_rmtree = attribution.shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        path = Path(path)
        if (path / "flat.joblib").exists():  # the old bundle: one file gone, then the kill
            (path / "flat.joblib").unlink()
            raise KeyboardInterrupt("killed while deleting the old bundle")
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(attribution.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        fit_bundle("flat", train, ytr, val, yva, tmp_path / "bundle")
    monkeypatch.undo()
    assert bundle_exists("flat", tmp_path / "bundle"), "the new bundle is in place before the old one is deleted"
    load_bundle("flat", tmp_path / "bundle")  # complete
    fit_bundle("flat", train, ytr, val, yva, tmp_path / "bundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"], "old or staging folders were not cleaned up"


@pytest.mark.parametrize("per_class", [1, 2])
def test_both_methods_fit_on_a_handful_of_training_images(per_class, tmp_path):
    """Fewer than 3 images of a class: fewer folds (2), or neither tuning nor calibration (1)."""
    train, ytr = synthetic_features(per_class, 3)
    val, yva = synthetic_features(5, 4)
    for method in ("two-stage", "flat"):
        bundle = fit_bundle(method, train, ytr, val, yva, tmp_path / method)
        assert set(predict(bundle, val)) <= set(CLASS_NAMES)
    flat = load_bundle("flat", tmp_path / "flat")["flat"]
    assert flat.config["folds"] == min(per_class, 3)
    assert (flat.config["tuning"]["cv_log_loss"] is None) == (per_class == 1)


def test_lightgbm_uses_the_allotted_cores_and_fits_the_same_on_any_number(data, monkeypatch):
    """A one-CPU Slurm job fits with one thread, and the fit is the same as with two: the thread
    count must never change a submission."""
    from runtime import usable_cores
    from variant_classifier import FlatClassifier

    (train, train_labels), (val, _), _ = data
    if usable_cores() < 2:
        pytest.skip("one usable core: both fits would run one thread")
    probabilities = {}
    for cores in ("1", "2"):
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", cores)
        flat = FlatClassifier(seed=0).fit(train, train_labels)
        fitted = flat.model.calibrated_classifiers_[0].estimator
        assert fitted.n_jobs == usable_cores() <= int(cores)
        probabilities[cores] = flat.predict_proba(val).to_numpy()
    np.testing.assert_array_equal(probabilities["1"], probabilities["2"])


def test_every_feature_ablation_group_names_columns_the_extractor_writes(monkeypatch, one_small_lightgbm):
    """``scripts/ablate_features.py``: a renamed feature must not leave a group silently empty, and
    a group's refit must lose exactly its columns."""
    import sys
    from pathlib import Path

    from signals import SIGNALS

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import ablate_features

    columns = [f"{family}_{name}" for family in ("VAR", "RAR") for name in SIGNALS]
    columns += [f"{variant}_{stem}" for variant in VARIANT_NAMES for stem in FEATURE_STEMS]
    for group, in_group in ablate_features.GROUPS.items():
        assert any(in_group(c) for c in columns) == (group != "nothing"), group
    (train, train_labels), (val, val_labels) = synthetic_features(10, 3), synthetic_features(5, 4)
    larger_var = "larger VAR variants (var20, var24, var30)"
    monkeypatch.setattr(ablate_features, "GROUPS", {k: ablate_features.GROUPS[k] for k in ("nothing", larger_var)})
    table = ablate_features.ablate(train, train_labels, val, val_labels, only=("nothing", "larger VAR", "margins", "blend with"),
                                   train_cv_repeats=2)
    margins = "margins over the other variants (derived: _margin)"
    assert list(table.index) == ["nothing", larger_var, margins, ablate_features.NET_BLEND]
    assert table.loc["nothing", "features"] == table.loc[margins, "features"] == train.shape[1]
    # the refit without the blend keeps every column; only the blend weights are 0
    assert table.loc[ablate_features.NET_BLEND, ["features", "classifier_columns"]].tolist() == \
        table.loc["nothing", ["features", "classifier_columns"]].tolist()
    # a variant's likelihood columns go, its variant-net column stays (one pass of the net gives every variant's)
    assert "fnet_nll" in FEATURE_STEMS
    assert table.loc[larger_var, "features"] == train.shape[1] - 3 * (len(FEATURE_STEMS) - 1)
    # every variant's margin of every statistic is one classifier column
    assert table.loc["nothing", "classifier_columns"] - table.loc[margins, "classifier_columns"] == len(VARIANT_NAMES) * len(FEATURE_STEMS)
    assert table[["val_accuracy", "train_cv_accuracy"]].stack().between(0, 1).all()
    assert (table["train_cv_splits"].str.split().str.len() == 2).all()


def test_scoring_gate_simulation_blanks_what_the_gate_skips_and_counts_the_work(data, monkeypatch, one_small_lightgbm):
    """``scripts/simulate_scoring_gate.py``: a threshold of 0 keeps all the work, a gate that finds
    the families (the synthetic signals separate them) saves some and loses no validation image's
    own family; frames that already miss variant features are refused."""
    import sys
    from pathlib import Path

    from provenance import ScoringGate, leave_out_unneeded

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import simulate_scoring_gate

    (train, train_labels), (val, val_labels), _ = data
    everything = simulate_scoring_gate.simulate(train, train_labels, val, val_labels, per_class=10, min_probability=0.0)
    assert everything["work"] == pytest.approx(1.0) and everything["val_lost"] == 0
    # a small, softly calibrated synthetic gate: a higher threshold than the product's to skip anything
    gated = simulate_scoring_gate.simulate(train, train_labels, val, val_labels, per_class=10, min_probability=0.2)
    assert 0.4 < gated["work"] < 0.9 and gated["val_lost"] == 0
    assert all(0 <= gated[k] <= 1 for k in ("val_flat", "val_two_stage", "val_family_flat"))
    needs = ScoringGate(min_probability=0.2).fit(train, train_labels).needs(val)
    blanked = leave_out_unneeded(val, needs)
    assert blanked["var16_nll_marginal"].isna().to_numpy().tolist() == (~needs["VAR"]).tolist()
    assert not blanked.filter(regex="^(VAR|RAR)_").isna().any(axis=None), "family signals are never blanked"
    with pytest.raises(ValueError, match="score-all-variants"):
        simulate_scoring_gate.simulate(leave_out_unneeded(train, needs.reindex(train.index, fill_value=False)),
                                       train_labels, val, val_labels, per_class=10, min_probability=0.03)


def test_scoring_gate_simulation_refuses_an_empty_sample_when_parsed(tmp_path, capsys):
    """``scripts/simulate_scoring_gate.py --per-class 0``: refused before any feature file is read."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import simulate_scoring_gate

    with pytest.raises(SystemExit) as stopped:
        simulate_scoring_gate.main(["--per-class", "40", "0", "--train-features", str(tmp_path / "absent.parquet")])
    assert stopped.value.code == 2
    assert "--per-class: must be at least 1, got 0" in capsys.readouterr().err


def test_model_version_keys_each_method_to_its_own_code(monkeypatch, tmp_path):
    """A cached bundle's key holds the version of the code that fits it: a classifier change refits
    flat and two-stage but not PRADA, and a PRADA change only PRADA."""
    import flat_prada
    import variant_classifier
    from attribution import model_version

    before = {m: model_version(m) for m in ("flat", "two-stage", "prada")}
    monkeypatch.setattr(variant_classifier, "CLASSIFIER_VERSION", "test-changed")
    assert model_version("flat") != before["flat"] and model_version("two-stage") != before["two-stage"]
    assert model_version("prada") == before["prada"]
    monkeypatch.undo()
    monkeypatch.setattr(flat_prada, "PRADA_VERSION", "test-changed")
    assert model_version("prada") != before["prada"]
    assert model_version("flat") == before["flat"]
    with pytest.raises(ValueError, match="unknown method"):
        model_version("auto")
    # an edit of a fitting module that nobody marked with a new version refits too
    import attribution

    monkeypatch.undo()
    (tmp_path / "fitting_probe.py").write_text("WEIGHT = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(attribution._FITTING_MODULES, "frame", attribution._FITTING_MODULES["frame"] + ("fitting_probe",))
    probed = model_version("flat")
    assert probed != before["flat"] and model_version("flat") == probed
    (tmp_path / "fitting_probe.py").write_text("WEIGHT = 2\n")
    assert model_version("flat") != probed and model_version("prada") == before["prada"]
