"""Paper-style evaluation of family attribution: which signal separates a family's images from the rest.

For a family F, *belonging* images are those made by F's variants; *non-belonging* images come in
three groups — held-out natural photos (``natural``), the other family (``other_family``) and a
third IAR (``outlier_iar``) — each evaluated separately and pooled (``all``). Scores are per-image
signal values where lower means belonging; metrics are TPR at 1 % FPR and ROC AUC from
:mod:`metrics`. Everything here is a pure function of a signal frame (rows = images, columns
``{family}_{encoder}_{signal}``) and the images' sources, so the tables can be rebuilt from the
saved CSV without recomputing a single signal.
"""
from __future__ import annotations

from typing import Dict, Iterable, List

import numpy as np
import pandas as pd

from metrics import roc_auc, tpr_at_fpr
from models.registry import FAMILY_OF, VARIANT_NAMES

__all__ = ["source_group", "per_source_subset", "evaluation_table", "paper_tables", "NON_BELONGING_GROUPS"]

NON_BELONGING_GROUPS = ("natural", "other_family", "outlier_iar", "all")


def source_group(source: str, label: str | None, family: str) -> str:
    """``belonging``, ``natural``, ``other_family`` or ``outlier_iar`` for one image, w.r.t. ``family``."""
    if source in VARIANT_NAMES:
        return "belonging" if FAMILY_OF[source] == family else "other_family"
    if label in VARIANT_NAMES:
        return "belonging" if FAMILY_OF[label] == family else "other_family"
    return "outlier_iar" if "iar" in str(source).lower() else "natural"


def per_source_subset(meta: pd.DataFrame, limit: int, seed: int) -> pd.Index:
    """A fixed random subset of ``limit`` images per ``source`` (for the slow optimisation signals)."""
    return (meta.groupby("source", group_keys=False)
            .apply(lambda g: g.sample(min(len(g), limit), random_state=seed)).index)


def evaluation_table(signals: pd.DataFrame, meta: pd.DataFrame, families: Iterable[str] = ("VAR", "RAR"),
                     fpr: float = 0.01) -> pd.DataFrame:
    """Long table: family, encoder, signal, non_belonging, n_belonging, n_non_belonging, tpr_at_fpr, auc."""
    rows: List[Dict[str, object]] = []
    for family in families:
        groups = pd.Series([source_group(s, l, family) for s, l in zip(meta["source"], meta["label"])], index=meta.index)
        for column in [c for c in signals.columns if c.startswith(f"{family}_")]:
            _, encoder, signal = column.split("_", 2)
            values = signals[column]
            belonging = values[groups.reindex(values.index) == "belonging"].dropna().to_numpy()
            for group in NON_BELONGING_GROUPS:
                mask = groups.reindex(values.index) != "belonging" if group == "all" else groups.reindex(values.index) == group
                non_belonging = values[mask].dropna().to_numpy()
                if len(belonging) == 0 or len(non_belonging) == 0:
                    continue
                rows.append(dict(family=family, encoder=encoder, signal=signal, non_belonging=group,
                                 n_belonging=len(belonging), n_non_belonging=len(non_belonging),
                                 tpr_at_fpr=tpr_at_fpr(belonging, non_belonging, fpr), auc=roc_auc(belonging, non_belonging)))
    return pd.DataFrame(rows)


def _pivot(table: pd.DataFrame, index: List[str]) -> pd.DataFrame:
    pivot = table.pivot_table(index=index, columns="non_belonging", values="tpr_at_fpr", aggfunc="first")
    return pivot[[g for g in NON_BELONGING_GROUPS if g in pivot.columns]] * 100


def paper_tables(table: pd.DataFrame) -> Dict[str, pd.DataFrame]:
    """The analogues of the paper's Tables 1, 3, 4 and 5 (TPR@1%FPR in %)."""
    t = table
    ours = t[(t.encoder == "inv") & t.signal.isin(["quant_loss", "quant_loss_searched", "enc_loss", "combined", "enc_loss_refined",
                                                   "latent_tracer"])]
    baselines = t[(t.encoder == "orig") & t.signal.isin(["reconstruction", "aedr", "latent_tracer"])]
    return {
        "table1_signals_vs_baselines": _pivot(pd.concat([ours, baselines]), ["family", "encoder", "signal"]),
        "table3_original_vs_inverse": _pivot(t[t.signal.isin(["quant_loss", "quant_loss_searched", "enc_loss", "combined", "latent_tracer"])],
                                             ["family", "signal", "encoder"]),
        "table4_calibration": _pivot(t[t.signal.isin(["enc_loss_raw", "enc_loss"])], ["family", "encoder", "signal"]),
        "table5_var_token_search": _pivot(t[(t.family == "VAR") & t.signal.isin(["quant_loss", "quant_loss_searched"])],
                                          ["family", "encoder", "signal"]),
    }


def best_signal(table: pd.DataFrame, family: str, encoder: str = "inv") -> str:
    """The signal with the highest worst-case TPR@1%FPR over the three non-belonging groups."""
    t = table[(table.family == family) & (table.encoder == encoder) & (table.non_belonging != "all")]
    worst = t.groupby("signal")["tpr_at_fpr"].min()
    return str(worst.idxmax()) if len(worst) else ""


def score_distribution_png(signals: pd.DataFrame, meta: pd.DataFrame, columns: List[str], path: str) -> None:
    """Histograms of log-scores by source group (the paper's Fig. A1), one panel per column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(columns)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), dpi=100, squeeze=False)
    for ax, column in zip(axes.flat, columns):
        family = column.split("_", 1)[0]
        groups = pd.Series([source_group(s, l, family) for s, l in zip(meta["source"], meta["label"])], index=meta.index)
        values = np.log10(signals[column].clip(lower=1e-12))
        for group in ("belonging", "natural", "other_family", "outlier_iar"):
            v = values[groups.reindex(values.index) == group].dropna()
            if len(v):
                ax.hist(v, bins=40, alpha=0.5, label=f"{group} ({len(v)})")
        ax.set_title(column, fontsize=9)
        ax.set_xlabel("log10 score")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
