"""Scoring predicted labels: 9-class accuracy, family accuracy, per-class precision/recall, confusion.

Pure functions over label arrays; :func:`write_report` adds a confusion-matrix PNG and a
Markdown summary for a person to read. Accuracies come with a 95 % Wilson score interval
(:func:`proportion_interval`): on 900 images an accuracy near 70 % is known to about ±3 points,
so two methods or versions a point apart on one test split are not told apart by it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from models.registry import CLASS_NAMES
from provenance import family_of_labels

__all__ = ["proportion_interval", "interval_text", "summary", "per_class_table", "confusion", "confidence_table", "report_files",
           "markdown_table", "write_report", "PROBABILITIES_FILE", "CONFIDENCE_FILE", "CONFIDENCE_PNG", "write_probabilities"]

PROBABILITIES_FILE = "test_probabilities.csv"  # per test image: its label and the 9 probabilities it was read from
CONFIDENCE_FILE = "test_confidence.csv"  # with test labels: accuracy per bin of the answer's probability
CONFIDENCE_PNG = "test_confidence.png"  # the same as a reliability diagram
CONFIDENCE_EDGES = (0.0, 0.5, 0.7, 0.9, 0.99, 1.0)


def proportion_interval(successes: int, n: int, z: float = 1.959964) -> Tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (95 % for the default ``z``)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def interval_text(interval: Sequence[float]) -> str:
    """A ``(low, high)`` proportion interval as percentages, ``"67.2–73.1"``."""
    return f"{100 * interval[0]:.1f}–{100 * interval[1]:.1f}"


def summary(y_true: Sequence[str], y_pred: Sequence[str]) -> Dict[str, float]:
    """``n``, 9-class ``accuracy`` with its 95 % interval ``accuracy_ci95``, ``family_accuracy``, ``outlier_recall``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    outliers = y_true == "outlier"
    hits = y_true == y_pred
    return {
        "n": int(len(y_true)),
        "accuracy": float(np.mean(hits)),
        "accuracy_ci95": list(proportion_interval(int(hits.sum()), len(y_true))),
        "family_accuracy": float(np.mean(family_of_labels(y_true) == family_of_labels(y_pred))),
        "outlier_recall": float(np.mean(y_pred[outliers] == "outlier")) if outliers.any() else float("nan"),
    }


def per_class_table(y_true: Sequence[str], y_pred: Sequence[str]) -> pd.DataFrame:
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(CLASS_NAMES), zero_division=0)
    return pd.DataFrame({"precision": p, "recall": r, "f1": f, "support": s}, index=list(CLASS_NAMES))


def confusion(y_true: Sequence[str], y_pred: Sequence[str]) -> pd.DataFrame:
    from sklearn.metrics import confusion_matrix

    return pd.DataFrame(confusion_matrix(y_true, y_pred, labels=list(CLASS_NAMES)),
                        index=pd.Index(CLASS_NAMES, name="true"), columns=pd.Index(CLASS_NAMES, name="predicted"))


def confidence_table(y_true: Sequence[str], y_pred: Sequence[str], confidence: Sequence[float],
                     edges: Sequence[float] = CONFIDENCE_EDGES) -> pd.DataFrame:
    """Per bin ``(low, high]`` of ``confidence`` (the probability each answer was given; the first bin
    includes its low edge): ``n``, ``mean_confidence`` and ``accuracy``. Where a method is
    calibrated, the two columns agree. Images without a confidence (NaN) are left out; one a
    rounding step outside ``[0, 1]`` counts at the edge.

    An answer ``outlier`` given by rejecting a variant has the probability of ``outlier``, which
    is mostly low (flat: below the rejection threshold before the temperature; two-stage: the
    gate's own, 0 for a threshold gate): right rejections land in the low bins and raise their
    accuracy."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    confidence = np.clip(np.asarray(confidence, dtype=np.float64), edges[0], edges[-1])  # NaN stays NaN
    known = ~np.isnan(confidence)
    bins = pd.cut(confidence[known], list(edges), include_lowest=True)
    frame = pd.DataFrame({"confidence": confidence[known], "hit": (y_true == y_pred)[known]})
    grouped = frame.groupby(bins, observed=False)
    table = pd.DataFrame({"n": grouped.size(), "mean_confidence": grouped["confidence"].mean(), "accuracy": grouped["hit"].mean()})
    table.index = [f"{low:g}–{high:g}" for low, high in zip(edges[:-1], edges[1:])]
    return table.rename_axis("confidence")


def write_probabilities(folder: Path | str, labels: pd.Series, probabilities: pd.DataFrame,
                        truth: Optional[pd.Series] = None) -> Optional[dict]:
    """Write :data:`PROBABILITIES_FILE` (by image name, as ``submission.csv``; an image ``labels``
    has and ``probabilities`` has not — an undecodable one — gets its label and no probabilities)
    and, with ``truth`` (labels of some test images), :data:`CONFIDENCE_FILE`
    (:func:`confidence_table` of the probability of each answer) with its reliability diagram
    :data:`CONFIDENCE_PNG`; returns its rows (``bins``) and
    the mean ``−log p`` of the true class (``log_loss``, over the images with probabilities)."""
    from atomic import atomic_path
    from calibration import probability_of, true_class_log_loss
    from dataset import csv_quoting

    folder, names = Path(folder), sorted(labels.index)
    table = pd.concat([labels.reindex(names).rename("label"), probabilities.reindex(names)], axis=1).rename_axis("image_name")
    with atomic_path(folder / PROBABILITIES_FILE) as tmp:
        table.to_csv(tmp, float_format="%.6f", lineterminator="\n", quoting=csv_quoting(table.index.astype(str)))
    if truth is None or not len(truth):
        return None
    scored = table.reindex(truth.index)
    calibration = confidence_table(truth, scored["label"], probability_of(scored[list(CLASS_NAMES)], scored["label"]))
    with atomic_path(folder / CONFIDENCE_FILE) as tmp:
        calibration.to_csv(tmp, float_format="%.4f", lineterminator="\n")
    _confidence_png(calibration, folder / CONFIDENCE_PNG)
    log_loss = true_class_log_loss(scored[list(CLASS_NAMES)], truth)  # over the rows with probabilities
    return {"log_loss": log_loss, "bins": calibration.reset_index().to_dict(orient="records")}


def _confusion_png(matrix: pd.DataFrame, path: Path, title: str, stats: Dict[str, float]) -> None:
    """The confusion matrix as image counts (not normalised: each row sums to its class's images;
    a blank cell is 0), titled with ``title``, the image count and the accuracy of ``stats``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 5.8), dpi=110)
    shown = ax.imshow(matrix.to_numpy(), cmap="Blues")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="images")
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted (cells: image counts, blank = 0)")
    ax.set_ylabel("true")
    peak = matrix.to_numpy().max() or 1
    for i in range(len(CLASS_NAMES)):
        for j in range(len(CLASS_NAMES)):
            v = matrix.iat[i, j]
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > peak / 2 else "black")
    ax.set_title(f"{title}: {stats['n']} images, accuracy {_percent_text(stats['accuracy'])}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _confidence_png(table: pd.DataFrame, path: Path) -> None:
    """Reliability diagram of a :func:`confidence_table`: each bin's accuracy against its mean
    probability, marked by its image count; on the diagonal a method's probabilities are frequencies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = table[table["n"] > 0]
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=110)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    for name, row in shown.iterrows():  # one entry per bin in the legend: labels beside the points overlapped at the top
        ax.scatter(row["mean_confidence"], row["accuracy"], s=20 + 280 * row["n"] / max(shown["n"].max(), 1), zorder=3,
                   alpha=0.8, label=f"{name}: {int(row['n'])} images, mean {row['mean_confidence']:.3f}, "
                                    f"{100 * row['accuracy']:.1f} % right")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("mean probability of the answer (per bin)")
    ax.set_ylabel("share of answers right")
    ax.set_title("Test: how far to trust one answer")
    ax.legend(loc="best", fontsize=7, markerscale=0.5, title="probability of the answer", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report_files(name: str) -> Tuple[str, ...]:
    """The files :func:`write_report` writes for the report ``name``."""
    return (f"{name}_per_class.csv", f"{name}_confusion.csv", f"{name}_confusion.png", f"{name}.md")


def _percent_text(rate: float) -> str:
    """``'89.56 %'``; ``'n/a'`` where the rate is undefined (NaN)."""
    return "n/a" if math.isnan(rate) else f"{100 * rate:.2f} %"


def markdown_table(table: pd.DataFrame, digits: int = 3) -> str:
    """``table`` as a Markdown pipe table, its index as the first column (named by the index's
    name), floats to ``digits`` places, numbers right-aligned; the same text on every machine
    (pandas' ``to_markdown`` needs the optional ``tabulate``, and ``to_string`` is no table)."""
    def cell(value: object) -> str:
        return f"{value:.{digits}f}" if isinstance(value, (float, np.floating)) else str(value)

    numeric = [pd.api.types.is_numeric_dtype(dtype) for dtype in table.dtypes]
    lines = ["| " + " | ".join([str(table.index.name or ""), *map(str, table.columns)]) + " |",
             "| --- | " + " | ".join("---:" if is_number else "---" for is_number in numeric) + " |"]
    lines += ["| " + " | ".join([str(name), *(cell(v) for v in row)]) + " |"
              for name, row in zip(table.index, table.itertuples(index=False))]
    return "\n".join(lines)


def write_report(folder: Path | str, name: str, y_true: Sequence[str], y_pred: Sequence[str], title: str) -> Dict[str, float]:
    """Save ``{name}_confusion.png``, ``{name}_per_class.csv`` (``class,precision,recall,f1,support``,
    floats to 6 places), ``{name}_confusion.csv`` (counts, rows true, columns predicted) and
    ``{name}.md``; return the summary."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stats = summary(y_true, y_pred)
    table = per_class_table(y_true, y_pred).rename_axis("class")
    matrix = confusion(y_true, y_pred)
    per_class_csv, confusion_csv, confusion_png, markdown = report_files(name)
    table.to_csv(folder / per_class_csv, float_format="%.6f", lineterminator="\n")
    matrix.to_csv(folder / confusion_csv, index_label="true \\ predicted", lineterminator="\n")
    _confusion_png(matrix, folder / confusion_png, title, stats)
    outlier_recall = (_percent_text(stats["outlier_recall"]) if not math.isnan(stats["outlier_recall"])
                      else "n/a (no outlier image)")
    lines = [f"# {title}", "", f"- images: {stats['n']}",
             f"- 9-class accuracy: {_percent_text(stats['accuracy'])} (95 % interval {interval_text(stats['accuracy_ci95'])} %)",
             f"- family accuracy: {_percent_text(stats['family_accuracy'])}", f"- outlier recall: {outlier_recall}",
             "", markdown_table(table), "",
             f"Confusion matrix (image counts; rows: true class, columns: predicted; `{confusion_csv}`):", "",
             f"![confusion matrix]({confusion_png})", ""]
    (folder / markdown).write_text("\n".join(lines), encoding="utf-8")  # en dashes: not the locale's encoding
    return stats
