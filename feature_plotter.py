"""Look at the features: per-class distributions, per-family ROC curves, feature importance.

    python feature_plotter.py --features submission_report/features_val.parquet \\
        --labels submission_report/labels_val.csv --out feature_report [--models cache/models/two-stage-…]

Input: a feature frame (parquet/CSV, rows = images, as ``submission.py`` leaves in its report
folder or ``feature_extractor.py`` writes) and the images' labels (``image_name,label`` CSV whose
names match the frame's index). Output: one PNG per feature group — the family signals, and one
group per kind of per-variant feature the frame holds (``{variant}_{kind}``: ``nll_best``,
``fnet_nll``, ``nll_evidence``, ``nll_sampling``, …) — with per-class box plots (log scale for
the positive-valued signals — the diagnosis that shows which features separate which classes;
each box says from how many images it is drawn, ``n=``, since the scoring gate leaves a family's
variant features out of the images it finds unlikely to be of that family), ROC curves of each
family's signals (belonging vs everything else), the LightGBM gain importance of a fitted model
bundle if ``--models`` is given (a folder that is missing or holds no ``*.joblib`` model is refused
before anything is drawn; :func:`write_feature_report`, called from code, warns instead), and ``report.md``
embedding them all, naming its inputs and saying what each kind of plot shows. An earlier report's
files in ``--out`` are removed first, so none of them passes for this one's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from models.registry import CLASS_NAMES, FAMILIES, FAMILY_OF, VARIANT_NAMES

__all__ = ["feature_groups", "plot_distributions", "plot_family_rocs", "plot_importance", "write_feature_report",
           "REPORT_PATTERNS"]


def _plt() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_distributions(features: pd.DataFrame, labels: pd.Series, columns: Sequence[str], path: Path, title: str) -> None:
    """Box plots of each column by class (log10 for strictly positive columns), each class's tick
    naming how many images have a value there (``n=``; the scoring gate leaves some out)."""
    plt = _plt()
    cols = min(4, len(columns))
    rows = int(np.ceil(len(columns) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), dpi=90, squeeze=False)
    classes = [c for c in CLASS_NAMES if (labels == c).any()]
    for ax, column in zip(axes.flat, columns):
        values = features[column].astype(float)
        present = values.dropna()
        log = bool(len(present)) and bool((present > 0).all())
        data = [values[labels == c].dropna() for c in classes]
        data = [np.log10(d) if log else d for d in data]
        ax.boxplot([d if len(d) else [np.nan] for d in data], showfliers=False)
        ax.set_xticks(range(1, len(classes) + 1), [f"{c}\nn={len(d)}" for c, d in zip(classes, data)], rotation=60, fontsize=6)
        ax.set_title(("log10 " if log else "") + column, fontsize=8)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_family_rocs(features: pd.DataFrame, labels: pd.Series, path: Path) -> None:
    """ROC of every family signal (lower = belongs) against all other images, each curve's legend
    entry with its AUC and its TPR at 1 % FPR (over the images with a finite value, named when
    fewer than all)."""
    from metrics import roc_auc, roc_points, tpr_at_fpr

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6), dpi=90)
    for ax, family in zip(axes, FAMILIES):
        own = labels.map(lambda l: FAMILY_OF.get(l) == family).to_numpy()
        for column in [c for c in features.columns if c.startswith(f"{family}_")]:
            v = features[column].to_numpy(dtype=float)
            finite = np.isfinite(v)
            if (own & finite).any() and (~own & finite).any():
                pos, neg = v[own & finite], v[~own & finite]
                fpr, tpr = roc_points(pos, neg)
                counted = "" if finite.all() else f", n={int(finite.sum())}"
                ax.plot(fpr, tpr, label=f"{column.split('_', 1)[1]} (AUC {roc_auc(pos, neg):.3f}, "
                                        f"TPR@1% {tpr_at_fpr(pos, neg):.2f}{counted})")
        ax.set_xscale("log")
        ax.set_xlim(1e-3, 1)
        ax.set_ylim(0, 1.02)
        ax.axvline(0.01, color="grey", lw=0.7, ls="--", label="1 % FPR")
        ax.set_title(f"{family}: its {int(own.sum())} images vs the other {int((~own).sum())}", fontsize=10)
        ax.set_xlabel("false-positive rate (log scale)")
        ax.set_ylabel("true-positive rate")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # below: no curve hidden
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
        ax.set_xlabel("gain (summed over calibration folds)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def feature_groups(columns: Sequence[str]) -> Dict[str, List[str]]:
    """The numeric feature columns present, grouped: ``family_signals`` (``VAR_*``, ``RAR_*``), then
    one group per per-variant kind ``{variant}_{kind}`` in the order the kinds first appear (the
    variants in :data:`models.registry.VARIANT_NAMES` order), then ``other`` for the rest."""
    present = set(columns)
    family = [c for c in columns if c.split("_", 1)[0] in FAMILIES]
    kinds = dict.fromkeys(kind for variant, sep, kind in (c.partition("_") for c in columns) if sep and variant in VARIANT_NAMES)
    per_variant = {kind: [f"{v}_{kind}" for v in VARIANT_NAMES if f"{v}_{kind}" in present] for kind in kinds}
    grouped = set(family).union(*per_variant.values())
    groups = {"family_signals": family, **per_variant, "other": [c for c in columns if c not in grouped]}
    return {name: cols for name, cols in groups.items() if cols}


# the files write_feature_report writes: an earlier report's that this one does not rewrite are removed
REPORT_PATTERNS = ("dist_*.png", "family_rocs.png", "importance.png", "report.md")
BOX_NOTE = ("Per class (x axis, in class order; `n=`: images with a value): the box spans the quartiles, the line is "
            "the median, whiskers reach the furthest value within 1.5 box lengths, values beyond are not drawn. "
            "A panel titled `log10` shows log10 of the feature (every value positive).")
ROC_NOTE = ("Per family, its variants' images are the positives and all others (the other family and outliers) the "
            "negatives; a lower score means belonging. False-positive rate on a log scale, the dashed line at 1 %; "
            "the legend gives each signal's AUC and its TPR at 1 % FPR.")
IMPORTANCE_NOTE = ("LightGBM's gain per feature, summed over the calibration folds, the top 25 per fitted model "
                   "(`learned_gate`: the family gate; `VAR`, `RAR`: each family's variant classifier; `flat`: the "
                   "9-class model).")


def write_feature_report(features: pd.DataFrame, labels: pd.Series, out: Path, models_dir: Optional[Path] = None,
                         sources: Optional[Dict[str, Path]] = None) -> Path:
    """The PNGs and ``report.md`` in ``out`` (an earlier report's files there are removed first:
    :data:`REPORT_PATTERNS`), naming ``sources`` (e.g. the features and labels files) and the
    images per class; a warning when ``models_dir`` holds no model to show."""
    from cli import warn

    out.mkdir(parents=True, exist_ok=True)
    for stale in sorted({p for pattern in REPORT_PATTERNS for p in out.glob(pattern)}):
        stale.unlink()
    labels = labels.reindex(features.index)
    numeric = features.select_dtypes(include=[np.number, bool])
    counts = labels.value_counts()
    sections: List[str] = ["# Feature report", "", f"{len(features)} images, {features.shape[1]} features.", ""]
    sections += [f"- {what}: `{where}`" for what, where in {**(sources or {}), "models": models_dir}.items() if where]
    sections += ["- images per class: " + ", ".join(f"{c} {int(counts.get(c, 0))}" for c in CLASS_NAMES), "",
                 "## Feature distributions per class", "", BOX_NOTE, ""]
    for name, columns in feature_groups(list(numeric.columns)).items():
        plot_distributions(numeric, labels, columns, out / f"dist_{name}.png", name)
        sections += [f"### {name}", ""]
        present = numeric[columns].notna().sum()
        if present.min() < len(features):  # the scoring gate's doing: say it beside the plot, too
            sections += [f"Values present in {present.min()}–{present.max()} of the {len(features)} images per column "
                         "(n= under each box).", ""]
        sections += [f"![{name}](dist_{name}.png)", ""]
    plot_family_rocs(features, labels, out / "family_rocs.png")
    sections += ["## Family signals: ROC", "", ROC_NOTE, "", "![roc](family_rocs.png)", ""]
    if models_dir is not None:
        if not models_dir.is_dir():
            warn("--models is not a folder; no feature importance", [models_dir])
        elif plot_importance(models_dir, out / "importance.png"):
            sections += ["## Feature importance (LightGBM gain)", "", IMPORTANCE_NOTE, "", "![importance](importance.png)", ""]
        else:
            warn("--models holds no *.joblib model (give a bundle folder, e.g. cache/models/two-stage-…); no feature importance",
                 [models_dir])
    (out / "report.md").write_text("\n".join(sections), encoding="utf-8")  # en dashes: not the locale's encoding
    return out / "report.md"


def model_bundle(text: str) -> Path:
    """An argparse ``type``: a folder holding fitted models (``*.joblib``), refused before any plot is drawn."""
    from cli import existing_folder

    hint = "give a model bundle folder, e.g. cache/models/two-stage-…"
    folder = existing_folder(hint)(text)
    if not any(folder.glob("*.joblib")):
        raise argparse.ArgumentTypeError(f"{text} holds no *.joblib model; {hint}")
    return folder


def main(argv: Optional[list] = None) -> int:
    from cli import output_folder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, required=True, help="a feature frame, e.g. submission_report/features_val.parquet")
    parser.add_argument("--labels", type=Path, required=True, help="its labels, CSV image_name,label, e.g. submission_report/labels_val.csv")
    parser.add_argument("--models", type=model_bundle,
                        help="a model bundle folder, e.g. cache/models/two-stage-… (for feature importance)")
    parser.add_argument("--out", type=output_folder, default=Path("feature_report"), help="folder for the PNGs and report.md (default feature_report); an earlier report's "
                             "there (dist_*.png, family_rocs.png, importance.png, report.md) is removed first")
    args = parser.parse_args(argv)
    from dataset import read_labelled_features

    features, labels = read_labelled_features(args.features, args.labels)
    labels = pd.Series(labels, index=features.index, name="label")
    print(write_feature_report(features, labels, args.out, args.models, {"features": args.features, "labels": args.labels}))
    return 0


if __name__ == "__main__":
    from cli import run_module

    sys.exit(run_module("feature_plotter"))
