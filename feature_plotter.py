"""Look at the features: per-class distributions, per-family ROC curves, feature importance.

    python feature_plotter.py --features cache/report_features.parquet --labels labels.csv --out feature_report

Input: a feature frame (parquet/CSV, rows = images, as written by ``feature_extractor.py``) and
the images' labels (``image_name,label`` CSV whose names match the frame's index). Output: one
PNG per feature group with per-class box plots (log scale for the positive-valued signals — the
diagnosis that shows which features separate which classes), ROC curves of each family's
signals (belonging vs everything else), the LightGBM gain importance of a fitted model bundle if
``--models`` is given, and ``report.md`` embedding them all.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd

from models.registry import CLASS_NAMES, FAMILY_OF, VARIANT_NAMES

__all__ = ["plot_distributions", "plot_family_rocs", "plot_importance", "write_feature_report"]


def _plt() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_distributions(features: pd.DataFrame, labels: pd.Series, columns: Sequence[str], path: Path, title: str) -> None:
    """Box plots of each column by class (log10 for strictly positive columns)."""
    plt = _plt()
    cols = min(4, len(columns))
    rows = int(np.ceil(len(columns) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), dpi=90, squeeze=False)
    classes = [c for c in CLASS_NAMES if (labels == c).any()]
    for ax, column in zip(axes.flat, columns):
        values = features[column]
        log = bool((values > 0).all())
        data = [np.log10(values[labels == c].dropna()) if log else values[labels == c].dropna() for c in classes]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(classes) + 1), classes, rotation=60, fontsize=7)
        ax.set_title(("log10 " if log else "") + column, fontsize=8)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_family_rocs(features: pd.DataFrame, labels: pd.Series, path: Path) -> None:
    """ROC of every family signal (lower = belongs) against all other images."""
    from metrics import roc_points

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=90)
    for ax, family in zip(axes, ("VAR", "RAR")):
        own = labels.map(lambda l: FAMILY_OF.get(l) == family).to_numpy()
        for column in [c for c in features.columns if c.startswith(f"{family}_")]:
            v = features[column].to_numpy()
            if np.isfinite(v).all() and own.any() and (~own).any():
                fpr, tpr = roc_points(v[own], v[~own])
                ax.plot(fpr, tpr, label=column.split("_", 1)[1])
        ax.set_xscale("log")
        ax.set_xlim(1e-3, 1)
        ax.axvline(0.01, color="grey", lw=0.5)
        ax.set_title(f"{family}: belonging vs rest")
        ax.set_xlabel("FPR (log)")
        ax.set_ylabel("TPR")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_importance(models_dir: Path, path: Path, top: int = 25) -> Optional[Path]:
    """Gain importance (summed over calibration folds) of each saved LightGBM model."""
    import joblib

    models = sorted(models_dir.glob("*.joblib"))
    if not models:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 0.28 * top + 1.5), dpi=90, squeeze=False)
    for ax, model_path in zip(axes.flat, models):
        clf = joblib.load(model_path)
        gains = np.sum([c.estimator.booster_.feature_importance("gain") for c in clf.model.calibrated_classifiers_], axis=0)
        order = np.argsort(gains)[::-1][:top][::-1]
        ax.barh([clf.columns[i] for i in order], gains[order])
        ax.set_title(model_path.stem, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_feature_report(features: pd.DataFrame, labels: pd.Series, out: Path, models_dir: Optional[Path] = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    labels = labels.reindex(features.index)
    sections: List[str] = ["# Feature report", "", f"{len(features)} images, {features.shape[1]} features.", ""]
    groups = {"family_signals": [c for c in features.columns if c.split("_", 1)[0] in ("VAR", "RAR")]}
    for stem in ("nll_best", "nll_marginal", "nll_uncond", "cfg_gap", "minkpp", "hinge"):
        groups[stem] = [f"{v}_{stem}" for v in VARIANT_NAMES if f"{v}_{stem}" in features.columns]
    for name, columns in groups.items():
        if columns:
            plot_distributions(features, labels, columns, out / f"dist_{name}.png", name)
            sections += [f"## {name}", f"![{name}](dist_{name}.png)", ""]
    plot_family_rocs(features, labels, out / "family_rocs.png")
    sections += ["## Family signals: ROC", "![roc](family_rocs.png)", ""]
    if models_dir is not None and plot_importance(models_dir, out / "importance.png"):
        sections += ["## Feature importance (LightGBM gain)", "![importance](importance.png)", ""]
    (out / "report.md").write_text("\n".join(sections))
    return out / "report.md"


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, required=True, help="a feature frame, e.g. submission_report/features_val.parquet")
    parser.add_argument("--labels", type=Path, required=True, help="its labels, CSV image_name,label, e.g. submission_report/labels_val.csv")
    parser.add_argument("--models", type=Path, help="a model bundle folder (for feature importance)")
    parser.add_argument("--out", type=Path, default=Path("feature_report"), help="folder for the PNGs and report.md (default feature_report)")
    args = parser.parse_args(argv)
    from dataset import read_labelled_features

    features, labels = read_labelled_features(args.features, args.labels)
    labels = pd.Series(labels, index=features.index, name="label")
    print(write_feature_report(features, labels, args.out, args.models))
    return 0


if __name__ == "__main__":
    from cli import run_main

    sys.exit(run_main(main))
