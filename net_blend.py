"""Stage two's last step: the classifier's variant posterior blended with the variant net's.

A variant classifier (:mod:`variant_classifier`) learns from the labelled training images, a few
hundred per variant; a variant net (:mod:`variant_net`) from tens of thousands of fresh generations
per variant, and it never saw a Dataset image. Where the net knows the variants better than the
classifier can learn to use it from so few images (the demo zoo's VAR: the net's own answer names
more VAR variants than LightGBM with the net among its features, on validation and in
cross-validation on train), the classifier should defer to it; where the likelihoods know more
(the demo zoo's RAR), it should not. Both are one rule, a product of experts within the family::

    p(v) = p(family) · softmax_v((1 − w) · log p_clf(v | family) + w · log p_net(v))

with ``p(family)`` and ``p_clf(v | family)`` from the classifier's probabilities (the family's
columns, their sum and their share) and ``p_net(v) = exp(−{v}_fnet_nll)``. ``w = 0`` is the
classifier alone, ``w = 1`` the classifier's family with the net's variant. The weight is chosen
per family on train only (:func:`choose_weight`): the one of :data:`WEIGHTS` of lowest log-loss of
the true variant, within the family, on the classifier's calibrated out-of-fold probabilities of
the family's training images (nested cross-validation:
:meth:`variant_classifier.CalibratedLGBM.calibrated_out_of_fold`), the kind of probabilities the
weight is then applied to. Images the net did not score (no ``fnet_nll``: the scoring gate skipped
the family) keep the classifier's probabilities.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

__all__ = ["NET_STEM", "WEIGHTS", "net_log_posterior", "blend_family", "within_family_log_loss", "choose_weight"]

NET_STEM = "fnet_nll"  # variant_net.FEATURE_STEM (not imported: that would load torch for the classifiers)
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
_FLOOR = 1e-12  # probabilities below this count as this: log 0 would veto a variant outright


def net_log_posterior(features: pd.DataFrame, variants: Sequence[str]) -> Optional[pd.DataFrame]:
    """``log p_net(v)`` per image and variant (NaN where the net did not score the image), or None
    when ``features`` has no net column for some of ``variants``."""
    columns = [f"{v}_{NET_STEM}" for v in variants]
    if not all(c in features.columns for c in columns):
        return None
    return pd.DataFrame(-features[columns].to_numpy(np.float64), index=features.index, columns=list(variants))


def blend_family(proba: pd.DataFrame, net_log_p: pd.DataFrame, weight: float) -> pd.DataFrame:
    """``proba`` (rows sum to 1; columns include some of the family's variants, the columns of
    ``net_log_p``) with the family's block replaced by the blend of the module docstring. Rows where
    the net is missing, or ``weight = 0``, are returned unchanged."""
    block_cols = [v for v in net_log_p.columns if v in proba.columns]
    out = proba.copy()
    if weight == 0 or not block_cols:
        return out
    block = proba[block_cols].to_numpy(np.float64)
    net = net_log_p.loc[proba.index, block_cols].to_numpy(np.float64)
    has_net = ~np.isnan(net).any(axis=1)
    family_p = block.sum(axis=1, keepdims=True)
    log_clf = np.log(np.clip(block / np.where(family_p > 0, family_p, 1), _FLOOR, None))
    with np.errstate(invalid="ignore"):  # rows without the net are NaN here and not written
        log_net = net - np.logaddexp.reduce(net, axis=1, keepdims=True)
    mixed = (1 - weight) * log_clf + weight * np.nan_to_num(log_net)
    mixed = np.exp(mixed - mixed.max(axis=1, keepdims=True))
    blended = family_p * mixed / mixed.sum(axis=1, keepdims=True)
    out.loc[has_net, block_cols] = blended[has_net]
    return out


def within_family_log_loss(proba: pd.DataFrame, labels: Sequence[str], variants: Sequence[str]) -> float:
    """Mean ``−log p(true variant | family)`` over the rows (all labelled with one of ``variants``)."""
    block_cols = [v for v in variants if v in proba.columns]
    block = proba[block_cols].to_numpy(np.float64)
    truth = np.array([block_cols.index(label) for label in labels])
    conditional = block[np.arange(len(block)), truth] / np.clip(block.sum(axis=1), _FLOOR, None)
    return float(-np.log(np.clip(conditional, _FLOOR, None)).mean())


def choose_weight(oof_proba: pd.DataFrame, labels: Sequence[str], features: pd.DataFrame,
                  variants: Sequence[str]) -> Tuple[float, Dict[str, float]]:
    """The weight of :data:`WEIGHTS` of lowest :func:`within_family_log_loss` on the family's rows of
    ``oof_proba`` (out-of-fold probabilities of training images, aligned with ``labels``) that the
    net scored, and each weight's log-loss; ``(0.0, {})`` when the net or such rows are missing.
    A tie goes to the smaller weight."""
    net = net_log_posterior(features, variants)
    labels = np.asarray(labels)
    classes = [v for v in variants if v in oof_proba.columns]
    if net is None or len(classes) < 2:
        return 0.0, {}
    rows = np.isin(labels, classes) & ~net.loc[oof_proba.index].isna().any(axis=1).to_numpy()
    if not rows.any():
        return 0.0, {}
    losses = {w: within_family_log_loss(blend_family(oof_proba[rows], net, w), labels[rows], classes) for w in WEIGHTS}
    best = min(WEIGHTS, key=lambda w: (round(losses[w], 12), w))
    return best, {str(w): loss for w, loss in losses.items()}
