"""The files :func:`scoring.write_report` leaves for a person or a program to read: a Markdown
summary whose table is a Markdown table on any machine, a per-class CSV with a named first
column and a fixed float format, and a confusion-matrix PNG that says what its numbers are."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import scoring
from models.registry import CLASS_NAMES


def _labels(with_outliers: bool = True) -> tuple[list, list]:
    classes = [c for c in CLASS_NAMES if with_outliers or c != "outlier"]
    truth = [c for c in classes for _ in range(3)]
    predicted = list(truth)
    predicted[0] = classes[1]  # one var16 named var20
    return truth, predicted


@pytest.mark.parametrize("tabulate_installed", [False, True])
def test_markdown_table_is_a_table_with_or_without_tabulate(tmp_path, monkeypatch, tabulate_installed):
    if not tabulate_installed:
        monkeypatch.setitem(sys.modules, "tabulate", None)  # import tabulate fails, as where it is not installed
    truth, predicted = _labels()
    scoring.write_report(tmp_path, "test", truth, predicted, "Test (flat)")
    lines = (tmp_path / "test.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| class"))
    assert [c.strip() for c in lines[header].strip("|").split("|")] == ["class", "precision", "recall", "f1", "support"]
    assert set(lines[header + 1].replace("|", "").split()) <= {"---", "---:"}
    rows = lines[header + 2:header + 2 + len(CLASS_NAMES)]
    assert [row.strip("|").split("|")[0].strip() for row in rows] == list(CLASS_NAMES)
    assert rows[0].replace(" ", "") == "|var16|1.000|0.667|0.800|3|"


def test_markdown_says_n_a_where_there_is_no_outlier(tmp_path):
    truth, predicted = _labels(with_outliers=False)
    scoring.write_report(tmp_path, "val", truth, predicted, "Validation (flat)")
    text = (tmp_path / "val.md").read_text()
    assert "outlier recall: n/a (no outlier image)" in text and "nan" not in text


def test_per_class_csv_has_a_named_first_column_and_fixed_floats(tmp_path):
    truth, predicted = _labels()
    scoring.write_report(tmp_path, "test", truth, predicted, "Test (flat)")
    lines = (tmp_path / "test_per_class.csv").read_text().splitlines()
    assert lines[0] == "class,precision,recall,f1,support"
    assert lines[1] == "var16,1.000000,0.666667,0.800000,3"
    assert lines[2] == "var20,0.750000,1.000000,0.857143,3"
    confusion = (tmp_path / "test_confusion.csv").read_text().splitlines()
    assert confusion[0] == "true \\ predicted," + ",".join(CLASS_NAMES)


def test_confusion_png_says_it_shows_counts_of_how_many_images(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to read its texts
    truth, predicted = _labels()
    scoring.write_report(tmp_path, "test", truth, predicted, "Test (flat)")
    ax = figures[-1].axes[0]
    assert ax.get_title().startswith("Test (flat)")
    assert "27 images" in ax.get_title() and "accuracy 96.30 %" in ax.get_title()
    assert "image counts" in ax.get_xlabel() + ax.get_ylabel() + ax.get_title()
    assert len(figures[-1].axes) == 2, "a colorbar maps the shades to counts"
    assert np.asarray(figures[-1].axes[0].images[0].get_array()).sum() == len(truth)


def test_reliability_diagram_names_each_bin_in_its_legend_not_over_the_points(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    import pandas as pd

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    table = pd.DataFrame({"n": [30, 105, 0, 410, 217], "mean_confidence": [0.449, 0.6, np.nan, 0.967, 0.994],
                          "accuracy": [0.333, 0.6, np.nan, 0.980, 0.995]},
                         index=pd.Index(["0–0.5", "0.5–0.7", "0.7–0.9", "0.9–0.99", "0.99–1"], name="confidence"))
    scoring._confidence_png(table, tmp_path / "c.png")
    ax = figures[-1].axes[0]
    assert not ax.texts, "no label drawn beside the points (the two top ones overlapped)"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["calibrated", "0–0.5: 30 images, mean 0.449, 33.3 % right", "0.5–0.7: 105 images, mean 0.600, 60.0 % right",
                      "0.9–0.99: 410 images, mean 0.967, 98.0 % right", "0.99–1: 217 images, mean 0.994, 99.5 % right"]
