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
