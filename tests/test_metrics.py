"""TPR@FPR, AUC and thresholds on hand-made scores (lower score = belonging)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from metrics import balanced_accuracy_at, best_balanced_threshold, roc_auc, threshold_at_fpr, tpr_at_fpr


def test_perfect_separation():
    assert tpr_at_fpr([0.1, 0.2, 0.3], [1.0, 2.0, 3.0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.3], [1.0, 2.0, 3.0]) == 1.0


def test_reversed_scores_are_worst():
    assert tpr_at_fpr([5.0, 6.0], [1.0, 2.0]) == 0.0
    assert roc_auc([5.0, 6.0], [1.0, 2.0]) == 0.0


def test_tpr_at_fpr_counts_by_hand():
    neg = np.arange(100, dtype=float)  # 0 … 99
    pos = np.array([-1.0, -0.5, 0.5, 1.5, 50.0])
    assert tpr_at_fpr(pos, neg, 0.0) == pytest.approx(2 / 5)  # no negative accepted: score < 0
    # FPR ≤ 1 %: the negative at 0 may be accepted, so every score < 1 is: -1, -0.5, 0.5
    assert tpr_at_fpr(pos, neg, 0.01) == pytest.approx(3 / 5)
    # FPR ≤ 2 %: negatives 0 and 1 accepted, so also 1.5
    assert tpr_at_fpr(pos, neg, 0.02) == pytest.approx(4 / 5)


def test_tpr_at_fpr_reads_the_point_inside_a_run_of_ties():
    """Tied (belonging, non-belonging) pairs put ROC points on one diagonal line; the point at the
    target FPR is read even though it is in the middle of that line."""
    pos = np.r_[[0.0, 1.0, 2.0, 3.0, 4.0], np.arange(100, 195, dtype=float)]  # 100 belonging scores
    neg = np.r_[[0.0, 1.0, 2.0, 3.0, 4.0], np.arange(1000, 1095, dtype=float)]  # 100 others, 5 tied with them
    assert tpr_at_fpr(pos, neg, 0.03) == pytest.approx(3 / 100)
    assert tpr_at_fpr(pos, neg, 0.01) == pytest.approx(1 / 100)


def test_threshold_and_balanced_accuracy():
    """Thresholds accept ``score <= t``, the operating points of :func:`tpr_at_fpr`."""
    neg = np.arange(100, dtype=float)
    t = threshold_at_fpr(neg, 0.05)
    assert np.mean(neg <= t) == 0.05 and t < 5.0 and np.nextafter(t, np.inf) == 5.0
    assert balanced_accuracy_at(t, [-1.0, -2.0], neg) == pytest.approx(0.5 * (1 + 0.95))
    assert threshold_at_fpr(neg, 1.0) == np.inf
    tied = np.r_[np.zeros(10), np.arange(1, 91, dtype=float)]  # 10 % tied at the lowest score
    assert np.mean(tied <= threshold_at_fpr(tied, 0.05)) == 0.0
    pos = np.r_[-5.0, -4.0, 2.5]
    rng = np.random.default_rng(0)
    # the last pair ties 2/6 + 2/2 with 6/6 + 1/2 exactly, which fractions in floats do not see
    for own, other in ((pos, neg), (rng.normal(0, 1, 50), rng.normal(1, 1, 60)), (np.r_[1.0, 1.0, 2.0], np.r_[1.0, 3.0]),
                       (np.r_[0.0, 0.0, 3.0, 2.0, 3.0, 4.0], np.r_[1.0, 4.0])):
        t = best_balanced_threshold(own, other)
        exact = {c: Fraction(int((own <= c).sum()), len(own)) + Fraction(int((other > c).sum()), len(other))
                 for c in np.r_[own, other]}
        assert t == min(c for c, score in exact.items() if score == max(exact.values()))


def test_tpr_at_fpr_is_read_at_the_fpr_threshold():
    """One convention: the TPR at a target FPR is the share of belonging scores the threshold at
    that FPR accepts (when no belonging score ties a non-belonging one)."""
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(0, 1, 200), rng.normal(2, 1, 300)
    for fpr in (0.01, 0.05, 0.2):
        assert tpr_at_fpr(pos, neg, fpr) == pytest.approx(np.mean(pos <= threshold_at_fpr(neg, fpr)))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="non-finite"):
        tpr_at_fpr([np.nan, 1.0], [2.0])
    with pytest.raises(ValueError, match="non-empty"):
        roc_auc([], [1.0])
    for fpr in (-0.1, 1.5, float("nan")):  # a negative fpr read the largest score as its threshold
        with pytest.raises(ValueError, match="fpr must be in"):
            threshold_at_fpr([1.0, 2.0], fpr)
        with pytest.raises(ValueError, match="fpr must be in"):
            tpr_at_fpr([0.0], [1.0, 2.0], fpr)


def test_wilson_interval_matches_known_values():
    from scoring import proportion_interval, summary

    # the other closed form of Wilson's interval: (2np + z² ± z·√(z² + 4np(1 − p))) / (2(n + z²))
    low, high = proportion_interval(632, 900)
    assert abs(low - 0.671539) < 1e-5 and abs(high - 0.731187) < 1e-5
    assert proportion_interval(0, 10)[0] == 0.0 and abs(proportion_interval(10, 10)[1] - 1.0) < 1e-12
    assert proportion_interval(0, 10)[1] > 0.2  # not the degenerate normal-approximation interval [0, 0]
    stats = summary(["var16", "rarb", "outlier", "outlier"], ["var16", "rarl", "outlier", "var16"])
    assert stats["accuracy"] == 0.5 and stats["accuracy_ci95"][0] < 0.5 < stats["accuracy_ci95"][1]


def test_confidence_table_bins_answers_by_the_probability_they_were_given():
    from scoring import confidence_table

    truth = ["var16", "var16", "rarb", "outlier", "rarl", "var20"]
    answer = ["var16", "var20", "rarb", "outlier", "rarb", "var20"]
    confidence = [0.3, 0.5, 0.95, 1.0, 0.8, float("nan")]  # the last has none (an undecodable image)
    table = confidence_table(truth, answer, confidence)
    assert list(table.index) == ["0–0.5", "0.5–0.7", "0.7–0.9", "0.9–0.99", "0.99–1"]
    assert table["n"].tolist() == [2, 0, 1, 1, 1], "(low, high], the first bin with its low edge; NaN left out"
    assert table.loc["0–0.5", "accuracy"] == 0.5 and table.loc["0–0.5", "mean_confidence"] == pytest.approx(0.4)
    assert table.loc["0.7–0.9", "accuracy"] == 0.0 and table.loc["0.99–1", "accuracy"] == 1.0
    assert np.isnan(table.loc["0.5–0.7", "accuracy"])
    # a product of probabilities can round one step above 1: it counts in the top bin, not in none
    assert confidence_table(["var16"], ["var16"], [np.nextafter(1.0, 2.0)])["n"].tolist() == [0, 0, 0, 0, 1]


def test_probabilities_file_keeps_every_name_and_an_undecodable_image(tmp_path):
    """One row per image, by name; a name holding a carriage return or a comma reads back as one
    name; an image without probabilities (undecodable) keeps its label and gets empty fields."""
    import pandas as pd

    from models.registry import CLASS_NAMES
    from scoring import write_probabilities

    labels = pd.Series({"c\rd.png": "var16", "x,y.png": "outlier", "e.png": "rarb"})
    proba = pd.DataFrame(np.full((2, 9), 1 / 9), index=["e.png", "c\rd.png"], columns=list(CLASS_NAMES))
    rows = write_probabilities(tmp_path, labels, proba, pd.Series({"e.png": "rarb", "c\rd.png": "var20"}))
    read = pd.read_csv(tmp_path / "test_probabilities.csv", keep_default_na=False)
    assert read["image_name"].tolist() == ["c\rd.png", "e.png", "x,y.png"]
    assert read["label"].tolist() == ["var16", "rarb", "outlier"] and read.loc[2, "var16"] == ""
    assert sum(row["n"] for row in rows["bins"]) == 2 and rows["bins"][0]["accuracy"] == 0.5
    assert rows["log_loss"] == pytest.approx(np.log(9)), "the true class's probability, 1/9 for both"
    assert (tmp_path / "test_confidence.png").read_bytes().startswith(b"\x89PNG"), "the reliability diagram"


def test_temperature_keeps_each_row_in_order_and_is_fitted_on_the_log_loss():
    import pandas as pd

    from calibration import TEMPERATURES, fit_temperature, temper, true_class_log_loss

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (400, 4))
    truth = np.array([rng.choice(4, p=np.exp(2 * r) / np.exp(2 * r).sum()) for r in logits])  # sharper than the stated
    stated = pd.DataFrame(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), columns=list("abcd"))
    labels = [list("abcd")[t] for t in truth]
    fitted = fit_temperature(lambda t: temper(stated, t), labels)
    assert 0.35 <= fitted <= 0.7, "about 1/2: the truth was drawn from the stated logits times 2"
    losses = {t: true_class_log_loss(temper(stated, t), labels) for t in TEMPERATURES}
    assert losses[fitted] == min(losses.values()) and losses[fitted] < losses[1.0]
    sharpened = temper(stated, fitted)
    assert np.allclose(sharpened.sum(axis=1), 1.0) and (sharpened.idxmax(axis=1) == stated.idxmax(axis=1)).all()
    assert np.array_equal(np.argsort(sharpened.to_numpy(), 1), np.argsort(stated.to_numpy(), 1)), "each row's order kept"
    zeros = pd.DataFrame([[0.0, 0.25, 0.75]], columns=list("xyz"))
    assert temper(zeros, 0.5).iloc[0, 0] == 0.0 and temper(zeros, 1.0).equals(zeros)
    assert temper(zeros, 0.5).iloc[0, 2] == pytest.approx(0.75 ** 2 / (0.75 ** 2 + 0.25 ** 2))
    assert fit_temperature(lambda t: temper(stated.iloc[:0], t), []) == 1.0
    # validation that says nothing about the temperature (hard answers, right or wrong) keeps 1
    hard = pd.DataFrame([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], columns=list("ab"))
    assert fit_temperature(lambda t: temper(hard, t), ["a", "b", "b"]) == 1.0
    # a tiny true-class probability is charged in full: 99 even rows and one near-certain miss
    # favour flattening, not the sharpest temperature (which a floor of 1e-12 once picked)
    tiny = pd.DataFrame([[0.5, 0.5]] * 99 + [[1 - 1e-8, 1e-8]], columns=list("ab"))
    assert fit_temperature(lambda t: temper(tiny, t), ["b"] * 100) > 1.0
    assert temper(pd.DataFrame([[0.0, 0.0]]), 0.5).to_numpy().tolist() == [[0.0, 0.0]]
    with pytest.raises(ValueError, match="2 labels for 3 rows"):
        true_class_log_loss(hard, ["a", "b"])
    with pytest.raises(ValueError, match="positive"):
        temper(zeros, 0.0)
    # a row with a NaN is no distribution: it stays NaN whole, and the log-loss leaves it out
    holed = pd.DataFrame([[0.2, np.nan, 0.8], [0.25, 0.25, 0.5]], columns=list("xyz"))
    assert np.isnan(temper(holed, 0.5).iloc[0]).all() and temper(holed, 0.5).iloc[1].sum() == pytest.approx(1.0)
    assert true_class_log_loss(temper(holed, 0.5), ["z", "z"]) == pytest.approx(-np.log(0.25 / 0.375)), "row 1 alone"
    assert np.isnan(true_class_log_loss(temper(holed.iloc[:1], 0.5), ["z"]))
    assert fit_temperature(lambda t: temper(holed.iloc[:1], t), ["z"]) == 1.0, "no probabilities: 1"

