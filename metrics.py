"""Detection metrics for per-image scores where LOWER means "belongs to the model".

Every loss in this project (QuantLoss, EncLoss, Combined, NLLs …) is lower for belonging images.
``sklearn.metrics.roc_curve`` wants higher scores for the positive class, so the scores are
negated (the paper's code instead rescales to [0, 1] and flips; the ROC is the same). TPR at a
target FPR is read at the largest operating point whose FPR does not exceed the target; tied
scores move together, as ``roc_curve``'s thresholds do. A threshold ``t`` accepts ``score <= t``,
the same operating points.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["tpr_at_fpr", "roc_auc", "roc_points", "threshold_at_fpr", "balanced_accuracy_at", "best_balanced_threshold"]


def _check(name: str, values: ArrayLike) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of scores, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(arr)).sum())} non-finite score(s)")
    return arr


def _check_fpr(fpr: float) -> None:
    if not 0.0 <= fpr <= 1.0:  # also refuses NaN
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")


def _labels_and_scores(belonging: ArrayLike, non_belonging: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    pos, neg = _check("belonging", belonging), _check("non_belonging", non_belonging)
    return np.r_[np.ones(len(pos)), np.zeros(len(neg))], -np.r_[pos, neg]


def roc_points(belonging: ArrayLike, non_belonging: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of the ROC curve (belonging = positive, lower score = more positive)."""
    from sklearn.metrics import roc_curve

    y, s = _labels_and_scores(belonging, non_belonging)
    # every operating point: the default drops the middle of collinear runs, which can be the one at the target FPR
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr


def tpr_at_fpr(belonging: ArrayLike, non_belonging: ArrayLike, fpr: float = 0.01) -> float:
    """True-positive rate at the largest ROC point with false-positive rate ≤ ``fpr``."""
    _check_fpr(fpr)
    fprs, tprs = roc_points(belonging, non_belonging)
    return float(tprs[np.searchsorted(fprs, fpr, side="right") - 1])


def roc_auc(belonging: ArrayLike, non_belonging: ArrayLike) -> float:
    """Area under the ROC curve (1.0: every belonging image scores below every other)."""
    from sklearn.metrics import roc_auc_score

    y, s = _labels_and_scores(belonging, non_belonging)
    return float(roc_auc_score(y, s))


def threshold_at_fpr(non_belonging: ArrayLike, fpr: float = 0.01) -> float:
    """Largest threshold ``t`` such that ``score <= t`` accepts at most ``fpr`` of ``non_belonging``
    (just below the first score it must not accept; ``inf`` when it may accept them all)."""
    _check_fpr(fpr)
    neg = np.sort(_check("non_belonging", non_belonging))
    allowed = int(np.floor(fpr * len(neg)))
    return float(np.nextafter(neg[allowed], -np.inf)) if allowed < len(neg) else float(np.inf)


def balanced_accuracy_at(threshold: float, belonging: ArrayLike, non_belonging: ArrayLike) -> float:
    """Mean of TPR and TNR when ``score <= threshold`` means belonging."""
    pos, neg = _check("belonging", belonging), _check("non_belonging", non_belonging)
    return float(0.5 * (np.mean(pos <= threshold) + np.mean(neg > threshold)))


def best_balanced_threshold(belonging: ArrayLike, non_belonging: ArrayLike) -> float:
    """The score ``t`` of either set that maximises :func:`balanced_accuracy_at` (the lowest of equals)."""
    pos, neg = np.sort(_check("belonging", belonging)), np.sort(_check("non_belonging", non_belonging))
    candidates = np.unique(np.r_[pos, neg])
    true_pos = np.searchsorted(pos, candidates, side="right")
    true_neg = len(neg) - np.searchsorted(neg, candidates, side="right")
    # balanced accuracy × 2·|pos|·|neg|, in integers: equal scores compare equal (fractions would not)
    return float(candidates[np.argmax(true_pos * len(neg) + true_neg * len(pos))])
