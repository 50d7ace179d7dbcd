"""Evaluation helpers: which group an image is in for a family, and the fixed per-source subset."""
from __future__ import annotations

import pandas as pd

import family_eval


def test_source_group():
    assert family_eval.source_group("var20", "var20", "VAR") == "belonging"
    assert family_eval.source_group("rarl", "rarl", "VAR") == "other_family"
    assert family_eval.source_group("outlier_iar", "outlier", "RAR") == "outlier_iar"
    assert family_eval.source_group("natural_reserved", "outlier", "RAR") == "natural"


def test_per_source_subset_is_fixed_and_capped():
    meta = pd.DataFrame({"source": ["a"] * 10 + ["b"] * 3}, index=[f"img{i}" for i in range(13)])
    subset = family_eval.per_source_subset(meta, 4, seed=0)
    counts = meta.loc[subset, "source"].value_counts()
    assert counts["a"] == 4 and counts["b"] == 3  # capped at what a source has
    assert list(subset) == list(family_eval.per_source_subset(meta, 4, seed=0))
    assert set(subset) != set(family_eval.per_source_subset(meta, 4, seed=1))
