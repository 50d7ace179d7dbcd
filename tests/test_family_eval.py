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


def test_the_evaluation_scripts_score_the_decodable_images_of_a_split(tmp_path, capsys):
    """``scripts/eval_family.py`` and ``eval_robustness.py`` loaded every listed image as it was: a
    truncated PNG ended them with a traceback (and an image of another size, in the stacking);
    ``--latent-tracer-limit 0`` did too (``torch.cat`` of nothing)."""
    import sys
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from cli import scored_split

    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "scripts"))
    import eval_family

    for name in ("a.png", "b.png"):
        (tmp_path / "val" / "var16").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "val" / "var16" / name)
    whole = (tmp_path / "val" / "var16" / "b.png").read_bytes()
    (tmp_path / "val" / "var16" / "b.png").write_bytes(whole[: len(whole) // 2])
    meta = scored_split(tmp_path, "val")
    assert list(meta.index) == ["val/var16/a.png"]
    assert "1 image(s) under" in capsys.readouterr().err
    traced = eval_family.latent_tracer_frame(None, None, meta.assign(source="var16"), 8, 0, 0, "VAR_orig_")
    assert traced.empty and list(traced.columns) == ["VAR_orig_latent_tracer"]


def test_eval_family_decodes_the_split_once_per_model_size(monkeypatch):
    """Both families' signal blocks and LatentTracer blocks share one decode of the split per model
    size (``eval_family.ImagesAtSize``); each block decoded every image again."""
    import sys
    from pathlib import Path

    import pandas as pd
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import eval_family

    decoded = []
    monkeypatch.setattr(eval_family, "load_images", lambda paths, size: decoded.append(size) or torch.zeros(len(paths), 3, size, size))
    images_at = eval_family.ImagesAtSize(pd.Series(["a.png", "b.png"]))
    for size in (16, 16, 32, 16, 32):
        assert images_at(size).shape == (2, 3, size, size)
    assert decoded == [16, 32]


def test_signals_computed_on_a_gpu_are_cached_apart_from_the_cpus(tmp_path, monkeypatch):
    """``signals.csv`` is reused when its key matches; the key named the images, weights and
    settings but not the device, so with ``--device auto`` a run on a GPU machine took the CPU's
    signals (or the other way round), which its convolutions round otherwise."""
    import sys
    from pathlib import Path

    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import eval_family

    (tmp_path / "a.png").write_bytes(b"an image")
    monkeypatch.setattr(eval_family, "weight_files", lambda weights_dir: [tmp_path / "a.png"])
    monkeypatch.setattr(eval_family.inv_decoder, "ensure_inverse_decoder", lambda *args: tmp_path / "a.png")
    meta = pd.DataFrame({"path": [str(tmp_path / "a.png")]}, index=["val/var16/a.png"])
    key = {device: eval_family.signals_key(meta, None, tmp_path, device, 8, 0) for device in ("cpu", "cuda", "cuda:1")}
    assert key["cpu"] != key["cuda"] == key["cuda:1"]
