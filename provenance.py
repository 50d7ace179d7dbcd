"""Stage one: the family gate — VAR, RAR, or neither — from the family signals.

For each family the gate thresholds one signal (lower = belongs; compared in log space). The
signal is the family's most separating one on validation (highest TPR@1%FPR, ties by AUC) among
``CANDIDATE_SIGNALS``, unless given. The threshold comes from one of three strategies:

* ``fpr`` — accept at most ``target_fpr`` of the validation images that the family did *not* make
  (natural photos, outlier IARs and the other family);
* ``balanced`` — the threshold with the best balanced accuracy (belonging vs not) on validation;
* ``train_quantile`` — the ``quantile`` of the family's own *training* scores (no negatives needed).

An image accepted by both families goes to the one whose score is lowest relative to its
threshold (``log score − log threshold``); an image accepted by neither is ``outlier``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pandas as pd

from metrics import roc_auc, tpr_at_fpr
from models.registry import FAMILY_OF

__all__ = ["CANDIDATE_SIGNALS", "STRATEGIES", "FamilyGate", "family_of_labels"]

CANDIDATE_SIGNALS = ("combined", "quant_loss_searched", "quant_loss", "enc_loss")
STRATEGIES = ("fpr", "balanced", "train_quantile")
FAMILIES = ("VAR", "RAR")


def family_of_labels(labels: Sequence[str]) -> np.ndarray:
    """``VAR`` / ``RAR`` / ``outlier`` for class labels."""
    return np.array([FAMILY_OF.get(label, "outlier") for label in labels])


def _log(values: pd.Series | np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(values, dtype=np.float64), 1e-30, None))


def _threshold(strategy: str, own_val: np.ndarray, other_val: np.ndarray, own_train: np.ndarray,
               target_fpr: float, quantile: float) -> float:
    if strategy == "fpr":
        # largest log-threshold accepting at most target_fpr of the negatives (accept: score <= t)
        negatives = np.sort(other_val)
        allowed = int(np.floor(target_fpr * len(negatives)))
        return float(negatives[allowed] - 1e-9) if allowed < len(negatives) else float(negatives[-1])
    if strategy == "balanced":
        candidates = np.unique(np.concatenate([own_val, other_val]))
        best_t, best_score = float(candidates[0]), -1.0
        for t in candidates:
            score = 0.5 * (np.mean(own_val <= t) + np.mean(other_val > t))
            if score > best_score:
                best_t, best_score = float(t), score
        return best_t
    if strategy == "train_quantile":
        return float(np.quantile(own_train, quantile))
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


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
            if signals and family in signals:
                chosen = signals[family]
            else:
                scored = []
                for name in CANDIDATE_SIGNALS:
                    column = f"{family}_{name}"
                    if column in val.columns and val[column].notna().all():
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
        return pd.DataFrame({family: _log(features[f"{family}_{self.signals[family]}"]) - self.thresholds[family]
                             for family in FAMILIES}, index=features.index)

    def predict(self, features: pd.DataFrame) -> pd.Series:
        """``VAR`` / ``RAR`` / ``outlier`` per image."""
        margins = self.margins(features)
        best = margins.idxmin(axis=1)
        accepted = margins.min(axis=1) <= 0
        return best.where(accepted, "outlier").rename("family")

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path | str) -> "FamilyGate":
        return cls(**json.loads(Path(path).read_text()))
