"""One temperature for the final class probabilities, fitted on validation.

The attribution methods' probabilities are products of calibrated parts (the gate's family, the
classifier's variant, the variant net's blend), and the product is not calibrated itself: before
this module, the demo run's test answers given 0.5 to 0.9 were right 10 to 11 points more often
than their probability said (the README's *How far to trust one answer*). A temperature ``T`` maps a
distribution ``p`` to ``p^(1/T) / Σ p^(1/T)`` (``T < 1`` sharpens, ``T > 1`` flattens), which keeps
its order; a posterior made of factors (family, then variant) has each factor tempered, which keeps
each factor's order. ``T`` is the one of :data:`TEMPERATURES` of lowest log-loss of the validation
images' true classes: temperature scaling (Guo et al. 2017), on probabilities instead of logits,
which is the same since ``log p`` are logits up to a constant.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

__all__ = ["TEMPERATURES", "temper", "probability_of", "true_class_log_loss", "fit_temperature"]

TEMPERATURES = tuple(np.round(np.arange(0.25, 4.0 + 1e-9, 0.05), 2))  # the grid searched
# -log of the smallest positive double (708 nats): what a true class of probability 0 costs. Zeros
# stay zero at every temperature, so that cost is the same at every one and does not sway the fit;
# a small positive probability costs its own -log down to ~1e-308 (a floor of 1e-12 capped the
# cost of sharp temperatures at 27.6 nats and made them look better than they are).
_FLOOR = np.finfo(np.float64).tiny


def temper(proba: pd.DataFrame, temperature: float) -> pd.DataFrame:
    """Each row ``p`` as ``p^(1/T)``, renormalised; zeros stay zero (a row of zeros too), at ``T ≠ 1`` a row
    with a NaN is all NaN (it is not a distribution); ``T = 1`` returns ``proba`` as it is."""
    if temperature <= 0 or not np.isfinite(temperature):
        raise ValueError(f"a temperature must be positive and finite, got {temperature}")
    if temperature == 1.0:
        return proba.copy()
    values = proba.to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(values) / temperature
        top = logs.max(axis=1, keepdims=True) if values.shape[1] else np.zeros((len(values), 1))
        powered = np.exp(logs - np.where(np.isfinite(top), top, 0.0))
    sums = powered.sum(axis=1, keepdims=True)
    tempered = np.divide(powered, sums, out=np.zeros_like(powered), where=sums > 0)
    tempered[np.isnan(values).any(axis=1)] = np.nan
    return pd.DataFrame(tempered, index=proba.index, columns=proba.columns)


def probability_of(proba: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
    """Each row's probability of its label (the true class, or the answer given); 0 for a label that
    is not a column, NaN where the row has none."""
    labels = list(labels)
    if len(labels) != len(proba):
        raise ValueError(f"{len(labels)} labels for {len(proba)} rows of probabilities")
    columns = {name: i for i, name in enumerate(proba.columns)}
    values = proba.to_numpy(dtype=np.float64)
    return np.array([values[row, columns[label]] if label in columns else 0.0 for row, label in enumerate(labels)])


def true_class_log_loss(proba: pd.DataFrame, labels: Sequence[str]) -> float:
    """Mean ``−log p(true class)`` (:func:`probability_of`, floored at :data:`_FLOOR`) over the rows
    that have probabilities (NaN when none has)."""
    probability = probability_of(proba, labels)
    probability = probability[~np.isnan(probability)]
    return float(-np.log(np.maximum(probability, _FLOOR)).mean()) if len(probability) else float("nan")


def fit_temperature(probabilities_at: Callable[[float], pd.DataFrame], labels: Sequence[str]) -> float:
    """The temperature ``t`` of :data:`TEMPERATURES` whose ``probabilities_at(t)`` (e.g. ``lambda t:
    temper(proba, t)``, or a product of tempered factors) has the lowest :func:`true_class_log_loss`
    of ``labels``; of equal losses (validation that says nothing about ``t``), the one nearest 1;
    1 without images or without probabilities."""
    labels = list(labels)
    if not labels:
        return 1.0
    losses = [true_class_log_loss(probabilities_at(t), labels) for t in TEMPERATURES]
    losses = [loss if np.isfinite(loss) else np.inf for loss in losses]
    best = min(range(len(TEMPERATURES)), key=lambda k: (losses[k], abs(TEMPERATURES[k] - 1.0)))
    return float(TEMPERATURES[best])
