"""``feature_plotter.py``: a distribution plot for every kind of feature present, with how many
images each box is drawn from, and a warning for a ``--models`` folder it cannot use."""
from __future__ import annotations

import numpy as np
import pandas as pd

import feature_plotter
from models.registry import CLASS_NAMES, VARIANT_NAMES

KINDS = ("nll_best", "fnet_nll", "nll_evidence", "nll_sampling")


def _frame(n_per_class: int = 6) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(0)
    labels = pd.Series([c for c in CLASS_NAMES for _ in range(n_per_class)], name="label")
    labels.index = pd.Index([f"img{i}.png" for i in range(len(labels))], name="image_id")
    columns = {"VAR_quant_loss": rng.uniform(0.1, 1, len(labels)), "RAR_enc_loss": rng.uniform(0.1, 1, len(labels))}
    for kind in KINDS:
        for variant in VARIANT_NAMES:
            columns[f"{variant}_{kind}"] = rng.uniform(1, 5, len(labels))
    frame = pd.DataFrame(columns, index=labels.index)
    rar = [c for c in frame.columns if c.startswith("rar") and not c.endswith("fnet_nll")]
    frame.loc[labels.str.startswith("var").to_numpy(), rar] = np.nan  # as a scoring gate leaves them out
    return frame, labels


def test_groups_follow_the_columns_present():
    frame, _ = _frame(1)
    groups = feature_plotter.feature_groups(list(frame.columns) + ["zlib_ratio"])
    assert list(groups) == ["family_signals", *KINDS, "other"]
    assert groups["family_signals"] == ["VAR_quant_loss", "RAR_enc_loss"]
    assert groups["nll_evidence"] == [f"{v}_nll_evidence" for v in VARIANT_NAMES] and groups["other"] == ["zlib_ratio"]


def test_report_plots_every_kind_and_counts_each_box(tmp_path, monkeypatch, capsys):
    import matplotlib.pyplot as plt

    frame, labels = _frame()
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figures to read their tick labels
    report = feature_plotter.write_feature_report(frame, labels, tmp_path / "out", models_dir=tmp_path / "no_models")
    for kind in KINDS:
        assert (tmp_path / "out" / f"dist_{kind}.png").is_file() and f"![{kind}](dist_{kind}.png)" in report.read_text()
    assert "Values present in" in report.read_text()
    rarb_best = next(ax for fig in figures for ax in fig.axes if ax.get_title().endswith("rarb_nll_best"))
    ticks = [t.get_text() for t in rarb_best.get_xticklabels()]
    assert ticks[0] == "var16\nn=0" and ticks[4] == "rarb\nn=6", ticks
    assert "warning: --models is not a folder; no feature importance" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    feature_plotter.write_feature_report(frame, labels, tmp_path / "out", models_dir=tmp_path / "empty")
    assert "holds no *.joblib model" in capsys.readouterr().err


def test_the_docstring_example_names_files_submission_writes():
    import dataset

    doc = feature_plotter.__doc__
    assert f"{dataset.REPORT_DIR}/features_val.parquet" in doc and f"{dataset.REPORT_DIR}/labels_val.csv" in doc
    assert "cache/report_features.parquet" not in doc


def test_a_rerun_leaves_no_earlier_plot_behind(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for earlier in ("importance.png", "dist_nll_topk.png", "family_rocs.png"):  # e.g. a run with --models, other features
        (out / earlier).write_bytes(b"an earlier run's")
    (out / "notes.txt").write_text("not the report's")
    frame, labels = _frame(2)
    feature_plotter.write_feature_report(frame, labels, out)
    assert not (out / "importance.png").exists() and not (out / "dist_nll_topk.png").exists()
    assert (out / "family_rocs.png").read_bytes()[:4] == b"\x89PNG" and (out / "notes.txt").is_file()
    embedded = {line.split("](")[1].rstrip(")") for line in (out / "report.md").read_text().splitlines() if line.startswith("![")}
    assert embedded == {p.name for p in out.glob("*.png")}, "every PNG in the folder is this report's and embedded"


def test_report_names_its_inputs_and_says_what_each_plot_shows(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    frame, labels = _frame(4)
    sources = {"features": tmp_path / "features_val.parquet", "labels": tmp_path / "labels_val.csv"}
    text = feature_plotter.write_feature_report(frame, labels, tmp_path / "out", sources=sources).read_text()
    assert f"- features: `{sources['features']}`" in text and f"- labels: `{sources['labels']}`" in text
    assert "images per class: var16 4," in text
    assert feature_plotter.BOX_NOTE in text and feature_plotter.ROC_NOTE in text
    # a note on missing values goes before its plot, in a paragraph of its own
    lines = text.splitlines()
    note = next(i for i, line in enumerate(lines) if line.startswith("Values present in"))
    assert lines[note + 1] == "" and lines[note + 2].startswith("![")
    roc = next(fig for fig in figures if fig.axes[0].get_title().startswith("VAR"))
    legend = [t.get_text() for t in roc.axes[0].get_legend().get_texts()]
    assert legend[-1] == "1 % FPR" and all("AUC" in e and "TPR@1%" in e for e in legend[:-1]), legend
    assert roc.axes[0].get_title() == "VAR: its 16 images vs the other 20"
